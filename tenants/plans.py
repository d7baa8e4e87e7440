"""The quota plans every installation starts with. The migration that introduced plans seeds them (with
its own copy of these figures), `seed_demo` and `quota_plans_seed` re-create any that are missing, and
when no plan is marked the default (an emptied table) admission applies the standard plan's figures."""

from __future__ import annotations

from typing import Any, Final

SEEDED_PLANS: Final[tuple[dict[str, Any], ...]] = (
    {
        "slug": "free",
        "name": "Free",
        "description": "Trying the service: a few requests at a time.",
        "requests_per_minute": 60,
        "tokens_per_minute": 20_000,
        "concurrent_requests": 2,
        "monthly_tokens": 2_000_000,
        "is_default": False,
    },
    {
        "slug": "standard",
        "name": "Standard",
        "description": "The default for new organisations.",
        "requests_per_minute": 600,
        "tokens_per_minute": 200_000,
        "concurrent_requests": 16,
        "monthly_tokens": 100_000_000,
        "is_default": True,
    },
    {
        "slug": "enterprise",
        "name": "Enterprise",
        "description": "Production traffic under a contract.",
        "requests_per_minute": 6_000,
        "tokens_per_minute": 2_000_000,
        "concurrent_requests": 128,
        "monthly_tokens": 2_000_000_000,
        "is_default": False,
    },
)

BUILTIN_DEFAULT: Final[dict[str, Any]] = next(plan for plan in SEEDED_PLANS if plan["is_default"])
