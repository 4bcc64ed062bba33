"""SNTP: wire type, sans-IO server core (honest stratum/leap, origin echo), fuzz, and the
asyncio server queried by the client over a real UDP socket on loopback."""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.egress import ntp
from gateway.egress.ntp import (
    ClockState,
    NtpPacket,
    NtpServer,
    client_request,
    kernel_clock_state,
    ntp_response,
    parse_server_reply,
    reference_id_for,
)
from gateway.rtp.packet import NTP_UNIX_OFFSET, ntp_from_unix, unix_from_ntp

SYNCED = ClockState(synchronized=True, max_error=0.25, precision=-23)
UNSYNCED = ClockState(synchronized=False, precision=-23)
NOW = 1_767_225_600.5  # 2026-01-01T00:00:00.5Z


def test_timestamp_conversion_round_trips_and_handles_era_1() -> None:
    assert ntp_from_unix(0.0) >> 32 == NTP_UNIX_OFFSET
    assert abs(unix_from_ntp(ntp_from_unix(NOW), near=NOW) - NOW) < 1e-6
    # 2036-02-07T06:28:16Z is the end of NTP era 0: the seconds field wraps to zero.
    era_end = 2**32 - NTP_UNIX_OFFSET
    assert ntp_from_unix(era_end + 10.0) >> 32 == 10
    assert abs(unix_from_ntp(ntp_from_unix(era_end + 10.0), near=era_end) - (era_end + 10.0)) < 1e-6


def test_packet_parse_and_bytes_round_trip() -> None:
    packet = NtpPacket.parse(client_request(NOW, version=3))
    assert (packet.leap, packet.version, packet.mode) == (0, 3, ntp.MODE_CLIENT)
    assert bytes(packet) == client_request(NOW, version=3)
    with pytest.raises(ValueError, match="47 bytes, shorter than the 48-byte header"):
        NtpPacket.parse(b"\x23" * 47)
    with pytest.raises(ValueError, match="more than 1024"):
        NtpPacket.parse(b"\x23" * 2000)


def test_synchronised_reply_echoes_origin_and_says_stratum_plus_one() -> None:
    request = client_request(NOW - 3.0)  # a client whose clock is 3 s slow
    reply_bytes = ntp_response(
        request,
        NOW + 0.001,
        clock=SYNCED,
        received=NOW,
        upstream_stratum=2,
        reference_id=reference_id_for("10.0.0.1"),
    )
    assert reply_bytes is not None and len(reply_bytes) == 48
    reply = NtpPacket.parse(reply_bytes)
    assert reply.mode == ntp.MODE_SERVER
    assert reply.version == 4
    assert reply.leap == ntp.LEAP_NONE
    assert reply.stratum == 3
    assert reply.reference_id == bytes([10, 0, 0, 1])
    assert reply.origin_ts == NtpPacket.parse(request).transmit_ts
    assert abs(unix_from_ntp(reply.receive_ts, near=NOW) - NOW) < 1e-6
    assert abs(unix_from_ntp(reply.transmit_ts, near=NOW) - (NOW + 0.001)) < 1e-6
    assert reply.root_dispersion == int(0.25 * 65536)
    assert reply.precision == -23
    # The client's view: offset about +3 s.
    result = parse_server_reply(reply_bytes, request, arrived=NOW - 3.0 + 0.002)
    assert abs(result.offset - 3.0) < 0.01
    assert result.stratum == 3


def test_unsynchronised_clock_is_announced_not_hidden() -> None:
    reply = NtpPacket.parse(ntp_response(client_request(NOW), NOW, clock=UNSYNCED) or b"")
    assert reply.leap == ntp.LEAP_ALARM
    assert reply.stratum == ntp.STRATUM_UNSYNCHRONIZED
    assert reply.reference_id == b"INIT"
    # The time is still the gateway's own: a client may show it, but must not sync to it.
    assert abs(unix_from_ntp(reply.transmit_ts, near=NOW) - NOW) < 1e-6


def test_pending_leap_second_is_passed_on() -> None:
    clock = ClockState(synchronized=True, leap=ntp.LEAP_INSERT)
    reply = NtpPacket.parse(ntp_response(client_request(NOW), NOW, clock=clock) or b"")
    assert reply.leap == ntp.LEAP_INSERT


def test_version_is_copied_from_the_client() -> None:
    reply = NtpPacket.parse(ntp_response(client_request(NOW, version=3), NOW, clock=SYNCED) or b"")
    assert reply.version == 3


def test_requests_that_must_not_be_answered() -> None:
    base = bytearray(client_request(NOW))
    # Mode 6 (control) and 7 (private): never answered, they are amplification vectors.
    for mode in (1, 2, 4, 5, 6, 7):
        packet = bytes([(base[0] & 0xF8) | mode]) + bytes(base[1:])
        assert ntp_response(packet, NOW, clock=SYNCED) is None
    zero_version = bytes([0x03]) + bytes(base[1:])
    with pytest.raises(ValueError, match="unsupported NTP version 0"):
        ntp_response(zero_version, NOW, clock=SYNCED)
    zero_transmit = bytes(base[:40]) + b"\x00" * 8
    with pytest.raises(ValueError, match="transmit timestamp is zero"):
        ntp_response(zero_transmit, NOW, clock=SYNCED)
    with pytest.raises(ValueError, match="upstream stratum 15"):
        ntp_response(bytes(base), NOW, clock=SYNCED, upstream_stratum=15)


def test_reference_id_for_ipv6_upstream_is_md5_prefix() -> None:
    refid = reference_id_for("2001:db8::1")
    assert len(refid) == 4 and refid != b"\x00\x00\x00\x00"
    assert reference_id_for(None) == b"\x00\x00\x00\x00"


def test_kernel_clock_state_reads_adjtimex() -> None:
    state = kernel_clock_state()
    assert isinstance(state.synchronized, bool)
    assert -32 <= state.precision <= 0
    if state.synchronized:
        assert state.max_error >= 0


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_never_raises_anything_but_valueerror(data: bytes) -> None:
    try:
        reply = ntp_response(data, NOW, clock=SYNCED)
    except ValueError:
        return
    if reply is not None:
        packet = NtpPacket.parse(reply)
        assert packet.mode == ntp.MODE_SERVER
        assert packet.origin_ts == struct.unpack_from("!Q", data, 40)[0]


async def test_server_and_client_over_loopback() -> None:
    server = NtpServer(upstream_stratum=1, clock_state=lambda: SYNCED)
    await server.start("127.0.0.1", 0)
    try:
        before = time.time()
        result = await ntp.query("127.0.0.1", server.port, timeout=5)
        after = time.time()
        assert before <= result.server_time <= after
        assert result.stratum == 2
        assert result.leap == ntp.LEAP_NONE
        assert abs(result.offset) < 0.5
        assert server.answered == 1
    finally:
        await server.close()


async def test_server_ignores_garbage_and_keeps_serving() -> None:
    server = NtpServer(clock_state=lambda: UNSYNCED)
    await server.start("127.0.0.1", 0)
    try:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", server.port))
        await loop.sock_sendall(sock, b"not ntp")
        sock.close()
        result = await ntp.query("127.0.0.1", server.port, timeout=5)
        assert result.stratum == ntp.STRATUM_UNSYNCHRONIZED
        assert result.leap == ntp.LEAP_ALARM
        assert server.malformed == 1
    finally:
        await server.close()
