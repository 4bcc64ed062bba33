"""Debian's Prometheus scrapes the gateway over HTTPS with deploy/prometheus/prometheus.yml as
shipped (scheme https, tls_config.ca_file, basic_auth from a password file) pointed at a test
gateway: the generated certificate as the CA file and a viewer account given only by its
salted hash. ``promtool query instant`` then reads what Prometheus scraped."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.passwords import hash_password
from gateway.sim.runner import SimFleet
from tests.admin_support import admin_gateway
from tests.conftest import free_port, require, run_tool

pytestmark = pytest.mark.slow

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"


async def test_prometheus_scrapes_over_https_with_the_ca_file(
    fleet: SimFleet, tmp_path: Path, vms_password: str
) -> None:
    require("prometheus", "promtool")
    password = "scrape-" + vms_password
    account = (
        f'\n[[admin.user]]\nname = "prometheus"\nrole = "viewer"\n'
        f'password_hash = "{hash_password(password, ln=12)}"\n'
    )
    async with admin_gateway(fleet, tmp_path, vms_password, extra_admin=account) as admin:
        assert admin.ca is not None
        config: dict[str, Any] = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
        shutil.copy(DEPLOY / "alerts.yml", tmp_path / "alerts.yml")
        (tmp_path / "prometheus.password").write_text(password + "\n")
        config["global"]["scrape_interval"] = "1s"
        job = config["scrape_configs"][0]
        assert job["scheme"] == "https" and job["basic_auth"]["username"] == "prometheus"
        job["tls_config"]["ca_file"] = str(admin.ca)
        job["basic_auth"]["password_file"] = str(tmp_path / "prometheus.password")
        job["scrape_interval"] = "1s"
        del job["file_sd_configs"]
        target = admin.url.removeprefix("https://")
        job["static_configs"] = [{"targets": [target], "labels": {"site": "test"}}]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        code, out, err = await run_tool(
            "promtool", "check", "config", str(tmp_path / "prometheus.yml")
        )
        assert code == 0, out + err
        port = free_port()
        server = await asyncio.create_subprocess_exec(
            "prometheus",
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            results: dict[str, Any] = {}
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            query = '{__name__=~"up|onvif_gateway_stream_up", job="onvif-gateway"}'
            while loop.time() < deadline:
                code, out, _ = await run_tool(
                    "promtool", "query", "instant", "-o", "json", url, query
                )
                if code == 0 and out.strip():
                    results = {
                        f"{r['metric']['__name__']}/{r['metric'].get('camera', '')}": r["value"][1]
                        for r in json.loads(out)
                    }
                    if results.get("up/") == "1" and "onvif_gateway_stream_up/hik1" in results:
                        break
                if server.returncode is not None:
                    break
                await asyncio.sleep(0.5)  # Prometheus scrapes on its own schedule (1 s)
            assert results.get("up/") == "1", results
            assert results["onvif_gateway_stream_up/hik1"] == "1", results
        finally:
            server.terminate()
            _, err_bytes = await asyncio.wait_for(server.communicate(), 30)
        assert "x509" not in err_bytes.decode(), err_bytes.decode()[-2000:]
        # Each scrape authenticated with the viewer account; none failed.
        assert not [e for e in admin.trail() if e["action"] == "sign-in-failed"]
