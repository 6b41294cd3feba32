"""The bench's WHEP POST → 201 on the wire (``python -m dragonfork.bench.signalling_latency``): a real packet
capture on lo (root) against a real HTTP/1.1 server that answers after a known delay.

The server answers a POST to the endpoint 201 after ``ANSWER_DELAY`` once it has read the whole body; the
client holds the response unread for longer than that. So the capture must measure the server's delay from
the request's last byte (a body far larger than one segment) to the response's first, and neither the
client's own delay nor a POST elsewhere (404) nor a DELETE on the same connection may count as a 201.
"""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

ANSWER_DELAY = 0.08
CLIENT_DELAY = 0.3
ENDPOINT = "/api/v3/whep/bench"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: several exchanges on one connection

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers["Content-Length"]))
        if self.path.startswith(ENDPOINT):
            time.sleep(ANSWER_DELAY)
            self._answer(201, b"v=0\r\n")
        else:
            self._answer(404, b"not here")

    def do_DELETE(self) -> None:  # noqa: N802
        self._answer(200, b"")

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


@pytest.fixture
def http_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _exchange(sock: socket.socket, request: bytes) -> bytes:
    """Send one request, wait ``CLIENT_DELAY`` before reading (a busy client), return the response."""
    sock.sendall(request)
    time.sleep(CLIENT_DELAY)
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(65536)
    head, _, body = response.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head


def _post(path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/sdp\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def test_the_capture_measures_the_servers_answer_from_the_requests_last_byte(http_server: int) -> None:
    capture = subprocess.Popen(
        [sys.executable, "-m", "dragonfork.bench.signalling_latency", "--port", str(http_server),
         "--path", ENDPOINT, "--seconds", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert capture.stdout is not None
        assert capture.stdout.readline().strip() == b"ready", capture.stderr.read() if capture.stderr else ""
        with socket.create_connection(("127.0.0.1", http_server)) as sock:
            offer = b"a=candidate " * 30_000  # 360 KB: many segments, the last one completes it
            assert _exchange(sock, _post(ENDPOINT, offer)).startswith(b"HTTP/1.1 201")
            assert _exchange(sock, _post("/elsewhere", b"x")).startswith(b"HTTP/1.1 404")
            assert _exchange(sock, f"DELETE {ENDPOINT}/1 HTTP/1.1\r\nHost: x\r\n\r\n".encode()).startswith(
                b"HTTP/1.1 200"
            )
        with socket.create_connection(("127.0.0.1", http_server)) as sock:
            assert _exchange(sock, _post(ENDPOINT + "?n=2", b"v=0\r\n")).startswith(b"HTTP/1.1 201")
        time.sleep(0.3)  # the last segments into the capture's socket
    finally:
        capture.terminate()
        output, errors = capture.communicate(timeout=30)
    assert capture.returncode == 0, errors.decode()
    figures = json.loads(output.splitlines()[-1])
    assert figures["statuses"] == {"201": 2}, figures  # the 404 went elsewhere, the DELETE is not a POST
    assert figures["unpaired"] == 0
    assert figures["kernel_drops"] == 0
    answer = figures["answer_ms"]
    # the server's delay, not the client's 300 ms before it read the response
    assert 1000 * ANSWER_DELAY <= answer["p50"] <= answer["max"] < 1000 * CLIENT_DELAY, answer
