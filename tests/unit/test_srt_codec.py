"""SRT wire format, stream ids, key material, the {srt,name=} placeholder, and a sender and receiver
connection exchanging packets over a lossy in-memory path on a stepped clock, a channel's reader boundary."""

from __future__ import annotations

import os
import random
import struct

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from cryptography.hazmat.primitives.keywrap import aes_key_wrap

from dragonfork.process.placeholders import IngestAddresses, expand
from dragonfork.servers.srt import handshake as hs
from dragonfork.servers.srt import packet as pk
from dragonfork.servers.srt.connection import TICK, ConnectionClosed, SrtConnection
from dragonfork.servers.srt.crypto import KeyMaterialError, StreamKeys, unwrap_key_material
from dragonfork.servers.srt.server import Channel
from dragonfork.servers.srt.streamid import StreamIdError, StreamRequest, parse_stream_id


@pytest.mark.parametrize(
    ("stream_id", "expected"),
    [
        ("cam2", StreamRequest("cam2", "request", "")),
        ("cam2,mode:publish", StreamRequest("cam2", "publish", "")),
        ("cam2,mode:publish,token:a,b", StreamRequest("cam2", "publish", "a,b")),
        ("live/cam,token:T,mode:request", StreamRequest("live/cam", "request", "T")),
        ("#!::r=cam2,m=publish", StreamRequest("cam2", "publish", "")),
        ("#!::r=cam2,m=request,t=T", StreamRequest("cam2", "request", "T")),
        ("#!:r=cam2,m=publish,token=T,u=someone", StreamRequest("cam2", "publish", "T")),
    ],
)
def test_stream_ids_in_datarhei_and_access_control_form(stream_id: str, expected: StreamRequest) -> None:
    assert parse_stream_id(stream_id) == expected


@pytest.mark.parametrize(
    ("stream_id", "message"),
    [("", "names no stream"), (",mode:publish", "names no stream"), ("#!::m=publish", "names no stream"),
     ("cam,mode:both", "mode must be publish or request"), ("#!::r=x,m=bidirectional", "mode must be")],
)  # fmt: skip
def test_stream_ids_without_a_name_or_with_an_unknown_mode_are_refused(stream_id: str, message: str) -> None:
    with pytest.raises(StreamIdError, match=message):
        parse_stream_id(stream_id)


def test_packets_round_trip_and_short_datagrams_are_refused() -> None:
    data = pk.DataPacket(pk.SEQ_MASK, pk.POSITION_SOLO | pk.RETRANSMITTED | 7, 123, 99, b"ts")
    parsed = pk.parse(data.encode())
    assert parsed == data and isinstance(parsed, pk.DataPacket) and parsed.retransmitted
    control = pk.ControlPacket(pk.ACK, 0, 5, 1, 2, pk.Ack(last_acked=42).encode())
    parsed_control = pk.parse(control.encode())
    assert parsed_control == control and isinstance(parsed_control, pk.ControlPacket)
    assert pk.Ack.decode(parsed_control.body).last_acked == 42
    for datagram in (b"", bytes(15), bytes(16)):  # the last: a data packet without payload
        with pytest.raises(pk.PacketError):
            pk.parse(datagram)
    with pytest.raises(pk.PacketError):
        pk.Ack.decode(b"\x00\x01")


def test_sequence_numbers_wrap_and_loss_lists_round_trip() -> None:
    assert pk.seq_diff(0, pk.SEQ_MASK) == 1 and pk.seq_diff(pk.SEQ_MASK, 0) == -1
    assert pk.seq_add(pk.SEQ_MASK, 2) == 1
    ranges = [(5, 5), (pk.SEQ_MASK - 1, 2), (10, 12)]
    assert pk.decode_losses(pk.encode_losses(ranges)) == ranges
    for body in (b"", b"\x00\x00\x01", struct.pack("!I", 0x8000_0005), struct.pack("!II", 0x8000_0009, 3)):
        with pytest.raises(pk.PacketError):
            pk.decode_losses(body)


def test_handshakes_parse_their_extensions_and_refuse_bad_lengths() -> None:
    stream_id = hs.swap_words(b"cam2,mode:publish")
    handshake = hs.Handshake(5, 0, hs.EXT_HSREQ, 7, 1500, 8192, hs.CONCLUSION, 9, 11,
                             extensions=[(hs.EXT_TYPE_SID, stream_id)])  # fmt: skip
    parsed = hs.parse(handshake.encode())
    assert parsed == handshake
    assert hs.decode_string(parsed.extension_block(hs.EXT_TYPE_SID) or b"") == "cam2,mode:publish"
    assert stream_id[:4] == b"2mac"  # libsrt's little-endian words
    with pytest.raises(pk.PacketError, match="at least 48"):
        hs.parse(bytes(47))
    with pytest.raises(pk.PacketError, match="runs past"):
        hs.parse(bytes(48) + struct.pack("!HH", hs.EXT_TYPE_SID, 3) + bytes(8))
    with pytest.raises(pk.PacketError, match="HSREQ"):
        hs.SrtOptions.decode(bytes(8))


def test_syn_cookies_are_bound_to_the_address() -> None:
    cookies = hs.SynCookies(b"k" * 32)
    cookie = cookies.issue("127.0.0.1", 5000)
    assert cookies.valid("127.0.0.1", 5000, cookie)
    assert not cookies.valid("127.0.0.1", 5001, cookie)
    assert not hs.SynCookies(b"j" * 32).valid("127.0.0.1", 5000, cookie)


def key_material(passphrase: str, sek: bytes, salt: bytes, key_flags: int = 0b01) -> bytes:
    """Key material as a libsrt caller sends it (one key: even, or odd with ``key_flags`` 0b10)."""
    kek = PBKDF2HMAC(algorithm=hashes.SHA1(), length=len(sek), salt=salt[-8:], iterations=2048).derive(
        passphrase.encode()
    )
    head = struct.pack("!BHBIBBBBHBB", 0x12, 0x2029, key_flags, 0, 2, 0, 2, 0, 0, 4, len(sek) // 4)
    return head + salt + aes_key_wrap(kek, sek)


def test_key_material_unwraps_with_the_passphrase_only_and_payloads_round_trip() -> None:
    sek, salt = os.urandom(16), os.urandom(16)
    km = key_material("correct horse battery", sek, salt)
    keys = unwrap_key_material(km, "correct horse battery")
    assert keys == StreamKeys({1: (sek, salt)})
    sealed = keys.crypt(1, 77, b"mpeg-ts payload")
    assert sealed != b"mpeg-ts payload" and keys.crypt(1, 77, sealed) == b"mpeg-ts payload"
    assert keys.crypt(1, 78, sealed) != b"mpeg-ts payload"  # the IV depends on the sequence number
    with pytest.raises(KeyMaterialError) as wrong:
        unwrap_key_material(km, "wrong passphrase!")
    assert wrong.value.bad_secret
    for broken in (km[:10], km[:-1], b"\x13" + km[1:], km[:8] + b"\x03" + km[9:]):
        with pytest.raises(KeyMaterialError) as error:
            unwrap_key_material(broken, "correct horse battery")
        assert not error.value.bad_secret


def test_the_srt_placeholder_expands_as_datarhei_does() -> None:
    plain = IngestAddresses().with_srt(":6000", "", "")
    assert expand("{srt,name=cam2}", {}, plain) == (
        "srt://localhost:6000?mode=caller&transtype=live&latency=20000&streamid=cam2,mode:request"
    )
    secured = IngestAddresses().with_srt("127.0.0.1:6001", "T", "secret-passphrase")
    assert expand("{srt,name=cam2,latency=42}", {}, secured, "output") == (
        "srt://127.0.0.1:6001?mode=caller&transtype=live&latency=42&streamid=cam2,mode:publish,token:T"
        "&passphrase=secret-passphrase"
    )
    assert expand("{srt,name=cam2}", {}, IngestAddresses()) == "{srt,name=cam2}"


class Link:
    """Two connections joined in memory: datagrams from one are parsed and handed to the other, except
    those the loss function drops."""

    def __init__(self, loss: float, seed: int = 1) -> None:
        self.now = 0.0
        self.rng = random.Random(seed)
        self.loss = loss
        self.delivered: list[bytes] = []
        self.sender = self._connection(lambda datagram: self._carry(datagram, self.receiver, lossy=True))
        self.receiver = self._connection(lambda datagram: self._carry(datagram, self.sender, lossy=False))
        self.receiver.attach_receiver(self.delivered.append)

    def _connection(self, carry) -> SrtConnection:  # type: ignore[no-untyped-def]
        return SrtConnection(
            socket_id=1, peer_socket_id=1, peer=("127.0.0.1", 1), isn=pk.SEQ_MASK - 50, latency=0.2,
            keys=None, rekey=None, send=lambda datagram, _peer: carry(datagram), clock=lambda: self.now,
        )  # fmt: skip

    def _carry(self, datagram: bytes, to: SrtConnection, *, lossy: bool) -> None:
        if lossy and self.rng.random() < self.loss:
            return
        packet = pk.parse(datagram)
        if isinstance(packet, pk.DataPacket):
            to.on_data(packet)
        else:
            to.on_control(packet)

    def run(self, payloads: list[bytes], per_tick: int = 2) -> None:
        for index in range(0, len(payloads), per_tick):
            for payload in payloads[index : index + per_tick]:
                self.sender.send_payload(payload)
            self.tick()
        for _ in range(100):
            self.tick()

    def tick(self) -> None:
        self.now += TICK
        self.sender.tick()
        self.receiver.tick()


def test_a_receiver_recovers_every_loss_through_naks_across_the_sequence_wrap() -> None:
    link = Link(loss=0.1)
    payloads = [f"payload {index}".encode() for index in range(600)]
    link.run(payloads)
    assert link.delivered == payloads
    assert link.receiver.stats.recv_retran_pkts > 20 and link.receiver.stats.recv_drop_pkt == 0
    assert link.sender.stats.sent_retrans_pkt >= link.receiver.stats.recv_retran_pkts
    assert link.sender.send_buffer_packets == 0  # everything acknowledged


def test_a_gap_that_cannot_be_recovered_is_dropped_at_its_time_to_play() -> None:
    link = Link(loss=0.0)
    link.sender.send_payload(b"first")
    link.sender._snd_next = pk.seq_add(link.sender._snd_next, 1)  # noqa: SLF001 - a packet never sent
    link.sender.send_payload(b"third")
    link.tick()
    assert link.delivered == [b"first"]  # the third waits for the second
    for _ in range(int(0.2 / TICK) + 2):
        link.tick()
    assert link.delivered == [b"first", b"third"]
    assert link.receiver.stats.recv_drop_pkt == 1


def test_a_silent_peer_ends_the_connection() -> None:
    link = Link(loss=0.0)
    link.now += 6
    with pytest.raises(ConnectionClosed, match="nothing heard"):
        link.receiver.tick()


def test_a_key_refresh_adds_the_odd_key_and_is_confirmed() -> None:
    passphrase, salt = "correct horse battery", os.urandom(16)
    even, odd = os.urandom(16), os.urandom(16)
    sent: list[bytes] = []
    delivered: list[bytes] = []
    receiver = SrtConnection(
        socket_id=1, peer_socket_id=2, peer=("127.0.0.1", 1), isn=0, latency=0.1,
        keys=unwrap_key_material(key_material(passphrase, even, salt), passphrase),
        rekey=lambda km: unwrap_key_material(km, passphrase),
        send=lambda datagram, _peer: sent.append(datagram), clock=lambda: 0.0,
    )  # fmt: skip
    receiver.attach_receiver(delivered.append)
    odd_keys = StreamKeys({2: (odd, salt)})

    def odd_packet(seq: int) -> pk.DataPacket:
        return pk.DataPacket(
            seq, pk.POSITION_SOLO | pk.ENCRYPTION_ODD | 1, 0, 1, odd_keys.crypt(2, seq, b"ts")
        )

    receiver.on_data(odd_packet(0))
    assert delivered == [] and receiver.stats.recv_undecrypt_pkt == 1
    announce = key_material(passphrase, odd, salt, key_flags=0b10)
    receiver.on_control(pk.ControlPacket(pk.USER_DEFINED, pk.EXT_KMREQ, 0, 0, 1, announce))
    confirmation = pk.parse(sent[-1])
    assert isinstance(confirmation, pk.ControlPacket)
    assert (confirmation.type, confirmation.subtype, confirmation.body) == (
        pk.USER_DEFINED,
        pk.EXT_KMRSP,
        announce,
    )
    receiver.on_data(odd_packet(0))
    assert delivered == [b"ts"]
    with pytest.raises(pk.PacketError, match="refreshed key material"):
        bad = key_material("another passphrase", odd, salt, key_flags=0b10)
        receiver.on_control(pk.ControlPacket(pk.USER_DEFINED, pk.EXT_KMREQ, 0, 0, 1, bad))


def test_a_sender_a_whole_window_ahead_is_followed_and_the_gap_counted_as_dropped() -> None:
    link = Link(loss=0.0)
    link.sender.send_payload(b"before")
    link.sender._snd_next = pk.seq_add(link.sender._snd_next, 10_000)  # noqa: SLF001 - an outage
    link.sender.send_payload(b"after")
    link.sender.send_payload(b"next")
    assert link.delivered == [b"before", b"after", b"next"]
    assert link.receiver.stats.recv_drop_pkt == 10_000


def test_a_reader_that_fails_on_a_payload_ends_alone() -> None:
    def connection(send) -> SrtConnection:  # type: ignore[no-untyped-def]
        return SrtConnection(
            socket_id=1, peer_socket_id=9, peer=("127.0.0.1", 1), isn=0, latency=0.1,
            keys=None, rekey=None, send=send, clock=lambda: 0.0,
        )  # fmt: skip

    def broken_socket(datagram: bytes, peer: tuple[str, int]) -> None:
        raise RuntimeError("a bug below this reader")

    received: list[bytes] = []
    failed: list[SrtConnection] = []
    channel = Channel("cam", connection(lambda datagram, peer: None), failed.append)
    healthy = connection(lambda datagram, peer: received.append(datagram))
    broken = connection(broken_socket)
    channel.readers = {1: broken, 2: healthy}
    channel.forward(b"payload")
    assert failed == [broken]
    assert len(received) == 1 and pk.parse(received[0]).payload == b"payload"  # type: ignore[union-attr]
