"""Receipts verify with tools that share no code with ours (PyNaCl, the openssl binary); any changed byte fails;
rotation keeps old receipts verifiable; keys are created once, privately, and never inside the repository."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.http import HttpResponse
from django.test import RequestFactory
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from controlplane.core.models import AuditEvent
from controlplane.core.services import Actor
from controlplane.inference.api.receipt_keys import ReceiptKeySetView
from controlplane.inference.receipts import (
    ReceiptKeyError,
    content_hmac,
    content_salt_new,
    receipt_claims_canonical,
    receipt_key_rotate,
    receipt_key_set,
    receipt_sign,
    receipt_verify,
)

REPO = Path(__file__).resolve().parents[2]
SPKI_ED25519_HEADER = bytes.fromhex("302a300506032b6570032100")
CLAIMS: dict[str, Any] = {
    "request_id": "req_0123456789abcdef",
    "organization": "zürich-rückversicherung",
    "model": "llama-3.1-8b-instruct",
    "region": "fra",
    "country": "DE",
    "accelerator_class": "l40s",
    "backend": "native-cpu",
    "created": "2025-03-14T09:26:53.589Z",
    "completed": "2025-03-14T09:26:54.120Z",
    "input_hmac": "5f" * 32,
    "output_hmac": "a9" * 32,
    "input_tokens": 412,
    "output_tokens": 128,
}


@pytest.fixture
def key_dir(settings: Any, tmp_path: Path) -> Path:
    directory = tmp_path / "keys"
    settings.RECEIPT_KEY_DIR = directory
    return directory


# --- Independent verifiers: nothing below imports our signing code ---------------------------------

def canonical(claims: dict[str, Any]) -> bytes:
    return json.dumps(claims, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def public_key_of(key_set: dict[str, Any], kid: str) -> bytes:
    (jwk,) = [key for key in key_set["keys"] if key["kid"] == kid]
    assert (jwk["kty"], jwk["crv"], jwk["alg"]) == ("OKP", "Ed25519", "Ed25519")
    raw = b64url_decode(jwk["x"])
    assert len(raw) == 32
    assert hashlib.sha256(raw).digest()[:8].hex() == kid
    return raw


def nacl_verifies(raw_key: bytes, message: bytes, signature: bytes) -> bool:
    try:
        VerifyKey(raw_key).verify(message, signature)
    except BadSignatureError:
        return False
    return True


def openssl() -> str:
    binary = shutil.which("openssl")
    assert binary is not None, "the openssl command line is required to check offline verification"
    return binary


def openssl_pem(raw_key: bytes, workdir: Path) -> Path:
    """The conversion docs/receipts.md shows: fixed DER header + raw key, then `openssl pkey` to PEM."""
    der, pem = workdir / "key.der", workdir / "key.pem"
    der.write_bytes(SPKI_ED25519_HEADER + raw_key)
    subprocess.run(  # noqa: S603  # fixed arguments, test-owned files
        [openssl(), "pkey", "-pubin", "-inform", "DER", "-in", str(der), "-out", str(pem)],
        check=True, capture_output=True,
    )
    return pem


def openssl_verifies(pem: Path, message: bytes, signature: bytes, workdir: Path) -> bool:
    claims_file, sig_file = workdir / "claims.json", workdir / "sig.bin"
    claims_file.write_bytes(message)
    sig_file.write_bytes(signature)
    result = subprocess.run(  # noqa: S603  # fixed arguments, test-owned files
        [openssl(), "pkeyutl", "-verify", "-pubin", "-inkey", str(pem), "-rawin",
         "-in", str(claims_file), "-sigfile", str(sig_file)],
        capture_output=True, text=True, check=False,
    )
    if result.returncode == 0:
        assert "Signature Verified Successfully" in result.stdout
        return True
    assert "Signature Verified Successfully" not in result.stdout
    return False


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1:]


# --- Signing and verifying -------------------------------------------------------------------------

def test_a_receipt_verifies_with_pynacl_and_our_verifier(key_dir: Path) -> None:
    receipt = receipt_sign(claims=CLAIMS)
    key_set = receipt_key_set()

    assert set(receipt) == {"claims", "kid", "alg", "signature"}
    assert receipt["alg"] == "Ed25519"
    assert receipt["claims"] == CLAIMS
    assert re.fullmatch(r"[0-9a-f]{16}", receipt["kid"])
    assert re.fullmatch(r"[A-Za-z0-9_-]{86}", receipt["signature"])  # 64 bytes, unpadded base64url
    raw = public_key_of(key_set, receipt["kid"])
    assert nacl_verifies(raw, canonical(CLAIMS), b64url_decode(receipt["signature"]))
    assert receipt_verify(receipt=receipt, keys=key_set["keys"])


def test_a_receipt_verifies_with_the_openssl_command_line(key_dir: Path, tmp_path: Path) -> None:
    receipt = receipt_sign(claims=CLAIMS)
    pem = openssl_pem(public_key_of(receipt_key_set(), receipt["kid"]), tmp_path)

    assert openssl_verifies(pem, canonical(receipt["claims"]), b64url_decode(receipt["signature"]), tmp_path)


def test_one_changed_byte_in_claims_or_signature_fails_every_verifier(key_dir: Path, tmp_path: Path) -> None:
    receipt = receipt_sign(claims=CLAIMS)
    key_set = receipt_key_set()
    raw = public_key_of(key_set, receipt["kid"])
    pem = openssl_pem(raw, tmp_path)
    message, signature = canonical(receipt["claims"]), b64url_decode(receipt["signature"])
    # Positive control: the untouched receipt passes all three.
    assert nacl_verifies(raw, message, signature)
    assert openssl_verifies(pem, message, signature, tmp_path)
    assert receipt_verify(receipt=receipt, keys=key_set["keys"])

    for index in range(len(message)):
        changed = flip(message, index)
        assert not nacl_verifies(raw, changed, signature), index
        try:
            changed_claims = json.loads(changed)
        except (ValueError, UnicodeDecodeError):
            continue  # no longer JSON: nothing to hand our verifier as claims
        assert not receipt_verify(receipt={**receipt, "claims": changed_claims}, keys=key_set["keys"]), index
    for index in range(len(signature)):
        changed = flip(signature, index)
        assert not nacl_verifies(raw, message, changed), index
        forged = {**receipt, "signature": base64.urlsafe_b64encode(changed).rstrip(b"=").decode()}
        assert not receipt_verify(receipt=forged, keys=key_set["keys"]), index
    # The openssl binary on a sample of positions: first, middle and last bytes of each.
    for index in (0, len(message) // 2, len(message) - 1):
        assert not openssl_verifies(pem, flip(message, index), signature, tmp_path), index
    for index in (0, 31, 63):
        assert not openssl_verifies(pem, message, flip(signature, index), tmp_path), index


def test_changed_claim_values_fail(key_dir: Path) -> None:
    receipt = receipt_sign(claims=CLAIMS)
    keys = receipt_key_set()["keys"]
    assert receipt_verify(receipt=receipt, keys=keys)
    for name, value in [("region", "frb"), ("country", "AE"), ("output_tokens", 127), ("input_tokens", 413)]:
        assert not receipt_verify(receipt={**receipt, "claims": {**CLAIMS, name: value}}, keys=keys), name
    assert not receipt_verify(receipt={**receipt, "claims": {**CLAIMS, "extra": "x"}}, keys=keys)


def test_the_verifier_refuses_malformed_receipts_without_raising(key_dir: Path) -> None:
    receipt = receipt_sign(claims=CLAIMS)
    keys = receipt_key_set()["keys"]
    (jwk,) = keys
    other = {**jwk, "x": base64.urlsafe_b64encode(bytes(32)).rstrip(b"=").decode()}
    assert receipt_verify(receipt=receipt, keys=keys)  # positive control
    for broken in [
        {k: v for k, v in receipt.items() if k != "signature"},
        {k: v for k, v in receipt.items() if k != "claims"},
        {**receipt, "alg": "EdDSA"},
        {**receipt, "kid": "0" * 16},
        {**receipt, "signature": receipt["signature"] + "=="},  # padded: not the canonical spelling
        {**receipt, "signature": receipt["signature"][:-1] + "!"},
        {**receipt, "signature": 12},
        {**receipt, "claims": [1, 2]},
        {**receipt, "claims": {**CLAIMS, "input_tokens": 1.5}},
    ]:
        assert not receipt_verify(receipt=broken, keys=keys), broken
    assert not receipt_verify(receipt=receipt, keys=[])
    assert not receipt_verify(receipt=receipt, keys=[other])  # a key whose x does not hash to the kid
    assert not receipt_verify(receipt=receipt, keys=[{**jwk, "crv": "X25519"}])
    assert not receipt_verify(receipt="not a receipt", keys=keys)  # type: ignore[arg-type]  # bad input on purpose


def test_claims_are_canonical_and_portable(key_dir: Path) -> None:
    shuffled = dict(reversed(list(CLAIMS.items())))
    assert receipt_claims_canonical(claims=shuffled) == canonical(CLAIMS)
    assert b" " not in receipt_claims_canonical(claims={"a": 1, "b": [1, 2]})
    assert "zürich".encode() in receipt_claims_canonical(claims=CLAIMS)  # UTF-8, not \u escapes
    unportable: list[dict[Any, Any]] = [
        {"x": 0.5}, {"x": float("nan")}, {"x": 2**53}, {"x": "a\nb"}, {"x": "a\x7fb"}, {"x": "\x00"},
        {"x": "z\x1f"}, {"ü": 1}, {"x": b"bytes"}, {1: "x"},
    ]
    for bad in unportable:
        with pytest.raises((TypeError, ValueError)):
            receipt_sign(claims=bad)
    assert receipt_sign(claims={"x": 2**53 - 1, "y": -(2**53 - 1), "z": None, "t": True})  # positive control


def test_the_receipt_holds_a_copy_of_the_signed_claims(key_dir: Path) -> None:
    claims = dict(CLAIMS)
    receipt = receipt_sign(claims=claims)
    claims["region"] = "sin"
    assert receipt["claims"]["region"] == "fra"
    assert receipt_verify(receipt=receipt, keys=receipt_key_set()["keys"])


# --- Content commitments ---------------------------------------------------------------------------

def test_content_hmac_is_hmac_sha256_hex() -> None:
    # RFC 4231 test case 1.
    assert content_hmac(salt=b"\x0b" * 20, data=b"Hi There") == (
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
    )
    salt = content_salt_new()
    assert len(salt) == 32
    assert salt != content_salt_new()
    assert content_hmac(salt=salt, data=b"prompt") != content_hmac(salt=content_salt_new(), data=b"prompt")
    with pytest.raises(ValueError, match="salt"):
        content_hmac(salt=b"short", data=b"prompt")


# --- Rotation --------------------------------------------------------------------------------------

@pytest.mark.django_db
def test_rotation_keeps_old_receipts_verifiable_and_signs_new_ones_with_the_new_key(
    key_dir: Path, tmp_path: Path
) -> None:
    old = receipt_sign(claims=CLAIMS)
    new_kid = receipt_key_rotate(actor=Actor.system("tests"))
    new = receipt_sign(claims={**CLAIMS, "request_id": "req_after_rotation"})
    key_set = receipt_key_set()

    assert new_kid != old["kid"]
    assert new["kid"] == new_kid
    assert [(key["kid"], key["status"]) for key in key_set["keys"]] == [(new_kid, "active"), (old["kid"], "retired")]
    for receipt in (old, new):
        raw = public_key_of(key_set, receipt["kid"])
        message, signature = canonical(receipt["claims"]), b64url_decode(receipt["signature"])
        assert receipt_verify(receipt=receipt, keys=key_set["keys"])
        assert nacl_verifies(raw, message, signature)
        assert openssl_verifies(openssl_pem(raw, tmp_path), message, signature, tmp_path)
    # A receipt's signature does not carry over to another key.
    assert not receipt_verify(receipt={**old, "kid": new_kid}, keys=key_set["keys"])
    # The retired private key is gone; its public half stays.
    assert not (key_dir / f"{old['kid']}.key.pem").exists()
    assert (key_dir / f"{old['kid']}.pub.pem").exists()
    assert (key_dir / f"{new_kid}.key.pem").exists()
    event = AuditEvent.objects.unscoped_all_orgs().get(action="receipt_key.rotate", target_id=new_kid)
    assert event.changes == {"previous_kid": old["kid"]}
    assert event.actor_id is None


@pytest.mark.django_db
def test_the_rotate_command_prints_the_new_kid_and_is_audited(key_dir: Path) -> None:
    first = receipt_sign(claims=CLAIMS)["kid"]
    out = io.StringIO()
    call_command("receipt_key_rotate", stdout=out)
    kid = out.getvalue().strip()

    assert re.fullmatch(r"[0-9a-f]{16}", kid)
    assert kid != first
    assert receipt_sign(claims=CLAIMS)["kid"] == kid
    assert AuditEvent.objects.unscoped_all_orgs().filter(
        action="receipt_key.rotate", target_id=kid, actor_label="receipt_key_rotate"
    ).count() == 1


@pytest.mark.django_db
def test_a_failed_audit_leaves_the_previous_key_signing(key_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kid = receipt_sign(claims=CLAIMS)["kid"]

    def refuse(**kwargs: Any) -> None:
        raise RuntimeError("audit store down")

    monkeypatch.setattr("controlplane.inference.receipts.audit_record", refuse)
    with pytest.raises(RuntimeError, match="audit store down"):
        receipt_key_rotate(actor=Actor.system("tests"))

    assert receipt_sign(claims=CLAIMS)["kid"] == kid
    assert [key["kid"] for key in receipt_key_set()["keys"] if key["status"] == "active"] == [kid]
    assert sorted(path.name for path in key_dir.glob("*.key.pem")) == [f"{kid}.key.pem"]


# --- Keys on disk ----------------------------------------------------------------------------------

_FIRST_USE = """
import sys, time
from pathlib import Path
import django
django.setup()
from controlplane.inference.receipts import receipt_sign
Path(sys.argv[1]).touch()
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.0005)
print(receipt_sign(claims={"request_id": sys.argv[3]})["kid"])
"""


def test_concurrent_first_use_from_several_processes_yields_one_key(key_dir: Path, tmp_path: Path) -> None:
    processes = 6
    go = tmp_path / "go"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "controlplane.settings.test", "RECEIPT_KEY_DIR": str(key_dir)}
    children = [
        subprocess.Popen(  # noqa: S603  # our own interpreter and script
            [sys.executable, "-c", _FIRST_USE, str(tmp_path / f"ready-{index}"), str(go), f"req_{index}"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for index in range(processes)
    ]
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("ready-*"))) < processes:
            assert time.monotonic() < deadline, "children did not start"
            dead = [child for child in children if child.poll() is not None]
            assert not dead, [child.communicate() for child in dead]
            time.sleep(0.05)
        assert not key_dir.exists()  # nobody has a key yet: they all start from nothing
        go.touch()
        outputs = [child.communicate(timeout=120) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()

    assert all(child.returncode == 0 for child in children), outputs
    kids = {stdout.strip() for stdout, _stderr in outputs}
    assert len(kids) == 1, outputs
    (kid,) = kids
    assert [path.name for path in key_dir.glob("*.pub.pem")] == [f"{kid}.pub.pem"]
    assert [path.name for path in key_dir.glob("*.key.pem")] == [f"{kid}.key.pem"]
    assert [key["kid"] for key in receipt_key_set()["keys"]] == [kid]
    assert not list(key_dir.glob("*.tmp"))
    assert not list(key_dir.glob(".*.tmp"))


def test_private_keys_are_0600_whatever_the_umask(key_dir: Path) -> None:
    previous = os.umask(0)
    try:
        kid = receipt_sign(claims=CLAIMS)["kid"]
    finally:
        os.umask(previous)
    mode = stat.S_IMODE
    assert mode((key_dir / f"{kid}.key.pem").stat().st_mode) == 0o600
    assert mode(key_dir.stat().st_mode) == 0o700
    assert mode((key_dir / f"{kid}.pub.pem").stat().st_mode) == 0o644  # public on purpose


def test_a_private_key_readable_by_others_is_refused(key_dir: Path) -> None:
    kid = receipt_key_set()["keys"][0]["kid"]  # creates the key without loading it for signing
    (key_dir / f"{kid}.key.pem").chmod(0o640)
    with pytest.raises(ReceiptKeyError, match="0600"):
        receipt_sign(claims=CLAIMS)
    (key_dir / f"{kid}.key.pem").chmod(0o600)
    assert receipt_sign(claims=CLAIMS)["kid"] == kid  # positive control


def test_a_missing_private_key_stops_signing_instead_of_making_a_new_key(key_dir: Path) -> None:
    kid = receipt_key_set()["keys"][0]["kid"]
    (key_dir / f"{kid}.key.pem").unlink()
    with pytest.raises(ReceiptKeyError, match="missing"):
        receipt_sign(claims=CLAIMS)
    assert [key["kid"] for key in receipt_key_set()["keys"]] == [kid]


def test_keys_are_never_created_inside_the_repository(settings: Any, tmp_path: Path) -> None:
    for inside in (REPO / "controlplane" / "receipt-keys", REPO, REPO / "docs"):
        settings.RECEIPT_KEY_DIR = inside
        with pytest.raises(ImproperlyConfigured, match="inside the repository"):
            receipt_sign(claims=CLAIMS)
        with pytest.raises(ImproperlyConfigured, match="inside the repository"):
            receipt_key_set()
    assert not (REPO / "controlplane" / "receipt-keys").exists()
    assert not list(REPO.glob("*.key.pem"))
    assert not (REPO / "active").exists()
    # The rule on a stand-in checkout: its data directory is allowed, the rest of it is not.
    checkout = tmp_path / "checkout"
    settings.BASE_DIR = checkout
    settings.DATA_DIR = checkout / "var"
    settings.RECEIPT_KEY_DIR = checkout / "var" / "keys"
    assert receipt_sign(claims=CLAIMS)  # positive control
    settings.RECEIPT_KEY_DIR = checkout / "keys"
    with pytest.raises(ImproperlyConfigured):
        receipt_sign(claims=CLAIMS)
    settings.DATA_DIR = checkout  # a data directory that is the whole checkout grants nothing
    with pytest.raises(ImproperlyConfigured):
        receipt_sign(claims=CLAIMS)


def test_the_default_key_directory_is_ignored_by_git(settings: Any) -> None:
    default = Path(settings.DATA_DIR).resolve() / "keys"
    git = shutil.which("git")
    assert git is not None
    if default.is_relative_to(REPO):
        result = subprocess.run(  # noqa: S603  # fixed arguments
            [git, "check-ignore", "-q", str(default / "0123456789abcdef.key.pem")], cwd=REPO, check=False
        )
        assert result.returncode == 0, f"{default} would be tracked by git"
    tracked = subprocess.run(  # noqa: S603  # fixed arguments
        [git, "ls-files", "*.key.pem", "*.pub.pem"], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert tracked.stdout == ""


# --- The key-set view ------------------------------------------------------------------------------

def test_the_key_set_view_is_public_cacheable_json_without_secrets(key_dir: Path) -> None:
    view = ReceiptKeySetView.as_view()
    response = view(RequestFactory().get("/v1/receipts/keys"))

    assert isinstance(response, HttpResponse)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/jwk-set+json"
    assert response["Cache-Control"] == "public, max-age=300"
    body = json.loads(response.content)
    (jwk,) = body["keys"]
    assert set(jwk) == {"kty", "crv", "x", "kid", "use", "alg", "status"}  # no "d": never the private key
    assert jwk["status"] == "active"
    assert receipt_verify(receipt=receipt_sign(claims=CLAIMS), keys=body["keys"])
    assert view(RequestFactory().head("/v1/receipts/keys")).status_code == 200
    assert view(RequestFactory().post("/v1/receipts/keys")).status_code == 405


# --- The documentation's Python example runs as written --------------------------------------------

def test_the_documented_python_verification_runs(key_dir: Path, tmp_path: Path) -> None:
    text = (REPO / "docs" / "receipts.md").read_text(encoding="utf-8")
    (snippet,) = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    receipt = receipt_sign(claims=CLAIMS)
    (tmp_path / "keys.json").write_text(json.dumps(receipt_key_set()), encoding="utf-8")

    def run(document: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        (tmp_path / "receipt.json").write_text(json.dumps(document), encoding="utf-8")
        return subprocess.run(  # noqa: S603  # our own interpreter and the documented snippet
            [sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, check=False
        )

    good = run(receipt)
    assert good.returncode == 0, good.stderr
    assert good.stdout.strip() == "receipt signature is valid"
    bad = run({**receipt, "claims": {**CLAIMS, "region": "sin"}})
    assert bad.returncode != 0
    assert "NOT valid" in bad.stderr
