"""A configuration reload keeps a camera's viewers when its streams stay the same (only its
credentials or a setting other services use changed), and a service failing to follow a
reload is logged, not lost."""

from __future__ import annotations

import dataclasses
import gc
import logging
import weakref

import pytest

from gateway.config_reader import Secret
from gateway.rtsp.client import RtspReader
from gateway.runtime import Gateway
from tests.conftest import stream_url, wait_for


async def test_a_settings_or_credentials_change_keeps_the_viewers(
    gateway: Gateway, vms_password: str
) -> None:
    reader = RtspReader(stream_url(gateway, "hik1", "main", vms_password))
    await reader.start()
    try:
        await reader.wait_frames(5, timeout=15, media="video")
        hub = gateway.hub("hik1", "main")
        cams = list(gateway.config.cameras)
        hik = next(i for i, c in enumerate(cams) if c.name == "hik1")
        cams[hik] = dataclasses.replace(cams[hik], ptz="disabled")
        changes = await gateway.reload(dataclasses.replace(gateway.config, cameras=cams))
        assert changes["changed"] == ["hik1"]
        assert gateway.hub("hik1", "main") is hub  # the same stream, the same viewers
        received = reader.tracks[0].frames
        await reader.wait_frames(received + 10, timeout=10, media="video")
        # New credentials reconnect the camera under the viewer: it keeps receiving.
        sessions = hub.upstream_sessions if hub else 0
        same = cams[hik].password.reveal()
        cams[hik] = dataclasses.replace(cams[hik], password=Secret(same + " "))
        await gateway.reload(dataclasses.replace(gateway.config, cameras=cams))
        cams[hik] = dataclasses.replace(cams[hik], password=Secret(same))
        await gateway.reload(dataclasses.replace(gateway.config, cameras=cams))
        assert gateway.hub("hik1", "main") is hub and hub is not None
        await wait_for(lambda: hub.upstream_sessions > sessions, 20, "the camera reconnected anew")
        received = reader.tracks[0].frames
        await reader.wait_frames(received + 10, timeout=20, media="video")
    finally:
        await reader.close()


async def test_a_failing_service_is_logged_and_the_others_follow(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    followed = []

    async def broken(config: object) -> None:
        raise RuntimeError("cannot apply")

    async def fine(config: object) -> None:
        followed.append(config)

    gateway.reload_hooks[:] = [broken, fine]
    with caplog.at_level(logging.INFO, logger="gateway"):
        changes = await gateway.reload(gateway.config)
    assert followed == [gateway.config]
    assert changes["failed"] and "broken" in changes["failed"][0]
    assert any(
        r.levelno == logging.ERROR and "failed to apply" in r.getMessage() for r in caplog.records
    )


async def test_a_removed_camera_frees_its_streams_buffers(
    gateway: Gateway, vms_password: str
) -> None:
    hub = gateway.hub("hik1", "main")
    assert hub is not None
    assert await hub.wait_keyframe(15)
    assert hub.gop_cache_size > 0
    ingest = gateway.cameras["hik1"].ingests["main"]
    cams = [c for c in gateway.config.cameras if c.name != "hik1"]
    changes = await gateway.reload(dataclasses.replace(gateway.config, cameras=cams))
    assert changes["removed"] == ["hik1"]
    # The cached frames go at once, not when (or if) the hub object is collected.
    assert hub.gop_cache_size == 0 and not hub.has_keyframe and hub.upstream is None
    gone = weakref.ref(hub)
    del hub
    # The ingest's session ends (a PyAV reader thread between packets, a native session
    # after its TEARDOWN); then nothing is left.
    await ingest.wait_stopped(15)
    del ingest
    gc.collect()
    assert gone() is None, [type(r).__name__ for r in gc.get_referrers(gone())]
