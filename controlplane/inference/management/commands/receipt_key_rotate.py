"""Rotate the receipt-signing key: prints the new key id; earlier receipts stay verifiable with the old public key."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from controlplane.core.services import Actor
from controlplane.inference.receipts import receipt_key_rotate


class Command(BaseCommand):
    help = (
        "Create a new active Ed25519 key for residency receipts and print its key id. Old public keys stay in "
        "the published key set; the old private key is deleted. The rotation is audited."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        kid = receipt_key_rotate(actor=Actor.system("receipt_key_rotate"))
        self.stdout.write(kid)
