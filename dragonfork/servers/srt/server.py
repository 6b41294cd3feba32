"""The SRT service: one UDP port, connections routed by stream id, channels of one publisher and its readers.

A published SRT stream is relayed as it is: each payload a publisher delivers (in order, after loss
recovery) is sent to every reader of its name as one SRT message. SRT carries MPEG-TS, and the payload
boundaries (7 TS packets) survive the relay, so readers (FFmpeg, VLC, OBS, a process's ``{srt,name=…}``
input) get the publisher's stream byte for byte with no demuxing here. A process that should serve the
stream over WebRTC reads it like any reader and publishes frames into the hub through its RTP legs, which
is datarhei's model (SRT channels are their own name space, so a process named ``cam2`` can read the SRT
channel ``cam2``).

Datagrams are read by one task and handed to the connection their destination socket id names; a second
task ticks every connection (ACKs, NAKs, drops, keepalives, timeouts). Each connection is a failure
boundary: what a peer sends wrong is counted (``dragonfork_ingest_refused_total{protocol="srt",reason}``)
and ends that peer at most; a bug in a connection is logged with its socket id and counted in
``dragonfork_failures_total{component="srt_connection"}``; either way every other connection keeps going.
Nothing is kept for a peer before it returns a valid SYN cookie (handshake.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import secrets
import socket
from collections.abc import Callable
from typing import Any

import structlog
import trio

from dragonfork import metrics
from dragonfork.servers import ConnectionObserver, ListenFailed, RecentRefusals
from dragonfork.servers.srt import handshake as hs
from dragonfork.servers.srt import packet as pk
from dragonfork.servers.srt.connection import TICK, ConnectionClosed, ConnectionStats, SrtConnection
from dragonfork.servers.srt.crypto import KeyMaterialError, StreamKeys, unwrap_key_material
from dragonfork.servers.srt.streamid import (
    PUBLISH,
    StreamIdError,
    StreamModeError,
    StreamRequest,
    parse_stream_id,
)

log = structlog.get_logger(__name__)

PROTOCOL = "srt"
MAX_DATAGRAM = 1500
LISTENER_SOCKET_ID = 0x0D5A_F001
"""The socket id the listener names itself in induction answers (any non-zero id would do)."""
METRICS_INTERVAL = 1.0


@dataclasses.dataclass(frozen=True)
class SrtSettings:
    address: str = ":6000"
    passphrase: str = ""
    """Callers must encrypt with this passphrase; empty: callers must not encrypt."""
    token: str = ""
    """Callers must name this token in their stream id; empty: no token."""
    latency_ms: int = 20
    """This side's latency (libsrt's minimum): each direction uses the larger of both sides', so the
    callers decide (libsrt's default is 120 ms; datarhei's ``{srt,name=…}`` asks for 20 ms)."""
    max_connections: int = 256


@dataclasses.dataclass(frozen=True)
class Refusal(Exception):
    """A conclusion refused: ``code`` is the reject reason sent to the caller, ``reason`` the metric label."""

    code: int
    reason: str
    message: str


class Channel:
    """One published stream: its publisher and readers; the publisher's payloads go to every reader.

    A reader that fails on a payload is handed to ``reader_failed`` and ends alone: neither the publisher
    nor the other readers see its exception."""

    def __init__(
        self, name: str, publisher: SrtConnection, reader_failed: Callable[[SrtConnection], None]
    ) -> None:
        self.name = name
        self.publisher = publisher
        self.readers: dict[int, SrtConnection] = {}
        self._reader_failed = reader_failed

    def forward(self, payload: bytes) -> None:
        for reader in list(self.readers.values()):
            try:
                reader.send_payload(payload)
            except Exception:
                self._reader_failed(reader)


@dataclasses.dataclass
class _Peer:
    """What the server knows of one connection besides the protocol state."""

    connection: SrtConnection
    request: StreamRequest
    reply: bytes
    """The conclusion answer, sent again when the caller repeats its conclusion (it lost ours)."""
    flushed: ConnectionStats = dataclasses.field(default_factory=ConnectionStats)
    """The counters as last added to the metrics."""


class SrtServer:
    def __init__(self, settings: SrtSettings, observer: ConnectionObserver | None = None) -> None:
        self.settings = settings
        self._observer = observer
        self.refusals = RecentRefusals()
        self.address: tuple[str, int] | None = None
        self.channels: dict[str, Channel] = {}
        self._peers: dict[int, _Peer] = {}
        self._by_caller: dict[tuple[Any, int], int] = {}
        self._cookies = hs.SynCookies()
        self._socket: socket.socket | None = None

    # -- read model ------------------------------------------------------------------------------------

    def channels_view(self) -> dict[str, Any]:
        """``GET /api/v3/srt``: datarhei's ``api.SRTChannels``."""
        publisher = {name: channel.publisher.socket_id for name, channel in self.channels.items()}
        subscriber = {name: sorted(channel.readers) for name, channel in self.channels.items()}
        connections = {
            str(socket_id): {"log": {}, "stats": _stats_view(peer.connection)}
            for socket_id, peer in sorted(self._peers.items())
        }
        return {"publisher": publisher, "subscriber": subscriber, "connections": connections, "log": {}}

    def publishers(self) -> list[dict[str, Any]]:
        """The admin UI's view: one entry per channel with its publisher's and readers' figures."""
        now = trio.current_time()
        return [
            {
                "name": name,
                "remote": _display(channel.publisher.peer),
                "uptime_seconds": round(now - channel.publisher.started_at, 1),
                "bytes_received": channel.publisher.stats.recv_bytes,
                "packets_received": channel.publisher.stats.recv_pkt,
                "packets_retransmitted": channel.publisher.stats.recv_retran_pkts,
                "packets_dropped": channel.publisher.stats.recv_drop_pkt,
                "rtt_ms": round(channel.publisher.rtt * 1000, 2),
                "readers": [
                    {"remote": _display(reader.peer), "bytes_sent": reader.stats.sent_bytes}
                    for reader in channel.readers.values()
                ],
            }
            for name, channel in sorted(self.channels.items())
        ]

    # -- serving ---------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; ``address`` is the bound (host, port) once started."""
        sock = _bind(self.settings.address)
        self._socket = sock
        bound = sock.getsockname()
        self.address = (bound[0], bound[1])
        log.info("srt_listening", address=f"{bound[0]}:{bound[1]}")
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._receive, sock)
                nursery.start_soon(self._tick)
                task_status.started()
        finally:
            for peer in list(self._peers.values()):
                self._close(peer, "server stopped", notify=True)
            sock.close()

    async def _receive(self, sock: socket.socket) -> None:
        while True:
            await trio.lowlevel.wait_readable(sock)
            for _ in range(256):  # let the ticker run between bursts
                try:
                    datagram, address = sock.recvfrom(MAX_DATAGRAM)
                except BlockingIOError:
                    break
                except OSError:
                    continue  # an ICMP error for an earlier send: nothing to do with this read
                self._on_datagram(datagram, address)
            await trio.lowlevel.checkpoint()

    def _send(self, datagram: bytes, address: Any) -> None:
        assert self._socket is not None
        # A full socket buffer or an unreachable peer loses the datagram, as the wire would.
        with contextlib.suppress(OSError):
            self._socket.sendto(datagram, address)

    def _refused(self, reason: str) -> None:
        metrics.INGEST_REFUSALS.labels(PROTOCOL, reason).inc()

    def _on_datagram(self, datagram: bytes, address: Any) -> None:
        try:
            packet = pk.parse(datagram)
        except pk.PacketError:
            self._refused("malformed")
            return
        if isinstance(packet, pk.ControlPacket) and packet.type == pk.HANDSHAKE:
            try:
                self._on_handshake(packet, address)
            except pk.PacketError:
                self._refused("bad_handshake")
            except Exception:  # a bug answering one caller must not end the server
                log.exception("srt_handshake_failed", remote=_display(address))
                metrics.FAILURES.labels("srt_handshake", "exception").inc()
            return
        peer = self._peers.get(packet.dest)
        if peer is None or peer.connection.peer != address:
            self._refused("unknown_socket")
            return
        connection = peer.connection
        try:
            if isinstance(packet, pk.DataPacket):
                connection.on_data(packet)
            else:
                connection.on_control(packet)
        except pk.PacketError:
            self._refused("bad_control")
        except ConnectionClosed as closed:
            self._close(peer, str(closed), notify=False)
        except Exception:
            self._failed(peer)

    def _failed(self, peer: _Peer) -> None:
        connection = peer.connection
        log.exception(
            "srt_connection_failed", socket_id=connection.socket_id, remote=_display(connection.peer)
        )
        metrics.FAILURES.labels("srt_connection", "exception").inc()
        self._close(peer, "failed", notify=True)

    async def _tick(self) -> None:
        next_flush = trio.current_time() + METRICS_INTERVAL
        while True:
            await trio.sleep(TICK)
            for peer in list(self._peers.values()):
                try:
                    peer.connection.tick()
                except ConnectionClosed as closed:
                    self._close(peer, str(closed), notify=True)
                except Exception:
                    self._failed(peer)
            if trio.current_time() >= next_flush:
                next_flush += METRICS_INTERVAL
                for peer in self._peers.values():
                    self._flush_metrics(peer)

    # -- handshake -------------------------------------------------------------------------------------

    def _on_handshake(self, control: pk.ControlPacket, address: Any) -> None:
        request = hs.parse(control.body)
        host, port = address[0], address[1]
        if request.type == hs.INDUCTION:
            answer = hs.Handshake(
                version=hs.HS_VERSION_SRT1,
                encryption=0,
                extension=hs.SRT_MAGIC,
                isn=request.isn,
                mtu=request.mtu,
                flow_window=request.flow_window,
                type=hs.INDUCTION,
                socket_id=LISTENER_SOCKET_ID,
                cookie=self._cookies.issue(host, port),
                peer_ip=hs.encode_peer_ip(_display_host(host)),
            )
            self._send_handshake(answer, request.socket_id, address)
            return
        if request.type != hs.CONCLUSION:
            self._refused("bad_handshake")  # rendezvous, or an answer type a caller never sends
            return
        known = self._by_caller.get((address, request.socket_id))
        if known is not None:
            self._send(self._peers[known].reply, address)
            return
        if not self._cookies.valid(host, port, request.cookie):
            self._refused("cookie")
            return
        try:
            self._accept(request, address)
        except Refusal as refusal:
            self._refused(refusal.reason)
            self.refusals.add(_display(address), refusal.reason, refusal.message)
            log.warning(
                "srt_refused",
                remote=_display(address),
                reason=refusal.reason,
                code=refusal.code,
                error=refusal.message,
            )
            rejection = dataclasses.replace(
                request, type=hs.REJECTION_BASE + refusal.code, extension=0, extensions=[]
            )
            self._send_handshake(rejection, request.socket_id, address)

    def _send_handshake(self, answer: hs.Handshake, dest: int, address: Any) -> None:
        self._send(pk.ControlPacket(pk.HANDSHAKE, 0, 0, 0, dest, answer.encode()).encode(), address)

    def _accept(self, request: hs.Handshake, address: Any) -> None:
        settings = self.settings
        if request.version != hs.HS_VERSION_SRT1:
            raise Refusal(hs.REJ_VERSION, "version", "only HSv5 callers (libsrt 1.3 and later) are served")
        options_block = request.extension_block(hs.EXT_TYPE_HSREQ)
        if options_block is None:
            raise Refusal(hs.REJ_ROGUE, "bad_handshake", "the conclusion has no HSREQ extension")
        options = hs.SrtOptions.decode(options_block)
        if options.flags & hs.FLAG_STREAM:
            raise Refusal(hs.REJ_MESSAGEAPI, "stream_mode", "only live mode (message API) is served")
        congestion = request.extension_block(hs.EXT_TYPE_CONGESTION)
        if congestion is not None and hs.decode_string(congestion) != "live":
            raise Refusal(hs.REJ_CONGESTION, "congestion", "only the live congestion controller is served")
        if request.extension_block(hs.EXT_TYPE_FILTER) is not None:
            raise Refusal(hs.REJ_FILTER, "filter", "packet filters (FEC) are not served")
        if request.extension_block(hs.EXT_TYPE_GROUP) is not None:
            raise Refusal(hs.REJ_GROUP, "group", "socket groups (bonding) are not served")
        stream_request = self._stream_request(request)
        keys = self._keys(request)
        name = stream_request.name
        channel = self.channels.get(name)
        if stream_request.mode == PUBLISH and channel is not None:
            raise Refusal(hs.REJX_CONFLICT, "name_taken", f"{name!r} is already being published")
        if stream_request.mode != PUBLISH and channel is None:
            raise Refusal(hs.REJX_NOT_FOUND, "not_found", f"nothing is published under {name!r}")
        if len(self._peers) >= settings.max_connections:
            raise Refusal(hs.REJX_OVERLOAD, "overload", f"{settings.max_connections} connections are open")

        receive_latency = max(settings.latency_ms, options.send_latency_ms)
        send_latency = max(settings.latency_ms, options.receive_latency_ms)
        socket_id = self._new_socket_id()
        publishing = stream_request.mode == PUBLISH
        connection = SrtConnection(
            socket_id=socket_id,
            peer_socket_id=request.socket_id,
            peer=address,
            isn=request.isn,
            latency=(receive_latency if publishing else send_latency) / 1000,
            keys=keys,
            rekey=(lambda km: unwrap_key_material(km, settings.passphrase)) if keys is not None else None,
            send=self._send,
            clock=trio.current_time,
        )
        extensions = [
            (
                hs.EXT_TYPE_HSRSP,
                hs.SrtOptions(hs.SRT_VERSION, hs.OUR_FLAGS, receive_latency, send_latency).encode(),
            )
        ]
        key_material = request.extension_block(hs.EXT_TYPE_KMREQ)
        if key_material is not None:
            extensions.append((hs.EXT_TYPE_KMRSP, key_material))
        answer = hs.Handshake(
            version=hs.HS_VERSION_SRT1,
            encryption=keys.key_length // 8 if keys is not None else 0,
            extension=hs.EXT_HSREQ | (hs.EXT_KMREQ if keys is not None else 0),
            isn=request.isn,
            mtu=min(request.mtu, MAX_DATAGRAM),
            flow_window=request.flow_window,
            type=hs.CONCLUSION,
            socket_id=socket_id,
            cookie=0,
            peer_ip=hs.encode_peer_ip(_display_host(address[0])),
            extensions=extensions,
        )
        reply = pk.ControlPacket(pk.HANDSHAKE, 0, 0, 0, request.socket_id, answer.encode()).encode()
        if self._observer is not None:
            self._observer.opened(
                socket_id,
                stream=name,
                reference=name,
                publishing=publishing,
                remote=_display(address),
                traffic=lambda: _traffic(connection.stats),
            )
        self._peers[socket_id] = _Peer(connection, stream_request, reply)
        self._by_caller[(address, request.socket_id)] = socket_id
        if publishing:
            channel = Channel(name, connection, lambda reader: self._failed(self._peers[reader.socket_id]))
            connection.attach_receiver(channel.forward)
            self.channels[name] = channel
            metrics.INGEST_PUBLISHERS.labels(PROTOCOL).inc()
        else:
            assert channel is not None
            channel.readers[socket_id] = connection
            metrics.INGEST_READERS.labels(PROTOCOL).inc()
        metrics.SRT_CONNECTIONS.labels(_role(publishing)).inc()
        self._send(reply, address)
        log.info(
            "srt_connected",
            socket_id=socket_id,
            remote=_display(address),
            stream=name,
            mode=stream_request.mode,
            latency_ms=receive_latency if publishing else send_latency,
            encrypted=keys is not None,
        )

    def _stream_request(self, request: hs.Handshake) -> StreamRequest:
        block = request.extension_block(hs.EXT_TYPE_SID)
        if block is None:
            raise Refusal(hs.REJX_BAD_REQUEST, "stream_id", "the caller sent no stream id")
        if len(block) > hs.MAX_STREAM_ID:
            raise Refusal(hs.REJX_BAD_REQUEST, "stream_id", f"a stream id over {hs.MAX_STREAM_ID} bytes")
        try:
            stream_request = parse_stream_id(hs.decode_string(block))
        except StreamModeError as exc:
            raise Refusal(hs.REJX_BAD_MODE, "stream_id", str(exc)) from None
        except StreamIdError as exc:
            raise Refusal(hs.REJX_BAD_REQUEST, "stream_id", str(exc)) from None
        token = self.settings.token
        if token and not hmac.compare_digest(stream_request.token.encode(), token.encode()):
            raise Refusal(hs.REJX_FORBIDDEN, "token", "the stream id's token is missing or wrong")
        return stream_request

    def _keys(self, request: hs.Handshake) -> StreamKeys | None:
        key_material = request.extension_block(hs.EXT_TYPE_KMREQ)
        passphrase = self.settings.passphrase
        if key_material is None:
            if passphrase:
                raise Refusal(hs.REJ_UNSECURE, "unencrypted", "this server needs encryption (srt.passphrase)")
            return None
        if not passphrase:
            raise Refusal(hs.REJ_UNSECURE, "encrypted", "the caller encrypts; this server has no passphrase")
        try:
            return unwrap_key_material(key_material, passphrase)
        except KeyMaterialError as exc:
            if exc.bad_secret:
                raise Refusal(hs.REJ_BADSECRET, "bad_secret", str(exc)) from None
            raise Refusal(hs.REJ_ROGUE, "bad_handshake", str(exc)) from None

    def _new_socket_id(self) -> int:
        while True:
            socket_id = secrets.randbits(31)
            if socket_id not in self._peers and socket_id not in (0, LISTENER_SOCKET_ID):
                return socket_id

    # -- ending ----------------------------------------------------------------------------------------

    def _close(self, peer: _Peer, reason: str, *, notify: bool) -> None:
        connection = peer.connection
        if self._peers.pop(connection.socket_id, None) is None:
            return
        self._by_caller.pop((connection.peer, connection.peer_socket_id), None)
        if notify:
            connection.shutdown()
        if self._observer is not None:
            self._observer.closed(connection.socket_id)
        self._flush_metrics(peer)
        name = peer.request.name
        channel = self.channels.get(name)
        publishing = channel is not None and channel.publisher is connection
        metrics.SRT_CONNECTIONS.labels(_role(publishing)).dec()
        if publishing:
            assert channel is not None
            del self.channels[name]
            metrics.INGEST_PUBLISHERS.labels(PROTOCOL).dec()
            for reader_id in list(channel.readers):
                self._close(self._peers[reader_id], "the publisher left", notify=True)
            _forget_stream_series(name)
        elif channel is not None:
            channel.readers.pop(connection.socket_id, None)
            metrics.INGEST_READERS.labels(PROTOCOL).dec()
        log.info(
            "srt_disconnected",
            socket_id=connection.socket_id,
            remote=_display(connection.peer),
            stream=name,
            reason=reason,
            packets_received=connection.stats.recv_pkt,
            packets_sent=connection.stats.sent_pkt,
            retransmitted=connection.stats.sent_retrans_pkt + connection.stats.recv_retran_pkts,
            dropped=connection.stats.recv_drop_pkt + connection.stats.send_drop_pkt,
        )

    def _flush_metrics(self, peer: _Peer) -> None:
        connection, before = peer.connection, peer.flushed
        now = connection.stats
        name = peer.request.name
        publishing = peer.request.mode == PUBLISH
        if publishing:
            metrics.INGEST_BYTES.labels(PROTOCOL).inc(now.recv_bytes - before.recv_bytes)
            metrics.INGEST_PACKETS.labels(PROTOCOL, "data").inc(now.recv_pkt - before.recv_pkt)
            counts = {
                "data": now.recv_pkt - before.recv_pkt,
                "retransmitted": now.recv_retran_pkts - before.recv_retran_pkts,
                "lost": now.recv_loss_pkt - before.recv_loss_pkt,
                "dropped": now.recv_drop_pkt - before.recv_drop_pkt,
            }
            byte_count = now.recv_bytes - before.recv_bytes
        else:
            counts = {
                "data": now.sent_pkt - before.sent_pkt,
                "retransmitted": now.sent_retrans_pkt - before.sent_retrans_pkt,
                "lost": now.send_loss_pkt - before.send_loss_pkt,
                "dropped": now.send_drop_pkt - before.send_drop_pkt,
            }
            byte_count = now.sent_bytes - before.sent_bytes
        direction = "received" if publishing else "sent"
        metrics.SRT_BYTES.labels(name, direction).inc(byte_count)
        for kind, count in counts.items():
            metrics.SRT_PACKETS.labels(name, direction, kind).inc(count)
        peer.flushed = dataclasses.replace(now)
        channel = self.channels.get(name)
        if channel is not None:
            metrics.SRT_RTT.labels(name, "publisher").set(channel.publisher.rtt)
            if channel.readers:
                metrics.SRT_RTT.labels(name, "reader").set(max(r.rtt for r in channel.readers.values()))


def _forget_stream_series(name: str) -> None:
    """Drop an ended stream's labelled series, so that names that come and go do not pile up."""
    series: list[tuple[Any, tuple[str, ...]]] = [
        (metrics.SRT_RTT, (name, role)) for role in ("publisher", "reader")
    ]
    for direction in ("received", "sent"):
        series.append((metrics.SRT_BYTES, (name, direction)))
        for kind in ("data", "retransmitted", "lost", "dropped"):
            series.append((metrics.SRT_PACKETS, (name, direction, kind)))
    for metric, labels in series:
        with contextlib.suppress(KeyError):
            metric.remove(*labels)


def _traffic(stats: ConnectionStats) -> tuple[int, int]:
    """A connection's cumulative (received, sent) bytes, as the session collector reads them."""
    return stats.recv_bytes, stats.sent_bytes


def _role(publishing: bool) -> str:
    return "publisher" if publishing else "reader"


def _stats_view(connection: SrtConnection) -> dict[str, Any]:
    stats = dataclasses.asdict(connection.stats)
    stats.update(
        timestamp_ms=int((trio.current_time() - connection.started_at) * 1000),
        rtt_ms=round(connection.rtt * 1000, 3),
        mss_bytes=MAX_DATAGRAM,
        send_buf_pkt=connection.send_buffer_packets,
        recv_buf_pkt=connection.receive_buffer_packets,
        send_tsbpd_delay_ms=int(connection.latency * 1000),
        recv_tsbpd_delay_ms=int(connection.latency * 1000),
    )
    return stats


def _display_host(host: str) -> str:
    return host.removeprefix("::ffff:")


def _display(address: Any) -> str:
    host = _display_host(address[0])
    return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"


def _bind(address: str) -> socket.socket:
    """A non-blocking UDP socket on ``host:port``; an empty host takes IPv4 and IPv6 on one socket."""
    host, _, port_text = address.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text)
        if not host:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(("::", port))
        else:
            family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.bind(sockaddr)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        sock.setblocking(False)
    except (OSError, ValueError) as exc:
        raise ListenFailed(f"srt.address {address!r} cannot be used: {exc}") from None
    return sock
