"""Per-camera errors of the device clients.

Every failure talking to a camera becomes a :class:`DeviceError` naming the camera and what
happened, so one camera's fault is reported against that camera and never stops the others.
Messages never contain credentials: they are built from the camera name, the request path
and what the camera did, never from URLs with userinfo or from request headers.
"""

from __future__ import annotations


class DeviceError(Exception):
    """A camera could not be queried or changed. ``kind`` is a stable short code."""

    kind = "error"

    def __init__(self, camera: str, message: str) -> None:
        self.camera = camera
        self.message = message
        super().__init__(f"camera {camera}: {message}")


class DeviceAuthError(DeviceError):
    """The camera refused the configured credentials (HTTP 401 after authenticating)."""

    kind = "unauthorized"


class DeviceTimeoutError(DeviceError):
    """The camera accepted the connection (or not) but did not answer in time."""

    kind = "timeout"


class DeviceConnectionError(DeviceError):
    """The connection could not be made or was closed/reset by the camera."""

    kind = "connection"


class DeviceProtocolError(DeviceError):
    """The camera answered, but not with what its API defines (garbage, HTML, bad status)."""

    kind = "protocol"


class DeviceUnsupportedError(DeviceError):
    """The camera does not offer the requested API or setting (HTTP 404, unknown method)."""

    kind = "unsupported"
