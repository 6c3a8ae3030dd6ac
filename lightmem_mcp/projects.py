"""Which project a session works in, from the client's roots or the server's working directory.

- The same repository opened twice is the same project; two repositories with the same folder name
  are not. A project's id is `<slug of its name>-<12 hex of sha256(key)>`.
- The root is the nearest folder, walking up from the given one (symlinks followed), that holds a
  `.git` directory or a `.git` file (`gitdir: <path>`, as in worktrees and submodules). The walk
  stops below the home directory and the filesystem root, so a dotfiles repository in home does not
  swallow every folder under it. No `.git` found: the folder itself is the root.
- The key is the repository's `remote "origin"` url, read from the common git dir's config (shared
  by all worktrees) and normalised to `host/owner/repo`, so every clone and worktree of a repository
  is one project and a fork is another. Without an origin it is the common git dir's path; without a
  git dir, the root's path.
- Not projects: the filesystem root, the home directory itself, and anything that is not an
  existing directory.
- Only files are read, never the `git` binary; a file that cannot be read or parsed falls through
  to the next rule. `include` directives of git config are not followed.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

_SLUG_CHARS = 40
_HASH_CHARS = 12
# Git files worth reading are a few KiB; a bigger one is not read past this.
_MAX_READ_CHARS = 1 << 20
_NOT_SLUG = re.compile(r"[^a-z0-9._-]+")
_DASHES = re.compile(r"-{2,}")
_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")
_GIT_SPACE = " \t\v\f\r"
_ESCAPES = {"t": "\t", "b": "\b", "n": "\n", "\\": "\\", '"': '"'}


@dataclass(frozen=True)
class Project:
    """A project: a stable readable id, the root folder's name, the root, and what the id hashes."""

    id: str
    name: str
    root: Path
    key: str


def project_of(folder: Path | str) -> Project | None:
    """The project a folder belongs to; None for the filesystem root, home, or a missing folder."""
    start = _resolved(Path(folder))
    if start is None or not _is_dir(start):
        return None
    home = _home()
    if start == home or start.parent == start:
        return None
    root = _root_of(start, home)
    key = _key_of(root)
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_CHARS]
    return Project(id=f"{slug(root.name)}-{digest}", name=root.name, root=root, key=key)


def project_from_roots(uris: Sequence[str]) -> Project | None:
    """The project of the first `file://` root that is one; other schemes are skipped."""
    for uri in uris:
        folder = _file_uri_path(uri)
        project = project_of(folder) if folder is not None else None
        if project is not None:
            return project
    return None


def project_from_cwd(cwd: Path | str | None = None) -> Project | None:
    """The project of the working directory (the process's by default), None when it is not one."""
    if cwd is None:
        try:
            cwd = Path.cwd()
        except OSError:  # the working directory was deleted
            return None
    return project_of(cwd)


def slug(name: str) -> str:
    """A readable id prefix: lower-case ASCII, [a-z0-9._-] only, at most 40 chars, "project" if empty."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    text = _DASHES.sub("-", _NOT_SLUG.sub("-", ascii_name.lower())).strip("-")
    return text[:_SLUG_CHARS].rstrip("-") or "project"


def _root_of(start: Path, home: Path | None) -> Path:
    for folder in (start, *start.parents):
        if folder == home or folder.parent == folder:
            break
        dot_git = folder / ".git"
        if _is_dir(dot_git) or _is_file(dot_git):
            return folder
    return start


def _key_of(root: Path) -> str:
    git_dir = _git_dir(root)
    if git_dir is None:
        return f"path:{root}"
    common = _common_dir(git_dir)
    config = _read_text(common / "config")
    url = _origin_url(config) if config is not None else None
    remote = _normalised_remote(url, root) if url is not None else None
    return f"git-remote:{remote}" if remote else f"git-dir:{common}"


def _git_dir(root: Path) -> Path | None:
    """The git dir of a work tree: `.git` itself, or where a `.git` file's `gitdir:` line points."""
    dot_git = root / ".git"
    if _is_dir(dot_git):
        return _resolved(dot_git)
    text = _read_text(dot_git)
    if text is None:
        return None
    first_line = text.split("\n", 1)[0].strip()
    if not first_line.startswith("gitdir:"):
        return None
    target = first_line.removeprefix("gitdir:").strip()
    git_dir = _resolved(root / target) if target else None
    return git_dir if git_dir is not None and _is_dir(git_dir) else None


def _common_dir(git_dir: Path) -> Path:
    """The git dir that holds the config: a worktree's `commondir` file points to the main one."""
    text = _read_text(git_dir / "commondir")
    target = text.strip() if text is not None else ""
    common = _resolved(git_dir / target) if target else None
    return common if common is not None and _is_dir(common) else git_dir


def _origin_url(config: str) -> str | None:
    """The fetch url of `remote "origin"`: the first `url` given; an empty one clears those before it."""
    urls: list[str] = []
    for section, subsection, key, value in _config_values(config):
        if section == "remote" and subsection == "origin" and key == "url":
            if value.strip():
                urls.append(value.strip())
            else:
                urls.clear()
    return urls[0] if urls else None


def _normalised_remote(url: str, root: Path) -> str | None:
    """`host/owner/repo` for a network url, the resolved path for a local one; None if unusable."""
    if "://" in url:
        try:
            parts = urlsplit(url)
            # hostname drops user@ (and any token in it) and the port: ssh on a custom port and
            # https reach the same repository.
            host = parts.hostname or ""
        except ValueError:
            return None
        if parts.scheme.lower() == "file":
            return _local_remote(url2pathname(parts.path), root)
        path = parts.path
    elif ":" in url.split("/", 1)[0] and not _DRIVE.match(url):
        # scp-like `user@host:owner/repo`: a colon before any slash.
        host_part, path = url.split(":", 1)
        host = host_part.rsplit("@", 1)[-1].lower()
    else:
        return _local_remote(url, root)
    path = _without_git_suffix(path).lstrip("/")
    return f"{host}/{path}" if host and path else None


def _local_remote(path: str, root: Path) -> str | None:
    # Git resolves a relative remote path from the top of the work tree.
    resolved = _resolved(root / path) if path else None
    return (_without_git_suffix(str(resolved)) or None) if resolved is not None else None


def _without_git_suffix(path: str) -> str:
    return path.rstrip("/").removesuffix(".git").rstrip("/")


def _config_values(text: str) -> Iterator[tuple[str, str | None, str, str]]:
    """(section, subsection, key, value) of each well-formed entry of a git config file, in order.

    Section and key names are lower-cased, a quoted subsection is kept as written. A malformed line is
    skipped, and so are the entries under a malformed section header, up to the next good one; keys
    without a value (git's boolean shorthand) are left out.
    """
    text = text.removeprefix("\ufeff").replace("\r\n", "\n")
    section: tuple[str, str | None] | None = None
    pos = 0
    while pos < len(text):
        char = text[pos]
        if char in _GIT_SPACE or char == "\n":
            pos += 1
        elif char in "#;":
            pos = _end_of_line(text, pos)
        elif char == "[":
            section, pos = _section_header(text, pos + 1)
        elif char.isascii() and char.isalpha():
            key, value, pos = _entry(text, pos)
            if section is not None and key is not None and value is not None:
                yield section[0], section[1], key, value
        else:
            pos = _end_of_line(text, pos)


def _section_header(text: str, pos: int) -> tuple[tuple[str, str | None] | None, int]:
    """`[section]`, `[section "subsection"]` or the old `[section.subsection]`, from after the `[`."""
    start = pos
    while pos < len(text) and (_is_key_char(text[pos]) or text[pos] == "."):
        pos += 1
    name = text[start:pos].lower()
    if not name or pos >= len(text):
        return None, _end_of_line(text, pos)
    if text[pos] == "]":
        section, dot, old_subsection = name.partition(".")
        return ((section, old_subsection if dot else None) if section else None), pos + 1
    while pos < len(text) and text[pos] in " \t":
        pos += 1
    if pos >= len(text) or text[pos] != '"':
        return None, _end_of_line(text, pos)
    pos += 1
    subsection: list[str] = []
    while pos < len(text) and text[pos] not in '"\n':
        if text[pos] == "\\":
            pos += 1
            if pos >= len(text) or text[pos] == "\n":
                break
        subsection.append(text[pos])
        pos += 1
    if text[pos : pos + 2] != '"]':
        return None, _end_of_line(text, pos)
    return (name, "".join(subsection)), pos + 2


def _entry(text: str, pos: int) -> tuple[str | None, str | None, int]:
    """A `key = value` line from its key: the key (None if malformed), the value (None if absent)."""
    start = pos
    while pos < len(text) and _is_key_char(text[pos]):
        pos += 1
    key = text[start:pos].lower()
    while pos < len(text) and text[pos] in " \t":
        pos += 1
    if pos >= len(text) or text[pos] == "\n":
        return key, None, pos
    if text[pos] != "=":
        return None, None, _end_of_line(text, pos)
    value, pos = _value(text, pos + 1)
    return (key if value is not None else None), value, pos


def _value(text: str, pos: int) -> tuple[str | None, int]:
    """A value as git reads it: quotes, escapes, comments, continued lines, outer whitespace dropped."""
    out: list[str] = []
    spaces = 0
    quoted = False
    while True:
        char = text[pos] if pos < len(text) else "\n"
        pos += 1
        if char == "\n":
            return (None if quoted else "".join(out)), pos
        if char in _GIT_SPACE and not quoted:
            spaces += 1 if out else 0
            continue
        if char in "#;" and not quoted:
            return "".join(out), _end_of_line(text, pos)
        if spaces:
            out.append(" " * spaces)
            spaces = 0
        if char == "\\":
            escaped = text[pos] if pos < len(text) else "\n"
            pos += 1
            if escaped == "\n":
                continue
            if escaped not in _ESCAPES:
                return None, _end_of_line(text, pos)
            out.append(_ESCAPES[escaped])
        elif char == '"':
            quoted = not quoted
        else:
            out.append(char)


def _end_of_line(text: str, pos: int) -> int:
    end = text.find("\n", pos)
    return len(text) if end < 0 else end + 1


def _is_key_char(char: str) -> bool:
    return char.isascii() and (char.isalnum() or char == "-")


def _file_uri_path(uri: str) -> Path | None:
    try:
        parts = urlsplit(uri.strip())
    except ValueError:
        return None
    if parts.scheme.lower() != "file":
        return None
    # file://server/share/x names a UNC share on Windows; url2pathname turns `//server/...` into one.
    local = parts.netloc.lower() in ("", "localhost")
    return Path(url2pathname(parts.path if local else f"//{parts.netloc}{parts.path}"))


def _home() -> Path | None:
    try:
        return _resolved(Path.home())
    except (RuntimeError, OSError, KeyError):  # no HOME and no passwd entry
        return None


def _resolved(path: Path) -> Path | None:
    try:
        return path.resolve()
    except (OSError, RuntimeError, ValueError):  # symlink loop, embedded NUL
        return None


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _read_text(path: Path) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            return file.read(_MAX_READ_CHARS)
    except (OSError, ValueError):
        return None
