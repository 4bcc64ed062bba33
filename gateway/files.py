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


def write_atomically(path: Path, data: bytes, *, mode: int = 0o600, gid: int | None = None) -> int:
    """Replace ``path`` with ``data``; return the mode it got. With ``gid``, the file is
    given to that group when this process may (root, or a member), and ``mode`` keeps its
    group bits; otherwise the group bits are dropped, so a secret never becomes readable by
    a group it was not meant for."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if gid is None:
            mode &= ~0o070
        else:
            try:
                os.fchown(fd, -1, gid)
            except PermissionError:
                mode &= ~0o070
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
