"""SRT encryption: the key material a caller sends (KMREQ) and AES-CTR on data payloads.

The caller makes a random stream encrypting key (SEK) and salt, derives a key encrypting key from the
passphrase (PBKDF2-HMAC-SHA1 over the salt's last 8 bytes, 2,048 rounds, the key's length) and sends the
SEK wrapped with it (AES key wrap, RFC 3394). Unwrapping fails when the passphrase differs: that is how a
wrong passphrase is told apart, and the handshake is refused (``SRT_REJ_BADSECRET``). The listener
answers with the same key material (KMRSP) and uses the same SEK for both directions (libsrt's "reverse
KMX"). Each payload is AES-CTR encrypted with the IV: the salt's first 112 bits XOR the packet's
sequence number at bytes 10..13, the block counter in the last two bytes. A caller refreshes its key now
and then (libsrt: every 2^24 packets) by announcing the new one in a KMREQ control message; the data packets'
key flags then switch between the even and the odd key.
"""

from __future__ import annotations

import dataclasses
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap

KM_SIGN = 0x2029
KM_VERSION_TYPE = 0x12
"""Version 1, packet type 2 (key material)."""
CIPHER_AES_CTR = 2
PBKDF2_ROUNDS = 2048
PBKDF2_SALT_BYTES = 8
KEY_LENGTHS = (16, 24, 32)
_KM_HEAD = struct.Struct("!BHBIBBBBHBB")


class KeyMaterialError(ValueError):
    """Key material that cannot be used; ``bad_secret`` when only the passphrase is wrong."""

    def __init__(self, message: str, *, bad_secret: bool = False) -> None:
        super().__init__(message)
        self.bad_secret = bad_secret


@dataclasses.dataclass(frozen=True)
class StreamKeys:
    """A connection's keys by key index (1: even, 2: odd, as a data packet's key flags say), each with its
    salt. A sender switches between the two when it refreshes its key."""

    keys: dict[int, tuple[bytes, bytes]]

    @property
    def key_length(self) -> int:
        return len(next(iter(self.keys.values()))[0])

    @property
    def send_key_index(self) -> int:
        """The key this side encrypts with: the even one when there is one, else the odd."""
        return min(self.keys)

    def updated(self, refreshed: StreamKeys) -> StreamKeys:
        """These keys with the ones a key refresh announced in their place."""
        return StreamKeys({**self.keys, **refreshed.keys})

    def crypt(self, key_index: int, seq: int, payload: bytes) -> bytes:
        """Encrypt or decrypt (CTR mode is its own inverse) one payload."""
        try:
            key, salt = self.keys[key_index]
        except KeyError:
            raise KeyMaterialError(f"no {'even' if key_index == 1 else 'odd'} key for this packet") from None
        iv = bytearray(16)
        iv[10:14] = seq.to_bytes(4, "big")
        for index in range(14):
            iv[index] ^= salt[index]
        context = Cipher(algorithms.AES(key), modes.CTR(bytes(iv))).encryptor()
        return context.update(payload) + context.finalize()


def unwrap_key_material(km: bytes, passphrase: str) -> StreamKeys:
    if len(km) < _KM_HEAD.size:
        raise KeyMaterialError(f"key material of {len(km)} bytes")
    version_type, sign, keys, _keki, cipher, _auth, _se, _r1, _r2, salt_words, key_words = (
        _KM_HEAD.unpack_from(km)
    )
    if version_type != KM_VERSION_TYPE or sign != KM_SIGN:
        raise KeyMaterialError("not a key material message")
    if cipher != CIPHER_AES_CTR:
        raise KeyMaterialError(f"cipher {cipher} is not AES-CTR (the only one this server speaks)")
    keys &= 0b11
    key_length, salt_length = key_words * 4, salt_words * 4
    key_count = 2 if keys == 0b11 else 1
    if keys == 0 or key_length not in KEY_LENGTHS or salt_length != 16:
        raise KeyMaterialError("key material without a key, or with a key or salt of a bad length")
    salt = km[_KM_HEAD.size : _KM_HEAD.size + salt_length]
    wrapped = km[_KM_HEAD.size + salt_length :]
    if len(wrapped) != 8 + key_length * key_count:
        raise KeyMaterialError(f"wrapped keys of {len(wrapped)} bytes")
    kek = PBKDF2HMAC(
        algorithm=hashes.SHA1(),  # noqa: S303 - the SRT specification's KDF
        length=key_length,
        salt=salt[-PBKDF2_SALT_BYTES:],
        iterations=PBKDF2_ROUNDS,
    ).derive(passphrase.encode())
    try:
        unwrapped = aes_key_unwrap(kek, wrapped)
    except InvalidUnwrap:
        raise KeyMaterialError("the passphrase does not match", bad_secret=True) from None
    first, second = unwrapped[:key_length], unwrapped[key_length:]
    if keys == 0b11:
        return StreamKeys({1: (first, salt), 2: (second, salt)})
    return StreamKeys({keys: (first, salt)})
