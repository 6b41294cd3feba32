"""The aiortc glue every peer connection of the server shares (WHEP viewers send, WHIP publishers receive).

Each function is one step of a session's life that must behave the same on both sides: making the peer
connection (with the process's DTLS certificate, renewed daily), negotiating an answer (aiortc's refusals
become a 406 or 400 for the client, never an exception deep in a session), applying trickled candidates
(RFC 8840 fragments, bounded, BUNDLE-aware, ICE restarts refused), waiting for connection states, and
closing the peer connection bounded in time without ever raising.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import structlog
import trio
from aiortc import RTCConfiguration, RTCIceCandidate, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.exceptions import OperationError
from trio_asyncio import aio_as_trio

from dragonfork.webrtc.aiortc_internals import SharedCertificate, peer_connection
from dragonfork.webrtc.sdp import FragmentRejected, Offer, OfferLimits, OfferRejected, parse_trickle_fragment

log = structlog.get_logger(__name__)

CLOSE_TIMEOUT = 5.0  # bound on pc.close(); it normally takes a few milliseconds
CERTIFICATE_RENEWAL = 24 * 3600.0  # seconds a DTLS certificate serves new connections (aiortc's last 30 days)


class _Certificates:
    """The process's DTLS certificate for new peer connections, replaced by a new one once a day."""

    def __init__(self) -> None:
        self._certificate: SharedCertificate | None = None
        self._made_at = 0.0

    def current(self) -> SharedCertificate:
        now = time.monotonic()
        if self._certificate is None or now - self._made_at > CERTIFICATE_RENEWAL:
            self._certificate, self._made_at = SharedCertificate.generateCertificate(), now
        return self._certificate


_certificates = _Certificates()


def new_peer_connection(ice_servers: list[dict[str, str]]) -> RTCPeerConnection:
    """A peer connection with ``ice_servers`` (``{"urls", "username", "credential"}``) and the process's
    DTLS certificate (``aiortc_internals.SharedCertificate``: no key generated per connection)."""
    configuration = RTCConfiguration(iceServers=[RTCIceServer(**server) for server in ice_servers])
    return peer_connection(configuration, _certificates.current())


async def negotiate(pc: RTCPeerConnection, offer: Offer, **log_fields: Any) -> str:
    """Apply the offer and create the answer with every local candidate gathered; ``OfferRejected`` 406 when
    aiortc finds no codec in common, 400 for any other refusal of an offer that passed our checks."""
    try:
        await aio_as_trio(_apply_offer)(pc, offer.sdp)  # one trio → asyncio hop for both steps
    except OperationError as exc:  # no codec in common
        raise OfferRejected(406, f"offer refused by the WebRTC stack: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - the offer passed our checks; aiortc's own refusal is still a 400
        log.info("offer_refused_by_aiortc", error=repr(exc), **log_fields)
        raise OfferRejected(400, f"offer refused by the WebRTC stack: {type(exc).__name__}: {exc}") from exc
    answer: str = pc.localDescription.sdp
    return answer


async def add_trickled_candidates(
    pc: RTCPeerConnection,
    offer: Offer,
    sdpfrag: str,
    limits: OfferLimits,
    *,
    trickled_so_far: int,
    if_match_sent: bool,
) -> int:
    """Apply a trickle-ICE PATCH body (RFC 8840); return the session's candidate count after it.

    ICE restarts: 428 without If-Match, else 422 (``FragmentRejected``); over ``limits.max_candidates`` per
    session: 400.
    """
    fragment = parse_trickle_fragment(sdpfrag, limits)
    if fragment.restarts_ice(offer.ice_ufrag, offer.ice_pwd):
        if not if_match_sent:
            raise FragmentRejected(428, "an ICE restart (new ice-ufrag/ice-pwd) requires If-Match")
        raise FragmentRejected(422, "ICE restart is not supported; start a new session")
    trickled = trickled_so_far + len(fragment.candidates)
    if trickled > limits.max_candidates:
        raise limits.too_many_candidates("this session's trickled ICE", FragmentRejected)
    candidates: list[RTCIceCandidate | None] = list(fragment.candidates)
    if offer.bundle_mid is not None:
        # With BUNDLE every m-line shares the first one's transport; aiortc only looks there.
        candidates = [
            dataclasses.replace(candidate, sdpMid=offer.bundle_mid, sdpMLineIndex=None)
            for candidate in fragment.candidates
        ]
    if fragment.end_of_candidates:
        candidates.append(None)
    await aio_as_trio(_add_ice_candidates)(pc, candidates)  # one trio → asyncio hop for the whole PATCH
    return trickled


async def close_peer_connection(pc: RTCPeerConnection, **log_fields: Any) -> None:
    """Close the peer connection, bounded in time; a failure to close is logged, never raised.

    aiortc can fail half-way through ``close()`` after an offer it refused (a transceiver without a
    sender's transport); the session's own outcome (the refusal) must reach the client, not that.
    """
    with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT) as close_scope:
        try:
            await aio_as_trio(pc.close)()
        except Exception as exc:  # noqa: BLE001 - see the docstring
            log.warning("peer_close_failed", error=repr(exc), **log_fields)
    if close_scope.cancelled_caught:
        log.warning("peer_close_timeout", **log_fields)


class ConnectionStates:
    """Waits on a peer connection's ``connectionState`` from Trio (aiortc reports changes on asyncio)."""

    def __init__(self, pc: RTCPeerConnection) -> None:
        self._pc = pc
        self._changed = trio.Event()
        pc.on("connectionstatechange", self._notify)

    async def wait_for(self, states: set[str]) -> str:
        """The connection's state once it is one of ``states`` (at once if it is already)."""
        while self._pc.connectionState not in states:
            self._changed = trio.Event()
            await self._changed.wait()
        state: str = self._pc.connectionState
        return state

    def _notify(self) -> None:
        self._changed.set()


def leaf_type(exc: BaseException) -> str:
    """The name of the exception that started it all (the first leaf of nested exception groups)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return type(exc).__name__


async def _apply_offer(pc: RTCPeerConnection, offer_sdp: str) -> None:
    """Set the remote offer, then create the answer and gather every candidate (on the asyncio side)."""
    await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
    await pc.setLocalDescription()


async def _add_ice_candidates(pc: RTCPeerConnection, candidates: list[RTCIceCandidate | None]) -> None:
    """``addIceCandidate`` for each (``None``: end of candidates), on the asyncio side."""
    for candidate in candidates:
        await pc.addIceCandidate(candidate)
