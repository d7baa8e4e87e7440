"""Fixtures of the tenants API tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.core.cache import cache


@pytest.fixture(autouse=True)
def _clean_login_throttle() -> Iterator[None]:
    # Login failure counters live in Redis and would otherwise leak from one test into the next.
    cache.clear()
    yield
    cache.clear()
