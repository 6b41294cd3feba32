"""``/api/login`` and the Bearer JWT check (HS256; access tokens 10 minutes, refresh tokens 24 hours).

With ``api.auth.enable`` every ``/api/v3`` route requires ``Authorization: Bearer <access token>``; CORS
preflights (OPTIONS) never carry a token and are exempt. The secret is ``api.auth.jwt.secret`` or, when empty,
random per start (tokens then end with the server).
"""

from __future__ import annotations

import hmac
import secrets
import time
from typing import Literal

import jwt
from quart import Blueprint, jsonify, request

from dragonfork.config import AuthSettings
from dragonfork.http.errors import ApiError, read_json

ACCESS_TTL = 10 * 60
REFRESH_TTL = 24 * 60 * 60
ALGORITHM = "HS256"
ISSUER = "datarhei-core"

TokenKind = Literal["access", "refresh"]


class TokenIssuer:
    def __init__(self, auth: AuthSettings) -> None:
        self.auth = auth
        self.secret = auth.jwt.secret or secrets.token_urlsafe(32)

    def issue(self, subject: str, kind: TokenKind) -> tuple[str, int]:
        now = int(time.time())
        expires = now + (ACCESS_TTL if kind == "access" else REFRESH_TTL)
        # datarhei's claims: ``exi`` is the lifetime in seconds (its clients schedule the refresh from it),
        # ``iss`` the realm; ``usefor`` keeps a refresh token from being used as an access token.
        claims = {
            "iss": ISSUER,
            "sub": subject,
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
            raise ApiError(401, "missing Authorization: Bearer token", field="Authorization")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "Authorization must be 'Bearer <token>'", field="Authorization")
        try:
            claims = jwt.decode(token.strip(), self.secret, algorithms=[ALGORITHM])
        except jwt.ExpiredSignatureError:
            raise ApiError(401, f"{kind} token expired", field="Authorization") from None
        except jwt.InvalidTokenError:
            raise ApiError(401, "invalid token", field="Authorization") from None
        if claims.get("usefor") != kind:
            raise ApiError(401, f"wrong token: a {kind} token is required", field="Authorization")
        return str(claims["sub"])

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
        return hmac.compare_digest(username.encode(), self.auth.username.encode()) and hmac.compare_digest(
            password.encode(), self.auth.password.encode()
        )

    def require(self) -> None:
        """The before-request check for protected routes."""
        if self.auth.enable and request.method != "OPTIONS":
            self.verify(request.headers.get("Authorization"))


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
        body = await read_json()
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("username"), str)
            or not isinstance(body.get("password"), str)
        ):
            raise ApiError(400, 'body must be {"username": string, "password": string}', field="username")
        if not issuer.credentials_match(body["username"], body["password"]):
            raise ApiError(401, "wrong username or password", field="password")
        return jsonify(_token_pair(issuer, body["username"]))

    @bp.route("/api/login/refresh", methods=["GET", "POST"])
    async def refresh():  # type: ignore[no-untyped-def]
        subject = issuer.verify(request.headers.get("Authorization"), kind="refresh")
        access, expires = issuer.issue(subject, "access")
        return jsonify({"access_token": access, "access_expires_at": expires})

    return bp


def _token_pair(issuer: TokenIssuer, subject: str) -> dict[str, object]:
    access, access_expires = issuer.issue(subject, "access")
    refresh, refresh_expires = issuer.issue(subject, "refresh")
    return {
        "access_token": access,
        "access_expires_at": access_expires,
        "refresh_token": refresh,
        "refresh_expires_at": refresh_expires,
    }
