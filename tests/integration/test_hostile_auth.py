"""Hostile clients against authentication: brute force, forged and incomplete tokens, weak settings.

Each test reproduces a finding of issue 9 on the code before the fix (noted per test).
"""

from __future__ import annotations

import base64
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from harness import Server, metric, running_server, server_env

USERNAME, PASSWORD = "admin", "hostile-auth-password"
SECRET = "hostile-auth-test-secret-of-at-least-32-bytes"
AUTH_ENV = {
    "CORE_API_AUTH_ENABLE": "true",
    "CORE_API_AUTH_USERNAME": USERNAME,
    "CORE_API_AUTH_PASSWORD": PASSWORD,
    "CORE_API_AUTH_JWT_SECRET": SECRET,
    "CORE_API_AUTH_LOGIN_FREE_FAILURES": "3",
    "CORE_API_AUTH_LOGIN_BACKOFF_SECONDS": "1",
}


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("hostile-auth"), **AUTH_ENV) as server:
        server.login(USERNAME, PASSWORD)
        yield server


def _login(server: Server, password: str, **headers: str) -> Any:
    return server.api(
        "POST", "/api/login", json={"username": USERNAME, "password": password}, headers=headers
    )


def _dragonfork(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dragonfork", command], env=env, capture_output=True, text=True, timeout=60
    )


def _forged(claims: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode(claims, secret, algorithm="HS256")


def _claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": USERNAME, "iat": now, "exp": now + 600, "usefor": "access"}
    claims.update(changes)
    return {key: value for key, value in claims.items() if value is not None}


def test_repeated_wrong_passwords_are_throttled_with_backoff(auth_server: Server) -> None:
    # Before: 200 wrong passwords were answered 401 in ~1 ms each, no Retry-After; the right one then worked.
    # The limit is per peer address: a forwarding header a client sets itself changes nothing.
    statuses = [
        _login(auth_server, f"guess-{n}", **{"X-Forwarded-For": f"10.0.0.{n}"}).status_code for n in range(3)
    ]
    assert statuses == [401, 401, 401]
    locked = _login(auth_server, "guess-3")
    assert locked.status_code == 429, locked.text
    first_wait = int(locked.headers["Retry-After"])
    assert (
        first_wait >= 1 and "Retry-After" in locked.json()["message"] or "retry" in locked.json()["message"]
    )
    # While locked out even the right password is refused: guessing is not evaluated at all.
    assert _login(auth_server, PASSWORD).status_code == 429
    time.sleep(first_wait + 0.2)
    assert _login(auth_server, "guess-4").status_code == 401  # one more failure → a longer lock-out
    second = _login(auth_server, "guess-5")
    assert second.status_code == 429 and int(second.headers["Retry-After"]) > first_wait, second.headers
    time.sleep(int(second.headers["Retry-After"]) + 0.2)
    assert _login(auth_server, PASSWORD).status_code == 200  # success resets the count
    assert _login(auth_server, "after-reset").status_code == 401
    assert _login(auth_server, PASSWORD).status_code == 200
    assert metric(auth_server, "dragonfork_login_failures_total", route="/api/login") >= 5
    assert metric(auth_server, "dragonfork_login_throttled_total", route="/api/login") >= 2
    log = auth_server.log()
    assert "login_failed" in log and "login_throttled" in log
    assert "guess-" not in log and PASSWORD not in log


def test_refresh_with_bad_tokens_is_throttled_too(tmp_path: Path) -> None:
    with running_server(tmp_path, **AUTH_ENV) as server:
        statuses = [
            server.api("GET", "/api/login/refresh", headers={"Authorization": f"Bearer bad{n}"}).status_code
            for n in range(5)
        ]
        assert statuses[:3] == [401, 401, 401] and statuses[3:] == [429, 429], statuses
        assert metric(server, "dragonfork_login_throttled_total", route="/api/login/refresh") >= 2


@pytest.mark.parametrize(
    ("claims", "why"),
    [
        (lambda: _claims(sub=None), "sub"),  # before: 500 KeyError: 'sub'
        (lambda: _claims(exp=None), "exp"),  # before: accepted forever
        (lambda: _claims(iat=None), "iat"),
        (lambda: _claims(usefor=None), "usefor"),
        # before: sub was never compared with the configured user
        (lambda: _claims(sub="somebody-else"), "sub"),
        (lambda: _claims(iat=int(time.time()) + 3600), "iat"),  # issued in the future beyond the clock skew
        (lambda: _claims(exp=int(time.time()) - 3600), "expired"),
        (lambda: _claims(usefor="refresh"), "access token"),
        (lambda: _claims(exp=10**30), "lasting at most"),  # a lifetime no token issued here has
        (lambda: _claims(iat=True), "lasting at most"),
        (lambda: _claims(exp=str(int(time.time()) + 60)), "invalid token"),
    ],
)
def test_incomplete_or_foreign_tokens_are_401_invalid_token(
    auth_server: Server, claims: Callable[[], dict[str, Any]], why: str
) -> None:
    # The claims are made when the case runs, not when it is collected: a suite that reaches this test
    # minutes after collection must not turn a wrong-type exp into an expired one.
    token = _forged(claims())
    for method, path in (("GET", "/api/v3/process"), ("POST", "/api/v3/whep/nope")):
        response = auth_server.api(method, path, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, (path, response.text)
        assert 'error="invalid_token"' in response.headers["WWW-Authenticate"], response.headers
        assert why in response.json()["message"], response.json()
    assert "unhandled error" not in auth_server.log()


def test_a_complete_forged_token_with_the_secret_is_accepted(auth_server: Server) -> None:
    # The control for the test above: the same claims, all present and right, pass.
    token = _forged(_claims())
    assert (
        auth_server.api("GET", "/api/v3/process", headers={"Authorization": f"Bearer {token}"}).status_code
        == 200
    )


def test_every_401_has_www_authenticate(auth_server: Server) -> None:
    # Before: no 401 had a WWW-Authenticate header (RFC 9110 §11.6.1).
    missing = auth_server.api("GET", "/api/v3/process", headers={"Authorization": ""})
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"].startswith("Bearer")
    wrong_secret = _forged(_claims(), secret="another-secret-of-at-least-thirty-two-bytes")
    response = auth_server.api("GET", "/api/v3/process", headers={"Authorization": f"Bearer {wrong_secret}"})
    assert response.status_code == 401 and 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    login = auth_server.api(
        "POST", "/api/login", json={"username": "nobody", "password": "x"}, headers={"X-Test": "1"}
    )
    assert login.status_code in (401, 429) and "WWW-Authenticate" in login.headers


def test_changing_username_or_secret_invalidates_old_tokens(tmp_path: Path) -> None:
    # Before: a token outlived a change of the username (sub was never checked).
    data = tmp_path / "one"
    with running_server(data, **AUTH_ENV) as server:
        token = server.login(USERNAME, PASSWORD)
        assert server.api("GET", "/api/v3/process").status_code == 200
    for change in ({"CORE_API_AUTH_USERNAME": "operator"}, {"CORE_API_AUTH_JWT_SECRET": SECRET[::-1] + "x"}):
        with running_server(data, **{**AUTH_ENV, **change}) as server:
            response = server.api("GET", "/api/v3/process", headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 401, (change, response.text)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"CORE_API_AUTH_USERNAME": ""}, "CORE_API_AUTH_USERNAME"),
        ({"CORE_API_AUTH_PASSWORD": ""}, "CORE_API_AUTH_PASSWORD"),
        ({"CORE_API_AUTH_JWT_SECRET": "only-20-bytes-long!!"}, "CORE_API_AUTH_JWT_SECRET"),
    ],
)
def test_unusable_auth_settings_refuse_to_start_and_check_says_so(
    tmp_path: Path, env: dict[str, str], named: str
) -> None:
    # Before: auth enabled without username/password started, an empty login then got tokens, and
    # `dragonfork check` called it "ready to serve".
    environment = server_env(tmp_path, **{**AUTH_ENV, **env})
    result = _dragonfork("serve", environment)
    assert result.returncode == 2, result.stderr
    assert named in result.stderr, result.stderr
    assert not (tmp_path / "data" / "db.json").exists()
    check = _dragonfork("check", environment)
    assert check.returncode == 1 and "NOT READY" in check.stdout, check.stdout
    assert re.search(rf"\[FAIL\] security: .*{named}", check.stdout), check.stdout


def test_empty_secret_means_a_random_one_per_start(tmp_path: Path) -> None:
    with running_server(tmp_path, **{**AUTH_ENV, "CORE_API_AUTH_JWT_SECRET": ""}) as server:
        token = server.login(USERNAME, PASSWORD)
        assert server.api("GET", "/api/v3/process").status_code == 200
    with running_server(tmp_path, **{**AUTH_ENV, "CORE_API_AUTH_JWT_SECRET": ""}) as server:
        assert (
            server.api("GET", "/api/v3/process", headers={"Authorization": f"Bearer {token}"}).status_code
            == 401
        )


def test_metrics_protect_puts_metrics_behind_the_api_auth(tmp_path: Path) -> None:
    # Before: with auth on, /metrics was public (process ids, state, fps, CPU), with no way to protect it.
    with running_server(tmp_path, **{**AUTH_ENV, "CORE_METRICS_PROTECT": "true"}) as server:
        public = server.api("GET", "/metrics")
        assert public.status_code == 401 and public.headers["WWW-Authenticate"].startswith("Bearer")
        token = server.login(USERNAME, PASSWORD)
        assert server.api("GET", "/metrics", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        basic = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
        scraped = server.api("GET", "/metrics", headers={"Authorization": f"Basic {basic}"})
        assert scraped.status_code == 200 and "dragonfork_http_requests_total" in scraped.text
        wrong = base64.b64encode(f"{USERNAME}:nope".encode()).decode()
        assert server.api("GET", "/metrics", headers={"Authorization": f"Basic {wrong}"}).status_code == 401
        # Found by the fuzzer: Basic credentials that are not ASCII were a 500.
        garbage = server.api("GET", "/metrics", headers={"Authorization": b"Basic \x8c\xd2\x90\xff"})
        assert garbage.status_code == 401, garbage.text
        assert server.api("GET", "/ping", headers={"Authorization": ""}).status_code == 200


def test_metrics_stay_public_by_default(auth_server: Server) -> None:
    assert auth_server.api("GET", "/metrics", headers={"Authorization": ""}).status_code == 200
