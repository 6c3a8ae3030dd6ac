"""The memory browser: a web page to search, read, correct and delete what the agent remembers.

`app` holds the pages, `access` the sessions, links and CSRF tokens, `charts` the stats pictures,
and `local` the `lightmem-mcp ui` command. The HTTP server mounts the same pages at `/ui`.
"""
