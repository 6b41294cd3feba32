"""H.264 depacketization (RFC 6184) with hand-built payloads: single NAL units, STAP-A, FU-A, loss, wrap."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection

import pytest
from aiortc.codecs.h264 import H264PayloadDescriptor
from hypothesis import given, settings
from hypothesis import strategies as st

from dragonfork.stream.ingest.h264 import START_CODE, H264Depacketizer
from dragonfork.webrtc import h264 as fan_out_h264

SPS = b"\x67\x42\xc0\x1e\xda\x02\x80\xbf\xe5\x84"
PPS = b"\x68\xce\x3c\x80"
SEI = b"\x06\x05\x01\xff\x80"
IDR = b"\x65\x88\x84" + bytes(range(200))
P_SLICE = b"\x41\x9a\x02" + bytes(range(100, 180))
P_SLICE_2 = b"\x41\x9e\x07" + bytes(40)


@dataclasses.dataclass
class AccessUnit:
    data: bytes
    timestamp: int
    keyframe: bool
    packet_count: int
    size: int


class Recorder:
    """Collects what the depacketizer hands over, and feeds it packets with consecutive sequence numbers."""

    def __init__(self, first_sequence: int = 100) -> None:
        self.units: list[AccessUnit] = []
        self.dropped: list[int] = []
        self.depacketizer = H264Depacketizer(self._unit, self.dropped.append)
        self.sequence = first_sequence

    def _unit(self, data: bytes, timestamp: int, keyframe: bool, packet_count: int, size: int) -> None:
        self.units.append(AccessUnit(data, timestamp, keyframe, packet_count, size))

    def send(
        self, payloads: list[bytes], timestamp: int, *, marker: bool = True, lose: Collection[int] = ()
    ) -> list[bool]:
        """Send one access unit's payloads (marker on the last), skipping the indices in ``lose``."""
        results = []
        for index, payload in enumerate(payloads):
            if index not in lose:
                last = index == len(payloads) - 1
                results.append(self.depacketizer.push(self.sequence, timestamp, marker and last, payload))
            self.sequence = (self.sequence + 1) & 0xFFFF
        return results


def annex_b(*nal_units: bytes) -> bytes:
    return b"".join(START_CODE + nal for nal in nal_units)


def stap_a(*nal_units: bytes) -> bytes:
    return b"\x78" + b"".join(len(nal).to_bytes(2, "big") + nal for nal in nal_units)


def fu_a(nal: bytes, fragment_size: int) -> list[bytes]:
    """FU-A fragments of one NAL unit (RFC 6184 section 5.8), ``fragment_size`` bytes of NAL body each."""
    indicator = (nal[0] & 0xE0) | 28
    body = nal[1:]
    chunks = [body[offset : offset + fragment_size] for offset in range(0, len(body), fragment_size)]
    fragments = []
    for index, chunk in enumerate(chunks):
        start = 0x80 if index == 0 else 0
        end = 0x40 if index == len(chunks) - 1 else 0
        fragments.append(bytes([indicator, start | end | (nal[0] & 0x1F)]) + chunk)
    return fragments


def test_single_nal_unit_is_one_access_unit() -> None:
    recorder = Recorder()

    assert recorder.send([P_SLICE], 3000) == [True]

    assert recorder.units == [AccessUnit(annex_b(P_SLICE), 3000, False, 1, len(P_SLICE))]


def test_stap_a_with_sps_pps_and_idr_is_a_keyframe() -> None:
    recorder = Recorder()

    recorder.send([stap_a(SPS, PPS, IDR)], 3000)

    [unit] = recorder.units
    assert unit.data == annex_b(SPS, PPS, IDR)
    assert unit.keyframe


def test_fu_a_fragmented_idr_after_parameter_sets_is_one_keyframe() -> None:
    recorder = Recorder()
    payloads = [stap_a(SPS, PPS, SEI), *fu_a(IDR, 64)]

    assert recorder.send(payloads, 90_000) == [True] * 5

    [unit] = recorder.units
    assert unit.data == annex_b(SPS, PPS, SEI, IDR)
    assert (unit.keyframe, unit.packet_count, unit.size) == (True, 5, sum(map(len, payloads)))


def test_fu_a_idr_alone_is_detected_as_keyframe_and_p_frames_are_not() -> None:
    recorder = Recorder()

    recorder.send(fu_a(IDR, 50), 0)
    recorder.send(fu_a(P_SLICE, 30), 3600)

    assert [(unit.data, unit.keyframe) for unit in recorder.units] == [
        (annex_b(IDR), True),
        (annex_b(P_SLICE), False),
    ]


def test_several_slices_make_one_access_unit_until_the_marker() -> None:
    recorder = Recorder()

    recorder.send([P_SLICE_2, *fu_a(P_SLICE, 30), P_SLICE_2], 7200)

    assert [unit.data for unit in recorder.units] == [annex_b(P_SLICE_2, P_SLICE, P_SLICE_2)]


def test_sequence_wraparound_inside_a_frame_is_not_a_gap() -> None:
    recorder = Recorder(first_sequence=65534)

    recorder.send(fu_a(IDR, 40), 1000)  # sequence numbers 65534, 65535, 0, 1, 2, 3
    recorder.send([P_SLICE], 4600)

    assert [unit.data for unit in recorder.units] == [annex_b(IDR), annex_b(P_SLICE)]
    assert recorder.dropped == []


def test_gap_inside_a_frame_drops_only_that_frame() -> None:
    recorder = Recorder()

    recorder.send(fu_a(IDR, 40), 0, lose={2})
    recorder.send([P_SLICE], 3600)

    assert recorder.dropped == [len(fu_a(IDR, 40)) - 1]
    assert [unit.data for unit in recorder.units] == [annex_b(P_SLICE)]
    assert recorder.depacketizer.frames_dropped == 1


@pytest.mark.parametrize(
    "first_frame",
    [[*fu_a(P_SLICE, 40)], [P_SLICE_2, P_SLICE, P_SLICE_2]],
    ids=["last-fragment-lost", "last-slice-lost"],
)
def test_gap_across_a_frame_boundary_drops_both_frames(first_frame: list[bytes]) -> None:
    """Losing the marker packet of one frame may also have lost the start of the next one."""
    recorder = Recorder()

    recorder.send(first_frame, 0, lose={len(first_frame) - 1})
    recorder.send([P_SLICE_2, P_SLICE_2], 3600)
    recorder.send([P_SLICE], 7200)

    assert recorder.dropped == [len(first_frame) - 1, 2]
    assert [unit.timestamp for unit in recorder.units] == [7200]


def test_timestamp_change_ends_an_access_unit_whose_marker_is_missing() -> None:
    recorder = Recorder()

    recorder.send([stap_a(SPS, PPS), IDR], 0, marker=False)
    recorder.send([P_SLICE], 3600)

    assert [(unit.data, unit.timestamp, unit.keyframe) for unit in recorder.units] == [
        (annex_b(SPS, PPS, IDR), 0, True),
        (annex_b(P_SLICE), 3600, False),
    ]


@pytest.mark.parametrize(
    ("payloads", "reason"),
    [
        (fu_a(IDR, 40)[:-1], "marker while the fragmented NAL unit is still open"),
        (fu_a(IDR, 40)[1:], "fragments whose start was never seen"),
        ([fu_a(IDR, 40)[0], P_SLICE], "a new NAL unit before the fragment's end"),
        ([*fu_a(IDR, 40)[:2], *fu_a(IDR, 40)], "a second fragment start before the first one ended"),
    ],
)
def test_broken_fragmentation_without_a_sequence_gap_drops_the_frame(
    payloads: list[bytes], reason: str
) -> None:
    recorder = Recorder()

    assert all(recorder.send(payloads, 0)), reason

    assert recorder.units == []
    assert recorder.dropped == [len(payloads)]


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x00\x01",  # NAL type 0
        b"\x79\x00\x01\x41",  # STAP-B
        b"\x7a\x00",  # MTAP16
        b"\x7b\x00",  # MTAP24
        b"\x7d\x85\x00",  # FU-B
        b"\x7e",  # reserved 30
        b"\x7f",  # reserved 31
        b"\x7c\xc5\x01",  # FU-A with start and end in one fragment
        b"\x7c\x98\x01",  # FU-A fragmenting a STAP-A
        b"\x7c\x85",  # FU-A with no fragment bytes
        b"\x78",  # STAP-A without NAL units
        b"\x78\x00\x00",  # STAP-A with a zero-length NAL unit
        b"\x78\x00\x05\x67\x42",  # STAP-A NAL unit longer than the packet
        stap_a(SPS) + b"\x00",  # STAP-A with a truncated size field
        stap_a(SPS, b"\x7c\x85"),  # STAP-A holding an FU-A
    ],
)
def test_malformed_payloads_are_reported_and_drop_their_frame(payload: bytes) -> None:
    recorder = Recorder()

    assert recorder.send([payload], 0) == [False]
    recorder.send([P_SLICE], 3600)

    assert recorder.dropped == [1]
    assert [unit.timestamp for unit in recorder.units] == [3600]


def test_late_duplicate_is_ignored_and_a_large_backward_jump_resynchronises() -> None:
    recorder = Recorder()
    depacketizer = recorder.depacketizer

    recorder.send([P_SLICE], 0)  # sequence 100
    assert depacketizer.push(100, 0, True, P_SLICE)  # duplicate: ignored
    recorder.send([P_SLICE], 3600)  # sequence 101
    assert depacketizer.push(40_000, 7200, True, P_SLICE)  # a new sender: a gap, this frame is dropped
    assert depacketizer.push(40_001, 10_800, True, P_SLICE)

    assert depacketizer.late_packets == 1
    assert [unit.timestamp for unit in recorder.units] == [0, 3600, 10_800]
    assert recorder.dropped == [1]


# --- properties --------------------------------------------------------------------------------------------

nal_types = st.sampled_from([1, 5, 6, 7, 8, 9])
nal_units = st.builds(
    lambda nal_type, nri, body: bytes([nri << 5 | nal_type]) + body,
    nal_types,
    st.integers(0, 3),
    st.binary(min_size=0, max_size=300),
)
access_units = st.lists(nal_units, min_size=1, max_size=6)


def packetize(nal_units: list[bytes], max_payload: int, aggregate: bool) -> list[bytes]:
    """A small RFC 6184 packetizer: FU-A for what does not fit, STAP-A for runs of small units if asked."""
    payloads: list[bytes] = []
    pending: list[bytes] = []

    def flush() -> None:
        if len(pending) == 1:
            payloads.append(pending[0])
        elif pending:
            payloads.append(stap_a(*pending))
        pending.clear()

    for nal in nal_units:
        if len(nal) > max_payload:
            flush()
            payloads.extend(fu_a(nal, max_payload - 2))
        elif aggregate and len(stap_a(*pending, nal)) <= max_payload:
            pending.append(nal)
        else:
            flush()
            pending.append(nal)
            if not aggregate:
                flush()
    flush()
    return payloads


@settings(max_examples=300, deadline=None)
@given(
    stream=st.lists(access_units, min_size=1, max_size=8),
    max_payload=st.integers(8, 400),
    aggregate=st.booleans(),
    first_sequence=st.integers(0, 0xFFFF),
)
def test_packetized_access_units_come_back_byte_for_byte(
    stream: list[list[bytes]], max_payload: int, aggregate: bool, first_sequence: int
) -> None:
    recorder = Recorder(first_sequence)

    for index, nal_list in enumerate(stream):
        assert all(recorder.send(packetize(nal_list, max_payload, aggregate), 3000 * index))

    assert recorder.dropped == []
    assert [unit.data for unit in recorder.units] == [annex_b(*nal_list) for nal_list in stream]
    assert [unit.keyframe for unit in recorder.units] == [
        any(nal[0] & 0x1F == 5 for nal in nal_list) for nal_list in stream
    ]


@settings(max_examples=300, deadline=None)
@given(
    packets=st.lists(
        st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF), st.booleans(), st.binary(max_size=60)),
        max_size=60,
    )
)
def test_random_packets_never_raise(packets: list[tuple[int, int, bool, bytes]]) -> None:
    recorder = Recorder()

    for sequence, timestamp, marker, payload in packets:
        recorder.depacketizer.push(sequence, timestamp, marker, memoryview(payload))

    assert all(unit.data.startswith(START_CODE) for unit in recorder.units)
    assert len(recorder.units) + len(recorder.dropped) <= len(packets)


@settings(max_examples=300, deadline=None)
@given(
    stream=st.lists(access_units, min_size=1, max_size=5),
    cuts=st.lists(st.integers(0, 400), min_size=1, max_size=30),
    max_payload=st.integers(8, 200),
)
def test_truncated_packets_of_a_valid_stream_never_raise(
    stream: list[list[bytes]], cuts: list[int], max_payload: int
) -> None:
    recorder = Recorder()

    for index, nal_list in enumerate(stream):
        payloads = packetize(nal_list, max_payload, aggregate=True)
        truncated = [payload[: cuts[position % len(cuts)]] for position, payload in enumerate(payloads)]
        recorder.send(truncated, 3000 * index)

    assert all(unit.data.startswith(START_CODE) for unit in recorder.units)
    assert len(recorder.units) + len(recorder.dropped) == len(stream)


# --- the fan-out's packetizer (webrtc/h264.py): what it sends, read back by ours and by aiortc's -----------

_NAL_HEADERS = st.sampled_from([0x67, 0x68, 0x06, 0x65, 0x41, 0x01])
_NAL_UNITS = st.tuples(_NAL_HEADERS, st.binary(min_size=1, max_size=4000)).map(
    lambda unit: bytes([unit[0]]) + unit[1].replace(b"\0", b"\1")  # no start code inside a unit
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_NAL_UNITS, min_size=1, max_size=6))
def test_packetized_access_units_read_back_whole_by_our_depacketizer_and_aiortcs(
    units: list[bytes],
) -> None:
    payloads = fan_out_h264.packetize(annex_b(*units))
    assert all(len(payload) <= fan_out_h264.MAX_PAYLOAD for payload in payloads)
    recorder = Recorder()
    assert all(recorder.send(payloads, 9000))
    assert [unit.data for unit in recorder.units] == [annex_b(*units)]
    assert b"".join(H264PayloadDescriptor.parse(payload)[1] for payload in payloads) == annex_b(*units)


def test_a_large_nal_units_fragments_are_all_one_size_but_the_last_so_a_frame_is_one_segmented_send() -> None:
    idr = b"\x65" + bytes(range(1, 256)) * 20  # 5101 bytes: four fragments
    payloads = fan_out_h264.packetize(annex_b(SPS, PPS, idr))
    assert payloads[0] == stap_a(SPS, PPS)  # F 0, NRI 3 (the SPS's), type 24
    fragments = payloads[1:]
    assert len(fragments) == 4 and len({len(fragment) for fragment in fragments[:-1]}) == 1
    assert len(fragments[-1]) <= len(fragments[0]) <= fan_out_h264.MAX_PAYLOAD
    assert [fragment[1] & 0xC0 for fragment in fragments] == [0x80, 0, 0, 0x40]  # start, middle, end
    assert fan_out_h264.packetize(annex_b(P_SLICE)) == [
        P_SLICE
    ]  # a small one alone: a single NAL unit packet
