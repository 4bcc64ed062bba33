"""Forwarders' first connections take turns, so onvif-zeep-async parses each WSDL once.

Connections that miss its document cache at the same moment each parse a copy of their own
(some 7 MiB per WSDL): until one connection of a forwarder kind has succeeded, the others
wait; after that they connect side by side.
"""

from __future__ import annotations

import asyncio

from gateway.devices.onvif_forward import CameraServiceForwarder


async def test_first_connection_runs_alone_then_the_rest_side_by_side() -> None:
    active = 0
    peak = 0
    first_gate, rest_gate = asyncio.Event(), asyncio.Event()
    first_started, all_in = asyncio.Event(), asyncio.Event()
    calls = 0

    class Probe(CameraServiceForwarder):  # a kind of its own: nothing cached for it yet
        async def _connect(self) -> None:
            nonlocal active, peak, calls
            calls += 1
            active += 1
            peak = max(peak, active)
            try:
                if calls == 1:
                    first_started.set()
                    await first_gate.wait()
                else:
                    if active == 3:
                        all_in.set()
                    await rest_gate.wait()
            finally:
                active -= 1
            self._service = object()

    forwarders = [
        Probe(name=f"cam{i}", host="192.0.2.1", port=80, username="u", password="p")
        for i in range(4)
    ]
    tasks = [asyncio.create_task(f.connect()) for f in forwarders]
    await first_started.wait()
    for _ in range(20):  # the others would have started by now if they could
        await asyncio.sleep(0)
    assert calls == 1 and peak == 1
    first_gate.set()
    await asyncio.wait_for(all_in.wait(), 5)  # the other three at the same time
    assert peak == 3
    rest_gate.set()
    await asyncio.gather(*tasks)
    assert calls == 4
