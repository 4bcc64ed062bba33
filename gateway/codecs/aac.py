"""AAC over RTP: RFC 3640 (MPEG4-GENERIC) in mode AAC-hbr.

Each packet: a 16-bit AU-headers-length (in bits), one 16-bit AU header per access unit
(13-bit AU-size, 3-bit AU-Index/AU-Index-delta), then the access units. We send one access
unit per packet; one larger than a packet is fragmented (RFC 3640 3.2.3.1): every fragment
carries an AU header whose AU-size is the size of the whole access unit, and only the last
fragment gets the marker bit. The depacketizer also reads several AUs per packet and other
size/index lengths (AAC-lbr uses 6/2/2).
"""

from __future__ import annotations

from gateway.codecs.base import DEFAULT_MAX_PAYLOAD, CodecParams, Depacketizer, Packetizer

SAMPLE_RATES = (
    96000,
    88200,
    64000,
    48000,
    44100,
    32000,
    24000,
    22050,
    16000,
    12000,
    11025,
    8000,
    7350,
)
AAC_LC = 2
# Audio object types whose AudioSpecificConfig continues with a GASpecificConfig.
_GA_OBJECT_TYPES = frozenset((1, 2, 3, 4, 6, 7, 17, 19, 20, 21, 22, 23))

SIZE_LENGTH = 13
INDEX_LENGTH = 3
AU_HEADER_SIZE = 2  # bytes, for 13 + 3 bits
MAX_AU_SIZE = (1 << SIZE_LENGTH) - 1


def audio_specific_config(object_type: int, sample_rate: int, channels: int) -> bytes:
    """An AudioSpecificConfig (ISO 14496-3 1.6.2.1) for a GA object type such as AAC-LC."""
    if object_type not in _GA_OBJECT_TYPES:
        raise ValueError(f"audio object type {object_type} is not a GA (AAC) object type")
    if channels == 8:
        channel_config = 7
    elif 1 <= channels <= 6:
        channel_config = channels
    else:
        raise ValueError(f"AAC channel count {channels} has no channel configuration")
    if not 0 < sample_rate < 1 << 24:
        raise ValueError(f"AAC sample rate {sample_rate} is out of range")
    value = object_type
    width = 5
    if sample_rate in SAMPLE_RATES:
        value = (value << 4) | SAMPLE_RATES.index(sample_rate)
        width += 4
    else:
        value = (((value << 4) | 0xF) << 24) | sample_rate
        width += 28
    # channelConfiguration, then GASpecificConfig: frameLengthFlag (1024 samples),
    # dependsOnCoreCoder and extensionFlag all zero.
    value = (value << 7) | (channel_config << 3)
    width += 7
    padding = -width % 8
    return (value << padding).to_bytes((width + padding) // 8, "big")


def parse_audio_specific_config(config: bytes) -> tuple[int, int, int]:
    """(audio object type, sample rate, channels) from an AudioSpecificConfig.

    Channels is 0 when the configuration is in a program config element.
    """
    data = bytes(config)
    if len(data) < 2:
        raise ValueError(f"AudioSpecificConfig too short: {len(data)} bytes")
    value = int.from_bytes(data[:8], "big")
    bits = len(data[:8]) * 8
    pos = 0

    def read(width: int) -> int:
        nonlocal pos
        if pos + width > bits:
            raise ValueError("AudioSpecificConfig truncated")
        pos += width
        return (value >> (bits - pos)) & ((1 << width) - 1)

    object_type = read(5)
    if object_type == 31:
        object_type = 32 + read(6)
    if object_type == 0:
        raise ValueError("AudioSpecificConfig has audio object type 0")
    index = read(4)
    if index == 15:
        sample_rate = read(24)
    elif index < len(SAMPLE_RATES):
        sample_rate = SAMPLE_RATES[index]
    else:
        raise ValueError(f"AudioSpecificConfig has reserved sampling frequency index {index}")
    channel_config = read(4)
    channels = 8 if channel_config == 7 else channel_config
    if channel_config > 7:
        raise ValueError(f"AudioSpecificConfig has reserved channel configuration {channel_config}")
    return object_type, sample_rate, channels


def strip_adts(frame: bytes) -> bytes:
    """The raw access unit of a single ADTS frame; other data is returned unchanged.

    A raw AAC access unit cannot start with the ADTS syncword (it would begin with an END
    element), so the check is unambiguous.
    """
    if len(frame) < 7 or frame[0] != 0xFF or frame[1] & 0xF6 != 0xF0:
        return frame
    header_size = 7 if frame[1] & 1 else 9
    frame_length = ((frame[3] & 3) << 11) | (frame[4] << 3) | (frame[5] >> 5)
    if frame_length != len(frame) or frame_length < header_size:
        raise ValueError(
            f"ADTS frame length {frame_length} does not match the {len(frame)}-byte frame"
        )
    if frame[6] & 3:
        raise ValueError("ADTS frames with several raw data blocks are not supported")
    return frame[header_size:]


class AacPacketizer(Packetizer):
    def __init__(
        self, params: CodecParams, payload_type: int = 97, max_payload: int = DEFAULT_MAX_PAYLOAD
    ) -> None:
        if not 0 <= payload_type <= 127:
            raise ValueError(f"RTP payload type must be 0..127, got {payload_type}")
        if max_payload < 2 + AU_HEADER_SIZE + 1:
            raise ValueError(f"max_payload {max_payload} is too small for AAC")
        self.params = params
        self.payload_type = payload_type
        self.max_payload = max_payload
        self.config = params.config or audio_specific_config(
            AAC_LC, params.clock_rate, params.channels
        )

    def packetize(self, frame: bytes, keyframe: bool) -> list[bytes]:
        unit = strip_adts(bytes(frame))
        size = len(unit)
        if size == 0:
            return []
        if size > MAX_AU_SIZE:
            raise ValueError(f"AAC access unit of {size} bytes exceeds the 13-bit AU-size")
        headers = b"\x00\x10" + (size << INDEX_LENGTH).to_bytes(2, "big")  # 16 bits, index 0
        capacity = self.max_payload - len(headers)
        if size <= capacity:
            return [headers + unit]
        count = -(-size // capacity)
        base, extra = divmod(size, count)
        view = memoryview(unit)
        payloads = []
        pos = 0
        for i in range(count):
            fragment = base + 1 if i < extra else base
            payloads.append(headers + view[pos : pos + fragment])
            pos += fragment
        return payloads

    def sdp_attributes(self) -> list[str]:
        pt = self.payload_type
        return [
            f"rtpmap:{pt} MPEG4-GENERIC/{self.params.clock_rate}/{self.params.channels}",
            f"fmtp:{pt} streamtype=5;profile-level-id=1;mode=AAC-hbr;sizelength=13;"
            f"indexlength=3;indexdeltalength=3;config={self.config.hex().upper()}",
        ]


class AacDepacketizer(Depacketizer):
    """RFC 3640 payloads -> raw AAC access units (several per packet, or fragmented)."""

    def __init__(
        self,
        size_length: int = SIZE_LENGTH,
        index_length: int = INDEX_LENGTH,
        index_delta_length: int = INDEX_LENGTH,
    ) -> None:
        if not 1 <= size_length <= 16 or not 0 <= index_length <= 8:
            raise ValueError(
                f"unsupported AU header layout: sizelength={size_length}, "
                f"indexlength={index_length}"
            )
        if not 0 <= index_delta_length <= 8:
            raise ValueError(f"unsupported indexdeltalength={index_delta_length}")
        self.size_length = size_length
        self.index_length = index_length
        self.index_delta_length = index_delta_length
        self._fragments: list[bytes] | None = None
        self._fragment_size = 0
        self._fragment_received = 0
        self._fragment_timestamp = -1

    def reset(self) -> None:
        """Forget a fragmented access unit in progress (call on a sequence-number gap)."""
        self._fragments = None

    def _au_sizes(self, payload: bytes) -> tuple[list[int], int]:
        if len(payload) < 2:
            raise ValueError(f"AAC RTP payload too short: {len(payload)} bytes")
        header_bits = (payload[0] << 8) | payload[1]
        if header_bits == 0:
            raise ValueError("AAC RTP payload has no AU headers (AU-headers-length is 0)")
        data_start = 2 + (header_bits + 7) // 8
        if data_start > len(payload):
            raise ValueError(
                f"AAC AU headers of {header_bits} bits exceed the {len(payload)}-byte payload"
            )
        section = int.from_bytes(payload[2:data_start], "big") >> (-header_bits % 8)
        sizes = []
        pos = 0
        index_bits = self.index_length
        while pos < header_bits:
            width = self.size_length + index_bits
            if pos + width > header_bits:
                raise ValueError(
                    f"AAC AU-headers-length {header_bits} is not a whole number of AU headers"
                )
            pos += width
            header = (section >> (header_bits - pos)) & ((1 << width) - 1)
            sizes.append(header >> index_bits)  # AU-size, then AU-Index(-delta)
            index_bits = self.index_delta_length
        return sizes, data_start

    def push(self, payload: bytes, marker: bool, timestamp: int) -> list[bytes]:
        payload = bytes(payload)
        sizes, pos = self._au_sizes(payload)
        data_size = len(payload) - pos
        if len(sizes) == 1 and sizes[0] != data_size:
            return self._fragment(sizes[0], payload[pos:], timestamp)
        self._fragments = None
        if sum(sizes) != data_size:
            raise ValueError(
                f"AAC AU sizes add up to {sum(sizes)} bytes but the payload carries {data_size}"
            )
        units = []
        for size in sizes:
            units.append(payload[pos : pos + size])
            pos += size
        return units

    def _fragment(self, size: int, data: bytes, timestamp: int) -> list[bytes]:
        if len(data) > size:
            self._fragments = None
            raise ValueError(f"AAC payload carries {len(data)} bytes for a {size}-byte access unit")
        continues = (
            self._fragments is not None
            and self._fragment_size == size
            and self._fragment_timestamp == timestamp
        )
        fragments = self._fragments
        if fragments is None or not continues:
            # A new fragmented access unit (whatever was in progress lost its end).
            fragments = self._fragments = []
            self._fragment_size = size
            self._fragment_received = 0
            self._fragment_timestamp = timestamp
        self._fragment_received += len(data)
        if self._fragment_received > size:
            self._fragments = None
            raise ValueError(f"AAC fragments exceed their {size}-byte access unit")
        fragments.append(data)
        if self._fragment_received < size:
            return []
        unit = b"".join(fragments)
        self._fragments = None
        return [unit]
