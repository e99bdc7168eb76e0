"""One builder per cache entry: concurrent runs that need the same dataset share one build.

    <cache_dir>/<hash>/              the finished dataset (the writer renames it into place atomically)
    <cache_dir>/<hash>.lock          held (fcntl.flock) by the process building <hash>; holds its pid
    <cache_dir>/<hash>.tmp-XXXXXXXX  the writer's folder while it builds (DatasetWriter)

``build_once(dest, is_complete, build, timeout_s)``: takes the entry's lock (waiting up to ``timeout_s``
for another builder, then failing with its pid), re-checks the cache under the lock -- a run that waited
returns the first run's result instead of building it again -- and otherwise removes leftovers of crashed
builders (``<hash>.tmp-*`` / ``<hash>.old-*``: nobody else can be writing them while we hold the lock) and
builds. flock is released by the kernel when its holder dies, so a crashed builder never blocks the next.
fcntl.flock works on local filesystems and on NFSv4 (Linux emulates it with POSIX locks there).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from vlaforge.errors import VlaforgeError

log = logging.getLogger(__name__)

_POLL_S = 0.2


class CacheLockTimeout(VlaforgeError, TimeoutError):
    pass


@contextmanager
def file_lock(path: Path, timeout_s: float, what: str) -> Iterator[None]:
    """Exclusive flock on ``path`` (created if needed), polled until ``timeout_s``; writes our pid into it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline, waited_msg = time.monotonic() + timeout_s, False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            if not waited_msg:
                log.info("%s: another process (%s) is building it; waiting up to %.0f s", what, _holder(path), timeout_s)
                waited_msg = True
            if time.monotonic() >= deadline:
                raise CacheLockTimeout(
                    f"{what}: another process ({_holder(path)}) has held {path} for over {timeout_s:.0f} s. "
                    "Wait for it, raise demos.lock_timeout_s, or (if that process is gone from every machine "
                    "sharing the cache) delete the lock file")
            time.sleep(_POLL_S)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {os.uname().nodename}\n".encode())
        yield
    finally:
        os.close(fd)  # releases the lock


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "pid unknown"
    except OSError:
        return "pid unknown"


def clean_stale(dest: Path) -> list[Path]:
    """Remove ``<dest>.tmp-*`` / ``<dest>.old-*`` beside ``dest``: call only while holding its lock."""
    removed = []
    for p in dest.parent.glob(f"{dest.name}.*"):
        if p.name.startswith((f"{dest.name}.tmp-", f"{dest.name}.old-")) and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    if removed:
        log.info("removed %d stale folder(s) of crashed builders: %s", len(removed), ", ".join(p.name for p in removed))
    return removed


def build_once(dest: Path, is_complete: Callable[[Path], bool], build: Callable[[], Path], timeout_s: float) -> Path:
    """``dest`` if it is complete, else built by exactly one of the processes asking for it at once."""
    if is_complete(dest):
        return dest
    with file_lock(dest.parent / f"{dest.name}.lock", timeout_s, f"cache entry {dest}"):
        if is_complete(dest):  # built by the process we waited for
            log.info("%s: built meanwhile by another run; reusing it", dest)
            return dest
        clean_stale(dest)
        return build()
