"""Home Assistant's ONVIF set-up calls (onvif-zeep-async) against one device, as a process
of its own (so it can run in a network namespace); prints one JSON line.

    python zeep_ha_client.py HOST PORT USER PASSWORD
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any


async def session(host: str, port: int, user: str, password: str) -> dict[str, Any]:
    from onvif import ONVIFCamera

    cam = ONVIFCamera(host, port, user, password, no_cache=True)
    out: dict[str, Any] = {}
    try:
        await cam.update_xaddrs()
        out["xaddrs"] = sorted(cam.xaddrs.values())
        dev = await cam.create_devicemgmt_service()
        info = await dev.GetDeviceInformation()
        out["serial"] = info.SerialNumber
        interfaces = await dev.GetNetworkInterfaces()
        out["mac"] = interfaces[0].Info.HwAddress
        media = await cam.create_media_service()
        profiles = await media.GetProfiles()
        out["profiles"] = [p.token for p in profiles]
        setup = {"Stream": "RTP-Unicast", "Transport": {"Protocol": "RTSP"}}
        uri = await media.GetStreamUri({"StreamSetup": setup, "ProfileToken": profiles[0].token})
        out["stream_uri"] = uri.Uri
        snapshot = await cam.get_snapshot(profiles[0].token)
        out["snapshot_jpeg"] = bool(snapshot) and snapshot[:2] == b"\xff\xd8"
        out["ok"] = True
    except Exception as exc:  # reported to the test, which fails with it
        out.update(ok=False, error=f"{type(exc).__name__}: {exc}")
    finally:
        await cam.close()
    return out


def main() -> int:
    host, port, user, password = sys.argv[1:5]
    print(json.dumps(asyncio.run(session(host, int(port), user, password))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
