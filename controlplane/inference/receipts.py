"""Signed residency receipts: Ed25519 keys kept outside the source tree, canonical claims, the public key set.

A receipt says where a request ran and commits to its content by salted HMACs; anyone can check it offline
against the published key set (docs/receipts.md walks through it with openssl and with Python).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import hashlib
import hmac
import json
import os
import re
import secrets
import stat
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction

from controlplane.core.services import Actor, audit_record

ALGORITHM = "Ed25519"
SALT_BYTES = 32
_MIN_SALT_BYTES = 16
# Layout of RECEIPT_KEY_DIR: <kid>.pub.pem (kept for ever), <kid>.key.pem (the active key's only),
# `active` (the kid that signs) and `.lock` (serialises creation and rotation across processes).
_ACTIVE = "active"
_LOCK = ".lock"
_PUBLIC_SUFFIX = ".pub.pem"
_PRIVATE_SUFFIX = ".key.pem"
_KID_HEX_LENGTH = 16
# Beyond 2**53 - 1, integers lose precision in JavaScript and jq, and the canonical bytes stop being portable.
_SAFE_INTEGER = 2**53 - 1
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # the characters `_check_portable` refuses in strings
_SIGN_ATTEMPTS = 3

_signing_keys: dict[tuple[Path, str], Ed25519PrivateKey] = {}


class ReceiptKeyError(RuntimeError):
    """The key directory holds something this module did not write: a missing, altered or exposed key."""


# --- Content commitments -----------------------------------------------------------------------------

def content_salt_new() -> bytes:
    """A fresh per-request salt; it stays in the region with the content, never in the receipt."""
    return secrets.token_bytes(SALT_BYTES)


def content_hmac(*, salt: bytes, data: bytes) -> str:
    """HMAC-SHA256 of `data` keyed by the request's salt, as lowercase hex."""
    if len(salt) < _MIN_SALT_BYTES:
        raise ValueError(f"a content salt has at least {_MIN_SALT_BYTES} bytes")
    return hmac.new(salt, data, hashlib.sha256).hexdigest()


# --- Canonical claims --------------------------------------------------------------------------------

def _check_portable(value: Any, where: str) -> None:
    """Only values whose canonical bytes Python, jq and RFC 8785 (JCS) all spell the same way."""
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, str):
        # jq escapes DEL where Python and RFC 8785 do not; claims are identifiers and never need controls.
        if _CONTROL.search(value):
            raise ValueError(f"{where}: control characters are not allowed in receipt strings")
        return
    if isinstance(value, int):
        if not -_SAFE_INTEGER <= value <= _SAFE_INTEGER:
            raise ValueError(f"{where}: integer outside ±(2**53 - 1)")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str) or not key.isascii():
                raise TypeError(f"{where}: keys are ASCII strings, got {key!r}")
            _check_portable(key, f"{where} key {key!r}")
            _check_portable(item, f"{where}.{key}")
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_portable(item, f"{where}[{index}]")
        return
    raise TypeError(f"{where}: {type(value).__name__} is not a receipt value (use str, int, bool, null, list, object)")


def receipt_claims_canonical(*, claims: Mapping[str, Any]) -> bytes:
    """The signed bytes: JSON with sorted keys, no whitespace, UTF-8 (non-ASCII characters unescaped)."""
    if not isinstance(claims, Mapping):
        raise TypeError("claims are a JSON object")
    _check_portable(claims, "claims")
    text = json.dumps(claims, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    """Strict: one spelling per byte string, so that an altered character never decodes to the same bytes."""
    if not isinstance(text, str):
        raise TypeError("base64url text expected")
    data = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    if _b64url(data) != text:
        raise ValueError("not canonical unpadded base64url")
    return data


# --- Keys on disk ------------------------------------------------------------------------------------

def _kid(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).digest()[:8].hex()


def _is_kid(text: str) -> bool:
    return len(text) == _KID_HEX_LENGTH and all(char in "0123456789abcdef" for char in text)


def _public_raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _key_dir() -> Path:
    """RECEIPT_KEY_DIR, refused when it lies in the source tree (anywhere but the ignored data directory)."""
    return _key_dir_of(str(settings.RECEIPT_KEY_DIR), str(settings.BASE_DIR), str(settings.DATA_DIR))


@functools.lru_cache(maxsize=8)
def _key_dir_of(key_dir: str, base_dir: str, data_dir: str) -> Path:
    """`_key_dir` for these settings, resolved once per process (three `realpath` walks cost 60 µs a receipt)."""
    directory = Path(key_dir).resolve()
    source = Path(base_dir).resolve()
    data = Path(data_dir).resolve()
    in_data = directory.is_relative_to(data) and data != source and not source.is_relative_to(data)
    if directory.is_relative_to(source) and not in_data:
        raise ImproperlyConfigured(
            f"RECEIPT_KEY_DIR={directory} lies inside the repository; signing keys live outside it "
            "(default: DATA_DIR/keys)"
        )
    return directory


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Readers see the old file or the whole new one; a secret is never readable by others, not even briefly."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with open(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)  # the umask may have narrowed a public file
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive lock across processes; closing the descriptor releases it, even if the process dies."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(directory / _LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _active_read(directory: Path) -> str | None:
    try:
        kid = (directory / _ACTIVE).read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    if not _is_kid(kid):
        raise ReceiptKeyError(f"{directory / _ACTIVE} does not name a key")
    return kid


def _active_write(directory: Path, kid: str) -> None:
    _write_atomic(directory / _ACTIVE, f"{kid}\n".encode("ascii"), 0o644)


def _key_create(directory: Path) -> str:
    """A new key pair on disk, not yet active. The public half is written first: whatever may sign is published."""
    private = Ed25519PrivateKey.generate()
    public = private.public_key()
    kid = _kid(_public_raw(public))
    public_pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_atomic(directory / f"{kid}{_PUBLIC_SUFFIX}", public_pem, 0o644)
    _write_atomic(directory / f"{kid}{_PRIVATE_SUFFIX}", private_pem, 0o600)
    return kid


def _active_kid(directory: Path) -> str:
    """The signing key's id, creating the first key on first use (once, however many processes start together)."""
    kid = _active_read(directory)
    if kid is not None:
        return kid
    with _locked(directory):
        kid = _active_read(directory)
        if kid is None:
            kid = _key_create(directory)
            _active_write(directory, kid)
    return kid


def _public_key_load(path: Path, kid: str) -> bytes:
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, Ed25519PublicKey) or _kid(_public_raw(key)) != kid:
        raise ReceiptKeyError(f"{path} is not the Ed25519 public key {kid}")
    return _public_raw(key)


def _signing_key(directory: Path, kid: str) -> Ed25519PrivateKey:
    cached = _signing_keys.get((directory, kid))
    if cached is not None:
        return cached
    path = directory / f"{kid}{_PRIVATE_SUFFIX}"
    with path.open("rb") as handle:  # FileNotFoundError: rotated away meanwhile; the caller reads `active` again
        if stat.S_IMODE(os.fstat(handle.fileno()).st_mode) & 0o077:
            raise ReceiptKeyError(f"{path} is readable by others; it must be mode 0600")
        key = serialization.load_pem_private_key(handle.read(), password=None)
    if not isinstance(key, Ed25519PrivateKey) or _kid(_public_raw(key.public_key())) != kid:
        raise ReceiptKeyError(f"{path} is not the Ed25519 private key {kid}")
    _public_key_load(directory / f"{kid}{_PUBLIC_SUFFIX}", kid)  # never sign with a key nobody can verify
    _signing_keys[(directory, kid)] = key
    return key


# --- Receipts ----------------------------------------------------------------------------------------

def receipt_sign(*, claims: dict[str, Any]) -> dict[str, Any]:
    """Sign the canonical bytes of `claims` with the active key.

    Returns {"claims", "kid", "alg": "Ed25519", "signature": unpadded base64url}; `claims` in the result is the
    signed JSON, decoupled from the caller's dict.
    """
    message = receipt_claims_canonical(claims=claims)
    directory = _key_dir()
    for _attempt in range(_SIGN_ATTEMPTS):
        kid = _active_kid(directory)
        try:
            key = _signing_key(directory, kid)
        except FileNotFoundError:
            continue
        signed_claims: dict[str, Any] = json.loads(message)
        return {"claims": signed_claims, "kid": kid, "alg": ALGORITHM, "signature": _b64url(key.sign(message))}
    raise ReceiptKeyError(f"the active receipt key's private half is missing from {directory}")


def receipt_verify(*, receipt: Mapping[str, Any], keys: Sequence[Mapping[str, Any]]) -> bool:
    """True when `receipt` is signed by the key in `keys` (a JWKS "keys" list) that its kid names.

    Needs no settings and no key files: the same check a customer runs offline. Never raises on bad input.
    """
    if not isinstance(receipt, Mapping) or receipt.get("alg") != ALGORITHM:
        return False
    kid = receipt.get("kid")
    try:
        signature = _b64url_decode(receipt["signature"])
        message = receipt_claims_canonical(claims=receipt["claims"])
    except (KeyError, TypeError, ValueError):
        return False
    for jwk in keys:
        if not isinstance(jwk, Mapping) or jwk.get("kid") != kid:
            continue
        if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519" or jwk.get("alg", ALGORITHM) != ALGORITHM:
            continue
        try:
            public_raw = _b64url_decode(jwk["x"])
            if _kid(public_raw) != kid:
                continue
            Ed25519PublicKey.from_public_bytes(public_raw).verify(signature, message)
        except (InvalidSignature, KeyError, TypeError, ValueError):
            continue
        return True
    return False


def receipt_key_set() -> dict[str, Any]:
    """Every receipt key's public half as a JWKS (RFC 7517, OKP keys per RFC 8037): the active key first."""
    directory = _key_dir()
    active = _active_kid(directory)
    found: list[tuple[bool, int, str, bytes]] = []
    for path in directory.glob(f"*{_PUBLIC_SUFFIX}"):
        kid = path.name.removesuffix(_PUBLIC_SUFFIX)
        if not _is_kid(kid):
            raise ReceiptKeyError(f"{path} is not a receipt key file")
        found.append((kid != active, -path.stat().st_mtime_ns, kid, _public_key_load(path, kid)))
    found.sort()
    return {
        "keys": [
            {
                "kty": "OKP",
                "crv": "Ed25519",
                "x": _b64url(public_raw),
                "kid": kid,
                "use": "sig",
                "alg": ALGORITHM,
                "status": "retired" if retired else "active",
            }
            for retired, _newest_first, kid, public_raw in found
        ]
    }


def receipt_key_rotate(*, actor: Actor) -> str:
    """Make a new active key and return its kid; old public keys stay published, the old private key is deleted.

    The audit row and the switch of `active` commit together; if either fails, the previous key signs on and
    the new key's secret is removed (its public half stays: it may have signed in that moment).
    """
    directory = _key_dir()
    with _locked(directory):
        previous = _active_read(directory)
        kid = _key_create(directory)
        try:
            with transaction.atomic():
                audit_record(
                    actor=actor,
                    action="receipt_key.rotate",
                    target_type="ReceiptKey",
                    target_id=kid,
                    changes={"previous_kid": previous},
                )
                _active_write(directory, kid)
        except BaseException:
            if previous is None:
                (directory / _ACTIVE).unlink(missing_ok=True)
            else:
                _active_write(directory, previous)
            (directory / f"{kid}{_PRIVATE_SUFFIX}").unlink(missing_ok=True)
            raise
        if previous is not None:
            (directory / f"{previous}{_PRIVATE_SUFFIX}").unlink(missing_ok=True)
            _fsync_directory(directory)
    return kid
