"""Files the gateway writes whole: configuration, secrets, caches.

Written to a temporary file beside the target, synced, then renamed over it, so a reader
(or a full disk, or a crash) sees the old file or the new one, never half of either. The
mode is set on the open file, so the umask never widens it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

SERVICE_GROUP = "onvif-gateway"


def service_gid() -> int | None:
    """The gid of the service's group when the production install created it."""
    import grp

    try:
        return grp.getgrnam(SERVICE_GROUP).gr_gid
    except KeyError:
        return None


def state_owner(directory: Path) -> tuple[int, int]:
    """Who files created in ``directory`` should belong to: when root writes into a directory
    another account owns (an operator's sudo in the service's state directory), that account,
    so the service can still use them; otherwise (-1, -1), nobody else."""
    if os.geteuid() != 0:
        return -1, -1
    st = directory.stat()
    return (st.st_uid, st.st_gid) if (st.st_uid, st.st_gid) != (0, 0) else (-1, -1)


def write_atomically(
    path: Path, data: bytes, *, mode: int = 0o600, uid: int = -1, gid: int = -1
) -> int:
    """Replace ``path`` with ``data`` in ``mode``, owned by ``uid``/``gid`` where given (-1
    keeps this process's); return the mode it got. When the file cannot be given to them,
    its group and other bits are dropped, so it never becomes readable by accounts it was not
    meant for."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if (uid, gid) != (-1, -1):
            try:
                os.fchown(fd, uid, gid)
            except PermissionError:
                mode &= ~0o077
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return mode
