"""Fixtures of the billing tests: list prices for the test model, the AED peg, fast password hashing."""

from __future__ import annotations

from typing import Any

import pytest

from billing.models import FxRate, PriceBookEntry
from tests.factories import make_fx, make_prices

MODEL = "SmolLM2-135M-Instruct"
REGION = "dxb"


@pytest.fixture(autouse=True)
def _fast_passwords(settings: Any) -> None:
    # Password hashing is not under test here; Argon2 would dominate the run time.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def prices(db: None) -> tuple[PriceBookEntry, PriceBookEntry]:
    """$1.00 per million input tokens and $2.00 per million output tokens, in force since the epoch."""
    return make_prices(model_name=MODEL, region=REGION, input_usd_per_million="1.00", output_usd_per_million="2.00")


@pytest.fixture
def aed(db: None) -> FxRate:
    return make_fx("AED", "3.6725")
