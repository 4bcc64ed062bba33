"""The dashboard's policy actions through the API: enforce's dry run shows the changes and
writes nothing, then the same enforce applies them; audit and enforce on chosen cameras;
bad requests answered 400/404. And the VMS-side addresses each camera card shows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.sim.runner import SimFleet
from tests.admin_support import AdminGateway, OpenApi, admin_gateway
from tests.test_admin_api import fetch

SPEC = OpenApi()


@pytest.fixture
async def admin(fleet: SimFleet, tmp_path: Path, vms_password: str) -> Any:
    async with admin_gateway(fleet, tmp_path, vms_password) as running:
        yield running


def planned(report: dict[str, Any]) -> dict[str, list[str]]:
    return {
        c["name"]: sorted(ch["key"] for ch in c.get("changes", []) if ch.get("planned"))
        for c in report["cameras"]
    }


async def test_enforce_dry_run_then_apply(admin: AdminGateway) -> None:
    async with admin.session() as session:

        async def post(path: str, body: Any = None, status: int = 200) -> Any:
            got, answer, _ = await fetch(
                session, "POST", admin.url + path, admin.basic(), json=body
            )
            assert got == status, f"{path} {body}: {got} {answer!r}"[:400]
            SPEC.validate(path, "post", status, answer)
            return answer

        dry = await post("/api/v1/enforce", {"dry_run": True})
        assert dry["dry_run"] is True
        plan = planned(dry)
        assert any(plan.values()), plan  # the simulated cameras come with cloud/P2P/UPnP on
        _, log, _ = await fetch(session, "GET", admin.url + "/api/v1/audit-log", admin.basic())
        assert log["entries"] == []  # a dry run writes nothing
        again = await post("/api/v1/enforce", {"dry_run": True, "cameras": ["hik1"]})
        assert [c["name"] for c in again["cameras"]] == ["hik1"]
        assert planned(again)["hik1"] == plan["hik1"]  # nothing changed in between

        applied = await post("/api/v1/enforce", {"dry_run": False})
        assert "dry_run" not in applied
        done = {
            c["name"]: sorted(ch["key"] for ch in c.get("changes", []) if ch["verified"])
            for c in applied["cameras"]
        }
        assert done == plan
        after = await post("/api/v1/enforce", {"dry_run": True})
        assert not any(planned(after).values())

        audit = await post("/api/v1/audit", {"cameras": ["dahua1"]})
        assert [c["name"] for c in audit["cameras"]] == ["dahua1"]
        await post("/api/v1/audit", {"dry_run": True}, status=400)
        await post("/api/v1/enforce", {"dry_run": "yes"}, status=400)
        await post("/api/v1/enforce", {"cameras": "hik1"}, status=400)
        await post("/api/v1/enforce", {"everything": True}, status=400)
        await post("/api/v1/enforce", {"cameras": ["nope"]}, status=404)
        got, _, _ = await fetch(
            session, "POST", admin.url + "/api/v1/enforce", admin.basic(), data=b"{not json"
        )
        assert got == 400

    # The trail tells the dry runs from the run that changed the cameras.
    runs = [e["detail"] for e in admin.trail() if e["action"] == "enforce" and e["result"] == "ok"]
    assert [bool(d.get("dry_run")) for d in runs] == [True, True, False, True], runs


async def test_cards_carry_the_vms_side_addresses(admin: AdminGateway) -> None:
    async with admin.session() as session:
        _, body, _ = await fetch(session, "GET", admin.url + "/api/v1/cameras", admin.basic())
    server = admin.gateway.config.server
    hik = next(c for c in body["cameras"] if c["name"] == "hik1")
    assert hik["rtsp_urls"] == {
        "main": f"rtsp://127.0.0.1:{server.rtsp_port}/hik1/main",
        "sub": f"rtsp://127.0.0.1:{server.rtsp_port}/hik1/sub",
    }
    assert hik["onvif_url"] == f"http://127.0.0.1:{hik['onvif_port']}/onvif/device_service"
    cam = admin.gateway.config.camera("hik1")
    assert cam.password.reveal() not in str(body)
