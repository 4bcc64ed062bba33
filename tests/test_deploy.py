"""Deployment files, validated offline: the systemd unit (systemd-analyze verify and
security), the Containerfile's instructions, the Kubernetes manifests (kubernetes-validate,
cross-checked with the configuration they carry) and the Prometheus scrape config and alert
rules (promtool check/test)."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import config as cfgmod
from gateway.cli import build_parser
from tests.conftest import require, run_tool

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"


def unit_directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def cli_accepts(argv: list[str]) -> None:
    """The command line parses with the real CLI (an unknown option exits 2)."""
    args = build_parser().parse_args(argv)
    assert getattr(args, "handler", None) is not None, argv


async def test_systemd_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    require("systemd-analyze")
    text = (DEPLOY / "onvif-gateway.service").read_text()
    d = unit_directives(text)
    assert d["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE CAP_NET_ADMIN"]
    assert d["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE CAP_NET_ADMIN"]
    assert d["NoNewPrivileges"] == ["yes"] and d["ProtectSystem"] == ["strict"]
    assert d["DynamicUser"] == ["yes"] and "/var/lib/onvif-gateway" in d["ReadWritePaths"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert set(d["RestrictAddressFamilies"][0].split()) == {
        "AF_INET",
        "AF_INET6",
        "AF_NETLINK",
        "AF_UNIX",
    }
    assert any(v.startswith("@system-service") for v in d["SystemCallFilter"])
    for key in ("ExecStart", "ExecStartPre"):
        argv = shlex.split(d[key][0])
        assert argv[0] == "/usr/local/bin/onvif-gateway"
        cli_accepts(argv[1:])
    # verify needs the executable to exist: check a copy pointing at one that does.
    copy = tmp_path / "onvif-gateway.service"
    copy.write_text(text.replace("/usr/local/bin/onvif-gateway", shutil.which("true") or ""))
    code, out, err = await run_tool("systemd-analyze", "verify", str(copy))
    assert code == 0 and not (out + err).strip(), out + err
    # --threshold is in tenths of the printed exposure level (0.0 safest .. 10.0).
    code, out, err = await run_tool(
        "systemd-analyze", "security", "--offline=true", "--threshold=30", str(copy)
    )
    assert code == 0, out + err
    exposure = re.search(r"Overall exposure level for \S+: ([\d.]+)", out)
    assert exposure is not None and float(exposure.group(1)) <= 3.0


def containerfile_instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_containerfile() -> None:
    instructions = containerfile_instructions((DEPLOY / "Containerfile").read_text())
    froms = [rest for kw, rest in instructions if kw == "FROM"]
    assert froms and all(f.split()[0].endswith("debian:12-slim") for f in froms)
    final = instructions[max(i for i, (kw, _) in enumerate(instructions) if kw == "FROM") :]
    users = [rest for kw, rest in final if kw == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    for kw, rest in instructions:
        if kw == "COPY" and not rest.startswith("--from"):
            for source in rest.split()[:-1]:
                assert (ROOT / source).exists(), source
    assert any(
        kw == "RUN" and "pip install" in rest and "/src" in rest for kw, rest in instructions
    )
    health = next(rest for kw, rest in final if kw == "HEALTHCHECK")
    assert "https://127.0.0.1:8080/healthz" in health  # the admin API is HTTPS by default
    entrypoint = yaml.safe_load(next(rest for kw, rest in final if kw == "ENTRYPOINT"))
    cmd = yaml.safe_load(next(rest for kw, rest in final if kw == "CMD"))
    assert entrypoint[0] == "onvif-gateway"
    cli_accepts([*entrypoint[1:], *cmd])
    assert not any(kw in ("ENV", "ARG") and "PASSWORD" in rest.upper() for kw, rest in instructions)


def k8s_documents() -> dict[str, dict[str, Any]]:
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs[f"{doc['kind']}/{doc.get('metadata', {}).get('name', '')}"] = doc
    return docs


def test_kubernetes_manifests_validate() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            kubernetes_validate.validate(doc, "1.30", strict=True)
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def test_kubernetes_manifests_fit_together(tmp_path: Path) -> None:
    docs = k8s_documents()
    deployment = docs["Deployment/onvif-gateway"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and deployment["spec"]["strategy"]["type"] == "Recreate"
    [container] = pod["containers"]
    security = container["securityContext"]
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["NET_BIND_SERVICE", "NET_ADMIN"]}
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]
    cli_accepts(container["args"])

    secret = docs["Secret/onvif-gateway-secrets"]
    assert all(value == "" for value in secret["stringData"].values()), "no shipped passwords"
    config_map = docs["ConfigMap/onvif-gateway-config"]
    text = config_map["data"]["gateway.toml"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == config_map["metadata"]["name"]
    assert container["args"][-1] == mounts["config"] + "/gateway.toml"

    # Every password comes from the Secret: env vars by secretKeyRef, files by mounted items.
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    for name in re.findall(r'password_env = "([^"]+)"', text):
        ref = env[name]
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
    secret_dir = mounts["secrets"]
    items = {i["path"]: i["key"] for i in volumes["secrets"]["secret"]["items"]}
    files = re.findall(r'password_file = "([^"]+)"', text)
    assert files
    for path in files:
        assert path.startswith(secret_dir + "/") and items[path.rsplit("/", 1)[1]]

    # With the Secret filled in, the configuration is valid as the pod will see it.
    for key in items:
        (tmp_path / key).write_text(f"{key}-camera-password\n")
    monkey_env = {name: f"{name}-value" for name in env}
    local = text.replace(secret_dir, str(tmp_path))
    with pytest.MonkeyPatch.context() as mp:
        for name, value in monkey_env.items():
            mp.setenv(name, value)
        config = cfgmod.loads(local, source="configmap:gateway.toml")
    assert [c.name for c in config.cameras] == ["lobby", "yard"]
    assert config.admin is not None
    admin_port = config.admin.port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["port"] == admin_port and get["path"] in ("/healthz", "/readyz")
        assert get["host"] == config.admin.bind  # hostNetwork: the kubelet probes loopback
        assert get["scheme"] == ("HTTPS" if config.admin.tls else "HTTP")
    assert {"containerPort": admin_port, "name": "admin", "protocol": "TCP"} in container["ports"]
    rtsp_port = config.server.rtsp_port
    assert {"containerPort": rtsp_port, "name": "rtsp", "protocol": "TCP"} in container["ports"]
    # The empty Secret as shipped is refused with a clear message, never used.
    with pytest.MonkeyPatch.context() as mp:
        for name in env:
            mp.setenv(name, "")
        with pytest.raises(cfgmod.ConfigError, match="is empty"):
            cfgmod.loads(local, source="configmap:gateway.toml")


async def test_prometheus_config_and_alert_rules(tmp_path: Path) -> None:
    require("promtool")
    for name in ("prometheus.yml", "alerts.yml", "alerts_test.yml"):
        shutil.copy(DEPLOY / "prometheus" / name, tmp_path / name)
    code, out, err = await run_tool("promtool", "check", "config", str(tmp_path / "prometheus.yml"))
    assert code == 0, out + err
    code, out, err = await run_tool("promtool", "check", "rules", str(tmp_path / "alerts.yml"))
    assert code == 0, out + err
    code, out, err = await run_tool("promtool", "test", "rules", str(tmp_path / "alerts_test.yml"))
    assert code == 0 and "SUCCESS" in out, out + err
    # Every metric the rules use is one the gateway exports.
    exported = set(
        re.findall(r'f"\{PREFIX\}_(\w+)"', (ROOT / "gateway/admin/metrics.py").read_text())
    )
    exported |= set(
        re.findall(r'\(\s*"(stream_\w+)"', (ROOT / "gateway/admin/metrics.py").read_text())
    )
    rules = (tmp_path / "alerts.yml").read_text()
    for metric in set(re.findall(r"onvif_gateway_(\w+?)(?:_total)?\b[{\[ ]", rules)):
        assert metric in exported or metric.removesuffix("_total") in exported, metric
