"""API-key verification cost: our key id + HMAC-SHA256 check against Argon2 (password-style) storage.

Every inference request verifies a key before anything else, so the check sits on the hot path.
Anchor: the same keys stored with Django's Argon2 password hasher, as a password would be.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from django.contrib.auth.hashers import Argon2PasswordHasher

from tenants.keys import key_generate, key_hmac, key_matches, key_parse


@dataclass(frozen=True)
class Result:
    name: str
    ours: float
    anchor: float
    unit: str

    @property
    def ratio(self) -> float:
        return self.ours / self.anchor if self.anchor else float("inf")


def _rate(count: int, func: object) -> float:
    started = time.perf_counter()
    for _ in range(count):
        func()  # type: ignore[operator]  # a zero-argument callable
    return count / (time.perf_counter() - started)


def run(*, tiny: bool) -> Result:
    hmac_count, argon_count = (50, 2) if tiny else (100_000, 100)
    _, full_key = key_generate()
    stored_hmac = key_hmac(full_key)
    hasher = Argon2PasswordHasher()
    stored_argon = hasher.encode(full_key, hasher.salt())

    def ours() -> None:
        parsed = key_parse(full_key)
        assert parsed is not None
        assert key_matches(parsed.full, stored_hmac)

    def anchor() -> None:
        assert hasher.verify(full_key, stored_argon)

    ours_rate = _rate(hmac_count, ours)
    anchor_rate = _rate(argon_count, anchor)
    print(f"auth_keys: {hmac_count} HMAC checks at {ours_rate:,.0f}/s; {argon_count} Argon2 checks at "
          f"{anchor_rate:,.1f}/s (one core)")
    return Result("API-key verification", ours_rate, anchor_rate, "verifications/s, one core")
