"""1,000 mutated RTMP sessions against the real server while a real publisher and player keep streaming.

Every mutated session (handshake or chunk stream damaged) must end for that client alone: the server
answers or closes, counts a refusal when it refuses, never hits a bug (``dragonfork_failures_total``), and
the FFmpeg publisher and player streaming ``live.stream`` meanwhile lose nothing.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness import free_port, metric, running_server
from rtmp_helpers import FFMPEG, Publisher, decoded_frames, publish_session, send_session, wait_until

from dragonfork.servers.rtmp import messages as msg
from dragonfork.servers.rtmp.chunks import ChunkReader, Message

SESSIONS = 1000
CONCURRENCY = 16


def mutate(rng: random.Random, handshake: bytes, chunks: bytes) -> bytes:
    """One damaged session: a third in the handshake, the rest in the chunk stream."""
    if rng.random() < 1 / 3:
        damaged = bytearray(handshake)
        kind = rng.randrange(3)
        if kind == 0:
            damaged[0] = rng.choice([0, 1, 2, 4, 6, 0x16, 0xFF])  # wrong version (0x16: a TLS hello)
        elif kind == 1:
            del damaged[rng.randrange(1, len(damaged)) :]  # truncated
        else:
            damaged = bytearray(rng.randbytes(rng.randrange(1, 4000)))
        return bytes(damaged) + (chunks if kind == 0 else b"")
    damaged = bytearray(chunks)
    for _ in range(rng.randrange(1, 4)):
        kind = rng.randrange(5)
        position = rng.randrange(len(damaged))
        if kind == 0:
            for _ in range(rng.randrange(1, 9)):
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        elif kind == 1:
            damaged[position:position] = rng.randbytes(rng.randrange(1, 64))
        elif kind == 2:
            del damaged[position : position + rng.randrange(1, 64)]
        elif kind == 3:
            damaged[position : position + 4] = b"\xff\xff\xff\xff"  # huge lengths, extended timestamps
        else:
            del damaged[position:]
    return handshake + bytes(damaged)


def server_messages(data: bytes) -> list[Message]:
    """What the server sent after its handshake reply, as messages."""
    reader = ChunkReader()
    received: list[Message] = []
    pending = data[1 + 2 * 1536 :]
    while True:
        batch = reader.feed(pending)
        pending = b""
        if not batch:
            return received
        for message in batch:
            if message.type_id == msg.SET_CHUNK_SIZE:
                reader.set_chunk_size(int.from_bytes(message.payload[:4], "big"))
        received += batch


def test_a_thousand_mutated_sessions_refused_alone(tmp_path: Path) -> None:
    port = free_port()
    with running_server(tmp_path, CORE_RTMP_ENABLE="true", CORE_RTMP_ADDRESS=f"127.0.0.1:{port}") as server:
        url = f"rtmp://127.0.0.1:{port}/live.stream"
        with Publisher(url, tmp_path / "publisher.log") as publisher:
            wait_until(lambda: server.api("GET", "/api/v3/rtmp").json() != [], 20, "the publisher")
            player = subprocess.Popen(
                [FFMPEG, "-hide_banner", "-stats_period", "0.5", "-i", url, "-f", "null", "-"],
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                text=True,
            )
            player_started = time.monotonic()
            time.sleep(2)
            started = time.monotonic()

            # The unmutated seed is a valid publish: the server accepts it, and acknowledges what it read
            # once 4096 bytes (the window the seed asks for) have arrived; timestamps cross the wrap.
            seed = publish_session("seed.stream", chunk_size=1000, start_ms=2**32 - 100, frame_size=2000)
            answer = server_messages(send_session(port, b"".join(seed)))
            assert any(b"NetStream.Publish.Start" in message.payload for message in answer), answer
            acknowledged = [m.payload for m in answer if m.type_id == msg.ACKNOWLEDGEMENT]
            assert acknowledged and int.from_bytes(acknowledged[-1], "big") == len(seed[1]), acknowledged

            rng = random.Random(20261201)
            sessions = [
                mutate(rng, *publish_session(f"fuzz{index}", chunk_size=rng.choice([64, 128, 4096])))
                for index in range(SESSIONS)
            ]
            with ThreadPoolExecutor(CONCURRENCY) as pool:
                list(pool.map(lambda data: send_session(port, data, timeout=15), sessions))
            fuzz_seconds = time.monotonic() - started

            assert publisher.proc.poll() is None, publisher.log()
            assert player.poll() is None
            player.send_signal(signal.SIGINT)
            _, player_log = player.communicate(timeout=20)
            playing = time.monotonic() - player_started
            assert server.api("GET", "/api/v3/rtmp").json() == [{"name": "/live.stream"}]

        refusals = sum(
            metric(server, "dragonfork_ingest_refused_total", protocol="rtmp", reason=reason)
            for reason in ("handshake", "bad_chunk", "bad_command", "bad_name", "codec", "idle")
        )
        frames = decoded_frames(player_log)
        print(f"{SESSIONS} mutated sessions in {fuzz_seconds:.1f} s, {refusals:.0f} refused, {frames} played")
        assert refusals >= SESSIONS // 3
        failures = [
            line
            for line in server.api("GET", "/metrics").text.splitlines()
            if line.startswith('dragonfork_failures_total{component="rtmp_') and not line.endswith(" 0.0")
        ]
        assert failures == [] and "rtmp_session_failed" not in server.log(), failures
        # The player decoded (nearly) every frame of the 25 fps pattern while the fuzz ran (1 s to start).
        assert frames >= 0.8 * 25 * (playing - 1), player_log[-1500:]
