"""``onvif-gateway config-schema``: the JSON Schema agrees with the parsers key for key, and
every example configuration in the repository validates against it."""

from __future__ import annotations

import ast
import datetime
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from gateway import config as cfgmod
from gateway.onvif.config import parse_settings
from gateway.policy.config import parse_policy
from gateway.schema import schema
from tests.test_cli import gateway_cli

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = schema()

# Every table the parsers read, each once: [[camera]], [[admin.user]], the policy's arrays
# and per-vendor and per-camera telemetry tables.
EVERY_TABLE = """
state_dir = "/tmp/state"
[server]
[vms]
username = "vms"
password = "vms-password"
[log]
[admin]
username = "admin"
password = "admin-password"
[[admin.user]]
name = "guard"
role = "viewer"
password = "guard-password"
[camera_network]
interface = "eth1"
address = "192.168.50.1"
subnets = ["192.168.50.0/24"]
[[camera]]
name = "lobby"
vendor = "hikvision"
host = "192.168.50.10"
username = "admin"
password = "camera-password"
[policy]
[[policy.firmware.minimum]]
vendor = "hikvision"
model = "DS-2CD2xx2FWD"
version = "V5.5.800"
[[policy.firmware.blocked]]
vendor = "dahua"
version = "2.800.0000016.0.R"
[[policy.allow]]
id = "CVE-2022-30563"
reason = "replaced in Q4"
expires = 2099-12-31
[policy.telemetry.vendor.dahua]
bonjour = "allowed"
[policy.telemetry.camera.lobby]
ftp = "allowed"
"""


def jsonable(value: Any) -> Any:
    """A parsed TOML document as an editor hands it to a JSON Schema validator."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    return value


def partial(node: Any) -> Any:
    """The schema for a snippet of a file: keys and values checked, nothing required."""
    if isinstance(node, dict):
        dropped = ("required", "oneOf", "not", "dependentSchemas")
        return {k: partial(v) for k, v in node.items() if k not in dropped}
    if isinstance(node, list):
        return [partial(v) for v in node]
    return node


def problems(document: dict[str, Any], *, snippet: bool = False) -> list[str]:
    validator = jsonschema.Draft202012Validator(
        partial(SCHEMA) if snippet else SCHEMA, format_checker=jsonschema.FormatChecker()
    )
    return [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(jsonable(document))
    ]


def node_for(prefix: str) -> dict[str, Any]:
    """The schema of the table a parser reads under ``prefix`` (``camera[0]``,
    ``policy.telemetry.vendor.dahua``)."""
    node: dict[str, Any] = SCHEMA
    for part in re.findall(r"\[\d+\]|[^.\[\]]+", prefix):
        if part.startswith("["):
            node = node["items"]
        elif part in node.get("properties", {}):
            node = node["properties"][part]
        else:
            node = node["additionalProperties"]
    return node


def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_every_key_a_parser_reads_is_in_the_schema_and_no_other(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    read: dict[str, set[str]] = {}
    finish = cfgmod._Reader.finish

    def recording_finish(self: cfgmod._Reader) -> None:
        read.setdefault(self.prefix, set()).update(self.used)
        finish(self)

    monkeypatch.setattr(cfgmod._Reader, "finish", recording_finish)
    config = cfgmod.loads(EVERY_TABLE, source="every.toml")
    parse_policy(config)
    # Every table was read (the document above misses none the parsers know).
    expected_tables = {
        "",
        "server",
        "vms",
        "log",
        "admin",
        "admin.user[0]",
        "camera_network",
        "camera[0]",
        "policy",
        "policy.firmware",
        "policy.firmware.minimum[0]",
        "policy.firmware.blocked[0]",
        "policy.allow[0]",
        "policy.telemetry",
        "policy.telemetry.vendor.dahua",
        "policy.telemetry.camera.lobby",
    }
    assert set(read) == expected_tables
    for prefix, keys in read.items():
        described = set(node_for(prefix)["properties"])
        if prefix == "":
            keys = keys | cfgmod.DELEGATED_SECTIONS  # read only when present
        assert keys == described, (prefix or "top level", keys ^ described)

    # [onvif] has a parser of its own: its known keys, from its source.
    source = (ROOT / "gateway" / "onvif" / "config.py").read_text()
    known = next(
        ast.literal_eval(node.value)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "known" for t in node.targets)
    )
    assert known == set(SCHEMA["properties"]["onvif"]["properties"])


def test_values_the_schema_accepts_the_parsers_accept() -> None:
    onvif = {"auth_window": 60, "discovery": False, "location": "hall-a", "nvr_port": 8100}
    text = EVERY_TABLE + "[onvif]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in onvif.items())
    text = text.replace("[server]\n", '[server]\nrtp_ports = "30000-30999"\ningest = "native"\n')
    assert problems(tomllib.loads(text)) == []
    config = cfgmod.loads(text)
    parse_settings(config)
    parse_policy(config)


@pytest.mark.parametrize(
    ("snippet", "where"),
    [
        ("[server]\nrtsp_prot = 554\n", "server"),  # a misspelt key
        ('[[camera]]\nname = "a"\nhost = "h"\nvendor = "hikvison"\n', "camera.0.vendor"),
        ("[server]\nrtsp_port = 70000\n", "server.rtsp_port"),
        ('[[camera]]\nname = "a b"\nhost = "h"\n', "camera.0.name"),
        ('[vms]\nusername = "v"\npassword = "p"\npassword_env = "P"\n', "vms"),
        ('[admin]\n[[admin.user]]\nname = "x"\nrole = "root"\n', "admin.user.0.role"),
        ('[policy.telemetry]\ncloud = "on"\n', "policy.telemetry.cloud"),
    ],
)
def test_mistakes_are_flagged(snippet: str, where: str) -> None:
    vms = '[vms]\nusername = "v"\npassword = "p"\n'
    document = tomllib.loads(snippet if "[vms]" in snippet else vms + snippet)
    found = problems(document)
    assert any(p.startswith(where) for p in found), found


def toml_blocks(path: Path) -> list[tuple[str, str]]:
    """Each ```toml block of a Markdown file or a module docstring, with where it is."""
    text = path.read_text(encoding="utf-8")
    return [
        (f"{path.relative_to(ROOT)}:{text[: m.start()].count(chr(10)) + 1}", m.group(1))
        for m in re.finditer(r"```toml\n(.*?)```", text, re.S)
    ]


def repository_examples() -> list[tuple[str, str]]:
    examples: list[tuple[str, str]] = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        examples += toml_blocks(path)
    for module in ("gateway/policy/config.py", "gateway/onvif/config.py"):
        examples += toml_blocks(ROOT / module)
    configmap = yaml.safe_load((ROOT / "deploy" / "k8s" / "configmap.yaml").read_text())
    examples.append(("deploy/k8s/configmap.yaml", configmap["data"]["gateway.toml"]))
    return examples


@pytest.mark.parametrize(("where", "text"), repository_examples(), ids=lambda v: v[:40])
def test_every_example_in_the_repository_validates(where: str, text: str) -> None:
    document = tomllib.loads(text)
    # A whole file has [server] and [vms] sections; anything less is a snippet of one.
    found = problems(document, snippet=not {"server", "vms"} <= set(document))
    assert not found, f"{where}: {found}"


async def test_the_starter_config_and_the_printed_schema(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    code, _, err = await gateway_cli(
        "init", "--output", str(path), "--state-dir", str(tmp_path / "state")
    )
    assert code == 0, err
    assert problems(tomllib.loads(path.read_text())) == []
    code, out, err = await gateway_cli("config-schema")
    assert code == 0, err
    assert json.loads(out) == SCHEMA
    code, _, err = await gateway_cli("config-schema", "--output", str(tmp_path / "s.json"))
    assert code == 0 and json.loads((tmp_path / "s.json").read_text()) == SCHEMA
