"""Deployment files, validated offline: the systemd unit (systemd-analyze verify and
security), the Containerfile's instructions, the Kubernetes manifests (kubernetes-validate,
cross-checked with the configuration they carry) and the Prometheus scrape config and alert
rules (promtool check/test)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import config as cfgmod
from gateway import fleet, sections
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


def command_lines(directives: dict[str, list[str]], *keys: str) -> list[list[str]]:
    """The unit's command lines for ``keys``, split, without systemd's '+-!@' prefixes."""
    return [shlex.split(v.lstrip("+-!@")) for k in keys for v in directives.get(k, [])]


async def verify_units(tmp_path: Path, *names: str) -> str:
    """systemd-analyze verify on copies whose /opt/onvif-gateway binary is `true` (verify
    needs every executable to exist); returns the copy of the first unit."""
    true = shutil.which("true") or "/bin/true"
    copies = []
    for name in names:
        text = (DEPLOY / name).read_text().replace("/opt/onvif-gateway/bin/onvif-gateway", true)
        (tmp_path / name).write_text(text)
        copies.append(str(tmp_path / name))
    code, out, err = await run_tool("systemd-analyze", "verify", *copies)
    assert code == 0 and not (out + err).strip(), out + err
    return copies[0]


async def test_systemd_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    require("systemd-analyze")
    d = unit_directives((DEPLOY / "onvif-gateway.service").read_text())
    # Its own user, made by deploy/install.sh, which can read the 0640 root:onvif-gateway
    # configuration that init writes (a DynamicUser could not).
    assert d["User"] == ["onvif-gateway"] and d["Group"] == ["onvif-gateway"]
    assert "DynamicUser" not in d
    # While running, only low ports; CAP_NET_ADMIN only in the '+' egress steps.
    assert d["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert d["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    privileged = [v for k in ("ExecStartPre", "ExecReload") for v in d[k] if v.startswith("+")]
    assert privileged and all(" egress apply --if-configured " in v for v in privileged)
    assert d["NoNewPrivileges"] == ["yes"] and d["ProtectSystem"] == ["strict"]
    assert d["StateDirectory"] == ["onvif-gateway"] and d["StateDirectoryMode"] == ["0700"]
    assert "/var/lib/onvif-gateway" in d["ReadWritePaths"]
    assert d["ExecReload"][-1] == "/bin/kill -HUP $MAINPID"
    assert set(d["RestrictAddressFamilies"][0].split()) == {
        "AF_INET",
        "AF_INET6",
        "AF_NETLINK",
        "AF_UNIX",
    }
    assert any(v.startswith("@system-service") for v in d["SystemCallFilter"])
    assert "LoadCredential" not in d  # documented, commented: only when the site uses it
    for argv in command_lines(d, "ExecStartPre", "ExecStart", "ExecReload"):
        if argv[0] == "/bin/kill":
            continue
        assert argv[0] == "/opt/onvif-gateway/bin/onvif-gateway", argv
        assert argv[argv.index("--config") + 1] == cfgmod.DEFAULT_PATH
        cli_accepts(argv[1:])
    copy = await verify_units(
        tmp_path,
        "onvif-gateway.service",
        "onvif-gateway-egress-counters.service",
        "onvif-gateway-egress-counters.timer",
    )
    # --threshold is in tenths of the printed exposure level (0.0 safest .. 10.0).
    code, out, err = await run_tool(
        "systemd-analyze", "security", "--offline=true", "--threshold=30", copy
    )
    assert code == 0, out + err
    exposure = re.search(r"Overall exposure level for \S+: ([\d.]+)", out)
    assert exposure is not None and float(exposure.group(1)) <= 3.0


def test_egress_counter_job_holds_net_admin_as_the_service_user() -> None:
    d = unit_directives((DEPLOY / "onvif-gateway-egress-counters.service").read_text())
    assert d["User"] == ["onvif-gateway"] and d["Type"] == ["oneshot"]
    assert d["CapabilityBoundingSet"] == ["CAP_NET_ADMIN"]
    assert d["AmbientCapabilities"] == ["CAP_NET_ADMIN"]
    [argv] = command_lines(d, "ExecStart")
    assert argv[1:4] == ["egress", "status", "--if-configured"]
    cli_accepts(argv[1:])
    main = unit_directives((DEPLOY / "onvif-gateway.service").read_text())
    assert "onvif-gateway-egress-counters.timer" in main["Wants"][0]
    timer = unit_directives((DEPLOY / "onvif-gateway-egress-counters.timer").read_text())
    assert timer["PartOf"] == ["onvif-gateway.service"] and timer["OnUnitActiveSec"]


def test_install_script_installs_what_the_units_name() -> None:
    script = (DEPLOY / "install.sh").read_text()
    for name in ("onvif-gateway.service", "onvif-gateway-egress-counters.service"):
        for path in ("/opt/onvif-gateway", "/etc/onvif-gateway", "/var/lib/onvif-gateway"):
            if path in (DEPLOY / name).read_text():
                assert f"s|{path}|" in script, (name, path)
    for unit in DEPLOY.glob("onvif-gateway*.*"):
        assert unit.name in script, unit.name
    assert "useradd --system" in script and "init --output" in script


def containerfile_instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for kw, rest in instructions:
        if kw == "FROM":
            out.append([])
        out[-1].append((kw, rest))
    return out


def test_containerfile() -> None:
    instructions = containerfile_instructions((DEPLOY / "Containerfile").read_text())
    build, final = stages(instructions)
    assert all(stage[0][1].split()[0].endswith("debian:12-slim") for stage in (build, final))
    assert build[0][1].endswith(" AS build")
    # The compiler lives in the build stage only; the venv moves on.
    build_runs = " ".join(rest for kw, rest in build if kw == "RUN")
    assert "gcc" in build_runs and "python3-dev" in build_runs
    assert "deploy/build-venv.sh /opt/onvif-gateway /src" in build_runs
    final_runs = " ".join(rest for kw, rest in final if kw == "RUN")
    assert "gcc" not in final_runs and "span walks: C" in final_runs
    assert ("COPY", "--from=build /opt/onvif-gateway /opt/onvif-gateway") in final
    users = [rest for kw, rest in final if kw == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    ignored = (ROOT / ".containerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored
    assert (ROOT / ".dockerignore").resolve() == (ROOT / ".containerignore").resolve()
    for kw, rest in instructions:
        if kw == "COPY" and not rest.startswith("--from"):
            for source in rest.split()[:-1]:
                assert (ROOT / source).exists(), source
                assert source.split("/")[0] not in ignored, source
    health = next(rest for kw, rest in final if kw == "HEALTHCHECK")
    assert "https://127.0.0.1:8080/healthz" in health  # the admin API is HTTPS by default
    entrypoint = yaml.safe_load(next(rest for kw, rest in final if kw == "ENTRYPOINT"))
    cmd = yaml.safe_load(next(rest for kw, rest in final if kw == "CMD"))
    assert entrypoint[0] == "onvif-gateway"
    cli_accepts([*entrypoint[1:], *cmd])
    assert not any(kw in ("ENV", "ARG") and "PASSWORD" in rest.upper() for kw, rest in instructions)


@pytest.mark.slow
async def test_container_build_stage_compiles_the_c_part(tmp_path: Path) -> None:
    """No container builder runs here, so the build stage's own steps run instead: its COPY
    instructions into a scratch /src, then its RUN that builds the venv, with /src and
    /opt/onvif-gateway moved under tmp_path. The built gateway must load the C part."""
    require("gcc")
    build, _ = stages(containerfile_instructions((DEPLOY / "Containerfile").read_text()))
    src, venv = tmp_path / "src", tmp_path / "opt" / "onvif-gateway"
    for kw, rest in build:
        if kw == "COPY":
            *sources, target = rest.split()
            for source in sources:
                dest = Path(str(src) + target.removeprefix("/src"))
                if target.endswith("/"):
                    dest = dest / Path(source).name
                if (ROOT / source).is_dir():
                    shutil.copytree(ROOT / source, dest, ignore=shutil.ignore_patterns("*.so"))
                else:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(ROOT / source, dest)
    [command] = [rest for kw, rest in build if kw == "RUN" and "build-venv.sh" in rest]
    command = command.replace("/opt/onvif-gateway", str(venv)).replace("/src", str(src))
    code, out, err = await run_tool("bash", "-c", command, timeout=600)
    assert code == 0, out + err
    code, out, err = await run_tool(
        str(venv / "bin" / "python"), "-c", "import gateway.rtp._spans", cwd=str(tmp_path)
    )
    assert code == 0, err
    code, out, _ = await run_tool(str(venv / "bin" / "onvif-gateway"), "--version")
    assert code == 0 and "span walks: C" in out


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


def _pod_environment(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The container's environment: name -> its valueFrom (secretKeyRef or fieldRef)."""
    return {e["name"]: e["valueFrom"] for e in container["env"]}


def _site_file(tmp_path: Path, docs: dict[str, dict[str, Any]]) -> tuple[Path, dict[str, str]]:
    """The ConfigMap's gateway.toml as a pod of the StatefulSet sees it, with the Secret
    filled in: the file (secret paths moved under tmp_path) and the environment."""
    statefulset = docs["StatefulSet/onvif-gateway"]
    pod = statefulset["spec"]["template"]["spec"]
    [container] = pod["containers"]
    text = docs["ConfigMap/onvif-gateway-config"]["data"]["gateway.toml"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    items = {i["path"]: i["key"] for i in volumes["secrets"]["secret"]["items"]}
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    for path in items:
        (secrets_dir / path).write_text(f"{path}-" + "x" * 40 + "\n")
    env = {
        name: f"{name}-value"
        for name, ref in _pod_environment(container).items()
        if "secretKeyRef" in ref
    }
    env["NODE_IP"] = "10.20.0.5"  # status.hostIP
    path = tmp_path / "gateway.toml"
    path.write_text(text.replace(mounts["secrets"], str(secrets_dir)))
    return path, env


def test_kubernetes_manifests_fit_together(tmp_path: Path) -> None:
    docs = k8s_documents()
    statefulset = docs["StatefulSet/onvif-gateway"]
    spec = statefulset["spec"]
    pod = spec["template"]["spec"]
    assert pod["hostNetwork"] is True and spec["updateStrategy"]["type"] == "RollingUpdate"
    # One shard per node: the shards listen on the same ports of their node's address.
    [term] = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == spec["selector"]["matchLabels"]
    [container] = pod["containers"]
    security = container["securityContext"]
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["NET_BIND_SERVICE", "NET_ADMIN"]}
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]
    cli_accepts(container["args"])

    # The headless Service names the pods.
    service = docs["Service/onvif-gateway"]
    assert spec["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == spec["selector"]["matchLabels"]
    assert spec["template"]["metadata"]["labels"] == spec["selector"]["matchLabels"]

    secret = docs["Secret/onvif-gateway-secrets"]
    assert all(value == "" for value in secret["stringData"].values()), "no shipped secrets"
    config_map = docs["ConfigMap/onvif-gateway-config"]
    text = config_map["data"]["gateway.toml"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == config_map["metadata"]["name"]
    assert container["args"][-1] == mounts["config"] + "/gateway.toml"

    # The shard comes from the pod's name, the address from the node's.
    env = _pod_environment(container)
    assert env["HOSTNAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["NODE_IP"] == {"fieldRef": {"fieldPath": "status.hostIP"}}
    for name in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text):
        assert name in env, f"gateway.toml uses ${{{name}}}, which the pod does not set"
    # Every secret comes from the Secret: env vars by secretKeyRef, files by mounted items.
    for name in re.findall(r'password_env = "([^"]+)"', text):
        ref = env[name]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
    secret_dir = mounts["secrets"]
    items = {i["path"]: i["key"] for i in volumes["secrets"]["secret"]["items"]}
    files = re.findall(r'(?:password|identity_secret)_file = "([^"]+)"', text)
    assert files and any("identity" in f for f in files)
    for path in files:
        assert path.startswith(secret_dir + "/")
        assert items[path.rsplit("/", 1)[1]] in secret["stringData"]

    # Each shard's state directory is its own volume.
    [claim] = spec["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "state" and "state" not in volumes
    config_path, pod_env = _site_file(tmp_path, docs)
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {**pod_env, "HOSTNAME": "onvif-gateway-0"}.items():
            mp.setenv(name, value)
        config = sections.load_site(config_path)
    assert mounts["state"] == config.state_dir
    assert config.admin is not None and config.admin.bind == pod_env["NODE_IP"]
    admin_port = config.admin.port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["port"] == admin_port and get["path"] in ("/healthz", "/readyz")
        assert "host" not in get  # hostNetwork: the pod's address is the node's, [admin] bind
        assert get["scheme"] == ("HTTPS" if config.admin.tls else "HTTP")
    assert {"containerPort": admin_port, "name": "admin", "protocol": "TCP"} in container["ports"]
    rtsp_port = config.server.rtsp_port
    assert {"containerPort": rtsp_port, "name": "rtsp", "protocol": "TCP"} in container["ports"]
    # The empty Secret as shipped is refused with a clear message, never used.
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {**pod_env, "HOSTNAME": "onvif-gateway-0"}.items():
            mp.setenv(name, "" if name.startswith("ONVIF_GW") else value)
        with pytest.raises(cfgmod.ConfigError, match="is empty"):
            sections.load_site(config_path)


def test_every_replica_serves_its_shard_of_the_configmap(tmp_path: Path) -> None:
    """replicas == [fleet] shards; pod onvif-gateway-K passes the gateway's own checks as
    shard K, the shards together serve every camera once, and an extra replica is refused."""
    docs = k8s_documents()
    replicas = docs["StatefulSet/onvif-gateway"]["spec"]["replicas"]
    config_path, pod_env = _site_file(tmp_path, docs)
    served: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        for name, value in pod_env.items():
            mp.setenv(name, value)
        for ordinal in range(replicas):
            mp.setenv("HOSTNAME", f"onvif-gateway-{ordinal}")
            site = sections.load_site(config_path)
            settings = fleet.parse_fleet(site)
            assert settings is not None
            assert (settings.shards, settings.shard) == (replicas, ordinal)
            assert settings.identity_secret is not None
            served += [cam.name for cam in fleet.own(site).cameras]
        assert sorted(served) == sorted(cam.name for cam in site.cameras)
        mp.setenv("HOSTNAME", f"onvif-gateway-{replicas}")
        with pytest.raises(cfgmod.ConfigError, match="replicas and shards must agree"):
            sections.load_site(config_path)


async def test_kustomize_builds_the_manifests() -> None:
    require("kubectl")
    code, out, err = await run_tool("kubectl", "kustomize", str(K8S), timeout=60)
    assert code == 0, err
    built = {f"{d['kind']}/{d['metadata']['name']}" for d in yaml.safe_load_all(out) if d}
    assert built == set(k8s_documents()) - {"Kustomization/"}


async def test_the_configmap_passes_check_in_a_pod(tmp_path: Path) -> None:
    config_path, pod_env = _site_file(tmp_path, k8s_documents())
    code, out, err = await run_tool(
        sys.executable,
        "-m",
        "gateway",
        "check",
        "--config",
        str(config_path),
        "--json",
        env={**pod_env, "HOSTNAME": "onvif-gateway-1"},
        cwd=str(ROOT),
        timeout=90,
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["fleet"]["shard"] == 1 and summary["fleet"]["shared_identity"] is True
    assert [c["name"] for c in summary["cameras"]] == list(summary["fleet"]["owned"])


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
