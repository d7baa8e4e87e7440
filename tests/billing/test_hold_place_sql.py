"""I4/I5: hold placement on PostgreSQL is one statement (`billing_hold_place`, migration 0008). It writes
what the Python placement writes (the hold, its prices and rate, the grants drawn on in burn order, the
allocations, the budget's alerts) and refuses what it refuses, with the same codes and details, writing
nothing then."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from billing import budgets, services
from billing.models import BudgetEvent, CreditGrant, CreditHold, HoldAllocation
from controlplane.core.errors import Conflict, DomainError
from tests.billing.conftest import MODEL, REGION
from tests.factories import TEST_ACTOR, make_fx, make_grant, make_org, make_prices

pytestmark = pytest.mark.django_db

Place = Callable[..., CreditHold]
PATHS: dict[str, Place] = {"database": services._hold_place_in_database, "python": services._hold_place_here}
_HOLD_FIELDS = (
    "billing_mode", "currency", "amount_micros", "model_name", "region", "input_tokens", "max_output_tokens",
    "input_usd_per_million", "output_usd_per_million", "fx_per_usd", "status", "closed_at", "release_reason",
)  # fmt: skip


def _world(path: str, *, mode: str, currency: str, grants: list[tuple[str, int, int | None]], budget: str | None,
           requests: list[tuple[int, int]]) -> dict[str, Any]:  # fmt: skip
    """An organisation with grants (amount, priority, days to expiry) or a budget, and holds placed in order;
    what was written or refused, with grant and price ids replaced by their positions."""
    org = make_org(billing_mode=mode, billing_currency=currency)
    made = []
    for amount, priority, days in grants:
        expires = None if days is None else timezone.now() + timedelta(days=abs(days))
        grant = make_grant(org, amount, priority=priority, expires_at=expires)
        if days is not None and days < 0:  # expired since: a grant is created with a future expiry
            CreditGrant.objects.unscoped_all_orgs().filter(pk=grant.pk).update(
                expires_at=timezone.now() - timedelta(days=-days)
            )
        made.append(grant)
    if budget is not None:
        budgets.budget_set(actor=TEST_ACTOR, organization=org, amount=budget, alert_thresholds=[10, 50, 90],
                           hard_stop=True)  # fmt: skip
    grant_index = {grant.pk: position for position, grant in enumerate(made)}
    outcomes: list[Any] = []
    at = timezone.now()
    for number, (input_tokens, max_output_tokens) in enumerate(requests):
        try:
            hold = PATHS[path](organization=org, request_id=f"{path}-{org.pk}-{number}", model_name=MODEL,
                               region=REGION, input_tokens=input_tokens, max_output_tokens=max_output_tokens,
                               at=at)  # fmt: skip
        except DomainError as refusal:
            outcomes.append(("refused", type(refusal).__name__, refusal.code, refusal.details))
            continue
        stored = CreditHold.objects.unscoped_all_orgs().get(pk=hold.pk)
        assert [getattr(hold, name) for name in _HOLD_FIELDS] == [getattr(stored, name) for name in _HOLD_FIELDS]
        allocations = HoldAllocation.objects.unscoped_all_orgs().filter(hold=stored).order_by("pk")
        outcomes.append((
            "held",
            tuple(getattr(stored, name) for name in _HOLD_FIELDS),
            stored.admitted_at == at,
            (stored.input_price.token_kind, stored.output_price.token_kind),
            stored.fx_rate.currency if stored.fx_rate_id else None,
            [(grant_index[a.grant_id], a.amount_micros) for a in allocations],
        ))  # fmt: skip
    return {
        "outcomes": outcomes,
        "grants": [
            (grant_index[g.pk], g.held_micros, g.consumed_micros)
            for g in CreditGrant.objects.unscoped_all_orgs().filter(organization=org).order_by("pk")
        ],
        "holds": CreditHold.objects.unscoped_all_orgs().filter(organization=org).count(),
        "alerts": list(
            BudgetEvent.objects.unscoped_all_orgs()
            .filter(organization=org)
            .order_by("threshold_percent")
            .values_list("threshold_percent", "budget_micros", "committed_micros", "currency")
        ),
    }


@pytest.mark.parametrize(
    ("mode", "currency", "grants", "budget", "requests", "refused", "alerts"),
    [
        # burn order: priority, then the earlier expiry, then age; 12000 micros over two grants, then 9000
        ("prepaid", "USD", [("0.01", 5, None), ("0.01", 1, 30), ("0.01", 1, 3)], None,
         [(4000, 4000), (3000, 3000), (10, 10)], 0, 0),
        # refused for credit (4000 micros left of 10000): what is required and what is available, nothing
        # written; a smaller one still fits
        ("prepaid", "USD", [("0.01", 1, None)], None, [(2000, 2000), (2000, 2000), (500, 500)], 1, 0),
        # an expired grant is not drawn on
        ("prepaid", "USD", [("1.00", 0, -1), ("0.01", 1, None)], None, [(1000, 1000), (1000, 1000)], 0, 0),
        # AED at 3.6725: 3000 USD micros become 11017.5 AED micros, held as 11018
        ("prepaid", "AED", [("0.02", 1, None), ("0.05", 2, None)], None, [(1000, 1000), (1, 1), (0, 0)], 0, 0),
        # postpaid without a budget: no balance check
        ("postpaid", "USD", [], None, [(10**6, 10**6), (3, 7)], 0, 0),
        # postpaid with a hard-stop budget of 40000 AED micros: alerts at 10% and 50%, then 90%, then the stop
        ("postpaid", "AED", [], "0.04",
         [(1000, 1000), (1000, 1000), (500, 500), (1000, 1000), (1, 1), (1000, 1000)], 1, 3),
    ],
)  # fmt: skip
def test_the_function_places_exactly_as_the_python_placement(
    prices: object, aed: object, mode: str, currency: str, grants: list[tuple[str, int, int | None]],
    budget: str | None, requests: list[tuple[int, int]], refused: int, alerts: int,
) -> None:  # fmt: skip
    database = _world("database", mode=mode, currency=currency, grants=grants, budget=budget, requests=requests)
    python = _world("python", mode=mode, currency=currency, grants=grants, budget=budget, requests=requests)
    assert database == python
    assert sum(outcome[0] == "refused" for outcome in database["outcomes"]) == refused
    assert len(database["alerts"]) == alerts
    assert database["holds"] == len(requests) - refused


def test_each_refusal_of_the_function_is_the_python_placements(prices: object) -> None:
    """Credit, budget, a currency without a rate and a model without prices: same exception, code and details
    (30000 USD micros against no credit and against a budget of 10000 EUR micros)."""
    make_fx("EUR", "0.9")
    cases: list[tuple[dict[str, Any], dict[str, Any], str]] = [
        ({"billing_mode": "prepaid"}, {}, "insufficient_credit"),
        ({"billing_mode": "prepaid", "billing_currency": "SAR"}, {}, "fx_unavailable"),
        ({"billing_mode": "postpaid"}, {"model_name": "no-such-model"}, "price_unavailable"),
        ({"billing_mode": "postpaid", "billing_currency": "EUR"}, {"budget": "0.01"}, "budget_exceeded"),
    ]
    for org_options, call_options, code in cases:
        answers = []
        for path in PATHS:
            org = make_org(**org_options)
            options = dict(call_options)
            if "budget" in options:
                budgets.budget_set(actor=TEST_ACTOR, organization=org, amount=options.pop("budget"),
                                   alert_thresholds=[], hard_stop=True)  # fmt: skip
            with pytest.raises(DomainError) as refused:
                PATHS[path](organization=org, request_id=f"{path}-{code}", model_name=options.get("model_name", MODEL),
                            region=REGION, input_tokens=10000, max_output_tokens=10000, at=timezone.now())  # fmt: skip
            answers.append((type(refused.value), refused.value.code, refused.value.http_status, refused.value.details))
            assert CreditHold.objects.unscoped_all_orgs().filter(organization=org).count() == 0
        assert answers[0] == answers[1]
        assert answers[0][1] == code


def test_the_same_request_id_is_the_same_hold_and_another_organisations_is_refused(prices: object) -> None:
    org, other = make_org(billing_mode="postpaid"), make_org(billing_mode="postpaid")
    at = timezone.now()
    first = services.hold_place(organization=org, request_id="req-same", model_name=MODEL, region=REGION,
                                input_tokens=10, max_output_tokens=10, at=at)  # fmt: skip
    again = services.hold_place(organization=org, request_id="req-same", model_name=MODEL, region=REGION,
                                input_tokens=999, max_output_tokens=999, at=at)  # fmt: skip
    assert (again.pk, again.amount_micros) == (first.pk, first.amount_micros)
    with pytest.raises(Conflict) as reused:
        services.hold_place(organization=other, request_id="req-same", model_name=MODEL, region=REGION,
                            input_tokens=10, max_output_tokens=10, at=at)  # fmt: skip
    assert reused.value.code == "request_id_reused"
    assert CreditHold.objects.unscoped_all_orgs().filter(request_id="req-same").count() == 1


def test_a_later_price_version_applies_to_holds_admitted_after_it(prices: object) -> None:
    """The function reads the versions in force at admission from the tables (no process cache)."""
    org = make_org(billing_mode="postpaid")
    later = timezone.now() + timedelta(hours=1)
    make_prices(model_name=MODEL, region=REGION, input_usd_per_million="3.00", output_usd_per_million="5.00",
                effective_from=later)  # fmt: skip
    before = services.hold_place(organization=org, request_id="req-before", model_name=MODEL, region=REGION,
                                 input_tokens=1000, max_output_tokens=1000, at=timezone.now())  # fmt: skip
    after = services.hold_place(organization=org, request_id="req-after", model_name=MODEL, region=REGION,
                                input_tokens=1000, max_output_tokens=1000, at=later + timedelta(seconds=1))  # fmt: skip
    assert (before.amount_micros, after.amount_micros) == (3000, 8000)
    assert (after.input_usd_per_million, after.output_usd_per_million) == (Decimal("3.00"), Decimal("5.00"))
