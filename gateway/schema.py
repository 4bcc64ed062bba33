"""The configuration file as a JSON Schema (draft 2020-12), for TOML editors' completion
and validation (Taplo / Even Better TOML: ``#:schema ./gateway.schema.json`` on the first
line, or a ``[[rule]]`` in ``.taplo.toml``). ``onvif-gateway config-schema`` prints it.

The schema describes the keys and their types, ranges and choices; what needs the whole
file (port clashes, a camera named in ``[policy]``, files and environment variables behind
``*_file``/``*_env``) stays for ``onvif-gateway check``. ``tests/test_config_schema.py``
fails when a key is read by ``gateway.config`` (or the ``[policy]``/``[onvif]`` parsers) and
missing here, or the other way round, and validates every example configuration in the
repository against it.
"""

from __future__ import annotations

import json
from typing import Any

from gateway import __version__
from gateway.config import (
    ADMIN_ROLES,
    CAMERA_NAME_RE,
    INGESTS,
    MAX_WORKERS,
    VENDORS,
    WORKERS_AUTO,
)
from gateway.fleet import FROM_HOSTNAME, MAX_SHARDS
from gateway.policy.telemetry import FEATURES, MODES

SCHEMA_ID = "https://onvif-gateway.invalid/schema/gateway.schema.json"

Schema = dict[str, Any]


def _port(description: str) -> Schema:
    return {"type": "integer", "minimum": 1, "maximum": 65535, "description": description}


def _string(description: str, **extra: Any) -> Schema:
    return {"type": "string", "description": description, **extra}


def _boolean(description: str) -> Schema:
    return {"type": "boolean", "description": description}


def _number(description: str, **extra: Any) -> Schema:
    return {"type": "number", "description": description, **extra}


def _choice(description: str, *choices: str) -> Schema:
    return {"enum": list(choices), "description": description}


def _table(properties: Schema, description: str, **extra: Any) -> Schema:
    return {
        "type": "object",
        "description": description,
        "properties": properties,
        "additionalProperties": False,
        **extra,
    }


def _secret(name: str, what: str) -> Schema:
    """``name``, ``name_env`` and ``name_file``: one way of giving ``what``."""
    return {
        name: _string(f"{what}, inline", minLength=1),
        f"{name}_env": _string(f"{what}: the environment variable holding it", minLength=1),
        f"{name}_file": _string(
            f"{what}: a file holding it (${{VAR}} expanded, e.g. ${{CREDENTIALS_DIRECTORY}})",
            minLength=1,
        ),
    }


def _bind(description: str) -> Schema:
    """An IP address, or ``${VAR}`` naming the environment variable holding one."""
    return {
        "type": "string",
        "description": f"{description} (or ${{VAR}}: from the environment)",
        "anyOf": [{"format": "ip"}, {"pattern": r"^\$\{[A-Za-z_][A-Za-z0-9_]*\}$"}],
    }


def _one_of(name: str) -> Schema:
    """Exactly one of ``name``, ``name_env``, ``name_file``."""
    return {"oneOf": [{"required": [key]} for key in (name, f"{name}_env", f"{name}_file")]}


def _at_most_one(name: str) -> Schema:
    keys = (name, f"{name}_env", f"{name}_file")
    pairs = [[a, b] for i, a in enumerate(keys) for b in keys[i + 1 :]]
    return {"not": {"anyOf": [{"required": pair} for pair in pairs]}}


SERVER = _table(
    {
        "bind": _bind("the gateway's address on the VMS network"),
        "rtsp_port": _port("RTSP port: rtsp://bind:rtsp_port/<camera>/main and /sub"),
        "onvif_base_port": _port("camera k (0-based) is the ONVIF device on this port + k"),
        "discovery_port": _port("WS-Discovery's UDP port (3702 is what a VMS probes)"),
        "session_timeout": {
            "type": "integer",
            "exclusiveMinimum": 0,
            "description": "seconds a silent RTSP session lives",
        },
        "workers": {
            "oneOf": [
                {"type": "integer", "minimum": 1, "maximum": MAX_WORKERS},
                {"const": WORKERS_AUTO},
            ],
            "description": "worker processes, each owning a shard of the cameras; "
            '"auto": one per usable core, at most one per camera, one with RTSPS',
        },
        "client_send_budget": {
            "type": "integer",
            "minimum": 65536,
            "description": "bytes queued for a client before it skips to the next keyframe",
        },
        "client_stall_timeout": _number(
            "seconds of backlog before a client is disconnected", exclusiveMinimum=0
        ),
        "nvr_mode": _boolean("also one ONVIF NVR device with every camera as a channel"),
        "ingest": _choice(
            "how camera streams are read: auto (default; native, PyAV where it cannot), "
            "native or pyav",
            *INGESTS,
        ),
        "advertise_host": _string("host the VMS reaches the gateway by (NAT)"),
        "rtsps_port": _port("RTSPS (RTSP over TLS) for VMSs that support it; off when absent"),
        "prefer_rtsps": _boolean("GetStreamUri answers rtsps:// even when not asked for it"),
        "onvif_https_offset": {
            "type": "integer",
            "minimum": 0,
            "maximum": 65534,
            "description": "ONVIF devices also over HTTPS on their port + this (0: same port)",
        },
        "onvif_http": _boolean("ONVIF over plain HTTP (false: HTTPS only)"),
        "tls_cert": _string("PEM certificate chain towards the VMS (default: generated)"),
        "tls_key": _string("PEM private key of tls_cert"),
        "rtp_ports": _string(
            'UDP ports for RTP/RTCP to VMS clients, e.g. "30000-30999" (default: ephemeral)',
            pattern=r"^\s*\d{4,5}\s*-\s*\d{4,5}\s*$",
        ),
        "request_timeout": _number(
            "seconds a request's headers and body may take (docs/security.md)",
            exclusiveMinimum=0,
        ),
        "idle_timeout": _number(
            "seconds a connection without a playing session may stay idle", exclusiveMinimum=0
        ),
        "connections_per_address": {
            "type": "integer",
            "minimum": 0,
            "description": "connections one source address may hold per listener (0: derived)",
        },
        "discovery_allow": {
            "type": "array",
            "items": {"type": "string"},
            "description": "networks whose unicast WS-Discovery probes are answered "
            "(default: the bind address's subnet)",
        },
    },
    "the gateway's VMS side",
)

VMS = _table(
    {
        "username": _string("the user name every VMS signs in with", minLength=1),
        **_secret("password", "the VMS password"),
        "allow_basic": _boolean("accept RTSP Basic authentication (Digest otherwise)"),
    },
    "the only credentials a VMS ever sees",
    required=["username"],
    **_one_of("password"),
)

CAMERA = _table(
    {
        "name": _string(
            "the camera's name: its stream path and ONVIF device",
            pattern=CAMERA_NAME_RE.pattern,
        ),
        "vendor": _choice("the camera's vendor (generic needs main_url)", *VENDORS),
        "host": _string("address or host name on the camera network", minLength=1),
        "username": _string("the camera's user name"),
        **_secret("password", "the camera's password"),
        "rtsp_port": _port("the camera's RTSP port"),
        "http_port": _port("the camera's HTTP port (ISAPI, CGI, ONVIF)"),
        "channel": {"type": "integer", "minimum": 1, "maximum": 256, "description": "channel"},
        "main_url": _string("RTSP URL of the main stream", pattern=r"^rtsps?://"),
        "sub_url": _string("RTSP URL of the sub stream", pattern=r"^rtsps?://"),
        "substream": _boolean("serve the sub stream too"),
        "on_demand": _boolean("pull the camera only while a client watches"),
        "transport": _choice("RTSP transport towards the camera", "tcp", "udp"),
        "onvif_port": _port("this camera's ONVIF device port (default base port + index)"),
        "bind": _string("the camera's own VMS-side address (ONVIF, RTSP, discovery)", format="ip"),
        "ptz": _choice("PTZ forwarded to the camera", "enabled", "no-presets", "disabled"),
        "imaging": _choice("ONVIF Imaging forwarded", "read-only", "enabled", "disabled"),
        "enabled": _boolean("false: keep the block, serve nothing"),
        "ingest": _choice("how this camera's streams are read ([server] ingest)", *INGESTS),
        "model": _string("model, as known before the first inventory"),
        "firmware": _string("firmware version, as known before the first inventory"),
        "serial": _string("serial number"),
        "location": _string("where the camera is"),
        "mac": _string("MAC address"),
    },
    "one camera",
    required=["name", "host"],
    dependentSchemas={"username": _one_of("password")},
    **_at_most_one("password"),
)

ADMIN_USER = _table(
    {
        "name": _string("the account's name", minLength=1),
        "role": _choice("what the account may do", *ADMIN_ROLES),
        **_secret("password", "the account's password"),
        **_secret("password_hash", "the password's scrypt hash from 'onvif-gateway passwd'"),
    },
    "an admin API account",
    required=["name", "role"],
)

ADMIN = _table(
    {
        "bind": _bind("address of the admin API, dashboard and /metrics"),
        "port": _port("port of the admin API"),
        "tls": _boolean("HTTPS (default); false only behind a local TLS proxy"),
        "tls_cert": _string("PEM certificate chain (default: a generated one)"),
        "tls_key": _string("PEM private key of tls_cert"),
        "username": _string("the single account of older files (role admin)", minLength=1),
        **_secret("password", "that account's password"),
        "user": {"type": "array", "items": ADMIN_USER, "description": "[[admin.user]] accounts"},
    },
    "admin API, dashboard and /metrics",
)

CAMERA_NETWORK = _table(
    {
        "interface": _string("the gateway's interface on the camera network"),
        "address": _string("the gateway's address there (DNS sinkhole, NTP)", format="ip"),
        "subnets": {
            "type": "array",
            "items": {"type": "string"},
            "minItems": 1,
            "description": 'the camera networks, e.g. ["192.168.50.0/24"]',
        },
        "dns_sinkhole": _boolean("answer the cameras' DNS"),
        "ntp_server": _boolean("answer the cameras' NTP with the gateway's clock"),
        "allow": {
            "type": "array",
            "items": {"type": "string"},
            "description": "addresses or networks the cameras may still reach",
        },
        "dns_local": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "description": "names the sinkhole answers with these addresses",
        },
    },
    "the camera side: egress isolation",
    required=["interface", "address", "subnets"],
)

LOG = _table(
    {
        "level": _choice("log level", "debug", "info", "warning", "error"),
        "json": _boolean("one JSON object per line"),
    },
    "logging",
)

_MODES = _table(
    {feature: _choice(f"{feature}: wanted state", *MODES[feature]) for feature in FEATURES},
    "feature modes",
)
_RULE_KEYS = {
    "vendor": _choice("vendor", "hikvision", "dahua"),
    "model": _string("model pattern: X a wildcard digit, * any text"),
    "version": _string("firmware version"),
    "reason": _string("why"),
}
_MINIMUM = _table(
    _RULE_KEYS,
    "older firmware on matching models is a finding",
    required=["vendor", "model", "version"],
)
_BLOCKED = _table(
    _RULE_KEYS,
    "exactly this version is a finding (model default: any)",
    required=["vendor", "version"],
)

POLICY = _table(
    {
        "drift_check_interval": _number("seconds between drift checks; 0 never", minimum=0),
        "auto_enforce": _boolean("re-apply the telemetry policy when drift is found"),
        "request_timeout": _number("seconds per camera call", exclusiveMinimum=0, maximum=300),
        "firmware": _table(
            {
                "minimum": {"type": "array", "items": _MINIMUM},
                "blocked": {"type": "array", "items": _BLOCKED},
            },
            "firmware site rules",
        ),
        "allow": {
            "type": "array",
            "description": "accepted risks, until a date",
            "items": _table(
                {
                    "id": _string("a CVE id, firmware.minimum, or a setting key"),
                    "reason": _string("why the risk is accepted"),
                    "expires": _string("the date the acceptance ends", format="date"),
                    "cameras": {"type": "array", "items": {"type": "string"}},
                    "models": {"type": "array", "items": {"type": "string"}},
                },
                "an accepted risk",
                required=["id", "reason", "expires"],
            ),
        },
        "telemetry": _table(
            {
                **_MODES["properties"],
                "ntp_server": _string("NTP server the cameras are set to"),
                "vendor": {
                    "type": "object",
                    "propertyNames": {"enum": list(VENDORS)},
                    "additionalProperties": _MODES,
                },
                "camera": {"type": "object", "additionalProperties": _MODES},
            },
            "telemetry features wanted off or allowed",
        ),
    },
    "firmware and telemetry policy (see gateway/policy/config.py)",
)

ONVIF = _table(
    {
        "auth_window": _number("seconds a UsernameToken/nonce stays valid", minimum=1),
        "discovery": _boolean("WS-Discovery responder on the VMS side"),
        "location": _string(
            "onvif://www.onvif.org/location/ scope", pattern=r"^[A-Za-z0-9._~%-]{0,64}$"
        ),
        "nvr_port": _port("port of the NVR-mode device"),
        "max_subscriptions": {"type": "integer", "minimum": 1, "maximum": 1024},
    },
    "the virtual ONVIF devices",
)

FLEET = _table(
    {
        "shards": {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_SHARDS,
            "description": "gateways the site's cameras are split across",
        },
        "shard": {
            "oneOf": [
                {"type": "integer", "minimum": 0, "maximum": MAX_SHARDS - 1},
                {"const": FROM_HOSTNAME},
            ],
            "description": "this gateway's shard: 0..shards-1, or the trailing -K of $HOSTNAME",
        },
        **_secret("identity_secret", "the fleet's shared ONVIF identity secret"),
    },
    "a site split across several gateways (docs/fleet.md)",
    required=["shards", "shard"],
    **_at_most_one("identity_secret"),
)

_RESERVED = {"type": "object", "description": "kept for other subsystems; not validated here"}


def schema() -> Schema:
    """The JSON Schema of a configuration file."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": f"onvif-gateway configuration ({__version__})",
        "type": "object",
        "additionalProperties": False,
        "required": ["vms"],
        "properties": {
            "state_dir": _string("state directory (SQLite, certificate)"),
            "server": SERVER,
            "vms": VMS,
            "camera": {"type": "array", "items": CAMERA, "description": "[[camera]] blocks"},
            "admin": ADMIN,
            "camera_network": CAMERA_NETWORK,
            "log": LOG,
            "policy": POLICY,
            "onvif": ONVIF,
            "fleet": FLEET,
            "telemetry": _RESERVED,
            "firmware": _RESERVED,
            "sim": _RESERVED,
        },
    }


def schema_text() -> str:
    return json.dumps(schema(), indent=2) + "\n"
