"""The integrator CLI as a subprocess: help text, exit codes, ``init`` -> ``check``,
``run`` failures, and ``demo`` (busy admin port, printed dashboard and credentials) queried
with ``status``."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import ssl
import stat
import sys
from pathlib import Path

import aiohttp
import pytest

from gateway.admin.tls import fingerprint
from tests.conftest import free_port, free_ports, run_tool

GATEWAY = (sys.executable, "-m", "gateway")
ANSI = re.compile(r"\x1b\[")


async def gateway_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    return await run_tool(*GATEWAY, *args, timeout=90, env=env)


async def test_help_lists_commands_and_exit_codes() -> None:
    code, out, _ = await gateway_cli("--help")
    assert code == 0
    for command in ("run", "check", "status", "demo", "init", "audit", "egress"):
        assert re.search(rf"^\s+{command}\s", out, re.M), command
    assert "exit codes:" in out and "130" in out
    for command in ("run", "check", "status", "demo", "init"):
        code, out, _ = await gateway_cli(command, "--help")
        assert code == 0 and "usage: onvif-gateway " + command in out
    code, out, _ = await gateway_cli()
    assert code == 2 and "usage:" in out
    code, _, err = await gateway_cli("no-such-command")
    assert code == 2 and "invalid choice" in err


async def test_init_writes_a_config_check_accepts_with_fresh_passwords(tmp_path: Path) -> None:
    # A new box: the directory does not exist yet.
    from gateway.files import service_gid

    gid = service_gid()
    first, second = tmp_path / "etc" / "onvif-gateway" / "a.toml", tmp_path / "b.toml"
    state = tmp_path / "state"
    for path in (first, second):
        code, out, err = await gateway_cli("init", "--output", str(path), "--state-dir", str(state))
        assert code == 0, err
        assert str(path) in out
        # 0640 in the service's group where the production install made it (and this
        # process may give files to it), 0600 elsewhere.
        if gid is not None and os.geteuid() == 0:
            assert stat.S_IMODE(path.stat().st_mode) == 0o640 and path.stat().st_gid == gid
        else:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for made in (first.parent, first.parent.parent):
        assert stat.S_IMODE(made.stat().st_mode) == 0o750
    # The admin API's certificate: created once in the state directory, key 0600, and its
    # fingerprint printed; the second init keeps it.
    cert, key = state / "admin-tls.crt", state / "admin-tls.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    printed = re.search(r"SHA-256 fingerprint ([0-9A-F:]{95})", out)
    assert printed and printed.group(1) == fingerprint(cert.read_bytes())
    assert f'state_dir = "{state}"' in first.read_text()
    before = first.read_bytes()
    code, _, err = await gateway_cli("init", "--output", str(first))
    assert code == 2 and "--force" in err
    assert first.read_bytes() == before
    code, _, err = await gateway_cli("init", "-c", str(first), "--force")
    assert code == 0, err
    assert first.read_bytes() != before

    def passwords(path: Path) -> list[str]:
        return re.findall(r'^password = "([^"]+)"', path.read_text(), re.M)

    a, b = passwords(first), passwords(second)
    assert len(a) == 2 and len(b) == 2  # VMS and admin
    assert not set(a) & set(b) and a[0] != a[1]
    assert all(len(p) >= 20 for p in a)
    text = first.read_text().lower()
    assert "changeme" not in text and 'password = "admin"' not in text

    # As written it is valid: no camera yet, and the example block is ready to uncomment.
    code, out, err = await gateway_cli("check", "--config", str(first))
    assert code == 0, err
    assert "valid" in out and "no [[camera]] yet" in out
    assert not ANSI.search(out), "colours on a pipe"
    camera_password = tmp_path / "lobby.password"
    camera_password.write_text("s3cret-camera\n")
    edited = first.read_text().replace(
        "# [[camera]]\n# name", "[[camera]]\nname"
    )  # uncomment the block's first lines as an integrator would
    for key in ("vendor", "host", "rtsp_port", "http_port", "username", "channel"):
        edited = re.sub(rf"^# ({key} = )", r"\1", edited, count=1, flags=re.M)
    edited = edited.replace(
        '# password_file = "/etc/onvif-gateway/lobby.password"',
        f'password_file = "{camera_password}"',
    )
    first.write_text(edited)
    code, out, _ = await gateway_cli("check", "--config", str(first), "--json")
    summary = json.loads(out)
    assert code == 0 and summary["valid"] is True, out
    assert summary["cameras"][0]["streams"] == ["/lobby/main", "/lobby/sub"]
    assert summary["admin"] == "https://127.0.0.1:8080/" and summary["warnings"] == []
    assert "s3cret-camera" not in out


async def test_init_failures_are_one_line(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for target, words in (
        (a_file / "sub" / "gateway.toml", "Not a directory"),
        (tmp_path, "is a directory"),
    ):
        code, _, err = await gateway_cli("init", "--output", str(target))
        assert code == 2, err
        assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_init_gives_the_file_to_the_service_group(tmp_path: Path) -> None:
    from gateway.files import write_atomically

    path = tmp_path / "gateway.toml"
    mode = write_atomically(path, b"x = 1\n", mode=0o640, gid=os.getgid())
    assert mode == 0o640 and stat.S_IMODE(path.stat().st_mode) == 0o640
    assert path.stat().st_gid == os.getgid()
    mode = write_atomically(path, b"x = 2\n", mode=0o600)
    assert mode == 0o600 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == "x = 2\n"
    assert [p.name for p in tmp_path.iterdir()] == ["gateway.toml"]  # no temporary left


async def test_every_command_finds_the_config_by_default_and_in_the_environment(
    tmp_path: Path,
) -> None:
    config = tmp_path / "site.toml"
    code, _, err = await gateway_cli("init", env={"ONVIF_GATEWAY_CONFIG": str(config)})
    assert code == 0 and config.is_file(), err
    env = {"ONVIF_GATEWAY_CONFIG": str(config)}
    code, out, err = await gateway_cli("check", env=env)
    assert code == 0 and str(config) in out, err
    for command in (["check"], ["run"], ["status"], ["audit"], ["egress", "render"]):
        code, out, _ = await gateway_cli(*command, "--help")
        assert code == 0 and "--config" in out and "ONVIF_GATEWAY_CONFIG" in out, command
    missing = tmp_path / "nowhere.toml"
    code, _, err = await gateway_cli("check", env={"ONVIF_GATEWAY_CONFIG": str(missing)})
    assert code == 2 and str(missing) in err and "Traceback" not in err


async def test_password_files_may_name_systemd_credentials(tmp_path: Path) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "vms").write_text("vms-from-credential\n")
    config = tmp_path / "g.toml"
    config.write_text('[vms]\nusername = "vms"\npassword_file = "${CREDENTIALS_DIRECTORY}/vms"\n')
    code, _, err = await gateway_cli("check", "-c", str(config))
    assert code == 1 and "CREDENTIALS_DIRECTORY is not set" in err
    code, out, err = await gateway_cli(
        "check", "-c", str(config), env={"CREDENTIALS_DIRECTORY": str(creds)}
    )
    assert code == 0, err
    assert "vms-from-credential" not in out


async def test_check_exit_codes_for_invalid_and_missing_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[vms]\nusername = "vms"\npassword = "x"\n[admin]\nusername = "a"\n')
    code, out, _ = await gateway_cli("check", "--config", str(bad), "--json")
    assert code == 1
    problems = json.loads(out)["problems"]
    assert {
        "file": str(bad),
        "key": "admin.password",
        "message": problems[0]["message"],
        "where": "admin.password",
    } in problems
    code, _, err = await gateway_cli("check", "--config", str(tmp_path / "missing.toml"))
    assert code == 2 and "cannot read" in err


async def test_run_exit_codes(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nrtsp_port = 70000\n")
    code, _, err = await gateway_cli("run", "--config", str(bad))
    assert code == 2 and "server.rtsp_port" in err and "Traceback" not in err

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = tmp_path / "busy.toml"
        config.write_text(
            f'state_dir = "{tmp_path / "state"}"\n[server]\nrtsp_port = {port}\n'
            f'[vms]\nusername = "vms"\npassword = "vms-password"\n'
        )
        code, out, err = await gateway_cli("run", "--config", str(config))
    assert code == 3, err
    assert "cannot start" in err and "Traceback" not in err
    assert '"ready"' not in out


async def read_json_line(stream: asyncio.StreamReader, timeout: float) -> dict[str, object]:
    async def first_json() -> dict[str, object]:
        while True:
            line = await stream.readline()
            if not line:
                raise AssertionError("the process ended before its ready line")
            if line.startswith(b"{"):
                return json.loads(line)

    return await asyncio.wait_for(first_json(), timeout)


@pytest.mark.slow
async def test_demo_prints_dashboard_and_status_reads_it(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            *GATEWAY,
            "demo",
            "--profile",
            "test",
            "--json",
            "--admin-port",
            str(taken),
            "--rtsp-port",
            str(free_port()),
            "--onvif-base-port",
            str(free_ports(2)[0]),
            "--state-dir",
            str(tmp_path / "state"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
        )
        try:
            assert proc.stdout is not None and proc.stderr is not None
            ready = await read_json_line(proc.stdout, 120)
            assert ready["event"] == "ready"
            dashboard = str(ready["dashboard"])
            port = int(dashboard.rsplit(":", 1)[1].strip("/"))
            assert port != taken
            admin = ready["admin"]
            assert isinstance(admin, dict) and len(admin["password"]) >= 16
            assert len(ready["rtsp"]) == 4  # type: ignore[arg-type]
            basic = aiohttp.encode_basic_auth(admin["username"], admin["password"])
            assert dashboard.startswith("https://")
            # The certificate the demo prints is the one a client pins (curl --cacert).
            trusted = ssl.create_default_context(cafile=str(ready["admin_ca"]))
            assert ready["admin_fingerprint"] == fingerprint(
                Path(str(ready["admin_ca"])).read_bytes()
            )
            async with (
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trusted)) as session,
                session.get(
                    dashboard + "api/v1/cameras", headers={"Authorization": basic}
                ) as response,
            ):
                assert response.status == 200

            config = tmp_path / "status.toml"
            config.write_text(
                f'state_dir = "{tmp_path / "state"}"\n'
                f'[vms]\nusername = "vms"\npassword = "unused"\n'
                f'[admin]\nport = {port}\nusername = "admin"\n'
                f'password_env = "DEMO_ADMIN_PASSWORD"\n'
            )
            env = {"DEMO_ADMIN_PASSWORD": admin["password"]}
            for _ in range(100):  # the cameras' first frames may still be on their way
                code, out, err = await gateway_cli("status", "--config", str(config), env=env)
                if code == 0:
                    break
                await asyncio.sleep(0.2)
            assert code == 0, out + err
            assert "hik1" in out and "dahua1" in out and "H265" in out and "live" in out
            assert not ANSI.search(out)
            code, out, _ = await gateway_cli("status", "--config", str(config), "--json", env=env)
            assert code == 0
            assert {c["name"] for c in json.loads(out)["cameras"]} == {"hik1", "dahua1"}
            # An 80-column SSH terminal: no line wider; --wide and --csv carry the rest.
            narrow = {**env, "COLUMNS": "80"}
            code, out, _ = await gateway_cli("status", "--config", str(config), env=narrow)
            assert code == 0 and all(len(line) <= 80 for line in out.splitlines()), out
            code, out, _ = await gateway_cli("status", "-c", str(config), "--csv", env=env)
            header, *rows = out.splitlines()
            assert header.startswith("camera,stream,state,codec,size,bitrate,clients,fps")
            assert len(rows) == 4 and all(",live," in row for row in rows), out
            # A file with a problem elsewhere: status still asks the running gateway, and
            # says the file needs attention.
            broken = tmp_path / "broken.toml"
            broken.write_text(config.read_text() + '[[camera]]\nname = "bad name!"\n')
            code, out, err = await gateway_cli("status", "--config", str(broken), env=env)
            assert code == 0 and "hik1" in out, err
            assert "problem(s)" in err and "last good configuration" in err, err
            code, _, err = await gateway_cli(
                "status", "--config", str(config), env={"DEMO_ADMIN_PASSWORD": "wrong"}
            )
            assert code == 3 and "refused" in err
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                _, err_bytes = await asyncio.wait_for(proc.communicate(), 60)
            except TimeoutError:
                proc.kill()
                raise
    assert proc.returncode == 0
    err_text = err_bytes.decode()
    assert f"admin port {taken} is in use" in err_text
    assert admin["password"] not in err_text  # type: ignore[index]


async def test_status_without_a_running_gateway(tmp_path: Path) -> None:
    config = tmp_path / "status.toml"
    config.write_text(
        f'[vms]\nusername = "vms"\npassword = "unused"\n'
        f'[admin]\nport = {free_port()}\nusername = "admin"\npassword = "whatever"\n'
    )
    code, _, err = await gateway_cli("status", "--config", str(config))
    assert code == 3 and "cannot reach the admin API" in err
    no_admin = tmp_path / "no_admin.toml"
    no_admin.write_text('[vms]\nusername = "vms"\npassword = "unused"\n')
    code, _, err = await gateway_cli("status", "--config", str(no_admin))
    assert code == 2 and "no [admin] section" in err


def test_the_state_database_is_private_and_stays_the_services(tmp_path: Path) -> None:
    from gateway.store import Store

    state = tmp_path / "state"
    state.mkdir()
    Store.in_state_dir(state).close()
    db = state / "gateway.sqlite3"
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    if os.geteuid() == 0:  # root (an operator's sudo) in a service-owned state directory
        other = tmp_path / "service"
        other.mkdir()
        os.chown(other, 4242, 4243)
        store = Store.in_state_dir(other)
        store.execute("CREATE TABLE t (x)")
        store.close()
        for path in other.iterdir():
            assert (path.stat().st_uid, path.stat().st_gid) == (4242, 4243), path.name


async def test_a_state_directory_that_cannot_be_used_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    config = tmp_path / "g.toml"
    config.write_text(
        f'state_dir = "{blocker / "state"}"\n[vms]\nusername = "vms"\npassword = "vms-pw"\n'
        "[policy]\n"
    )
    code, _, err = await gateway_cli("audit", "--config", str(config))
    assert code in (2, 3), err
    assert "Traceback" not in err and str(blocker) in err
    assert len(err.strip().splitlines()) <= 2, err


@pytest.mark.slow
async def test_sim_writes_its_gateway_config_private_and_valid(tmp_path: Path) -> None:
    config = tmp_path / "site.toml"
    proc = await asyncio.create_subprocess_exec(
        *GATEWAY,
        *("sim", "--profile", "test", "--gateway-config", str(config)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        ready = await read_json_line(proc.stdout, 120)
        assert ready["event"] == "ready"
        assert stat.S_IMODE(config.stat().st_mode) == 0o600
        text = config.read_text()
        assert f'state_dir = "{tmp_path / "site-state"}"' in text
        code, _, err = await gateway_cli("check", "--config", str(config))
        assert code == 0, err
    finally:
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 20)


def test_the_open_file_limit_is_raised_to_the_hard_limit() -> None:
    import resource

    from gateway.commands import raise_fd_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        lowered = min(256, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
        assert raise_fd_limit() == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
