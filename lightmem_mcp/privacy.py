"""Private files: memories on disk are readable by their owner only, whatever the umask.

The embedded store's directory is 0700 and every file in it 0600. Opening it also adds 077 to the
process umask, because the storage engine creates files (WAL segments, new segments) from its own
threads at any time, and only the umask makes those private from birth.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
# Permission bits that let anyone but the owner in.
_SHARED_BITS = 0o077


@dataclass(frozen=True)
class Exposed:
    """A path that other users can read, write or enter."""

    path: Path
    mode: int

    def describe(self) -> str:
        """`path (0755)`."""
        return f"{self.path} ({self.mode:04o})"


def restrict_umask() -> None:
    """Files and directories this process creates from now on are its owner's only."""
    current = os.umask(_SHARED_BITS)
    os.umask(current | _SHARED_BITS)


def private_directory(path: Path) -> list[Exposed]:
    """Create `path` (and missing parents) as 0700 and make what it holds 0700 / 0600; existing
    parents are left as they are. Returns what could not be made private (not ours, read-only)."""
    restrict_umask()
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    failed = []
    for entry, mode in _entries(path):
        if not mode & _SHARED_BITS:
            continue
        try:
            os.chmod(entry, PRIVATE_DIR if stat.S_ISDIR(mode) else PRIVATE_FILE)
        except OSError as exc:
            failed.append(Exposed(entry, stat.S_IMODE(mode)))
            log.warning("cannot make %s private: %s", failed[-1].describe(), exc.strerror)
    return failed


def exposed(path: Path, recursive: bool = True) -> list[Exposed]:
    """`path` and (recursively) what it holds, where other users have any access; [] if it is missing."""
    return [Exposed(entry, stat.S_IMODE(mode)) for entry, mode in _entries(path, recursive) if mode & _SHARED_BITS]


def append_private(path: Path, line: str) -> bool:
    """Append `line` to a regular file, creating it 0600 and tightening an existing wider one;
    refuses symlinks and anything not a regular file. Returns True when the mode was tightened."""
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK  # a FIFO fails, never blocks
    try:
        fd = os.open(path, flags, PRIVATE_FILE)
    except OSError as exc:
        if path.is_symlink():
            raise OSError(exc.errno, "is a symbolic link: give the file itself", str(path)) from None
        raise
    with os.fdopen(fd, "r+b") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        tightened = bool(info.st_mode & _SHARED_BITS)
        if tightened:
            os.fchmod(fd, PRIVATE_FILE)
        # A file whose last line lacks its newline would merge with the new one.
        if info.st_size and os.pread(fd, 1, info.st_size - 1) != b"\n":
            line = "\n" + line
        handle.write(line.encode("utf-8"))
    return tightened


def _entries(root: Path, recursive: bool = True) -> list[tuple[Path, int]]:
    """`root` (followed if a symlink) and everything under it with its `st_mode`; symlinks below the root
    are left out: their own mode means nothing and their target lies elsewhere."""
    try:
        found = [(root, os.stat(root).st_mode)]
    except FileNotFoundError:
        return []
    if not recursive or not stat.S_ISDIR(found[0][1]):
        return found
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            entry = Path(folder) / name
            try:
                mode = os.lstat(entry).st_mode
            except FileNotFoundError:  # removed meanwhile (the engine rotates its files)
                continue
            if not stat.S_ISLNK(mode):
                found.append((entry, mode))
    return found
