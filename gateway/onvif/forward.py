"""Where the PTZ and Imaging services found the camera-side forwarder before it moved to
:mod:`gateway.devices.onvif_forward` (kept until they import it from there)."""

from gateway.devices.onvif_forward import CameraServiceForwarder, camera_lacks

__all__ = ["CameraServiceForwarder", "camera_lacks"]
