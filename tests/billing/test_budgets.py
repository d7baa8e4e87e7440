"""I4 budgets: a postpaid organisation with a hard-stop budget is stopped at the budget and never above it,
sequentially and from several processes at once; alert events fire once per threshold and month, are
listed through the API and mailed; alert-only budgets may be exceeded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.core import mail
from django.db.models import Sum
from django.utils import timezone

from billing import budgets, services
from billing.budgets import BudgetExceeded
from billing.models import BudgetEvent, BudgetSpend, CreditHold, LedgerEntry
from billing.reconcile import reconcile
from controlplane.core.errors import NotFound, ValidationFailed
from controlplane.core.models import AuditEvent
from controlplane.core.services import Actor
from tenants.models import Organization, Role
from tests.billing.conftest import MODEL, REGION
from tests.billing.test_concurrency import _database_url, _run_workers
from tests.factories import key_client, make_api_key, make_hold, make_member, make_org, make_prices, make_user

ACTOR = Actor.system("tests")
HOLD = 3000  # 1000 input + 1000 output tokens at $1/$2 per million, in USD micros
SEPTEMBER = datetime(2026, 9, 10, tzinfo=UTC)


def _postpaid(**kwargs: Any) -> Organization:
    return make_org(billing_mode="postpaid", billing_currency="USD", **kwargs)


def _events(org: Organization) -> list[tuple[int, str]]:
    rows = BudgetEvent.objects.unscoped_all_orgs().filter(organization=org).order_by("threshold_percent")
    return list(rows.values_list("threshold_percent", "request_id"))


def _spend(org: Organization, at: datetime) -> tuple[int, int]:
    row = BudgetSpend.objects.unscoped_all_orgs().get(organization=org, month=at.date().replace(day=1))
    return row.held_micros, row.settled_micros


def _settle(request_id: str, tokens: int = 500) -> LedgerEntry:
    return services.hold_settle(request_id=request_id, input_tokens=tokens, output_tokens=tokens, api_key_id=None,
                                at=timezone.now())  # fmt: skip


@pytest.mark.django_db
def test_budgets_are_for_postpaid_organisations_and_are_validated_and_audited(prices: object) -> None:
    with pytest.raises(ValidationFailed) as prepaid:
        budgets.budget_set(actor=ACTOR, organization=make_org(), amount="10", alert_thresholds=[50], hard_stop=True)
    assert prepaid.value.code == "budget_needs_postpaid"
    org = _postpaid()
    for amount, thresholds in (("0", [50]), ("10.001", [50]), ("10", [0]), ("10", [1001]), ("10", [True]),
                               ("10", list(range(1, 12))), ("nan", [50])):  # fmt: skip
        with pytest.raises(ValidationFailed):
            budgets.budget_set(actor=ACTOR, organization=org, amount=amount, alert_thresholds=thresholds,
                               hard_stop=False)  # fmt: skip
    with pytest.raises(NotFound):
        budgets.budget_get(organization=org)
    budget = budgets.budget_set(actor=ACTOR, organization=org, amount="12.50", alert_thresholds=[100, 50, 50, 80],
                                hard_stop=True)  # fmt: skip
    assert (budget.amount_micros, budget.alert_thresholds, budget.currency) == (12_500_000, [50, 80, 100], "USD")
    budgets.budget_set(actor=ACTOR, organization=org, amount="20", alert_thresholds=[90], hard_stop=False)
    budgets.budget_delete(actor=ACTOR, organization=org)
    with pytest.raises(NotFound):
        budgets.budget_delete(actor=ACTOR, organization=org)
    audits = AuditEvent.objects.unscoped_all_orgs().filter(organization_id=org.pk, target_type="Budget")
    assert list(audits.order_by("pk").values_list("action", flat=True)) == ["budget.set", "budget.set", "budget.delete"]
    second = audits.filter(action="budget.set").order_by("pk")[1]
    assert second.changes["before"]["amount"] == "12.5"
    assert second.changes["after"] == {"amount": "20", "currency": "USD", "alert_thresholds": [90], "hard_stop": False}


@pytest.mark.django_db
def test_a_hard_stop_budget_stops_admission_at_the_budget_and_alerts_fire_once(prices: object) -> None:
    org = _postpaid()
    budgets.budget_set(actor=ACTOR, organization=org, amount="0.03", alert_thresholds=[50, 80, 100], hard_stop=True)
    admitted, refusals = [], []
    for index in range(12):
        try:
            make_hold(org, request_id=f"r{index}", at=SEPTEMBER)
            admitted.append(f"r{index}")
        except BudgetExceeded as refused:
            refusals.append((refused.code, refused.http_status, refused.details))
    assert admitted == [f"r{index}" for index in range(10)]  # exactly what fits, no needless refusal
    details = {"currency": "USD", "budget_micros": 30_000, "committed_micros": 30_000, "required_micros": HOLD}
    assert refusals == [("budget_exceeded", 402, details)] * 2
    assert _spend(org, SEPTEMBER) == (30_000, 0)
    assert _events(org) == [(50, "r4"), (80, "r7"), (100, "r9")]
    # Requests settle for less than their holds: room again, up to the budget and not above; no alert twice.
    for request_id in admitted:
        assert _settle(request_id).amount_micros == 1500
    assert _spend(org, SEPTEMBER) == (0, 15_000)
    more = []
    for index in range(12, 20):
        try:
            make_hold(org, request_id=f"r{index}", at=SEPTEMBER + timedelta(hours=1))
            more.append(index)
        except BudgetExceeded:
            pass
    assert more == [12, 13, 14, 15, 16]  # 15_000 settled + 5 x 3000 held = the budget
    held, settled = _spend(org, SEPTEMBER)
    assert held + settled == 30_000
    assert _events(org) == [(50, "r4"), (80, "r7"), (100, "r9")]
    for index in more:
        _settle(f"r{index}", tokens=1000)  # the whole hold: 3000
    total = LedgerEntry.objects.unscoped_all_orgs().filter(organization=org).aggregate(total=Sum("amount_micros"))
    assert total["total"] == _spend(org, SEPTEMBER)[1] == 30_000  # settled spend reaches the budget, never above
    # A new month starts from zero: its thresholds fire again.
    october = datetime(2026, 10, 2, tzinfo=UTC)
    make_hold(org, request_id="october", at=october, input_tokens=5000, max_output_tokens=5000)
    fired = BudgetEvent.objects.unscoped_all_orgs().filter(organization=org, month=october.date().replace(day=1))
    assert list(fired.values_list("threshold_percent", flat=True)) == [50]
    assert not [row for row in reconcile().rows.values() if row["budget_spend"].mismatches]


@pytest.mark.django_db
def test_an_alert_only_budget_may_be_exceeded_and_alerts_each_threshold_once(prices: object) -> None:
    org = _postpaid()
    budgets.budget_set(actor=ACTOR, organization=org, amount="0.03", alert_thresholds=[50, 100, 150], hard_stop=False)
    for index in range(16):
        make_hold(org, request_id=f"a{index}", at=SEPTEMBER)
    assert _spend(org, SEPTEMBER) == (48_000, 0)  # 160% of the budget
    assert _events(org) == [(50, "a4"), (100, "a9"), (150, "a14")]
    # A budget set late in the month: thresholds already passed fire with the next request, once.
    late = _postpaid()
    for index in range(9):
        make_hold(late, request_id=f"l{index}", at=SEPTEMBER)
    budgets.budget_set(actor=ACTOR, organization=late, amount="0.03", alert_thresholds=[50, 80, 100], hard_stop=False)
    make_hold(late, request_id="l9", at=SEPTEMBER)
    make_hold(late, request_id="l10", at=SEPTEMBER)
    assert _events(late) == [(50, "l9"), (80, "l9"), (100, "l9")]


@pytest.mark.django_db
def test_prepaid_organisations_are_never_budget_checked(prices: object, django_assert_num_queries: Any) -> None:
    org = make_org()
    with django_assert_num_queries(0):
        budgets.budget_check(organization=org, request_id="x", amount_micros=10**12, at=SEPTEMBER)
    postpaid = _postpaid()
    with django_assert_num_queries(1):  # the budget, the month's spend and the highest alert, in one query
        budgets.budget_check(organization=postpaid, request_id="x", amount_micros=10**12, at=SEPTEMBER)


@pytest.mark.django_db
def test_alerts_are_listed_through_the_api_and_mailed_once(prices: object, settings: Any) -> None:
    owner, accountant, viewer = make_user(email="owner@acme.example"), make_user(email="ap@acme.example"), make_user()
    org = _postpaid(owner=owner, name="Acme")
    make_member(org, user=accountant, role=Role.BILLING)
    make_member(org, user=viewer, role=Role.VIEWER)
    _, secret = make_api_key(org, owner)
    client = key_client(secret)
    url = f"/api/v1/orgs/{org.slug}/billing/budget"
    assert client.get(url).status_code == 404
    response = client.put(url, {"amount": "0.03", "alert_thresholds": [50, 80], "hard_stop": True}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["amount"] == "0.030000"
    for index in range(9):
        make_hold(org, request_id=f"m{index}", at=timezone.now())
    body = client.get(url).json()
    assert (body["held"], body["committed"], body["hard_stop"]) == ("0.027000", "0.027000", True)
    events = client.get(f"{url}/events").json()["results"]
    assert [(event["threshold_percent"], event["request_id"]) for event in events] == [(80, "m7"), (50, "m4")]
    assert events[0]["committed"] == "0.024000"
    assert budgets.budget_alerts_mail() == 2
    assert budgets.budget_alerts_mail() == 0
    assert len(mail.outbox) == 2
    assert sorted(mail.outbox[0].to) == ["ap@acme.example", "owner@acme.example"]
    assert {message.subject for message in mail.outbox} == {
        "[Acme] 50% of the monthly budget reached",
        "[Acme] 80% of the monthly budget reached",
    }
    assert "0.02 USD" in mail.outbox[1].body or "0.02 USD" in mail.outbox[0].body
    refused = client.put(url, {"amount": 5, "hard_stop": True, "extra": 1}, format="json")
    assert refused.status_code == 400
    assert client.delete(url).status_code == 204
    assert client.get(url).status_code == 404


@pytest.mark.django_db(transaction=True)
def test_a_hard_stop_holds_against_several_processes_at_once() -> None:
    """Four processes race 24 holds against a budget that fits ten: exactly ten are admitted."""
    from tests.billing.test_concurrency import _place_jobs

    make_prices(model_name=MODEL, region=REGION, input_usd_per_million="1.00", output_usd_per_million="2.00")
    org = _postpaid()
    budgets.budget_set(actor=ACTOR, organization=org, amount="0.03", alert_thresholds=[50, 80, 100],
                       hard_stop=True)  # fmt: skip
    outcomes = _run_workers(_place_jobs(org))
    flat = {request_id: result for per_process in outcomes.values() for request_id, result in per_process.items()}
    assert sorted(set(flat.values())) == ["admitted", "refused"], flat
    admitted = sorted(request_id for request_id, result in flat.items() if result == "admitted")
    assert len(admitted) == 10
    holds = CreditHold.objects.unscoped_all_orgs().filter(organization=org, status="open")
    assert sorted(holds.values_list("request_id", flat=True)) == admitted
    held = holds.aggregate(total=Sum("amount_micros"))["total"]
    assert held == 10 * HOLD == 30_000
    assert BudgetSpend.objects.unscoped_all_orgs().get(organization=org).held_micros == held
    assert [threshold for threshold, _ in _events(org)] == [50, 80, 100]
    settle = [{"action": "settle", "database_url": _database_url(), "redis_url": "", "organization_id": org.pk,
               "input_tokens": 1000, "output_tokens": 1000, "at": timezone.now().isoformat(),
               "request_ids": admitted if process % 2 else list(reversed(admitted))}
              for process in range(2)]  # fmt: skip
    settled = _run_workers(settle)
    assert all(isinstance(pk, int) for per_process in settled.values() for pk in per_process.values()), settled
    spend = BudgetSpend.objects.unscoped_all_orgs().get(organization=org)
    assert (spend.held_micros, spend.settled_micros) == (0, 10 * HOLD)
    assert reconcile().clean


@pytest.mark.django_db(transaction=True)
def test_control_without_the_lock_the_budget_is_exceeded() -> None:
    """Positive control: the same race without the organisation lock admits more than the budget allows."""
    from tests.billing.test_concurrency import _place_jobs

    make_prices(model_name=MODEL, region=REGION, input_usd_per_million="1.00", output_usd_per_million="2.00")
    org = _postpaid()
    budgets.budget_set(actor=ACTOR, organization=org, amount="0.03", alert_thresholds=[50], hard_stop=True)
    outcomes = _run_workers(_place_jobs(org, without_lock=True))
    flat = [result for per_process in outcomes.values() for result in per_process.values()]
    assert flat.count("admitted") > 10, outcomes
    assert BudgetSpend.objects.unscoped_all_orgs().get(organization=org).held_micros > 30_000
