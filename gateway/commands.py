"""Core commands: ``run``, ``check``, ``status``, ``demo``, ``init``, ``config-schema``.

The reports of ``check`` and ``status`` are :mod:`gateway.report_commands`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import resource
import secrets
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import config as cfgmod
from gateway import files, sections
from gateway.cli import EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, console
from gateway.loop_watch import LoopWatch
from gateway.report_commands import _status, _url_host, cmd_check
from gateway.workers import worker_plan

if TYPE_CHECKING:
    from gateway.runtime import Gateway

log = logging.getLogger("gateway")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "run",
        help="run the gateway",
        description="Run the gateway: ingest every camera stream, serve RTSP and "
        "ONVIF to the VMS network, and the admin API, dashboard and /metrics when the "
        "configuration has an [admin] section. SIGHUP (systemctl reload) or POST "
        "/api/v1/reload re-reads the file without dropping unaffected streams; SIGTERM "
        "or Ctrl-C stops. When ready, prints one JSON line to stdout: "
        '{"event": "ready", "rtsp_port": N}.',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cfgmod.add_config_argument(p)
    # Set by the supervisor when [server] workers > 1 (gateway.workers); not for operators.
    p.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-count", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--handoff-dir", default=None, help=argparse.SUPPRESS)
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser(
        "check",
        help="validate a configuration file",
        description="Validate a configuration file without starting anything. "
        "Exit 0 when valid, 1 with every problem listed otherwise.",
    )
    cfgmod.add_config_argument(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=cmd_check)

    p = sub.add_parser(
        "status",
        help="live status of a running gateway (through its admin API)",
        description="Ask a running gateway's admin API (address and credentials from the "
        "[admin] section of FILE) for every camera's live status. Exit 0 when every enabled "
        "camera streams, 1 when some do not, 3 when the admin API cannot be reached.",
    )
    cfgmod.add_config_argument(p)
    form = p.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="print the API's JSON")
    form.add_argument("--csv", action="store_true", help="print one CSV row per stream")
    p.add_argument("--wide", action="store_true", help="every column, however wide the terminal")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser(
        "demo",
        help="simulated cameras served through the gateway",
        description="Start one simulated Hikvision (H.264) and one simulated Dahua (H.265 "
        "main, H.264 sub) camera and the gateway in front of them, print the dashboard "
        "URL, the RTSP URLs and the generated credentials, and run until Ctrl-C. "
        "If the admin port is taken, the next free one is used (and printed).",
    )
    p.add_argument("--rtsp-port", type=int, default=8554, help="default 8554")
    p.add_argument("--admin-port", type=int, default=8080, help="default 8080")
    p.add_argument("--onvif-base-port", type=int, default=8000, help="default 8000")
    p.add_argument("--bind", default="127.0.0.1", help="default 127.0.0.1 (loopback only)")
    p.add_argument("--state-dir", default=None, help="default: a temporary directory")
    p.add_argument(
        "--profile",
        choices=("demo", "test"),
        default="demo",
        help="clips: demo = 720p (encoded once, then cached), test = small and quick",
    )
    p.add_argument(
        "--json", action="store_true", help="print the URLs and credentials as one JSON line"
    )
    p.set_defaults(handler=cmd_demo)

    p = sub.add_parser(
        "init",
        help="write a commented starter configuration",
        description="Write a commented starter configuration with freshly "
        "generated VMS and admin passwords (there are no default passwords). It passes "
        "'check' as written and starts with no cameras; add a [[camera]] block per camera. "
        "The file is mode 0640 in group onvif-gateway when that group exists (the production "
        "install creates it), else 0600. An existing file is kept unless --force.",
    )
    p.add_argument(
        "--output",
        "-o",
        "--config",
        "-c",
        dest="output",
        default=cfgmod.default_path(),
        metavar="FILE",
        help=f"where to write it (default: ${cfgmod.PATH_ENV}, else {cfgmod.DEFAULT_PATH}); "
        "missing directories are created 0750",
    )
    p.add_argument(
        "--state-dir",
        default="/var/lib/onvif-gateway",
        metavar="DIR",
        help="state_dir to write into it (default /var/lib/onvif-gateway); the admin API's "
        "HTTPS certificate is created there",
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(handler=cmd_init)

    p = sub.add_parser(
        "config-schema",
        help="print the configuration's JSON Schema (for TOML editors)",
        description="Print the JSON Schema (draft 2020-12) of the configuration file, for "
        "editors' completion and validation, e.g. Taplo / Even Better TOML with "
        "'#:schema ./gateway.schema.json' as the file's first line. 'check' still judges "
        "what needs the whole file (port clashes, files, environment variables).",
    )
    p.add_argument("--output", "-o", metavar="FILE", help="write it to FILE instead")
    p.set_defaults(handler=cmd_config_schema)


def load_config_or_exit(path: str) -> cfgmod.Config | int:
    try:
        return sections.load(path)
    except cfgmod.ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return EXIT_USAGE


def cmd_status(args: argparse.Namespace) -> int:
    try:
        loaded = sections.load(args.config)
    except cfgmod.ConfigError as exc:
        # The gateway keeps running on the last file it accepted: ask it anyway, with the
        # file's [admin] section, and say that the file needs attention.
        try:
            loaded = cfgmod.load_admin_section(args.config)
        except cfgmod.ConfigError:
            print(f"configuration error:\n{exc}", file=sys.stderr)
            return EXIT_USAGE
        print(
            f"warning: {args.config} has {len(exc.problems)} problem(s) ('onvif-gateway "
            "check' lists them); the running gateway keeps its last good configuration",
            file=sys.stderr,
        )
    if loaded.admin is None:
        print(f"{args.config}: no [admin] section, so no admin API to ask", file=sys.stderr)
        return EXIT_USAGE
    return _event_loop_run(_status(loaded, args))


def _event_loop_run(coro: Any) -> int:
    try:
        import uvloop

        return int(uvloop.run(coro))
    except ImportError:
        return int(asyncio.run(coro))


def cmd_run(args: argparse.Namespace) -> int:
    loaded = load_config_or_exit(args.config)
    if isinstance(loaded, int):
        return loaded
    from gateway import log as gwlog

    gwlog.setup(
        json_lines=args.log_json or loaded.log.json, verbose=args.verbose, level=loaded.log.level
    )
    from gateway.workers import Shard, end_with_supervisor, run_supervisor

    shard = None
    if args.worker_index is not None and args.worker_count and args.handoff_dir:
        shard = Shard(args.worker_index, args.worker_count, args.handoff_dir)
        gwlog.tag_worker(shard.index)
        if not end_with_supervisor():
            log.error("the worker supervisor is gone: not starting")
            return EXIT_RUNTIME
    else:
        plan = worker_plan(loaded)
        log.info(
            plan.note or "worker processes",
            extra={"workers": plan.count, "setting": loaded.server.workers},
        )
        if plan.count > 1:
            prefix = (["--log-json"] if args.log_json else []) + (["-v"] if args.verbose else [])
            return run_supervisor(args.config, plan.count, prefix)
    return _event_loop_run(_run(loaded, args.config, shard))


def raise_fd_limit() -> int:
    """Raise the soft limit on open files to the hard one (systemd's LimitNOFILE=, a
    container's ulimit): every VMS connection, camera session and listener is a descriptor,
    and a default of 1024 is what an idle-connection attack exhausts first. Returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError):
            pass
    return soft


async def _run(config: cfgmod.Config, path: str, shard: Any = None) -> int:
    from gateway.runtime import Gateway

    log.info("open file limit", extra={"nofile": raise_fd_limit()})
    # A loop blocked for a minute ends the process, for its supervisor (or systemd) to
    # start again: every stream it serves is dead meanwhile.
    watch = LoopWatch(on_give_up=lambda: os._exit(EXIT_RUNTIME))
    watch.start()
    try:
        return await _serve(Gateway(config, shard=shard), path)
    finally:
        watch.stop()


async def _serve(gateway: Gateway, path: str) -> int:
    """Start ``gateway``, report ready, serve until SIGINT/SIGTERM (SIGHUP reloads)."""
    try:
        await gateway.start()
    except OSError as exc:
        log.error("cannot start", extra={"error": str(exc)})
        await gateway.stop()
        return EXIT_RUNTIME
    _freeze_heap()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    def reload() -> None:
        try:
            new = sections.load(path)
        except cfgmod.ConfigError as exc:
            log.error("reload refused: configuration invalid", extra={"problems": str(exc)})
            return
        task = asyncio.ensure_future(gateway.reload(new))
        task.add_done_callback(_log_reload_failure)
        task.add_done_callback(_refreeze_heap)

    loop.add_signal_handler(signal.SIGHUP, reload)
    # One write of the whole line: worker processes share stdout, and print() may write the
    # text and its newline separately (unbuffered), letting two workers' lines run together.
    ready = {"event": "ready", "rtsp_port": gateway.rtsp.port if gateway.rtsp else 0}
    sys.stdout.flush()
    os.write(sys.stdout.fileno(), (json.dumps(ready) + "\n").encode())
    await stop.wait()
    log.info("shutting down")
    await gateway.stop()
    return EXIT_OK


def _freeze_heap() -> None:
    """What start-up built lives as long as the process: moved out of the cyclic
    collector's reach, so its full passes walk only what streaming allocates (shorter
    pauses)."""
    gc.collect()
    gc.freeze()


def _refreeze_heap(_task: asyncio.Future[Any]) -> None:
    """After a reload: what it removed (a camera's hubs and ingests, which refer to each
    other) was frozen at start, where the collector never looks; let it be collected, then
    freeze what the process keeps again."""
    gc.unfreeze()
    _freeze_heap()


def _log_reload_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("reload failed", extra={"error": str(task.exception())})


def cmd_config_schema(args: argparse.Namespace) -> int:
    from gateway.schema import schema_text

    text = schema_text()
    if not args.output:
        sys.stdout.write(text)
        return EXIT_OK
    try:
        Path(args.output).write_text(text, encoding="utf-8")
    except OSError as exc:
        print(f"{args.output}: cannot write: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_RUNTIME
    return EXIT_OK


def cmd_init(args: argparse.Namespace) -> int:
    out = Path(args.output)
    if out.is_dir():
        print(f"{out} is a directory; give the file to write", file=sys.stderr)
        return EXIT_USAGE
    if out.exists() and not args.force:
        print(f"{out} exists; use --force to overwrite", file=sys.stderr)
        return EXIT_USAGE
    text = STARTER_CONFIG.format(
        vms_password=secrets.token_urlsafe(18),
        admin_password=secrets.token_urlsafe(18),
        state_dir=json.dumps(args.state_dir),
    )
    gid = files.service_gid()
    try:
        _make_parents(out.parent, gid)
        mode = files.write_atomically(
            out,
            text.encode(),
            mode=0o640 if gid is not None else 0o600,
            gid=gid if gid is not None else -1,
        )
    except OSError as exc:
        from gateway.cli import describe_os_error

        print(f"cannot write {out}: {describe_os_error(exc)}", file=sys.stderr)
        return EXIT_USAGE
    owner = f"group {files.SERVICE_GROUP}, " if mode == 0o640 else ""
    print(
        f"wrote {out} ({owner}mode {mode:04o}) with generated VMS and admin passwords; "
        f"add [[camera]] blocks, then run: onvif-gateway check --config {out}"
    )
    init_certificate(args.state_dir, "127.0.0.1")
    return EXIT_OK


def init_certificate(state_dir: str, bind: str) -> None:
    """``init``: create the admin API's self-signed certificate in the state directory and
    print its fingerprint; a state directory not writable yet only gets a note (the gateway
    creates the certificate at its first start)."""
    from gateway.admin.tls import ensure_generated

    try:
        info = ensure_generated(state_dir, bind)
    except OSError as exc:
        print(
            f"note: cannot write the admin certificate in {state_dir} "
            f"({exc.strerror or exc}); the gateway creates it at its first start"
        )
        return
    verb = "created" if info.created else "kept"
    print(
        f"{verb} the admin HTTPS certificate {info.cert} (key {info.key}, mode 0600)\n"
        f"  SHA-256 fingerprint {info.fingerprint}\n"
        f"  clients: curl --cacert {info.cert} https://127.0.0.1:8080/healthz"
    )


def _make_parents(directory: Path, gid: int | None) -> None:
    """Create ``directory`` and its missing parents 0750, in the service's group if any."""
    missing = []
    for parent in (directory, *directory.parents):
        if parent.exists():
            break
        missing.append(parent)
    for path in reversed(missing):
        path.mkdir(mode=0o750)
        os.chmod(path, 0o750)  # whatever the umask
        if gid is not None:
            with contextlib.suppress(PermissionError):
                os.chown(path, -1, gid)


def cmd_demo(args: argparse.Namespace) -> int:
    return _event_loop_run(_demo(args))


def _port_free(bind: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR like the servers themselves: only a listener makes a port busy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((bind, port))
        except OSError:
            return False
    return True


def pick_ports(bind: str, wanted: int, count: int = 1, tries: int = 50) -> int:
    """The first of ``count`` consecutive free TCP ports from ``wanted`` on."""
    for first in range(wanted, min(wanted + tries, 65536 - count)):
        if all(_port_free(bind, port) for port in range(first, first + count)):
            return first
    raise OSError(f"no {count} free port(s) on {bind} from {wanted} to {wanted + tries}")


async def _demo(args: argparse.Namespace) -> int:
    from gateway.runtime import Gateway
    from gateway.sim.runner import SimFleet, default_stream_specs

    notes: list[str] = []
    try:
        ports = {}
        for name, wanted, count in (
            ("RTSP", args.rtsp_port, 1),
            ("admin", args.admin_port, 1),
            ("ONVIF", args.onvif_base_port, 2),
        ):
            ports[name] = pick_ports(args.bind, wanted, count)
            if ports[name] != wanted:
                notes.append(
                    f"{name} port {wanted} is in use on {args.bind}; using {ports[name]} instead"
                )
    except OSError as exc:
        print(f"cannot start the demo: {exc}", file=sys.stderr)
        return EXIT_RUNTIME

    camera_password = secrets.token_urlsafe(12)
    fleet = SimFleet.build(
        hikvision=1,
        dahua=1,
        host="127.0.0.1",
        username="admin",
        password=camera_password,
        specs=default_stream_specs(args.profile),
        motion_interval=20.0,
        ptz=True,
    )
    err = console(sys.stderr)
    with err.status("Preparing simulated cameras (clips are encoded once and cached)..."):
        await fleet.start()
    vms_password = secrets.token_urlsafe(12)
    admin_password = secrets.token_urlsafe(12)
    state_dir = args.state_dir or tempfile.mkdtemp(prefix="onvif-gateway-demo-")
    text = fleet.gateway_config(
        bind=args.bind,
        rtsp_port=ports["RTSP"],
        vms_user="vms",
        vms_password=vms_password,
        admin_password=admin_password,
        admin_port=ports["admin"],
        onvif_base_port=ports["ONVIF"],
        state_dir=state_dir,
        policy=True,
    )
    config = cfgmod.loads(text, source="<demo>")
    gateway = Gateway(config)
    try:
        await gateway.start()
    except OSError as exc:
        print(f"cannot start the gateway: {exc}", file=sys.stderr)
        await gateway.stop()
        await fleet.stop()
        return EXIT_RUNTIME
    assert gateway.rtsp is not None and config.admin is not None
    from gateway.admin.tls import describe, generated_paths

    host = _url_host(args.bind)
    dashboard = f"https://{host}:{config.admin.port}/"
    certificate = describe(*generated_paths(state_dir))
    rtsp = [
        f"rtsp://{host}:{gateway.rtsp.port}/{cam.name}/{stream}"
        for cam in config.cameras
        for stream in cam.stream_names()
    ]
    onvif = [
        f"http://{host}:{cam.onvif_port or config.server.onvif_base_port + i}/onvif/device_service"
        for i, cam in enumerate(config.cameras)
    ]
    for note in notes:
        print(note, file=sys.stderr)
    if args.json:
        ready = {
            "event": "ready",
            "dashboard": dashboard,
            "metrics": dashboard + "metrics",
            "admin": {"username": config.admin.username, "password": admin_password},
            "admin_ca": str(certificate.cert),
            "admin_fingerprint": certificate.fingerprint,
            "vms": {"username": "vms", "password": vms_password},
            "rtsp": rtsp,
            "onvif": onvif,
        }
        print(json.dumps(ready), flush=True)
    else:
        lines = [
            "",
            "onvif-gateway demo is running. Press Ctrl-C to stop.",
            "",
            f"Dashboard:        {dashboard}",
            f"  sign in as:     user '{config.admin.username}'  password '{admin_password}'",
            f"  metrics:        {dashboard}metrics (same credentials)",
            f"  certificate:    {certificate.cert} (self-signed; your browser will warn once)",
            f"  SHA-256:        {certificate.fingerprint}",
            f"VMS credentials:  user 'vms'  password '{vms_password}'",
            "RTSP streams (through the gateway):",
            *(f"  {url}" for url in rtsp),
            "ONVIF devices:",
            *(f"  {url}" for url in onvif),
            "",
            "Try: ffplay -rtsp_transport tcp "
            f"rtsp://vms:{vms_password}@{rtsp[0].removeprefix('rtsp://')}",
            "",
        ]
        print("\n".join(lines), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await gateway.stop()
    await fleet.stop()
    return EXIT_OK


STARTER_CONFIG = """\
# onvif-gateway configuration. Validate with: onvif-gateway check --config THIS_FILE
# Passwords below were generated by 'onvif-gateway init'; keep this file private (0640,
# group onvif-gateway, or 0600). Any password may instead be given as password_env = "VAR"
# or password_file = "/path"; under systemd's LoadCredential=, password_file =
# "${{CREDENTIALS_DIRECTORY}}/NAME".

# Where the inventory, findings, audit log and egress records are kept (SQLite).
state_dir = {state_dir}

[server]
bind = "127.0.0.1"          # the gateway's address on the VMS network
rtsp_port = 8554            # streams: rtsp://HOST:8554/<camera>/main and /<camera>/sub
onvif_base_port = 8000      # camera k (0-based) is ONVIF device http://HOST:8000+k/
# session_timeout = 60      # seconds an idle UDP client session is kept
# client_send_budget = 4194304   # bytes a slow client may lag before skipping to a keyframe
# client_stall_timeout = 10.0    # seconds a client may stay over budget before it is dropped
# rtsps_port = 8322         # RTSPS for VMSs that support it; off when absent
# onvif_https_offset = 443  # ONVIF devices also over HTTPS on port + 443 (docs/operations.md)
# rtp_ports = "30000-30999" # UDP for RTP/RTCP to UDP clients (default: ephemeral ports)

[vms]                       # the account VMSes use; never a camera's own credentials
username = "vms"
password = "{vms_password}"
# allow_basic = false       # Basic auth (RTSP, ONVIF HTTP) for old clients; Digest always offered

[admin]                     # admin API, dashboard and /metrics, over HTTPS
bind = "127.0.0.1"
port = 8080
username = "admin"          # this account has the admin role
password = "{admin_password}"
# tls_cert = "/etc/onvif-gateway/admin.crt"  # your own certificate (default: self-signed,
# tls_key = "/etc/onvif-gateway/admin.key"   # generated in state_dir as admin-tls.crt)
# [[admin.user]]            # more accounts: onvif-gateway passwd NAME --role viewer
# name = "guard"
# role = "viewer"           # viewer | operator | admin
# password_hash = "$scrypt$..."

# [camera_network]          # egress isolation: see 'onvif-gateway egress --help'
# interface = "eth1"
# address = "192.168.50.1"
# subnets = ["192.168.50.0/24"]
# dns_sinkhole = true
# ntp_server = true
# allow = []

# Firmware and telemetry policy ('onvif-gateway audit' / 'enforce'): cloud (P2P), UPnP,
# DDNS, telnet, SSH, e-mail, FTP, SNMP, Bonjour and multicast are switched off on every
# camera. Cameras should take their time from the gateway's NTP server once [camera_network]
# is set up: then write ntp = "gateway" (or ntp_server = "ADDRESS" for the site's own
# server). Until then, their NTP is left as it is.
[policy.telemetry]
ntp = "allowed"

# One block per camera; the stream paths are /<name>/main and /<name>/sub. Uncomment and
# edit this one, and copy it for each camera ('onvif-gateway discover' prints blocks ready
# to paste). Give the camera's password from the environment, a file, or inline.
# [[camera]]
# name = "lobby"
# vendor = "hikvision"      # hikvision | dahua | generic
# host = "192.168.50.10"
# rtsp_port = 554
# http_port = 80            # the camera's web/ISAPI/CGI/ONVIF port
# username = "admin"
# password_file = "/etc/onvif-gateway/lobby.password"
# channel = 1               # NVR channel (Hikvision 101/102, Dahua channel=1&subtype=0/1)
# main_url = "rtsp://..."   # override the vendor template (generic cameras, odd firmware)
# sub_url = "rtsp://..."
# on_demand = false         # true: connect upstream only while a VMS client watches
# transport = "tcp"         # or "udp"
# ptz = "enabled"           # enabled | no-presets | disabled
# bind = "10.0.0.21"        # an address of its own on this host (UniFi Protect: docs/onvif.md)
"""
