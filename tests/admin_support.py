"""Shared helpers for the admin API, dashboard, metrics and log tests: a gateway with its
services and admin API (HTTPS with the generated certificate unless ``tls=False``) in front
of the simulated fleet, and the OpenAPI document as a response validator."""

from __future__ import annotations

import base64
import contextlib
import secrets
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from gateway import config as cfgmod
from gateway.admin.tls import generated_paths
from gateway.admin.trail import AdminTrail
from gateway.runtime import Gateway
from gateway.sim.runner import SimFleet
from gateway.store import Store
from tests.conftest import free_port, free_ports, wait_for


@dataclass
class AdminGateway:
    gateway: Gateway
    config_path: Path
    url: str
    username: str
    password: str
    vms_password: str
    ca: Path | None = None  # the generated certificate, when the API is on HTTPS

    def basic(self, password: str | None = None, username: str | None = None) -> dict[str, str]:
        token = f"{username or self.username}:{password or self.password}".encode()
        return {"Authorization": "Basic " + base64.b64encode(token).decode()}

    def ssl_context(self) -> ssl.SSLContext | bool:
        """Trusts the generated certificate, with host name checking (it names 127.0.0.1)."""
        if self.ca is None:
            return True
        return ssl.create_default_context(cafile=str(self.ca))

    def trail(self) -> list[dict[str, Any]]:
        """The administration audit trail as the gateway stored it, oldest first."""
        store = Store.in_state_dir(self.gateway.config.state_dir)
        try:
            return [e.to_json() for e in AdminTrail(store).entries(10_000)]
        finally:
            store.close()

    def session(self, **kwargs: Any) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.ssl_context()), **kwargs
        )


def admin_config_text(
    fleet: SimFleet,
    tmp_path: Path,
    vms_password: str,
    admin_password: str,
    admin_port: int,
    *,
    tls: bool = True,
) -> str:
    text = fleet.gateway_config(
        bind="127.0.0.1",
        rtsp_port=free_port(),
        vms_user="vms",
        vms_password=vms_password,
        state_dir=str(tmp_path / "state"),
        admin_password=admin_password,
        admin_port=admin_port,
        onvif_base_port=free_ports(len(fleet.cameras))[0],
        admin_tls=tls,
    )
    # Loopback cameras have no [camera_network]: the policy names the NTP server itself.
    return text + '\n[policy.telemetry]\nntp_server = "127.0.0.1"\n'


@contextlib.asynccontextmanager
async def admin_gateway(
    fleet: SimFleet,
    tmp_path: Path,
    vms_password: str,
    *,
    wait_pictures: bool = True,
    tls: bool = True,
    extra_admin: str = "",
) -> AsyncIterator[AdminGateway]:
    """The gateway with every service on, started from a file (so reload can re-read it).
    ``extra_admin``: TOML appended to the file, e.g. ``[[admin.user]]`` blocks."""
    admin_password = "adm-" + secrets.token_urlsafe(12)
    port = free_port()
    path = tmp_path / "gateway.toml"
    text = admin_config_text(fleet, tmp_path, vms_password, admin_password, port, tls=tls)
    path.write_text(text + extra_admin)
    gw = Gateway(cfgmod.load(path))
    await gw.start()
    try:
        if wait_pictures:
            await wait_for(
                lambda: all(hub.gop for cam in gw.cameras.values() for hub in cam.hubs.values()),
                30,
                "a keyframe on every stream",
            )
        yield AdminGateway(
            gw,
            path,
            f"{'https' if tls else 'http'}://127.0.0.1:{port}",
            "admin",
            admin_password,
            vms_password,
            generated_paths(tmp_path / "state")[0] if tls else None,
        )
    finally:
        await gw.stop()


class OpenApi:
    """Response validation against gateway/admin/openapi.yaml (JSON Schema 2020-12)."""

    URI = "urn:onvif-gateway:openapi"

    def __init__(self) -> None:
        text = (resources.files("gateway.admin") / "openapi.yaml").read_text(encoding="utf-8")
        self.document: dict[str, Any] = yaml.safe_load(text)
        resource = Resource.from_contents(self.document, default_specification=DRAFT202012)
        self.registry: Registry[Any] = Registry().with_resource(self.URI, resource)

    def operations(self) -> list[tuple[str, str, dict[str, Any]]]:
        out = []
        for path, item in self.document["paths"].items():
            for method, operation in item.items():
                out.append((path, method, operation))
        return out

    def response_schema(self, path: str, method: str, status: int) -> dict[str, Any] | None:
        responses = self.document["paths"][path][method.lower()]["responses"]
        assert str(status) in responses, f"{method} {path} answered {status}, not documented"
        response = responses[str(status)]
        if "$ref" in response:
            response = self.resolve(response["$ref"])
        content = response.get("content", {}).get("application/json")
        return content["schema"] if content else None

    def resolve(self, ref: str) -> dict[str, Any]:
        node: Any = self.document
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
        return node

    def validate(self, path: str, method: str, status: int, body: Any) -> None:
        schema = self.response_schema(path, method, status)
        assert schema is not None, f"{method} {path} {status} has no JSON schema"
        ref_schema = {"$ref": self.URI + "#" + self._pointer(path, method, status)}
        validator = jsonschema.Draft202012Validator(ref_schema, registry=self.registry)
        errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
        assert not errors, f"{method} {path} {status}: " + "; ".join(
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:5]
        )

    def _pointer(self, path: str, method: str, status: int) -> str:
        escaped = path.replace("~", "~0").replace("/", "~1")
        response = self.document["paths"][path][method.lower()]["responses"][str(status)]
        if "$ref" in response:
            return response["$ref"].removeprefix("#") + "/content/application~1json/schema"
        return (
            f"/paths/{escaped}/{method.lower()}/responses/{status}/content/application~1json/schema"
        )
