"""One trainer per run folder: `with RunLock(checkpoint_dir): ...` holds an exclusive `flock` on
`<checkpoint_dir>/.lock` while training, with the holder's pid written in the file.

A second trainer on the same folder gets `RunFolderBusy` (one sentence naming the first one's pid)
instead of interleaving its checkpoints and logs with the first one's. The kernel releases a flock
when its process ends, however it ends (SIGKILL, a crash, a power cut of a local disk): a lock file
left by a killed run is stale by construction and the next trainer simply takes it over. The pid in
the file is only for the message; the lock itself is the flock.
"""

from __future__ import annotations

import os

from anime_gan.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no flock; training there runs without the guard
    fcntl = None

LOCK_FILE = ".lock"


class RunFolderBusy(UserError):
    """Another trainer holds the run folder's lock."""


class RunLock:
    """Exclusive lock of a run folder (created if missing) for the time of a `with` block."""

    def __init__(self, directory):
        self.directory = str(directory)
        self.path = os.path.join(self.directory, LOCK_FILE)
        self.fd = None

    def acquire(self):
        os.makedirs(self.directory, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                raise RunFolderBusy(
                    f"Another trainer (pid {holder}) is already training in {self.directory}; wait for it "
                    f"to finish or stop it, or pass another --checkpoint_dir.") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def release(self):
        if self.fd is not None:
            # Empty the file first: a pid left in an unlocked file would only mislead a reader.
            os.ftruncate(self.fd, 0)
            os.close(self.fd)  # closing the last descriptor releases the flock
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False
