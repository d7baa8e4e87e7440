"""API key format: `sovk_` + 12-char key id + 32-char secret + 6-char checksum, all base62.

The id and secret carry 71 + 190 random bits; the CRC-32 checksum lets secret scanners recognise a
leaked key offline without a database. Only the id and HMAC-SHA256(pepper, key) are stored.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import zlib
from dataclasses import dataclass

from django.conf import settings

PREFIX = "sovk_"
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_ID_LEN = 12
_SECRET_LEN = 32
_CHECK_LEN = 6
KEY_LENGTH = len(PREFIX) + _ID_LEN + _SECRET_LEN + _CHECK_LEN


def _random_base62(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def _base62_fixed(number: int, length: int) -> str:
    digits = []
    for _ in range(length):
        number, rem = divmod(number, 62)
        digits.append(_ALPHABET[rem])
    return "".join(reversed(digits))


def _checksum(body: str) -> str:
    return _base62_fixed(zlib.crc32((PREFIX + body).encode("ascii")), _CHECK_LEN)


@dataclass(frozen=True, slots=True)
class ParsedKey:
    key_id: str
    full: str


def key_generate() -> tuple[str, str]:
    """A new key: (key id, full key). The full key is shown once and never stored."""
    key_id = _random_base62(_ID_LEN)
    body = key_id + _random_base62(_SECRET_LEN)
    return key_id, PREFIX + body + _checksum(body)


def key_parse(raw: str) -> ParsedKey | None:
    """Parse a presented key; None when the format or checksum is wrong (no database needed)."""
    if len(raw) != KEY_LENGTH or not raw.startswith(PREFIX):
        return None
    rest = raw[len(PREFIX):]
    if any(char not in _ALPHABET for char in rest):
        return None
    body, check = rest[:-_CHECK_LEN], rest[-_CHECK_LEN:]
    if not hmac.compare_digest(_checksum(body), check):
        return None
    return ParsedKey(key_id=body[:_ID_LEN], full=raw)


def key_hmac(full_key: str) -> str:
    pepper = settings.API_KEY_PEPPER.encode("utf-8")
    return hmac.new(pepper, full_key.encode("ascii"), hashlib.sha256).hexdigest()


def key_matches(full_key: str, stored_hmac: str) -> bool:
    return hmac.compare_digest(key_hmac(full_key), stored_hmac)
