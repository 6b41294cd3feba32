"""The hostile-input fuzzer (issue 9): one real server, thousands of bad requests, seeded and reproducible.

2,000 mutated WHEP offers (duplicated or missing m-lines, huge attributes, non-UTF-8, up to 10,000
candidates, truncated, ...), 1,000 mutated trickle fragments, 500 malformed JWTs and 300 hostile raw HTTP
requests (oversized headers, slow bodies, pipelined early rejects, broken framing) go to a real server with
auth on and a live WebRTC process, several at a time. Meanwhile a separate process asks ``/ping`` every
20 ms and records how long each answer took. The rules: no response is 5xx, nothing hangs for 10 s, no
WHEP session outlives the fuzzing, and ``/ping``'s 99th percentile stays under ``FUZZ_PING_P99_MS``.

That bound is 750 ms in the suite: it tells a blocked event loop (an offer parsed on the loop took ``/ping``
to 1.78 s) from a busy CI machine, where the same server measured 60-240 ms at load averages of 5 to 20 (a
250 ms bound left no margin there). A hang is 10 s for the same reason: a request that is only slow on a
loaded machine answers within seconds, a hung one never.
Issue 9's target, 50 ms, is a figure of a quiet machine, measured with this same test:
``FUZZ_PING_P99_MS=50 pytest -s tests/integration/test_hostile_fuzz.py`` (figures in docs/whep.md).

The fuzzer is the load, not what is measured: its threads (which build offers and tokens in Python) run on
one CPU only and at a lower priority than the server and the ``/ping`` monitor, so on a two-core machine
they cannot take the server's CPU and the latency measured is the server's own. (The server is not pinned
to the other CPU: with its FFmpeg it needs about one core under this load, and confined to one it queued.)

Every candidate address the fuzzer writes is loopback (tests/sdp_mutations.py), so nothing is sent
anywhere else. ``FUZZ_SEED`` replays another sequence; the default is fixed, so CI replays the same cases.
"""

from __future__ import annotations

import base64
import collections
import concurrent.futures
import hashlib
import hmac
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import psutil
import pytest
from harness import Server, lavfi_process, metric, running_server, wait_live
from raw_http import ConnectionClosed, RawConnection, request_bytes
from sdp_mutations import mutated_fragment, mutated_offer, with_candidates
from whep_peers import aiortc_offer

SEED = int(os.environ.get("FUZZ_SEED", "20261201"))
OFFERS, FRAGMENTS, TOKENS, RAW_REQUESTS = (
    int(n) for n in os.environ.get("FUZZ_COUNTS", "2000,1000,500,300").split(",")
)
WORKERS = 8  # requests in flight at once
LOAD_NICENESS = 10  # the fuzzer's threads yield the CPU to the server and the /ping monitor
HANG = 10.0  # seconds: any request slower than this is a hang
PING_P99_MS = float(os.environ.get("FUZZ_PING_P99_MS", "750"))
USERNAME, PASSWORD = "admin", "fuzz-hostile-password"
SECRET = "fuzz-hostile-secret-that-is-long-enough-for-hs256"
BODY_TIMEOUT = 1.0
SERVER_ENV = {
    "CORE_API_AUTH_ENABLE": "true",
    "CORE_API_AUTH_USERNAME": USERNAME,
    "CORE_API_AUTH_PASSWORD": PASSWORD,
    "CORE_API_AUTH_JWT_SECRET": SECRET,
    # Hundreds of bad refresh tokens fail on purpose; the throttle (tested in test_hostile_auth.py) would
    # answer them 429 before the token checks run.
    "CORE_API_AUTH_LOGIN_FREE_FAILURES": "1000000",
    "CORE_API_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
    "CORE_METRICS_PROTECT": "true",
    "CORE_LOG_LEVEL": "warn",
    # The fuzzer keeps the server's core busy on purpose; admission by CPU (tested in test_viewer_peer.py)
    # would answer the well-formed offers 503 and the fuzz would test the refusal instead of the parsers.
    "CORE_WEBRTC_ADMISSION_CPU_PERCENT": "100",
}
SDP = {"Content-Type": "application/sdp"}
TRICKLE = {"Content-Type": "application/trickle-ice-sdpfrag"}

PING_MONITOR = """
import os, sys, time, httpx
url, out, interval = sys.argv[1], sys.argv[2], float(sys.argv[3])
parent = os.getppid()
samples = []
with httpx.Client(timeout=10) as client:
    while True:
        began = time.perf_counter()
        try:
            client.get(url)
            samples.append((time.time(), time.perf_counter() - began))
        except httpx.HTTPError:
            samples.append((time.time(), 10.0))
        if len(samples) == 1:
            open(out + ".ready", "w").close()
        if os.path.exists(out + ".stop") or os.getppid() != parent:  # stopped, or the test is gone
            break
        time.sleep(max(0.0, interval - (time.perf_counter() - began)))
open(out, "w").write("\\n".join(f"{at:.6f} {latency:.6f}" for at, latency in samples))
"""


class Tally:
    """Statuses, hangs and the slowest request of one kind of fuzzing."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.statuses: collections.Counter[int] = collections.Counter()
        self.hangs: list[str] = []
        self.server_errors: list[str] = []
        self.slowest = 0.0
        self.closed_without_answer = 0

    def record(self, status: int, seconds: float, what: str) -> None:
        self.statuses[status] += 1
        self.slowest = max(self.slowest, seconds)
        if status >= 500:
            self.server_errors.append(f"{status} {what[:200]}")
        if seconds > HANG:
            self.hangs.append(f"{seconds:.1f} s {what[:200]}")

    def summary(self) -> str:
        return (
            f"{self.kind}: {sum(self.statuses.values())} answered {dict(sorted(self.statuses.items()))}, "
            f"{self.closed_without_answer} closed without an answer, slowest {self.slowest * 1000:.0f} ms"
        )


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("hostile-fuzz"), **SERVER_ENV) as server:
        server.login(USERNAME, PASSWORD)
        assert (
            server.api("POST", "/api/v3/process", json=lavfi_process("cam", webrtc=True)).status_code == 200
        )
        wait_live(server, "cam")
        yield server


def _timed(tally: Tally, what: str, send: Callable[[], httpx.Response]) -> httpx.Response | None:
    began = time.monotonic()
    try:
        response = send()
    except httpx.TimeoutException:
        tally.record(0, HANG + 1, f"timeout: {what}")
        return None
    tally.record(response.status_code, time.monotonic() - began, f"{what}: {response.text[:120]}")
    return response


Job = Callable[[httpx.Client], None]


def _in_parallel(server: Server, jobs: list[Job]) -> None:
    """Run the jobs on ``WORKERS`` threads, each with its own keep-alive client (no default headers)."""
    local = threading.local()
    clients: list[httpx.Client] = []

    def run(job: Job) -> None:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=server.url, timeout=HANG + 1)
            clients.append(local.client)
        job(local.client)

    try:
        with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
            for future in [pool.submit(run, job) for job in jobs]:
                future.result()
    finally:
        for client in clients:
            client.close()


# --- offers and trickle fragments ---------------------------------------------------------------------------


def _bearer(server: Server) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.token}"}


def _offer_jobs(server: Server, rng: random.Random, tally: Tally) -> list[Job]:
    base = aiortc_offer()
    bodies = [mutated_offer(base, rng) for _ in range(OFFERS - 10)]
    # Ten offers of 10,000 candidates each, sent at once (they were parsed for 11 s each on the event loop).
    bodies[:0] = [with_candidates(base, 10_000, random.Random(n)).encode() for n in range(10)]

    headers = {**SDP, **_bearer(server)}

    def post(body: bytes) -> Job:
        def job(client: httpx.Client) -> None:
            response = _timed(
                tally,
                f"offer of {len(body)} bytes",
                lambda: client.post("/api/v3/whep/cam", content=body, headers=headers),
            )
            if response is not None and response.status_code == 201:
                client.delete(response.headers["Location"], headers=_bearer(server))

        return job

    return [post(body) for body in bodies]


def _fragment_jobs(server: Server, rng: random.Random, tally: Tally) -> list[Job]:
    """PATCHes to live sessions (replaced when their handshake timed out) and to unknown ones."""
    base = aiortc_offer()
    sessions: list[tuple[str, str]] = []

    def open_session(client: httpx.Client) -> tuple[str, str]:
        response = client.post("/api/v3/whep/cam", content=base, headers={**SDP, **_bearer(server)})
        assert response.status_code == 201, response.text
        return response.headers["Location"], response.headers["ETag"]

    with server.client() as client:
        sessions.extend(open_session(client) for _ in range(WORKERS))
    plans = []
    for _ in range(FRAGMENTS):
        if_match = rng.choice([None, None, "*", '"stale"', "etag", "W/etag", "garbage"])
        plans.append((rng.randrange(len(sessions)), rng.random() < 0.2, if_match, mutated_fragment(rng)))

    def patch(slot: int, unknown: bool, if_match: str | None, body: bytes) -> Job:
        def job(client: httpx.Client) -> None:
            location, etag = sessions[slot]
            url = location.rsplit("/", 1)[0] + "/no-such-session" if unknown else location
            headers = {**TRICKLE, **_bearer(server)}
            if if_match is not None:
                headers["If-Match"] = if_match.replace("etag", etag)
            response = _timed(
                tally, f"PATCH {body[:80]!r}", lambda: client.patch(url, content=body, headers=headers)
            )
            if response is None or unknown:
                return
            if response.status_code == 404 or "this session's trickled ICE" in response.text:
                # The viewer's handshake timed out, or it has all the candidates it may get: a new one.
                sessions[slot] = open_session(client)

        return job

    # The sessions are left to the server: it reaps each when its handshake times out (checked after).
    return [patch(*plan) for plan in plans]


# --- tokens -------------------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _malformed_token(rng: random.Random) -> str | bytes:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": USERNAME, "iat": now, "exp": now + 600, "usefor": "access"}
    kind = rng.randrange(9)
    if kind == 0:  # a claim missing, or of the wrong type or value
        key = rng.choice(list(claims))
        value = rng.choice(
            [None, 1, -1, 10**30, 1e308, float("inf"), float("nan"), "x", [], {}, True, "", "\x00"]
        )
        claims = (
            {**claims, key: value} if value is not None else {k: v for k, v in claims.items() if k != key}
        )
        return jwt.encode(claims, SECRET, algorithm="HS256")
    if kind == 1:  # another algorithm, or none
        header = {"alg": rng.choice(["none", "HS512", "RS256", "", "HS256 "]), "typ": "JWT"}
        return (
            f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}.{_b64(os.urandom(32))}"
        )
    if kind == 2:  # a payload that is not a JSON object
        payload = rng.choice([b"[]", b"null", b"1", b"not json", b'{"sub":', b"\xff\xfe", b'"x"'])
        header = _b64(b'{"alg":"HS256","typ":"JWT"}')
        signing = f"{header}.{_b64(payload)}"
        signature = _b64(hmac.new(SECRET.encode(), signing.encode(), hashlib.sha256).digest())
        return f"{signing}.{signature}"
    if kind == 3:  # random segments
        return ".".join(_b64(os.urandom(rng.randrange(0, 64))) for _ in range(rng.randrange(1, 6)))
    if kind == 4:  # huge
        return _b64(os.urandom(rng.choice([4000, 9000])))
    if kind == 5:  # not ASCII at all
        return bytes(rng.randrange(128, 256) for _ in range(rng.randrange(1, 60)))
    valid = jwt.encode(claims, SECRET, algorithm="HS256")
    if kind == 6:  # truncated
        return valid[: rng.randrange(len(valid))]
    if kind == 7:  # flipped characters
        chars = list(valid)
        for _ in range(rng.randrange(1, 4)):
            chars[rng.randrange(len(chars))] = rng.choice("A_-.=+/ ")
        return "".join(chars)
    return jwt.encode(claims, rng.choice(["", "x" * 40, SECRET[:-1]]) or "k" * 32, algorithm="HS256")


def _token_jobs(server: Server, rng: random.Random, tally: Tally) -> list[Job]:
    routes = [
        ("GET", "/api/v3/process"),
        ("POST", "/api/v3/whep/cam"),
        ("GET", "/api/login/refresh"),
        ("GET", "/metrics"),
    ]
    plans = []
    for _ in range(TOKENS):
        token = _malformed_token(rng)
        scheme = rng.choice([b"Bearer ", b"Bearer ", b"bearer ", b"Bearer  ", b"Basic ", b""])
        # Leading or trailing whitespace is not a header value httpx will send; h11 would strip it anyway.
        value = (scheme + (token if isinstance(token, bytes) else token.encode())).strip()
        plans.append((rng.choice(routes), value))

    def send(route: tuple[str, str], value: bytes) -> Job:
        def job(client: httpx.Client) -> None:
            method, path = route
            response = _timed(
                tally,
                f"{method} {path} Authorization {value[:60]!r}",
                lambda: client.request(method, path, headers={"Authorization": value, **SDP}, content=b"v=0"),
            )
            if response is not None and response.status_code == 200:
                tally.server_errors.append(f"a malformed token was accepted: {value[:80]!r}")

        return job

    return [send(*plan) for plan in plans]


# --- raw HTTP -----------------------------------------------------------------------------------------------


def _raw_case(rng: random.Random, token: str) -> tuple[str, bytes, int]:
    """(what, bytes to send, responses expected)."""
    bearer = {"Authorization": f"Bearer {token}"}
    kind = rng.randrange(10)
    if kind == 0:
        return (
            "oversized header",
            request_bytes("GET", "/ping", headers={"X-Big": "h" * rng.choice([17_000, 70_000])}),
            1,
        )
    if kind == 1:
        headers = {f"X-Many-{n}": "v" * 40 for n in range(rng.choice([300, 600]))}
        return "many headers", request_bytes("GET", "/api/v3/process", headers={**headers, **bearer}), 1
    if kind == 2:
        batch = [
            request_bytes(
                "POST",
                "/api/v3/process",
                b"{}" * rng.randrange(1, 5000),
                {"Content-Type": "application/json"},
            ),
            request_bytes(
                "POST", "/api/v3/whep/none", b"v=0\r\n" * rng.randrange(1, 2000), {**SDP, **bearer}
            ),
            request_bytes(
                "POST",
                "/api/v3/process",
                b"z" * rng.randrange(1, 200_000),
                {"Content-Type": "text/plain", **bearer},
            ),
            request_bytes("OPTIONS", "/api/v3/whep/cam"),
        ]
        rng.shuffle(batch)
        return "pipelined early rejects", b"".join(batch), len(batch)
    if kind == 3:
        declared = rng.choice([5000, 1_000_000])
        head = request_bytes(
            rng.choice(["POST", "PUT"]),
            rng.choice(["/api/v3/process", "/api/v3/whep/cam", "/api/v3/process/x"]),
            b"",
            {**bearer, "Content-Type": "application/json"},
            length=declared,
        )
        return "slow body", head + b"{" * rng.randrange(0, 10), 1
    if kind == 4:
        return (
            "garbage request line",
            rng.choice(
                [
                    b"GARBAGE\r\n\r\n",
                    b"GET\r\n\r\n",
                    b"\x16\x03\x01\x02\x00\r\n\r\n",
                    b"GET / HTTP/9.9\r\n\r\n",
                ]
            ),
            1,
        )
    if kind == 5:
        body = b"zz\r\nhello\r\n0\r\n\r\n"
        return (
            "broken chunked body",
            request_bytes(
                "POST",
                "/api/v3/process",
                headers={"Transfer-Encoding": "chunked", "Content-Type": "application/json", **bearer},
            )
            + body,
            1,
        )
    if kind == 6:
        return (
            "conflicting lengths",
            b"POST /api/v3/process HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n"
            b"hello",
            1,
        )
    if kind == 7:
        return (
            "huge URL",
            request_bytes("GET", "/api/v3/process/" + "p" * rng.choice([5000, 20_000]), headers=bearer),
            1,
        )
    if kind == 8:
        return "non-ASCII header", b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Bytes: \xff\xfe\x00\r\n\r\n", 1
    return (
        "expect 100-continue with a huge body",
        request_bytes(
            "POST",
            "/api/v3/process",
            b"",
            {"Expect": "100-continue", "Content-Type": "application/json", **bearer},
            length=10**9,
        ),
        1,
    )


def _raw_jobs(server: Server, rng: random.Random, tally: Tally) -> list[Job]:
    assert server.token
    cases = [_raw_case(rng, server.token) for _ in range(RAW_REQUESTS)]

    def send(what: str, data: bytes, expected: int) -> Job:
        def job(_client: httpx.Client) -> None:  # its own raw connection
            began = time.monotonic()
            try:
                with RawConnection(server.port, timeout=HANG) as connection:
                    connection.send(data)
                    for _ in range(expected):
                        response = connection.response()
                        if response.status == 100:
                            response = connection.response()
                        tally.record(response.status, time.monotonic() - began, what)
                        if response.closes:
                            break
            except (ConnectionClosed, ConnectionResetError, BrokenPipeError):
                tally.closed_without_answer += 1
            except TimeoutError:
                tally.record(0, HANG + 1, f"hang: {what}")

        return job

    return [send(*case) for case in cases]


# --- the run ------------------------------------------------------------------------------------------------


def _ping_latencies(
    server: Server, tmp_path: Path, run: Callable[[], None]
) -> tuple[list[float], list[float]]:
    """/ping latencies in ms (sorted) on an idle server just before ``run()``, and during it."""
    out = tmp_path / "ping.txt"
    monitor = subprocess.Popen(
        [sys.executable, "-c", PING_MONITOR, f"{server.url}/ping", str(out), "0.02"], stdin=subprocess.DEVNULL
    )
    try:
        ready, deadline = Path(f"{out}.ready"), time.monotonic() + 30
        while not ready.exists():  # the monitor's own start (slow on a loaded machine) is not the server's
            assert time.monotonic() < deadline and monitor.poll() is None, "the /ping monitor did not start"
            time.sleep(0.05)
        idle_from = time.time()
        time.sleep(2)
        began = time.time()
        _as_background_load(run)
        ended = time.time()
    finally:
        Path(f"{out}.stop").touch()
        monitor.wait(timeout=30)
    samples = [tuple(map(float, line.split())) for line in out.read_text().splitlines()]
    idle = sorted(latency * 1000 for at, latency in samples if idle_from <= at < began)
    during = sorted(latency * 1000 for at, latency in samples if began <= at <= ended)
    return idle, during


def _as_background_load(run: Callable[[], None]) -> None:
    """``run()`` in a thread of its own, on the last CPU only and at ``LOAD_NICENESS``; so are the threads
    it starts (both are per-thread on Linux and inherited), while this thread and the monitor stay as
    they were."""
    failures: list[BaseException] = []

    def load() -> None:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) > 1:
            os.sched_setaffinity(0, {cpus[-1]})
        os.setpriority(os.PRIO_PROCESS, 0, LOAD_NICENESS)  # 0: this thread (Linux)
        try:
            run()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            failures.append(exc)

    thread = threading.Thread(target=load, name="fuzz-load")
    thread.start()
    thread.join()
    if failures:
        raise failures[0]


def _p99(sorted_ms: list[float]) -> float:
    return sorted_ms[max(0, int(len(sorted_ms) * 0.99) - 1)]


def test_hostile_fuzzing_gets_4xx_only_never_hangs_leaks_nothing_and_ping_stays_fast(
    fuzz_server: Server, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    tallies = {kind: Tally(kind) for kind in ("offers", "trickle fragments", "tokens", "raw HTTP")}
    durations: dict[str, float] = {}

    def run() -> None:
        for kind, make in (
            ("offers", _offer_jobs),
            ("trickle fragments", _fragment_jobs),
            ("tokens", _token_jobs),
            ("raw HTTP", _raw_jobs),
        ):
            began = time.monotonic()
            _in_parallel(fuzz_server, make(fuzz_server, random.Random(rng.random()), tallies[kind]))
            durations[kind] = time.monotonic() - began
            print(f"{tallies[kind].summary()} in {durations[kind]:.1f} s", flush=True)

    assert fuzz_server.proc is not None
    server_process = psutil.Process(fuzz_server.proc.pid)
    cpu_before = sum(server_process.cpu_times()[:2])
    idle, during = _ping_latencies(fuzz_server, tmp_path, run)
    cpu_seconds = sum(server_process.cpu_times()[:2]) - cpu_before
    p99 = _p99(during)
    requests = sum(sum(tally.statuses.values()) for tally in tallies.values())
    print(
        f"server CPU {cpu_seconds:.1f} s for {requests} requests ({cpu_seconds / requests * 1e3:.2f} ms each)"
    )
    for what, latencies in (("idle, just before", idle), ("during the fuzzing", during)):
        median = statistics.median(latencies)
        print(f"/ping {what}: {len(latencies)} samples, p50 {median:.1f} ms, p99 {_p99(latencies):.1f} ms")

    problems = [problem for tally in tallies.values() for problem in tally.server_errors + tally.hangs]
    assert not problems, "\n".join(problems[:30])
    assert p99 < PING_P99_MS, f"/ping p99 {p99:.1f} ms (bound {PING_P99_MS:.0f} ms)"
    # Every kind reached the server's answers, not just its door.
    assert tallies["offers"].statuses[201] > 50 and tallies["offers"].statuses[413] >= 10
    assert tallies["trickle fragments"].statuses[204] > 50
    assert tallies["tokens"].statuses[401] > TOKENS / 2
    # No leaked session: the table and the gauge are back to zero once the handshake timeouts have passed.
    fuzz_server.wait_for(
        lambda: fuzz_server.state("cam")["webrtc"]["viewers"] == 0, 20, "no WHEP session left"
    )
    assert metric(fuzz_server, "dragonfork_webrtc_viewers_active", process="cam") == 0
    assert fuzz_server.api("GET", "/ping").status_code == 200
    log = fuzz_server.log()
    assert "unhandled error" not in log and "peer_close_failed" not in log
