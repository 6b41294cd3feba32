"""Seeded mutations of a WHEP offer and of trickle fragments, for the hostile-input tests and the fuzzer.

Every address a mutation writes is loopback (127.0.0.1 or ::1): fuzzed candidates must never make the
server send traffic anywhere else.
"""

from __future__ import annotations

import random
from collections.abc import Callable

LOOPBACK = ("127.0.0.1", "::1")


def _lines(offer: str) -> list[str]:
    return offer.strip().split("\r\n") if "\r\n" in offer else offer.strip().splitlines()


def _join(lines: list[str]) -> str:
    return "\r\n".join(lines) + "\r\n"


def sections(offer: str) -> tuple[list[str], list[list[str]]]:
    """The session part and the m-sections (each starting with its m= line)."""
    session: list[str] = []
    media: list[list[str]] = []
    for line in _lines(offer):
        if line.startswith("m="):
            media.append([line])
        elif media:
            media[-1].append(line)
        else:
            session.append(line)
    return session, media


def _rebuild(session: list[str], media: list[list[str]]) -> str:
    return _join(session + [line for section in media for line in section])


def candidate_line(rng: random.Random, index: int) -> str:
    address = rng.choice(LOOPBACK)
    return (
        f"a=candidate:{index} 1 udp {rng.randrange(1, 2**31)} {address} {rng.randrange(1024, 65535)} typ host"
    )


def duplicate_section(offer: str, kind: str) -> str:
    session, media = sections(offer)
    found = [section for section in media if section[0].startswith(f"m={kind}")]
    return _rebuild(session, media + found[:1]) if found else offer


def with_candidates(offer: str, count: int, rng: random.Random) -> str:
    session, media = sections(offer)
    if media:
        media[0] = media[0] + [candidate_line(rng, index) for index in range(count)]
    return _rebuild(session, media)


def _drop_section(offer: str, rng: random.Random) -> str:
    session, media = sections(offer)
    if media:
        media.pop(rng.randrange(len(media)))
    return _rebuild(session, media)


def _drop_m_line(offer: str, rng: random.Random) -> str:
    lines = _lines(offer)
    m_lines = [index for index, line in enumerate(lines) if line.startswith("m=")]
    if m_lines:
        del lines[rng.choice(m_lines)]
    return _join(lines)


def _huge_attribute(offer: str, rng: random.Random) -> str:
    lines = _lines(offer)
    lines.insert(
        rng.randrange(1, len(lines) + 1),
        "a="
        + rng.choice(["x-huge:", "fmtp:96 ", "ssrc:1 cname:"])
        + "A" * rng.choice([1000, 70_000, 300_000]),
    )
    return _join(lines)


def _delete_line(offer: str, rng: random.Random) -> str:
    lines = _lines(offer)
    del lines[rng.randrange(len(lines))]
    return _join(lines)


def _duplicate_line(offer: str, rng: random.Random) -> str:
    lines = _lines(offer)
    index = rng.randrange(len(lines))
    lines.insert(index, lines[index])
    return _join(lines)


def _swap_lines(offer: str, rng: random.Random) -> str:
    lines = _lines(offer)
    a, b = rng.randrange(len(lines)), rng.randrange(len(lines))
    lines[a], lines[b] = lines[b], lines[a]
    return _join(lines)


def _mangle_numbers(offer: str, rng: random.Random) -> str:
    lines = _lines(offer)
    index = rng.randrange(len(lines))
    replacement = rng.choice(["-1", "0", "99999999999999999999", "x", "", "1e9", "65536"])
    words = lines[index].split(" ")
    word = rng.randrange(len(words))
    digits = "".join(ch for ch in words[word] if ch.isdigit())
    words[word] = words[word].replace(digits, replacement, 1) if digits else replacement
    lines[index] = " ".join(words)
    return _join(lines)


def _bad_bundle(offer: str, rng: random.Random) -> str:
    lines = [line for line in _lines(offer) if not line.startswith("a=group:BUNDLE")]
    group = rng.choice(["a=group:BUNDLE 7", "a=group:BUNDLE 0 0", "a=group:BUNDLE", "a=group:BUNDLE 1 0 5"])
    lines.insert(min(4, len(lines)), group)
    return _join(lines)


def _drop_mids(offer: str, rng: random.Random) -> str:
    return _join([line for line in _lines(offer) if not line.startswith("a=mid:") or rng.random() < 0.5])


def _same_mids(offer: str, rng: random.Random) -> str:
    return _join(["a=mid:0" if line.startswith("a=mid:") else line for line in _lines(offer)])


def _direction(offer: str, rng: random.Random) -> str:
    direction = rng.choice(["a=sendonly", "a=inactive", "a=sendrecv", "a=recvonly", ""])
    return _join([direction if line in ("a=recvonly", "a=sendrecv") else line for line in _lines(offer)])


def _non_utf8(offer: str, rng: random.Random) -> str:
    data = bytearray(offer.encode("utf-8", "surrogateescape"))
    for _ in range(rng.randrange(1, 20)):
        data[rng.randrange(len(data))] = rng.choice([0xFF, 0xFE, 0xC3, 0x80, 0x00])
    return data.decode("utf-8", "surrogateescape")


def _truncate(offer: str, rng: random.Random) -> str:
    return offer[: rng.randrange(len(offer))]


def _byte_flip(offer: str, rng: random.Random) -> str:
    chars = list(offer)
    for _ in range(rng.randrange(1, 8)):
        chars[rng.randrange(len(chars))] = chr(rng.randrange(32, 127))
    return "".join(chars)


def _many_candidates(offer: str, rng: random.Random) -> str:
    return with_candidates(offer, rng.choice([100, 1000, 10_000]), rng)


def _duplicate_section(offer: str, rng: random.Random) -> str:
    return duplicate_section(offer, rng.choice(["video", "audio"]))


def _bad_candidates(offer: str, rng: random.Random) -> str:
    session, media = sections(offer)
    if not media:
        return offer
    bad = rng.choice(
        [
            "a=candidate:1 1 udp 1 127.0.0.1 notaport typ host",
            "a=candidate:1 1 udp 1 127.0.0.1 9 typ",
            "a=candidate:",
            "a=candidate:1 1 tcp 1 127.0.0.1 9 typ host tcptype active",
            "a=candidate:1 1 udp 1 ::1 0 typ relay raddr 127.0.0.1 rport 9",
            "a=candidate:x y z",
            "a=end-of-candidates",
        ]
    )
    media[rng.randrange(len(media))].append(bad)
    return _rebuild(session, media)


OFFER_MUTATIONS: list[Callable[[str, random.Random], str]] = [
    _duplicate_section,
    _drop_section,
    _drop_m_line,
    _huge_attribute,
    _delete_line,
    _duplicate_line,
    _swap_lines,
    _mangle_numbers,
    _bad_bundle,
    _drop_mids,
    _same_mids,
    _direction,
    _non_utf8,
    _truncate,
    _byte_flip,
    _many_candidates,
    _bad_candidates,
]


def mutated_offer(offer: str, rng: random.Random) -> bytes:
    """One to three mutations of ``offer``, as the bytes a client would send (maybe not UTF-8)."""
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        offer = rng.choice(OFFER_MUTATIONS)(offer, rng) or "v=0\r\n"
    return offer.encode("utf-8", "surrogateescape")


def mutated_fragment(rng: random.Random) -> bytes:
    """A trickle-ICE sdpfrag (RFC 8840), valid or broken in one of many ways; loopback candidates only."""
    parts = [rng.choice(["a=mid:0", "a=mid:1", "a=mid:", "a=mid:" + "9" * 50, ""])]
    if rng.random() < 0.3:
        parts += [f"a=ice-ufrag:{rng.choice(['x', 'newuf', ''])}", f"a=ice-pwd:{rng.choice(['p' * 24, ''])}"]
    if rng.random() < 0.2:
        parts.append("m=audio 9 UDP/TLS/RTP/SAVPF 0")
    for index in range(rng.choice([0, 1, 2, 5, 50, 500])):
        parts.append(candidate_line(rng, index))
    if rng.random() < 0.3:
        parts.append("a=end-of-candidates")
    text = _join(parts)
    mutation = rng.choice(
        [_byte_flip, _truncate, _delete_line, _duplicate_line, _mangle_numbers, _non_utf8, None, None]
    )
    if mutation is not None and text.strip():
        text = mutation(text, rng)
    return text.encode("utf-8", "surrogateescape")
