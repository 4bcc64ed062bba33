"""Shared fixtures: simulated cameras and a gateway in front of them, on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import inspect
import os
import secrets
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from gateway import config as cfgmod
from gateway.runtime import Gateway
from gateway.sim.runner import SimFleet, default_stream_specs
from tests.onvif_matrix import pytest_terminal_summary  # noqa: F401  (ONVIF matrix report)

# How long a test's leftover tasks get to end once cancelled, before the test fails.
TASK_END_TIMEOUT = 15.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every coroutine test checks, last of all, that it left no task behind that refuses
    to end (see ``tasks_end_with_the_test``)."""
    for item in items:
        if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.obj):
            item.fixturenames.insert(0, "tasks_end_with_the_test")


@pytest.fixture
def tasks_end_with_the_test(_function_scoped_runner: asyncio.Runner) -> Iterator[None]:
    """After the test and its other fixtures, on its loop: cancel the tasks still running and
    fail, naming them and where they wait, if any does not end. Without this such a task
    hangs the loop's closing (asyncio waits for every cancelled task), and with it the
    whole run, with nothing said about which test or task. A plain fixture on purpose:
    pytest-asyncio skips an async fixture's teardown code when the test failed."""
    yield
    loop = _function_scoped_runner.get_loop()
    left = [t for t in asyncio.all_tasks(loop) if not t.done()]
    if not left:
        return
    for task in left:
        task.cancel()
    _, stuck = loop.run_until_complete(asyncio.wait(left, timeout=TASK_END_TIMEOUT))
    if stuck:
        report = []
        for task in stuck:
            where = " <- ".join(
                f"{Path(f.f_code.co_filename).name}:{f.f_lineno} {f.f_code.co_name}"
                for f in reversed(task.get_stack())
            )
            report.append(f"{task.get_coro()!r} at {where or '?'}")
        # Closing the loop would wait for these tasks for ever: they are taken off asyncio's
        # list of tasks (test harness only), so that this test fails and the run goes on.
        for task in stuck:
            asyncio.tasks._unregister_task(task)  # type: ignore[attr-defined]
        pytest.fail("tasks that ignore cancellation:\n" + "\n".join(report))


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port that was free a moment ago (tests bind it right away)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports(n: int) -> list[int]:
    """``n`` consecutive free TCP ports (the gateway's ONVIF devices use base + k)."""
    for _ in range(100):
        base = free_port()
        ports = list(range(base, base + n))
        if ports[-1] > 65535:
            continue
        ok = True
        for port in ports:
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return ports
    raise RuntimeError("no free port range")


@contextlib.contextmanager
def private_network() -> Iterator[None]:
    """Run the calling thread, and the processes it starts, in a network namespace of its
    own with only loopback up: for the clients that insist on a well-known port (npm onvif
    probes 239.255.255.250:3702 and nothing else), which something on the host may hold.
    Sockets opened inside stay in it. Skips without root or iproute2."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 for a private network namespace")
    name = f"og-test-{secrets.token_hex(4)}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {made.stderr.strip()}")
    libc = ctypes.CDLL(None, use_errno=True)
    clone_newnet = 0x40000000
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            if libc.setns(target, clone_newnet) != 0:
                err = ctypes.get_errno()
                pytest.skip(f"cannot enter a network namespace: {os.strerror(err)}")
        finally:
            os.close(target)
        try:
            yield
        finally:
            if libc.setns(home, clone_newnet) != 0:
                raise OSError(ctypes.get_errno(), "cannot return to the test's network namespace")
    finally:
        os.close(home)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def require(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (installed by deploy/bootstrap.sh test)")


async def wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.02
) -> None:
    """Poll a condition that no event signals (e.g. another process's state)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


@pytest.fixture
def camera_password() -> str:
    return "cam-" + secrets.token_urlsafe(10)


@pytest.fixture
def vms_password() -> str:
    return "vms-" + secrets.token_urlsafe(10)


@pytest.fixture
async def fleet(camera_password: str) -> AsyncIterator[SimFleet]:
    fleet = SimFleet.build(
        hikvision=1, dahua=1, password=camera_password, specs=default_stream_specs("test")
    )
    await fleet.start()
    try:
        yield fleet
    finally:
        await fleet.stop()


def gateway_config_text(
    fleet: SimFleet,
    tmp_path: Path,
    vms_password: str,
    *,
    server_extra: str = "",
    camera_extra: str = "",
) -> str:
    ports = free_ports(len(fleet.cameras) + 1)
    text = fleet.gateway_config(
        bind="127.0.0.1",
        rtsp_port=free_port(),
        vms_user="vms",
        vms_password=vms_password,
        state_dir=str(tmp_path / "state"),
        onvif_base_port=ports[0],
    )
    if server_extra:
        text = text.replace("[server]\n", "[server]\n" + server_extra.strip() + "\n", 1)
    if camera_extra:
        text = text.replace("[[camera]]\n", "[[camera]]\n" + camera_extra.strip() + "\n")
    return text


@pytest.fixture
async def gateway(fleet: SimFleet, tmp_path: Path, vms_password: str) -> AsyncIterator[Gateway]:
    config = cfgmod.loads(gateway_config_text(fleet, tmp_path, vms_password), source="test.toml")
    gw = Gateway(config, start_services=False)
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


def stream_url(
    gw: Gateway, camera: str, stream: str, password: str | None, user: str = "vms"
) -> str:
    assert gw.rtsp is not None
    auth = f"{user}:{password}@" if password is not None else ""
    return f"rtsp://{auth}127.0.0.1:{gw.rtsp.port}/{camera}/{stream}"


async def run_tool(
    *argv: str, timeout: float = 60.0, env: dict[str, str] | None = None, cwd: str | None = None
) -> tuple[int, str, str]:
    """Run a real client to completion; returns (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(
            f"{argv[0]} did not finish in {timeout}s: {err.decode()[-2000:]}"
        ) from None
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")
