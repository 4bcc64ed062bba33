"""The camera client for a configured camera: the one place that knows every vendor client.

It sits apart from :mod:`gateway.devices.base` because it imports the vendor clients, and they
import ``base`` for the types they share.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.devices.errors import DeviceUnsupportedError

if TYPE_CHECKING:
    from gateway.config import CameraConfig
    from gateway.devices.base import CameraClient


def client_for(camera: CameraConfig, *, timeout: float = 10.0) -> CameraClient:
    """The management client for ``camera`` (the password is revealed only here).

    Hikvision and Dahua: the vendor API, with the camera's ONVIF service adding to the
    inventory; generic cameras: ONVIF alone (read-only). ONVIF is asked on ``onvif_port``,
    else on ``http_port``.
    """
    # Imported here: the vendor clients are loaded only by a gateway that audits cameras.
    from gateway.devices.dahua import DahuaClient
    from gateway.devices.hikvision import HikvisionClient
    from gateway.devices.http import CameraHttp
    from gateway.devices.onvif_client import OnvifClient, WithOnvif

    onvif = OnvifClient(
        camera.name,
        camera.host,
        camera.onvif_port or camera.http_port,
        camera.username,
        camera.password.reveal(),
        timeout=timeout,
    )
    if camera.vendor == "generic":
        return onvif
    http = CameraHttp(
        camera.name,
        camera.host,
        camera.http_port,
        camera.username,
        camera.password.reveal(),
        timeout=timeout,
    )
    if camera.vendor == "hikvision":
        return WithOnvif(HikvisionClient(http), onvif)
    if camera.vendor == "dahua":
        return WithOnvif(DahuaClient(http, camera.username, camera.password.reveal()), onvif)
    raise DeviceUnsupportedError(
        camera.name, f"vendor {camera.vendor!r} has no management API the gateway can audit"
    )
