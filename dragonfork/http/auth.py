"""``/api/login`` and the Bearer JWT check (HS256; access tokens 10 minutes, refresh tokens 24 hours).

With ``api.auth.enable`` every ``/api/v3`` route requires ``Authorization: Bearer <access token>``; CORS
preflights (OPTIONS) never carry a token and are exempt. With ``metrics.protect`` too, ``/metrics`` requires
an access token or ``Basic`` username:password (what a Prometheus scrape config can send). The secret is
``api.auth.jwt.secret`` or, when empty, random per start (tokens then end with the server).

A token is valid only with every claim we issue: ``sub`` (the configured username, so renaming the user
ends old tokens, as does changing the secret), ``exp``, ``iat`` (not in the future) and ``usefor`` (access or
refresh), with ``CLOCK_SKEW`` seconds of tolerance. Every refusal is a 401 with ``WWW-Authenticate``.

Logins, refreshes and Basic credentials are throttled per client address (``LoginThrottle``): after
``api.auth.login_free_failures`` failures in a row the address must wait (429 + ``Retry-After``) and every
further failure doubles the wait. Credentials are compared in constant time (digests of equal length).
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import hashlib
import hmac
import math
import secrets
import time
from collections.abc import Callable
from typing import Literal, NoReturn

import jwt
import structlog
from quart import Blueprint, jsonify, request

from dragonfork import metrics
from dragonfork.config import AuthSettings
from dragonfork.http.errors import ApiError, read_json

ACCESS_TTL = 10 * 60
REFRESH_TTL = 24 * 60 * 60
CLOCK_SKEW = 30  # seconds a client's or a replica's clock may differ on exp and iat
ALGORITHM = "HS256"
ISSUER = "datarhei-core"
REQUIRED_CLAIMS = ["sub", "exp", "iat", "usefor"]
MAX_LIFETIME = REFRESH_TTL + CLOCK_SKEW  # a token that lasts longer (exp - iat) was not issued here
REALM = 'realm="dragonfork"'
MAX_TRACKED_ADDRESSES = 10_000  # the throttle forgets the least recently seen address beyond this

TokenKind = Literal["access", "refresh"]

log = structlog.get_logger("dragonfork.auth")


@dataclasses.dataclass
class _Failures:
    count: int = 0
    locked_until: float = 0.0


class LoginThrottle:
    """Failed attempts in a row per client address, and the wait they earned (exponential backoff)."""

    def __init__(
        self,
        auth: AuthSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_addresses: int = MAX_TRACKED_ADDRESSES,
    ) -> None:
        self.free_failures = auth.login_free_failures
        self.backoff = auth.login_backoff_seconds
        self.backoff_max = auth.login_backoff_max_seconds
        self.clock = clock
        self.max_addresses = max_addresses
        self._by_address: collections.OrderedDict[str, _Failures] = collections.OrderedDict()

    def retry_after(self, address: str) -> int:
        """Whole seconds this address must still wait; 0 when it may try."""
        failures = self._by_address.get(address)
        remaining = failures.locked_until - self.clock() if failures else 0.0
        return math.ceil(remaining) if remaining > 0 else 0

    def failed(self, address: str) -> float:
        """Count a failure; returns the wait it starts (0 while failures are still free)."""
        failures = self._by_address.pop(address, None) or _Failures()
        self._by_address[address] = failures  # most recently seen last
        while len(self._by_address) > self.max_addresses:
            self._by_address.popitem(last=False)
        failures.count += 1
        if failures.count < self.free_failures:
            return 0.0
        wait = min(self.backoff * 2 ** (failures.count - self.free_failures), self.backoff_max)
        failures.locked_until = self.clock() + wait
        return wait

    def succeeded(self, address: str) -> None:
        self._by_address.pop(address, None)


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


class TokenIssuer:
    def __init__(self, auth: AuthSettings) -> None:
        self.auth = auth
        self.secret = auth.jwt.secret or secrets.token_urlsafe(32)
        self.throttle = LoginThrottle(auth)

    def configure(self, auth: AuthSettings) -> None:
        """New auth settings (a config reload). Tokens stay valid unless the secret changes or, with the
        random per-start secret (``jwt.secret`` empty), the username or password: a new password locks out
        whoever held a token, as datarhei's restart with a new random secret does."""
        credentials_changed = (auth.username, auth.password) != (self.auth.username, self.auth.password)
        if auth.jwt.secret != self.auth.jwt.secret or (not auth.jwt.secret and credentials_changed):
            self.secret = auth.jwt.secret or secrets.token_urlsafe(32)
        self.auth = auth
        self.throttle.free_failures = auth.login_free_failures
        self.throttle.backoff = auth.login_backoff_seconds
        self.throttle.backoff_max = auth.login_backoff_max_seconds

    def issue(self, kind: TokenKind) -> tuple[str, int]:
        now = int(time.time())
        expires = now + (ACCESS_TTL if kind == "access" else REFRESH_TTL)
        # datarhei's claims: ``exi`` is the lifetime in seconds (its clients schedule the refresh from it),
        # ``iss`` the realm; ``usefor`` keeps a refresh token from being used as an access token.
        claims = {
            "iss": ISSUER,
            "sub": self.auth.username,
            "usefor": kind,
            "iat": now,
            "exp": expires,
            "exi": expires - now,
            "jti": secrets.token_hex(8),
        }
        return jwt.encode(claims, self.secret, algorithm=ALGORITHM), expires

    def verify(self, authorization: str | None, kind: TokenKind = "access") -> str:
        """The subject of a valid Bearer token of this kind, or ApiError 401 saying what is wrong."""
        if not authorization:
            raise ApiError(
                401,
                "missing Authorization: Bearer token",
                field="Authorization",
                headers={"WWW-Authenticate": f"Bearer {REALM}"},
            )
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            _invalid_token("Authorization must be 'Bearer <token>'")
        try:
            claims = jwt.decode(
                token.strip(),
                self.secret,
                algorithms=[ALGORITHM],
                leeway=CLOCK_SKEW,
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.ExpiredSignatureError:
            _invalid_token(f"{kind} token expired")
        except jwt.MissingRequiredClaimError as exc:
            _invalid_token(f"invalid token: it has no {exc.claim!r} claim")
        except jwt.ImmatureSignatureError:
            _invalid_token(f"invalid token: its iat is in the future (beyond {CLOCK_SKEW} s of clock skew)")
        except jwt.InvalidTokenError:
            _invalid_token("invalid token")
        issued_at, expires = claims["iat"], claims["exp"]
        if (
            not all(type(stamp) is int for stamp in (issued_at, expires))
            or expires - issued_at > MAX_LIFETIME
        ):
            _invalid_token(
                f"invalid token: iat and exp are not those of a token lasting at most {MAX_LIFETIME} s"
            )
        if claims["usefor"] != kind:
            _invalid_token(f"wrong token: a {kind} token is required")
        subject = claims["sub"]
        if not isinstance(subject, str) or not hmac.compare_digest(
            _digest(subject), _digest(self.auth.username)
        ):
            _invalid_token("invalid token: its sub is not this server's user")
        return subject

    def authorized(self, authorization: str | None) -> bool:
        """Whether a request with this header may see what the token protects (always, with auth off)."""
        if not self.auth.enable:
            return True
        try:
            self.verify(authorization)
        except ApiError:
            return False
        return True

    def credentials_match(self, username: str, password: str) -> bool:
        """Constant time: both compared, digests of equal length, no early exit on the username."""
        user_ok = hmac.compare_digest(_digest(username), _digest(self.auth.username))
        password_ok = hmac.compare_digest(_digest(password), _digest(self.auth.password))
        return user_ok & password_ok

    def require(self) -> None:
        """The before-request check for ``/api/v3``."""
        if self.auth.enable and request.method != "OPTIONS":
            self.verify(request.headers.get("Authorization"))

    def require_for_metrics(self) -> None:
        """The before-request check for ``/metrics`` with ``metrics.protect``: Bearer or Basic credentials."""
        if not self.auth.enable:
            return
        authorization = request.headers.get("Authorization", "")
        if not authorization.lower().startswith("basic "):
            self.verify(authorization)
            return
        route = request.path
        address = self.refuse_throttled(route)
        try:
            username, _, password = (
                base64.b64decode(authorization[6:].strip(), validate=True).decode().partition(":")
            )
        except ValueError:  # not base64 (binascii.Error), not ASCII, not UTF-8 (UnicodeDecodeError)
            username, password = "", ""
        self.require_credentials(route, address, username, password, field="Authorization", challenge="Basic")

    # --- throttling of login attempts ---------------------------------------------------------------------

    def refuse_throttled(self, route: str) -> str:
        """The client's address; ApiError 429 + Retry-After while it must wait."""
        address = request.remote_addr or "unknown"
        wait = self.throttle.retry_after(address)
        if wait:
            metrics.LOGIN_THROTTLED.labels(route).inc()
            log.warning("login_throttled", route=route, client=address, retry_after_seconds=wait)
            raise ApiError(
                429,
                f"too many failed logins from {address}; retry after {wait} s",
                field="Retry-After",
                headers={"Retry-After": str(wait)},
            )
        return address

    def require_credentials(
        self, route: str, address: str, username: str, password: str, *, field: str, challenge: str
    ) -> None:
        """Pass when they match (the address's failures are forgotten); else count the failure and 401."""
        if self.credentials_match(username, password):
            self.throttle.succeeded(address)
            return
        self.record_failure(route, address, "wrong username or password", username)
        raise ApiError(
            401,
            "wrong username or password",
            field=field,
            headers={"WWW-Authenticate": f"{challenge} {REALM}"},
        )

    def record_failure(self, route: str, address: str, reason: str, username: str | None = None) -> None:
        """Count a failed attempt and log it (never the password)."""
        wait = self.throttle.failed(address)
        metrics.LOGIN_FAILURES.labels(route).inc()
        log.warning(
            "login_failed",
            route=route,
            client=address,
            reason=reason,
            username=username[:64] if username is not None else None,
            wait_seconds=wait,
        )


def _invalid_token(message: str) -> NoReturn:
    raise ApiError(
        401,
        message,
        field="Authorization",
        headers={"WWW-Authenticate": f'Bearer {REALM}, error="invalid_token"'},
    )


def login_blueprint(issuer: TokenIssuer) -> Blueprint:
    bp = Blueprint("login", __name__)

    @bp.post("/api/login")
    async def login():  # type: ignore[no-untyped-def]
        if not issuer.auth.enable:
            raise ApiError(
                400,
                "authentication is disabled on this server (api.auth.enable is false)",
                field="api.auth.enable",
            )
        address = issuer.refuse_throttled("/api/login")
        body = await read_json()
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("username"), str)
            or not isinstance(body.get("password"), str)
        ):
            raise ApiError(400, 'body must be {"username": string, "password": string}', field="username")
        issuer.require_credentials(
            "/api/login", address, body["username"], body["password"], field="password", challenge="Bearer"
        )
        return jsonify(_token_pair(issuer))

    @bp.route("/api/login/refresh", methods=["GET", "POST"])
    async def refresh():  # type: ignore[no-untyped-def]
        address = issuer.refuse_throttled("/api/login/refresh")
        try:
            issuer.verify(request.headers.get("Authorization"), kind="refresh")
        except ApiError as exc:
            issuer.record_failure("/api/login/refresh", address, exc.message)
            raise
        access, expires = issuer.issue("access")
        return jsonify({"access_token": access, "access_expires_at": expires})

    return bp


def _token_pair(issuer: TokenIssuer) -> dict[str, object]:
    access, access_expires = issuer.issue("access")
    refresh, refresh_expires = issuer.issue("refresh")
    return {
        "access_token": access,
        "access_expires_at": access_expires,
        "refresh_token": refresh,
        "refresh_expires_at": refresh_expires,
    }
