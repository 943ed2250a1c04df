"""One run at a time per store: a lock file created exclusively, released on every exit, stale ones detected.

The lock is ``<store>/.activessf.lock``, a small JSON file (process id, host, start time, command) created
with ``O_CREAT | O_EXCL``, so of two runs that start together exactly one gets it. A lock whose process is
gone (same host, no such process id) is stale and is taken over, with a warning; a lock held by a live
process, or by another host (whose processes cannot be checked from here), refuses the run with who holds
it and how to clear it. Take-overs are serialised by an flock on the store's folder, so of two runs that find
the same stale lock exactly one takes it over.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LOCK_NAME = ".activessf.lock"


class StoreLockedError(RuntimeError):
    """Another run holds the store; the message says who and how to clear a lock left by a lost machine."""


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _read(path: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


class StoreLock:
    """The lock of the store at `root` (created if needed). Use `acquire` / `release`, or `with`."""

    def __init__(self, root: str | Path) -> None:
        self.path = Path(root) / LOCK_NAME
        self.token = uuid.uuid4().hex  # tells this holder from another in the same process
        self.held = False

    def _mine(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(sys.argv)[:500],
            "token": self.token,
        }

    def acquire(self) -> None:
        """Take the lock, or raise StoreLockedError; a stale lock (dead process on this host) is taken over."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            self._take_over_stale()
        else:
            with os.fdopen(fd, "w") as fh:
                json.dump(self._mine(), fh)
        self.held = True

    def _take_over_stale(self) -> None:
        """Replace a stale lock with this holder's, one contender at a time.

        Each contender that found the lock stale replaces it only while it holds an flock on the store's
        folder (released by the kernel when its process ends, so it never goes stale itself), and only if
        the lock is still the stale one it judged: the first one in replaces it, and every later one then
        finds a live holder and is refused. Without it, two contenders that both read the stale lock both
        replaced it and both believed they held the store."""
        folder = os.open(self.path.parent, os.O_RDONLY)
        try:
            fcntl.flock(folder, fcntl.LOCK_EX)
            self._replace_if_stale()
        finally:
            os.close(folder)  # releases the flock

    def _replace_if_stale(self) -> None:
        holder = _read(self.path)
        if holder is None:
            raise StoreLockedError(
                f"{self.path.parent} is locked by {self.path}, which cannot be read (being written, or damaged). "
                f"If no run is using this store, remove {self.path} and start again."
            )
        here = socket.gethostname()
        pid, host = holder.get("pid"), holder.get("host")
        if host != here or not isinstance(pid, int) or _process_alive(pid):
            raise StoreLockedError(
                f"{self.path.parent} is in use by another run: pid {pid} on {host}, since {holder.get('started')} "
                f"({holder.get('command', '')!r}). Wait for it to end. If that run is gone (killed on another "
                f"machine), remove {self.path} and start again."
            )
        log.warning("taking over the stale lock of %s (pid %s on %s is gone)", self.path.parent, pid, host)
        replacement = self.path.with_name(f"{LOCK_NAME}.{self.token}")
        replacement.write_text(json.dumps(self._mine()))
        os.replace(replacement, self.path)

    def release(self) -> None:
        """Remove the lock if this holder still holds it (a no-op otherwise)."""
        if not self.held:
            return
        self.held = False
        if (_read(self.path) or {}).get("token") == self.token:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
