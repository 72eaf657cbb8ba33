"""Files only the service user can read: DATA_DIR holds the SQLite store (with every
operator's Digest HA1), the document store (every module hash) and the secret key;
LOG_DIR holds the logs. Directories are 0700 and files 0600. `run.py` also sets umask
077 at start, so whatever is created later is private too."""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_UMASK = 0o077


def make_private(root: Path) -> None:
    """`root` and everything under it: directories 0700, files 0600 (sockets and
    other special files too). Symlinks are not followed."""
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    for current, dirs, files in os.walk(root):
        for name in dirs:
            path = os.path.join(current, name)
            if not os.path.islink(path):
                os.chmod(path, 0o700)
        for name in files:
            path = os.path.join(current, name)
            mode = os.lstat(path).st_mode
            if not stat.S_ISLNK(mode) and stat.S_IMODE(mode) & 0o077:
                os.chmod(path, 0o600)
