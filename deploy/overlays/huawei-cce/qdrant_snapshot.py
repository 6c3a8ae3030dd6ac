"""Snapshot the lightmem collection on every Qdrant peer and download the files for upload.

A collection snapshot holds only the shards of the peer that takes it, so each peer is asked in
turn. Files land in SNAPSHOT_DIR/<UTC time>/<peer host>/; each is deleted from its peer once
downloaded, to free the peer's snapshot volume. Standard library only: it runs in a plain Python
image. The Qdrant REST API: POST /collections/{name}/snapshots, GET and DELETE
/collections/{name}/snapshots/{snapshot}.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

QDRANT_URL = os.environ.get("QDRANT_URL", "http://qdrant:6333").rstrip("/")
API_KEY = os.environ["QDRANT_API_KEY"]
COLLECTION = os.environ.get("LIGHTMEM_COLLECTION", "lightmem")
SNAPSHOT_DIR = Path(os.environ.get("SNAPSHOT_DIR", "/snapshots"))
REST_PORT = 6333
TIMEOUT_S = 3600


def request(method: str, url: str, download_to: Path | None = None) -> Any:
    """One REST call with the API key; JSON result, or the body streamed into a file."""
    req = urllib.request.Request(url, method=method, headers={"api-key": API_KEY})
    with urllib.request.urlopen(req, timeout=TIMEOUT_S) as response:
        if download_to is None:
            return json.load(response)["result"]
        with download_to.open("wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
        return None


def peer_urls() -> list[str]:
    """REST URL of every peer; the seed URL alone when Qdrant does not run as a cluster."""
    cluster = request("GET", f"{QDRANT_URL}/cluster")
    peers = cluster.get("peers") or {}
    if not peers:
        return [QDRANT_URL]
    hosts = sorted(urllib.parse.urlsplit(peer["uri"]).hostname for peer in peers.values())
    return [f"http://{host}:{REST_PORT}" for host in hosts]


def main() -> int:
    """Snapshot, download and delete on each peer; a non-zero exit fails the job."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    collection = urllib.parse.quote(COLLECTION, safe="")
    for peer in peer_urls():
        snapshots = f"{peer}/collections/{collection}/snapshots"
        name = request("POST", f"{snapshots}?wait=true")["name"]
        target = SNAPSHOT_DIR / stamp / urllib.parse.urlsplit(peer).hostname / name
        target.parent.mkdir(parents=True, exist_ok=True)
        request("GET", f"{snapshots}/{urllib.parse.quote(name, safe='')}", download_to=target)
        request("DELETE", f"{snapshots}/{urllib.parse.quote(name, safe='')}?wait=true")
        print(f"{peer}: {name} ({target.stat().st_size} bytes)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
