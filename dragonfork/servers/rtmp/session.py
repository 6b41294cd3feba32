"""One RTMP connection: handshake, commands, then either publishing into the hub or playing from it.

A session is started per TCP (or TLS) connection by ``RtmpServer`` and is that client's failure boundary:
what the client sends (a broken handshake, a malformed chunk, a wrong token, a taken name, a codec we do
not carry) ends with an ``RtmpRefused`` naming the cause, which the server logs (never with the token),
counts and answers with an RTMP error status where the protocol has one. Nothing else is affected.

A publisher's session holds the ``Stream`` it publishes (``StreamDirectory.run`` in the session's own
nursery) and writes each FLV tag as a hub frame. A player's sender runs as a reader in the stream's
nursery (``Stream.start_reader``), so it ends when the publisher does; the session's own task keeps reading
the player's control messages meanwhile. The commands follow what FFmpeg and OBS send: ``connect``,
``releaseStream``/``FCPublish``, ``createStream``, ``publish`` or ``play``, ``deleteStream``.
"""

from __future__ import annotations

import dataclasses
import hmac
import itertools
import math
import urllib.parse
from collections.abc import Callable
from typing import Any

import structlog
import trio

from dragonfork import metrics
from dragonfork.servers.rtmp import amf0, flv
from dragonfork.servers.rtmp import messages as msg
from dragonfork.servers.rtmp.chunks import ChunkError, ChunkReader, ChunkWriter, Message
from dragonfork.servers.rtmp.handshake import HANDSHAKE_SIZE, HandshakeError, check_version, server_reply
from dragonfork.stream import avc
from dragonfork.stream.directory import StreamDirectory, StreamNameTaken, StreamNotLive
from dragonfork.stream.frames import VIDEO_CLOCK_RATE, MediaFrame
from dragonfork.stream.ingest.rtp import Unwrapper
from dragonfork.stream.stream import Stream, StreamEnded, StreamSettings
from dragonfork.stream.track import AAC, Subscription, Track

log = structlog.get_logger(__name__)

PROTOCOL = "rtmp"
RECEIVE_SIZE = 65_536
MS_TO_CLOCK = VIDEO_CLOCK_RATE // 1000
PING_REQUEST = msg.USER_PING_REQUEST.to_bytes(2, "big")
_session_ids = itertools.count(1)


@dataclasses.dataclass(frozen=True)
class RtmpSessionSettings:
    app: str = "/"
    token: str = ""
    handshake_timeout: float = 10.0
    idle_timeout: float = 30.0
    """Seconds without a byte from the client before the session ends (a publisher that stalled)."""
    player_wait: float = 3.0
    """How long a ``play`` waits for a publisher to go live under its name (then StreamNotFound)."""
    chunk_size: int = 4096
    window_ack_size: int = 2_500_000
    stream: StreamSettings = dataclasses.field(default_factory=StreamSettings)


class RtmpRefused(Exception):
    """The client is refused; ``reason`` is the metric label, the message says why (no secrets in it)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclasses.dataclass(frozen=True)
class StreamPath:
    """Where a ``publish``/``play`` points: ``name`` is relative to ``rtmp.app``, ``path`` is datarhei's."""

    name: str
    path: str
    token: str | None


def resolve_path(app: str, connect_app: str, stream: str, connect_token: str | None) -> StreamPath:
    """Join the ``connect`` app and the ``publish``/``play`` name into our stream path, token apart.

    Clients split ``rtmp://host/a/b/c?token=T`` differently (FFmpeg may put everything in the app or in the
    stream name), so both parts are joined and the query is taken from either; the stream name's wins.
    """
    pieces: list[str] = []
    token = connect_token
    for part in (connect_app, stream):
        base, _, query = part.partition("?")
        values = urllib.parse.parse_qs(query)
        if "token" in values:
            token = values["token"][0]
        pieces.extend(piece for piece in base.split("/") if piece)
    if any(piece in (".", "..") for piece in pieces) or not pieces:
        raise RtmpRefused("bad_name", f"stream path {'/'.join(pieces)!r} is not a valid stream name")
    path = "/" + "/".join(pieces)
    prefix = "/" + "/".join(piece for piece in app.split("/") if piece)
    if prefix == "/":
        return StreamPath(path[1:], path, token)
    if not path.startswith(prefix + "/"):
        raise RtmpRefused("bad_app", f"stream path {path!r} is outside the RTMP app {prefix!r}")
    return StreamPath(path[len(prefix) + 1 :], path, token)


class RtmpSession:
    """One client connection; ``run`` it with the connection's byte stream."""

    def __init__(
        self,
        connection: trio.abc.Stream,
        remote: str,
        settings: RtmpSessionSettings,
        directory: StreamDirectory,
        claim_name: Callable[[RtmpSession], None],
        metadata_for: Callable[[str], dict[str, Any] | None],
        on_started: Callable[[RtmpSession], None],
    ) -> None:
        """``on_started`` is told once the client is a publisher or a player (``role`` and ``path`` set)."""
        self.id = f"rtmp-{next(_session_ids)}"
        self.remote = remote
        self.settings = settings
        self.role = "connecting"
        self.path: StreamPath | None = None
        self.metadata: dict[str, Any] | None = None
        self.started_at = trio.current_time()
        self.bytes_received = 0
        self.bytes_sent = 0
        self.media_messages = 0
        self._connection = connection
        self._directory = directory
        self._claim_name = claim_name
        self._metadata_for = metadata_for
        self._on_started = on_started
        self._reader = ChunkReader()
        self._writer = ChunkWriter(settings.chunk_size)
        self._send_lock = trio.Lock()
        self._connect_app = ""
        self._connect_token: str | None = None
        self._peer_window = 0
        self._acknowledged = 0
        self._pending: list[Message] = []
        self._reader_stopped = False
        """The reader stopped at a Set Chunk Size: what it still buffers is read after applying it."""
        self._bytes_metric = metrics.INGEST_BYTES.labels(PROTOCOL)

    # -- I/O ------------------------------------------------------------------------------------------

    async def _receive(self) -> bytes:
        # A player may stay silent for long (it only acknowledges); everyone else must keep sending.
        timeout = math.inf if self.role == "player" else self.settings.idle_timeout
        with trio.move_on_after(timeout) as idle:
            data = bytes(await self._connection.receive_some(RECEIVE_SIZE))
        if idle.cancelled_caught:
            raise RtmpRefused("idle", f"nothing received for {self.settings.idle_timeout:g} s")
        if not data:
            raise trio.EndOfChannel
        self.bytes_received += len(data)
        if self.role == "publisher":
            self._bytes_metric.inc(len(data))
        return data

    async def _receive_exactly(self, size: int, buffer: bytearray) -> bytes:
        """The first ``size`` bytes of ``buffer``, receiving until it has them (they stay in it)."""
        while len(buffer) < size:
            buffer += await self._receive()
        return bytes(buffer[:size])

    async def send(self, *messages: Message) -> None:
        data = b"".join(self._writer.encode(message) for message in messages)
        async with self._send_lock:
            await self._connection.send_all(data)
        self.bytes_sent += len(data)

    def traffic(self) -> tuple[int, int]:
        """(received, sent) bytes so far, the ``rtmp`` session collector's counter."""
        return self.bytes_received, self.bytes_sent

    async def next_message(self) -> Message:
        """The next complete message, applying protocol control (chunk size, abort, acknowledgements)."""
        while not self._pending:
            self._feed(b"" if self._reader.pending and self._reader_stopped else await self._receive())
            await self._acknowledge()
        message = self._pending.pop(0)
        if message.type_id == msg.SET_CHUNK_SIZE:
            size = _uint32(message, "Set Chunk Size") & 0x7FFFFFFF
            try:
                self._reader.set_chunk_size(size)
            except ChunkError as exc:
                raise RtmpRefused("bad_chunk", str(exc)) from None
        elif message.type_id == msg.ABORT:
            self._reader.abort(_uint32(message, "Abort"))
        elif message.type_id == msg.WINDOW_ACK_SIZE:
            self._peer_window = _uint32(message, "Window Acknowledgement Size")
        elif message.type_id == msg.USER_CONTROL and message.payload[:2] == PING_REQUEST:
            await self.send(msg.user_control(msg.USER_PING_RESPONSE, _uint32_at(message, 2)))
        return message

    def _feed(self, data: bytes) -> None:
        self._pending.extend(self._reader.feed(data))
        self._reader_stopped = bool(self._pending) and self._pending[-1].type_id == msg.SET_CHUNK_SIZE

    async def _acknowledge(self) -> None:
        window = self._peer_window
        received = self._reader.bytes_received
        if window and received - self._acknowledged >= window:
            self._acknowledged = received
            await self.send(msg.acknowledgement(received))

    # -- the session ----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the client until it leaves or is refused; raises ``RtmpRefused`` for a refusal."""
        try:
            try:
                with trio.fail_after(self.settings.handshake_timeout):
                    await self._handshake()
            except trio.TooSlowError:
                raise RtmpRefused(
                    "handshake", f"handshake not completed in {self.settings.handshake_timeout:g} s"
                ) from None
            await self._commands()
        except ChunkError as exc:
            raise RtmpRefused("bad_chunk", str(exc)) from None
        except amf0.Amf0Error as exc:
            raise RtmpRefused("bad_command", f"malformed AMF0 command: {exc}") from None

    async def _handshake(self) -> None:
        buffer = bytearray()
        try:
            check_version((await self._receive_exactly(1, buffer))[0])
            c0c1 = await self._receive_exactly(1 + HANDSHAKE_SIZE, buffer)
            reply = server_reply(c0c1[0], c0c1[1:], int(trio.current_time() * 1000))
        except HandshakeError as exc:
            raise RtmpRefused("handshake", str(exc)) from None
        del buffer[: 1 + HANDSHAKE_SIZE]
        await self._connection.send_all(reply)
        await self._receive_exactly(HANDSHAKE_SIZE, buffer)  # C2
        self._feed(bytes(buffer[HANDSHAKE_SIZE:]))

    async def _commands(self) -> None:
        while True:
            message = await self.next_message()
            if message.type_id not in (msg.COMMAND_AMF0, msg.COMMAND_AMF3):
                if message.type_id in (msg.AUDIO, msg.VIDEO, msg.DATA_AMF0, msg.DATA_AMF3):
                    raise RtmpRefused("bad_command", "media before publish")
                continue
            name, transaction, args = _command(message)
            if name == "connect":
                await self._connect(transaction, args)
            elif name == "createStream":
                await self.send(msg.command("_result", transaction, None, msg.MEDIA_STREAM_ID))
            elif name == "getStreamLength":  # a live stream has no length: 0, as FFmpeg reads it
                await self.send(msg.command("_result", transaction, None, 0))
            elif name in ("releaseStream", "FCPublish", "_checkbw"):
                if transaction:
                    await self.send(msg.command("_result", transaction, None, None))
            elif name == "publish":
                await self._publish(args)
                return
            elif name == "play":
                await self._play(args)
                return
            elif name in ("deleteStream", "closeStream", "FCUnpublish"):
                return

    async def _connect(self, transaction: float, args: list[Any]) -> None:
        info = args[0] if args and isinstance(args[0], dict) else {}
        app = str(info.get("app") or "")
        tc_url = str(info.get("tcUrl") or "")
        query = urllib.parse.urlsplit(tc_url).query if tc_url else ""
        token = urllib.parse.parse_qs(query).get("token", [None])[0]
        if "?" in app:
            token = urllib.parse.parse_qs(app.partition("?")[2]).get("token", [token])[0]
        if token is not None and not self._token_ok(token):
            await self.send(
                msg.command(
                    "_error",
                    transaction,
                    None,
                    {
                        "level": "error",
                        "code": "NetConnection.Connect.Rejected",
                        "description": "invalid token",
                    },
                )
            )
            raise RtmpRefused("token", "connect refused: invalid token")
        self._connect_app, self._connect_token = app, token
        await self.send(
            msg.window_ack_size(self.settings.window_ack_size),
            msg.set_peer_bandwidth(self.settings.window_ack_size),
            msg.set_chunk_size(self.settings.chunk_size),
            msg.command(
                "_result",
                transaction,
                {"fmsVer": "FMS/3,0,1,123", "capabilities": 31},
                {
                    "level": "status",
                    "code": "NetConnection.Connect.Success",
                    "description": "Connection succeeded.",
                    "objectEncoding": 0,
                },
            ),
        )

    def _token_ok(self, token: str | None) -> bool:
        expected = self.settings.token
        if not expected:
            return True
        return token is not None and hmac.compare_digest(token.encode(), expected.encode())

    async def _refuse(self, code: str, reason: str, message: str) -> RtmpRefused:
        """Tell the client why (``onStatus`` error) and return the refusal to raise."""
        with trio.move_on_after(1):
            await self.send(msg.status("error", code, message))
        return RtmpRefused(reason, message)

    def _stream_path(self, args: list[Any]) -> StreamPath:
        stream = args[1] if len(args) > 1 and isinstance(args[1], str) else ""
        return resolve_path(self.settings.app, self._connect_app, stream, self._connect_token)

    # -- publishing -----------------------------------------------------------------------------------

    async def _publish(self, args: list[Any]) -> None:
        try:
            path = self._stream_path(args)
        except RtmpRefused as exc:
            raise await self._refuse("NetStream.Publish.BadName", exc.reason, exc.message) from None
        if not self._token_ok(path.token):
            raise await self._refuse(
                "NetStream.Publish.Unauthorized", "token", f"publish {path.path!r} refused: invalid token"
            )
        self.path = path
        try:
            self._claim_name(self)
        except StreamNameTaken as exc:
            raise await self._refuse("NetStream.Publish.BadName", "name_taken", str(exc)) from None
        self.role = "publisher"
        await self.send(
            msg.user_control(msg.USER_STREAM_BEGIN, msg.MEDIA_STREAM_ID),
            msg.status("status", "NetStream.Publish.Start", f"{path.path} is now published."),
        )
        log.info("rtmp_publish_start", session=self.id, path=path.path, remote=self.remote)
        self._on_started(self)
        gauge = metrics.INGEST_PUBLISHERS.labels(PROTOCOL)
        gauge.inc()
        failure: Exception | None = None
        try:
            async with trio.open_nursery() as nursery:
                publisher = Publisher(self, path.name)
                try:
                    await publisher.run(nursery)
                except Exception as exc:  # raised after the nursery, not wrapped in its exception group
                    failure = exc
                if publisher.stream is not None:
                    publisher.stream.end()  # its players end now, because the publisher did
                nursery.cancel_scope.cancel()
        finally:
            gauge.dec()
            log.info("rtmp_publish_stop", session=self.id, path=path.path)
        if failure is not None:
            raise failure

    # -- playing --------------------------------------------------------------------------------------

    async def _play(self, args: list[Any]) -> None:
        try:
            path = self._stream_path(args)
        except RtmpRefused as exc:
            raise await self._refuse("NetStream.Play.StreamNotFound", exc.reason, exc.message) from None
        if not self._token_ok(path.token):
            raise await self._refuse(
                "NetStream.Play.Failed", "token", f"play {path.path!r} refused: invalid token"
            )
        self.path = path
        try:
            stream = await self._directory.wait_live(path.name, self.settings.player_wait)
        except StreamNotLive as exc:
            raise await self._refuse("NetStream.Play.StreamNotFound", "not_found", str(exc)) from None
        if stream.video.codec.name != "H264":  # a WHIP publisher's VP8/VP9: FLV carries H.264 here
            refusal = f"{path.path!r} carries {stream.video.codec.name} video; RTMP plays H.264 only"
            raise await self._refuse("NetStream.Play.Failed", "codec", refusal)
        self.role = "player"
        player = Player(self, stream, self._metadata_for(path.name))
        gauge = metrics.INGEST_READERS.labels(PROTOCOL)
        gauge.inc()
        log.info("rtmp_play_start", session=self.id, path=path.path, remote=self.remote)
        self._on_started(self)
        try:
            with trio.CancelScope() as reading:
                player.on_end = reading.cancel
                try:
                    await stream.start_reader(player.run)
                except StreamEnded:
                    return
                while True:  # the player's control messages (acknowledgements, pings) until it leaves
                    message = await self.next_message()
                    if message.type_id in (msg.COMMAND_AMF0, msg.COMMAND_AMF3):
                        name, _, _ = _command(message)
                        if name in ("deleteStream", "closeStream"):
                            break
        except trio.EndOfChannel:
            pass
        finally:
            player.stop()
            gauge.dec()
            log.info("rtmp_play_stop", session=self.id, path=path.path)


class Publisher:
    """Turns a publisher's media and script-data messages into a ``Stream`` in the hub."""

    def __init__(self, session: RtmpSession, name: str) -> None:
        self.session = session
        self.name = name
        self.stream: Stream | None = None
        self.avc: flv.AvcConfig | None = None
        self._timestamps = Unwrapper(32)
        self._video_packets = metrics.INGEST_PACKETS.labels(PROTOCOL, "video")
        self._audio_packets = metrics.INGEST_PACKETS.labels(PROTOCOL, "audio")
        self.dropped = 0

    async def run(self, nursery: trio.Nursery) -> None:
        """Read the publisher's messages until it unpublishes or leaves."""
        session = self.session
        while True:
            try:
                message = await session.next_message()
            except trio.EndOfChannel:
                return
            type_id = message.type_id
            if type_id in (msg.VIDEO, msg.AUDIO):
                session.media_messages += 1
                stream = self.stream or await self._start_stream(nursery, has_audio=True)
                self._media(stream, message)
            elif type_id in (msg.DATA_AMF0, msg.DATA_AMF3):
                await self._script_data(nursery, message)
            elif type_id in (msg.COMMAND_AMF0, msg.COMMAND_AMF3):
                name, _, _ = _command(message)
                if name in ("FCUnpublish", "deleteStream", "closeStream"):
                    return

    async def _start_stream(self, nursery: trio.Nursery, *, has_audio: bool) -> Stream:
        session = self.session
        stream = Stream(self.name, session.settings.stream, has_audio=has_audio, audio_codec=AAC)
        try:
            await nursery.start(session._directory.run, stream)
        except StreamNameTaken as exc:
            raise await session._refuse("NetStream.Publish.BadName", "name_taken", str(exc)) from None
        self.stream = stream
        return stream

    async def _script_data(self, nursery: trio.Nursery, message: Message) -> None:
        payload = message.payload[1:] if message.type_id == msg.DATA_AMF3 else message.payload
        values = amf0.decode_all(payload)
        if values and values[0] == "@setDataFrame":
            values = values[1:]
        if len(values) >= 2 and values[0] == "onMetaData" and isinstance(values[1], dict):
            metadata = {key: value for key, value in values[1].items() if _plain(value)}
            self.session.metadata = metadata
            if self.stream is None:
                await self._start_stream(nursery, has_audio="audiocodecid" in metadata)

    def _media(self, stream: Stream, message: Message) -> None:
        try:
            if message.type_id == msg.VIDEO:
                self._video_packets.inc()
                self._video(stream.video, message)
            elif stream.audio is not None:
                self._audio_packets.inc()
                self._audio(stream.audio, message)
        except flv.UnsupportedMedia as exc:
            raise RtmpRefused("codec", str(exc)) from None
        except flv.MalformedMedia as exc:
            self.dropped += 1
            metrics.INGEST_REFUSALS.labels(PROTOCOL, "malformed_media").inc()
            log.warning("rtmp_media_dropped", session=self.session.id, path=self.name, error=str(exc))
            if message.type_id == msg.VIDEO:
                stream.video.lost()

    def _video(self, track: Track, message: Message) -> None:
        tag = flv.parse_video(message.payload)
        if tag is None:
            return
        if tag.sequence_header:
            self.avc = flv.parse_avc_config(tag.body)
            track.config = self.avc.record
            return
        if self.avc is None:
            raise flv.MalformedMedia("H.264 frame before the AVC sequence header")
        data, keyframe = flv.avcc_to_annex_b(tag.body, self.avc)
        track.write(
            MediaFrame(
                "video",
                data,
                self._timestamps.unwrap(message.timestamp) * MS_TO_CLOCK,
                VIDEO_CLOCK_RATE,
                keyframe,
                1,
                len(message.payload),
                trio.current_time(),
                tag.composition_ms * MS_TO_CLOCK,
            )
        )

    def _audio(self, track: Track, message: Message) -> None:
        tag = flv.parse_audio(message.payload)
        if tag.sequence_header:
            track.config = tag.body
            return
        if track.config is None:
            raise flv.MalformedMedia("AAC frame before the AAC sequence header")
        track.write(
            MediaFrame(
                "audio",
                tag.body,
                self._timestamps.unwrap(message.timestamp) * MS_TO_CLOCK,
                VIDEO_CLOCK_RATE,
                True,
                1,
                len(message.payload),
                trio.current_time(),
            )
        )


class Player:
    """Sends a stream's frames to one RTMP player as FLV tags (a reader in the stream's nursery)."""

    def __init__(self, session: RtmpSession, stream: Stream, metadata: dict[str, Any] | None) -> None:
        self.session = session
        self.stream = stream
        self.metadata = metadata
        self.on_end: Callable[[], None] = lambda: None
        self._scope = trio.CancelScope()
        self._base_ms: int | None = None
        self._video_config: bytes | None = None
        self._audio_config: bytes | None = None

    def stop(self) -> None:
        self._scope.cancel()

    async def run(
        self, stream: Stream, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        audio = stream.audio if stream.audio is not None and stream.audio.codec == AAC else None
        session = self.session
        try:
            with self._scope, stream.video.subscribe() as video:
                task_status.started()
                metadata = dict(self.metadata or {"videocodecid": flv.CODEC_AVC})
                if audio is not None:
                    metadata.setdefault("audiocodecid", flv.SOUND_AAC)
                await session.send(
                    msg.user_control(msg.USER_STREAM_BEGIN, msg.MEDIA_STREAM_ID),
                    msg.status("status", "NetStream.Play.Reset", "Playing and resetting."),
                    msg.status("status", "NetStream.Play.Start", "Started playing."),
                    msg.data("|RtmpSampleAccess", {}),
                    msg.data("onMetaData", metadata),
                )
                first = await video.frames.receive()
                self._base_ms = _milliseconds(first)
                await self._send_video(stream.video, first)
                async with trio.open_nursery() as nursery:
                    if audio is not None:
                        nursery.start_soon(self._pump_audio, audio)
                    await self._pump_video(stream.video, video)
                    nursery.cancel_scope.cancel()
        except Exception as exc:
            # A reader runs in the stream's nursery: whatever ends this player must not reach the stream.
            if not client_gone(exc):
                log.exception("rtmp_player_failed", session=session.id)
                metrics.FAILURES.labels("rtmp_player", type(single_cause(exc)).__name__).inc()
        finally:
            self.on_end()

    async def _pump_video(self, track: Track, subscription: Subscription) -> None:
        async for frame in subscription.frames:
            await self._send_video(track, frame)

    async def _pump_audio(self, track: Track) -> None:
        with track.subscribe() as subscription:
            async for frame in subscription.frames:
                timestamp = self._timestamp(frame)
                if timestamp is None:
                    continue
                if track.config is not self._audio_config and track.config is not None:
                    self._audio_config = track.config
                    await self._send_media(msg.AUDIO, timestamp, flv.audio_sequence_header(track.config))
                if self._audio_config is not None:
                    await self._send_media(msg.AUDIO, timestamp, flv.audio_tag(frame.data))

    async def _send_video(self, track: Track, frame: MediaFrame) -> None:
        timestamp = self._timestamp(frame)
        if timestamp is None:
            return
        if frame.keyframe:
            config = track.config or avc.avc_config_from_access_unit(frame.data)
            if config is not None and config != self._video_config:
                self._video_config = config
                await self._send_media(msg.VIDEO, timestamp, flv.video_sequence_header(config))
        if self._video_config is None:
            return  # no decoder configuration yet: wait for a keyframe that carries one
        composition = frame.composition_offset * 1000 // frame.clock_rate
        await self._send_media(
            msg.VIDEO, timestamp, flv.video_tag(frame.keyframe, composition, avc.annex_b_to_avcc(frame.data))
        )

    def _timestamp(self, frame: MediaFrame) -> int | None:
        """The frame's time in ms since the player's first frame; None for a frame from before it."""
        base = self._base_ms
        if base is None:
            return None
        timestamp = _milliseconds(frame) - base
        return timestamp if timestamp >= 0 else None

    async def _send_media(self, type_id: int, timestamp: int, payload: bytes) -> None:
        chunk_stream = msg.VIDEO_CHUNK_STREAM if type_id == msg.VIDEO else msg.AUDIO_CHUNK_STREAM
        await self.session.send(Message(type_id, msg.MEDIA_STREAM_ID, timestamp, payload, chunk_stream))


DISCONNECTS = (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError)


def single_cause(exc: BaseException) -> BaseException:
    """The one exception inside (nested) exception groups of one leaf; the exception itself otherwise."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def client_gone(exc: BaseException) -> bool:
    """True when ``exc`` (or every exception in its groups) only says the client's connection ended."""
    if isinstance(exc, BaseExceptionGroup):
        return all(client_gone(inner) for inner in exc.exceptions)
    return isinstance(exc, DISCONNECTS)


def _milliseconds(frame: MediaFrame) -> int:
    return frame.timestamp * 1000 // frame.clock_rate


def _command(message: Message) -> tuple[str, float, list[Any]]:
    payload = message.payload[1:] if message.type_id == msg.COMMAND_AMF3 else message.payload
    values = amf0.decode_all(payload)
    if len(values) < 2 or not isinstance(values[0], str) or not isinstance(values[1], float):
        raise RtmpRefused("bad_command", "a command message must start with a name and a transaction id")
    transaction = values[1]
    if not math.isfinite(transaction):
        transaction = 0.0
    return values[0], transaction, values[2:]


def _plain(value: Any) -> bool:
    """Metadata values we pass on to players (numbers, booleans and short strings)."""
    return isinstance(value, (bool, float, int)) or (isinstance(value, str) and len(value) <= 256)


def _uint32(message: Message, what: str) -> int:
    return _uint32_at(message, 0, what)


def _uint32_at(message: Message, offset: int, what: str = "control") -> int:
    if len(message.payload) < offset + 4:
        raise RtmpRefused("bad_chunk", f"{what} message has {len(message.payload)} bytes, too short")
    return int.from_bytes(message.payload[offset : offset + 4], "big")
