"""One SRT connection in live mode: a publisher we receive from, or a reader we send to.

A connection has no task and no socket of its own: the server hands it the datagrams addressed to its
socket id (``on_data``/``on_control``) and calls ``tick`` every ``TICK`` seconds; it answers through the
``send`` callable. That keeps a thousand connections at one receive loop and one timer.

Receiving (publisher → us): packets are delivered in sequence order as soon as the sequence is
contiguous. A gap is reported at once (NAK) and again every RTT + 4·RTTVar while it stays open (libsrt's
NAKREPORT); the packets behind a gap wait for it until the first of them reaches its time to play
(TSBPD: the peer's timestamp on our clock, plus the negotiated latency), then the gap is given up (too-late
drop, TLPKTDROP) and counted. A full ACK goes out every ``TICK`` when there is something new to
acknowledge; the peer's ACKACK gives the RTT. Sending (us → reader): every packet stays in the send buffer
until the reader acknowledges it or it is older than the latency allows, and a NAK resends it with the
retransmitted flag. Both sides send a keepalive after a second of silence and end the connection after
``PEER_IDLE_TIMEOUT`` without a packet from the peer, as libsrt does.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable

from dragonfork.servers.srt import packet as pk
from dragonfork.servers.srt.crypto import KeyMaterialError, StreamKeys
from dragonfork.servers.srt.packet import Ack, ControlPacket, DataPacket
from dragonfork.stream.ingest.rtp import Unwrapper

TICK = 0.01
"""The timer period: ACKs every 10 ms (libsrt's SYN interval), loss and drop checks."""
KEEPALIVE_INTERVAL = 1.0
PEER_IDLE_TIMEOUT = 5.0
RECEIVE_WINDOW = 8192
"""Packets ahead of the first missing one a receiver accepts (libsrt's default flow window)."""
MAX_REPORTED_LOSSES = 1024
"""Missing packets NAKed again and again at most (the timer walks them every tick)."""
SEND_BUFFER_PACKETS = 8192
MIN_NAK_INTERVAL = 0.02
SEND_GRACE = 1.0
"""A sent packet is kept this long past the latency for retransmission, then dropped."""


@dataclasses.dataclass
class ConnectionStats:
    """Counters in datarhei's names (``api.SRTStatistics``)."""

    sent_pkt: int = 0
    recv_pkt: int = 0
    sent_unique_pkt: int = 0
    recv_unique_pkt: int = 0
    send_loss_pkt: int = 0
    recv_loss_pkt: int = 0
    sent_retrans_pkt: int = 0
    recv_retran_pkts: int = 0
    sent_ack_pkt: int = 0
    recv_ack_pkt: int = 0
    sent_nak_pkt: int = 0
    recv_nak_pkt: int = 0
    send_drop_pkt: int = 0
    recv_drop_pkt: int = 0
    recv_undecrypt_pkt: int = 0
    sent_bytes: int = 0
    recv_bytes: int = 0
    sent_unique_bytes: int = 0
    recv_unique_bytes: int = 0
    sent_retrans_bytes: int = 0


class ConnectionClosed(Exception):
    """The connection is over; the message says why (shutdown by the peer, a silent peer)."""


@dataclasses.dataclass(slots=True)
class _Sent:
    sent_at: float
    timestamp: int
    msg_flags: int
    payload: bytes


class SrtConnection:
    def __init__(
        self,
        *,
        socket_id: int,
        peer_socket_id: int,
        peer: tuple[str, int],
        isn: int,
        latency: float,
        keys: StreamKeys | None,
        rekey: Callable[[bytes], StreamKeys] | None,
        send: Callable[[bytes, tuple[str, int]], None],
        clock: Callable[[], float],
    ) -> None:
        """``latency`` (seconds) is the negotiated latency of the direction this connection carries;
        ``rekey`` unwraps the key material of a key refresh (None: the connection is not encrypted)."""
        self.socket_id = socket_id
        self.peer_socket_id = peer_socket_id
        self.peer = peer
        self.latency = latency
        self.keys = keys
        self._rekey = rekey
        self.stats = ConnectionStats()
        self._send_datagram = send
        self._clock = clock
        self._on_payload: Callable[[bytes], None] | None = None
        now = clock()
        self.started_at = now
        self.last_heard = now
        self._last_sent = now
        self.rtt = 0.1
        self.rtt_var = 0.05
        # receiving
        self._rcv_next = isn
        self._rcv_high = pk.seq_add(isn, -1)
        # seq → (time to play, payload; None for a packet the sender gave up), received but not delivered
        self._buffer: dict[int, tuple[float, bytes | None]] = {}
        self._losses: dict[int, float] = {}  # missing seq → when it was last NAKed, oldest first
        self._tsbpd_base: float | None = None
        self._timestamps = Unwrapper(32)  # SRT's µs timestamps wrap every 71 minutes
        self._acked_upto = isn
        self._ack_number = 0
        self._acks_sent: collections.OrderedDict[int, float] = collections.OrderedDict()
        self._rate_window: collections.deque[tuple[float, int]] = collections.deque()
        # sending
        self._snd_next = isn
        self._msgno = 1
        self._sent: collections.OrderedDict[int, _Sent] = collections.OrderedDict()

    def attach_receiver(self, on_payload: Callable[[bytes], None]) -> None:
        """Make this a receiving connection (a publisher): delivered payloads go to ``on_payload``."""
        self._on_payload = on_payload

    # -- common ----------------------------------------------------------------------------------------

    def _now_us(self) -> int:
        return int((self._clock() - self.started_at) * 1_000_000) & 0xFFFF_FFFF

    def _send(self, datagram: bytes) -> None:
        self._last_sent = self._clock()
        self._send_datagram(datagram, self.peer)

    def send_control(self, kind: int, info: int = 0, body: bytes = b"", subtype: int = 0) -> None:
        self._send(ControlPacket(kind, subtype, info, self._now_us(), self.peer_socket_id, body).encode())

    def on_control(self, control: ControlPacket) -> None:
        """One control packet from the peer; ``PacketError`` for a malformed one, ``ConnectionClosed``
        for a shutdown."""
        self.last_heard = self._clock()
        kind = control.type
        if kind == pk.ACK:
            self._on_ack(control)
        elif kind == pk.NAK:
            self._on_nak(control)
        elif kind == pk.ACKACK:
            self._on_ackack(control.info)
        elif kind == pk.DROPREQ:
            self._on_dropreq(control.body)
        elif kind == pk.SHUTDOWN:
            raise ConnectionClosed("shutdown by the peer")
        elif kind == pk.USER_DEFINED and control.subtype == pk.EXT_KMREQ:
            self._on_key_refresh(control.body)
        # KEEPALIVE refreshes last_heard; congestion warnings, peer errors and other extended messages
        # change nothing in live mode.

    def _on_key_refresh(self, key_material: bytes) -> None:
        """The peer announces its next key: take it beside the current one and confirm (KMRSP)."""
        if self.keys is None or self._rekey is None:
            raise pk.PacketError("key material on a connection that is not encrypted")
        try:
            refreshed = self._rekey(key_material)
        except KeyMaterialError as exc:
            raise pk.PacketError(f"refreshed key material: {exc}") from None
        self.keys = self.keys.updated(refreshed)
        self.send_control(pk.USER_DEFINED, body=key_material, subtype=pk.EXT_KMRSP)

    def tick(self) -> None:
        """The timer: too-late drops, periodic NAKs, ACK, keepalive; ``ConnectionClosed`` when idle."""
        now = self._clock()
        if now - self.last_heard > PEER_IDLE_TIMEOUT:
            raise ConnectionClosed(f"nothing heard from the peer for {PEER_IDLE_TIMEOUT:.0f} s")
        if self._on_payload is not None:
            self._drop_too_late(now)
            self._report_losses(now)
            self._acknowledge(now)
        else:
            self._drop_unacknowledged(now)
        if now - self._last_sent >= KEEPALIVE_INTERVAL:
            self.send_control(pk.KEEPALIVE)

    def shutdown(self) -> None:
        self.send_control(pk.SHUTDOWN, body=bytes(4))

    def _update_rtt(self, sample: float) -> None:
        self.rtt_var = 0.75 * self.rtt_var + 0.25 * abs(self.rtt - sample)
        self.rtt = 0.875 * self.rtt + 0.125 * sample

    # -- receiving (a publisher) -----------------------------------------------------------------------

    def on_data(self, data: DataPacket) -> None:
        now = self._clock()
        self.last_heard = now
        stats = self.stats
        stats.recv_pkt += 1
        stats.recv_bytes += len(data.payload) + pk.HEADER_SIZE
        if data.retransmitted:
            stats.recv_retran_pkts += 1
        seq = data.seq
        ahead = pk.seq_diff(seq, self._rcv_next)
        if ahead < 0 or seq in self._buffer:
            return  # a duplicate, or a packet given up already
        if ahead >= RECEIVE_WINDOW:
            self._resynchronize(seq)  # the sender is a window ahead (an outage): what is missing is gone
        payload = data.payload
        if data.key:
            if self.keys is None:
                stats.recv_undecrypt_pkt += 1
                return
            try:
                payload = self.keys.crypt(data.key, seq, payload)
            except KeyMaterialError:
                stats.recv_undecrypt_pkt += 1
                return
        elif self.keys is not None:
            stats.recv_undecrypt_pkt += 1  # a clear packet on an encrypted connection
            return
        after_high = pk.seq_diff(seq, self._rcv_high)
        if after_high > 1:
            first = pk.seq_add(self._rcv_high, 1)
            last = pk.seq_add(seq, -1)
            for missing in range(after_high - 1):
                self._losses[pk.seq_add(first, missing)] = now
            while len(self._losses) > MAX_REPORTED_LOSSES:  # the oldest wait for their time to play unasked
                del self._losses[next(iter(self._losses))]
            stats.recv_loss_pkt += after_high - 1
            self._send_nak([(first, last)])
        if after_high > 0:
            self._rcv_high = seq
        else:
            self._losses.pop(seq, None)
        stats.recv_unique_pkt += 1
        stats.recv_unique_bytes += len(payload) + pk.HEADER_SIZE
        self._rate_window.append((now, len(payload)))
        self._buffer[seq] = (self._play_time(data.timestamp, now), payload)
        self._deliver()

    def _resynchronize(self, seq: int) -> None:
        """Deliver what arrived behind the gaps, give the gaps up and continue at ``seq``."""
        assert self._on_payload is not None
        waiting = sorted(self._buffer, key=lambda buffered: pk.seq_diff(buffered, self._rcv_next))
        for buffered in waiting:
            payload = self._buffer[buffered][1]
            if payload is not None:
                self._on_payload(payload)
        self.stats.recv_drop_pkt += pk.seq_diff(seq, self._rcv_next) - len(waiting)
        self._buffer.clear()
        self._losses.clear()
        self._rcv_next = seq
        self._rcv_high = pk.seq_add(seq, -1)

    def _play_time(self, timestamp: int, now: float) -> float:
        extended = self._timestamps.unwrap(timestamp) / 1_000_000
        if self._tsbpd_base is None:
            self._tsbpd_base = now - extended
        return self._tsbpd_base + extended + self.latency

    def _deliver(self) -> None:
        buffer = self._buffer
        assert self._on_payload is not None
        while self._rcv_next in buffer:
            _, payload = buffer.pop(self._rcv_next)
            self._rcv_next = pk.seq_add(self._rcv_next, 1)
            if payload is not None:
                self._on_payload(payload)

    def _drop_too_late(self, now: float) -> None:
        """Give up a gap once the first packet behind it is due to play (TLPKTDROP)."""
        if not self._buffer or self._rcv_next in self._buffer:
            return
        first = min(self._buffer, key=lambda seq: pk.seq_diff(seq, self._rcv_next))
        play_at, _ = self._buffer[first]
        if now < play_at:
            return
        dropped = pk.seq_diff(first, self._rcv_next)
        for offset in range(dropped):
            self._losses.pop(pk.seq_add(self._rcv_next, offset), None)
        self.stats.recv_drop_pkt += dropped
        self._rcv_next = first
        self._deliver()

    def _on_dropreq(self, body: bytes) -> None:
        """The sender gave these packets up: skip them instead of waiting for their time to play."""
        if len(body) < 8:
            raise pk.PacketError(f"a drop request of {len(body)} bytes")
        first = int.from_bytes(body[:4], "big") & pk.SEQ_MASK
        last = int.from_bytes(body[4:8], "big") & pk.SEQ_MASK
        span = pk.seq_diff(last, first)
        if not 0 <= span < RECEIVE_WINDOW:
            raise pk.PacketError("a drop request that runs backwards or too far")
        for offset in range(span + 1):
            seq = pk.seq_add(first, offset)
            if seq in self._losses:
                del self._losses[seq]
                self._buffer[seq] = (0.0, None)
                self.stats.recv_drop_pkt += 1
        self._deliver()

    def _report_losses(self, now: float) -> None:
        interval = max(MIN_NAK_INTERVAL, self.rtt + 4 * self.rtt_var)
        due = [seq for seq, reported in self._losses.items() if now - reported >= interval]
        if not due:
            return
        for seq in due:
            self._losses[seq] = now
        self._send_nak(_ranges(due))

    def _send_nak(self, ranges: list[tuple[int, int]]) -> None:
        self.stats.sent_nak_pkt += 1
        self.send_control(pk.NAK, body=pk.encode_losses(ranges))

    def _acknowledge(self, now: float) -> None:
        if self._rcv_next == self._acked_upto:
            return
        self._acked_upto = self._rcv_next
        self._ack_number = (self._ack_number + 1) & 0x7FFF_FFFF or 1
        self._acks_sent[self._ack_number] = now
        while len(self._acks_sent) > 64:
            self._acks_sent.popitem(last=False)
        window = self._rate_window
        while window and now - window[0][0] > 1.0:
            window.popleft()
        ack = Ack(
            last_acked=self._rcv_next,
            rtt_us=int(self.rtt * 1_000_000),
            rtt_var_us=int(self.rtt_var * 1_000_000),
            buffer_packets=max(RECEIVE_WINDOW - len(self._buffer), 2),
            receive_rate_packets=len(window),
            link_capacity_packets=max(len(window) * 4, 1000),
            receive_rate_bytes=sum(size for _, size in window),
        )
        self.stats.sent_ack_pkt += 1
        self.send_control(pk.ACK, self._ack_number, ack.encode())

    def _on_ackack(self, ack_number: int) -> None:
        sent_at = self._acks_sent.pop(ack_number, None)
        if sent_at is not None:
            self._update_rtt(self._clock() - sent_at)

    # -- sending (a reader) ----------------------------------------------------------------------------

    def send_payload(self, payload: bytes) -> None:
        """Send one payload (one SRT message) to the reader and keep it for retransmission."""
        seq = self._snd_next
        self._snd_next = pk.seq_add(seq, 1)
        flags = pk.POSITION_SOLO | self._msgno
        self._msgno = (self._msgno % pk.MSGNO_MASK) + 1
        if self.keys is not None:
            flags |= self.keys.send_key_index << 27
            payload = self.keys.crypt(self.keys.send_key_index, seq, payload)
        entry = _Sent(self._clock(), self._now_us(), flags, payload)
        self._sent[seq] = entry
        if len(self._sent) > SEND_BUFFER_PACKETS:
            self._sent.popitem(last=False)
            self.stats.send_drop_pkt += 1
        self.stats.sent_unique_pkt += 1
        self.stats.sent_unique_bytes += len(payload) + pk.HEADER_SIZE
        self._transmit(seq, entry, retransmit=False)

    def _transmit(self, seq: int, entry: _Sent, *, retransmit: bool) -> None:
        flags = entry.msg_flags | (pk.RETRANSMITTED if retransmit else 0)
        datagram = DataPacket(seq, flags, entry.timestamp, self.peer_socket_id, entry.payload).encode()
        self.stats.sent_pkt += 1
        self.stats.sent_bytes += len(datagram)
        if retransmit:
            self.stats.sent_retrans_pkt += 1
            self.stats.sent_retrans_bytes += len(datagram)
        self._send(datagram)

    def _on_ack(self, control: ControlPacket) -> None:
        ack = Ack.decode(control.body)
        self.stats.recv_ack_pkt += 1
        if len(control.body) >= 16:  # a full ACK wants its ACKACK
            self.send_control(pk.ACKACK, control.info, bytes(4))
            if ack.rtt_us:
                self.rtt = ack.rtt_us / 1_000_000
                self.rtt_var = ack.rtt_var_us / 1_000_000
        sent = self._sent
        while sent:
            oldest = next(iter(sent))
            if pk.seq_diff(ack.last_acked, oldest) <= 0:
                break
            del sent[oldest]

    def _on_nak(self, control: ControlPacket) -> None:
        self.stats.recv_nak_pkt += 1
        for first, last in pk.decode_losses(control.body):
            self.stats.send_loss_pkt += pk.seq_diff(last, first) + 1
            for offset in range(pk.seq_diff(last, first) + 1):
                seq = pk.seq_add(first, offset)
                entry = self._sent.get(seq)
                if entry is not None:
                    self._transmit(seq, entry, retransmit=True)

    def _drop_unacknowledged(self, now: float) -> None:
        horizon = now - self.latency - SEND_GRACE
        sent = self._sent
        while sent:
            oldest = next(iter(sent))
            if sent[oldest].sent_at >= horizon:
                break
            del sent[oldest]
            self.stats.send_drop_pkt += 1

    # -- read model ------------------------------------------------------------------------------------

    @property
    def send_buffer_packets(self) -> int:
        return len(self._sent)

    @property
    def receive_buffer_packets(self) -> int:
        return len(self._buffer)


def _ranges(seqs: list[int]) -> list[tuple[int, int]]:
    """Sorted-by-arrival sequence numbers → inclusive consecutive ranges."""
    ranges: list[tuple[int, int]] = []
    for seq in seqs:
        if ranges and pk.seq_add(ranges[-1][1], 1) == seq:
            ranges[-1] = (ranges[-1][0], seq)
        else:
            ranges.append((seq, seq))
    return ranges
