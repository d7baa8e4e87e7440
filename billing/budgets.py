"""Monthly budgets of postpaid organisations: setting them, the check at admission, and alert mail.

Committed spend (settled entries plus open holds, per calendar month in UTC by admission time) is kept
by database triggers in `BudgetSpend`. `hold_place` calls `budget_check` under the organisation's lock,
with the amount it is about to hold: one query reads the budget, the month's committed spend and the
highest alert already recorded. A hard-stop budget refuses a hold that would take committed spend above
the amount; since a settlement never costs more than its hold (the hold prices every output token the
request may produce, rounded up), settled spend can never exceed the budget. Alert thresholds reached by
the hold are recorded as `BudgetEvent`s in the same transaction, once per threshold and month (a unique
constraint, and the lock); beat mails them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import F, OuterRef, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from billing import locks
from billing.models import Budget, BudgetEvent, BudgetSpend
from controlplane.core import money
from controlplane.core.errors import DomainError, NotFound, ValidationFailed
from controlplane.core.services import Actor, audit_record
from tenants.models import Membership, Organization, Role

logger = logging.getLogger("billing.budgets")

MAX_THRESHOLD_PERCENT = 1000
MAX_BUDGET_UNITS = 10**12


class BudgetExceeded(DomainError):
    """A hard-stop budget would be exceeded by the most this request can cost."""

    code = "budget_exceeded"
    http_status = 402


def month_start(moment: datetime) -> date:
    """The first day of the calendar month (UTC) of `moment`."""
    utc = moment.astimezone(UTC)
    return date(utc.year, utc.month, 1)


def budget_check(*, organization: Organization, request_id: str, amount_micros: int, at: datetime) -> None:
    """Refuse (402 `budget_exceeded`) or admit a hold of `amount_micros`; record the alerts it reaches.

    Called by `hold_place` inside its transaction, with the organisation's row locked, before the hold is
    written. Prepaid organisations have no budget: nothing is read.
    """
    if organization.billing_mode != Organization.BillingMode.POSTPAID:
        return
    month = month_start(at)
    spend = BudgetSpend.objects.unscoped_all_orgs().filter(
        organization_id=OuterRef("organization_id"), month=month, currency=OuterRef("currency")
    )
    fired = BudgetEvent.objects.unscoped_all_orgs().filter(organization_id=OuterRef("organization_id"), month=month)
    row = (
        Budget.objects.unscoped_all_orgs()
        .filter(organization_id=organization.pk, currency=organization.billing_currency)
        .annotate(
            committed=Coalesce(
                Subquery(spend.annotate(total=F("held_micros") + F("settled_micros")).values("total")[:1]), Value(0)
            ),
            fired=Coalesce(Subquery(fired.order_by("-threshold_percent").values("threshold_percent")[:1]), Value(0)),
        )
        .values_list("amount_micros", "hard_stop", "alert_thresholds", "committed", "fired")
        .first()
    )
    if row is None:
        return
    budget_micros, hard_stop, thresholds, committed, highest_fired = row
    after = int(committed) + amount_micros
    if hard_stop and after > budget_micros:
        raise BudgetExceeded(
            "This request could take the organisation's spend above its monthly budget (hard stop).",
            details={
                "currency": organization.billing_currency,
                "budget_micros": budget_micros,
                "committed_micros": int(committed),
                "required_micros": amount_micros,
            },
        )
    reached = [t for t in sorted(thresholds) if t > highest_fired and after * 100 >= t * budget_micros]
    if reached:
        BudgetEvent.objects.unscoped_all_orgs().bulk_create(
            [
                BudgetEvent(
                    organization_id=organization.pk,
                    month=month,
                    threshold_percent=threshold,
                    currency=organization.billing_currency,
                    budget_micros=budget_micros,
                    committed_micros=after,
                    request_id=request_id,
                )
                for threshold in reached
            ],
            ignore_conflicts=True,
        )


# --- Setting a budget ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """A budget with the current month's committed spend, for the API."""

    budget: Budget
    month: date
    settled_micros: int
    held_micros: int


def _thresholds(values: Any) -> list[int]:
    if not isinstance(values, list | tuple) or len(values) > 10:
        raise ValidationFailed("alert_thresholds is a list of at most 10 percentages.")
    cleaned: set[int] = set()
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_THRESHOLD_PERCENT:
            raise ValidationFailed(f"each alert threshold is a whole percentage from 1 to {MAX_THRESHOLD_PERCENT}.")
        cleaned.add(value)
    return sorted(cleaned)


def budget_validate(
    *, organization: Organization, amount: Decimal | str, alert_thresholds: Any
) -> tuple[int, list[int]]:
    """Check a budget without writing; returns the amount in micros and the sorted thresholds."""
    if organization.billing_mode != Organization.BillingMode.POSTPAID:
        raise ValidationFailed(
            "Budgets are for postpaid organisations; a prepaid one spends only its credit.",
            code="budget_needs_postpaid",
        )
    try:
        value = money.as_decimal(amount)
    except money.MoneyError as exc:
        raise ValidationFailed(f"amount is not a decimal number: {amount!r}") from exc
    currency = organization.billing_currency
    if value <= 0 or value >= MAX_BUDGET_UNITS:
        raise ValidationFailed(f"amount must be a positive number below {MAX_BUDGET_UNITS}.")
    step = Decimal(1).scaleb(-money.minor_units(currency))
    if value != value.quantize(step, rounding=ROUND_HALF_EVEN):
        raise ValidationFailed(f"amount must be a whole number of {currency}'s smallest unit ({step}).")
    return money.units_to_micros(value), _thresholds(alert_thresholds)


def _snapshot(budget: Budget) -> dict[str, Any]:
    return {
        "amount": f"{money.micros_to_units(budget.amount_micros).normalize():f}",
        "currency": budget.currency,
        "alert_thresholds": budget.alert_thresholds,
        "hard_stop": budget.hard_stop,
    }


def budget_set(
    *, actor: Actor, organization: Organization, amount: Decimal | str, alert_thresholds: Any, hard_stop: bool
) -> Budget:
    """Create or change the organisation's monthly budget in its billing currency, audited.

    Alerts already recorded this month stay recorded: each threshold fires once a month.
    """
    with transaction.atomic():
        org = locks.organization_lock(organization_id=organization.pk)
        amount_micros, thresholds = budget_validate(organization=org, amount=amount, alert_thresholds=alert_thresholds)
        budget: Budget | None = Budget.objects.unscoped_all_orgs().filter(organization=org).first()
        before = _snapshot(budget) if budget is not None else None
        if budget is None:
            budget = Budget(organization=org)
        budget.currency = org.billing_currency
        budget.amount_micros = amount_micros
        budget.alert_thresholds = thresholds
        budget.hard_stop = bool(hard_stop)
        budget.save()
        audit_record(
            actor=actor,
            action="budget.set",
            target_type="Budget",
            target_id=budget.pk,
            organization_id=org.pk,
            changes={"before": before, "after": _snapshot(budget)},
        )
    return budget


def budget_delete(*, actor: Actor, organization: Organization) -> None:
    """Remove the organisation's budget, audited; 404 when it has none."""
    with transaction.atomic():
        org = locks.organization_lock(organization_id=organization.pk)
        budget: Budget | None = Budget.objects.unscoped_all_orgs().filter(organization=org).first()
        if budget is None:
            raise NotFound("The organisation has no budget.")
        before = _snapshot(budget)
        target_id = budget.pk
        budget.delete()
        audit_record(
            actor=actor,
            action="budget.delete",
            target_type="Budget",
            target_id=target_id,
            organization_id=org.pk,
            changes={"before": before},
        )


def budget_get(*, organization: Organization, at: datetime | None = None) -> BudgetStatus:
    """The organisation's budget and this month's committed spend; 404 when it has none."""
    budget: Budget | None = Budget.objects.unscoped_all_orgs().filter(organization=organization).first()
    if budget is None:
        raise NotFound("The organisation has no budget.")
    month = month_start(at or timezone.now())
    spend = (
        BudgetSpend.objects.unscoped_all_orgs()
        .filter(organization=organization, month=month, currency=budget.currency)
        .values_list("settled_micros", "held_micros")
        .first()
    )
    settled, held = spend or (0, 0)
    return BudgetStatus(budget=budget, month=month, settled_micros=int(settled), held_micros=int(held))


def budget_events_list(*, organization: Organization) -> QuerySet[BudgetEvent]:
    events: QuerySet[BudgetEvent] = BudgetEvent.objects.unscoped_all_orgs().filter(organization=organization)
    return events


# --- Alert mail (beat) ---------------------------------------------------------------------------------


def _recipients(organization_id: int) -> list[str]:
    members = Membership.objects.unscoped_all_orgs().filter(
        organization_id=organization_id, role__in=[Role.OWNER, Role.BILLING], user__is_active=True
    )
    return sorted(set(members.values_list("user__email", flat=True)))


def budget_alerts_mail(*, limit: int = 200) -> int:
    """Mail recorded alerts not mailed yet to the organisation's owners and billing members.

    Beat runs it every minute. Each event is claimed with SKIP LOCKED and marked in the transaction that
    sends it, so overlapping runs do not mail it twice; a crash after sending and before the commit mails
    it again on the next run (at least once). Returns the number of events mailed.
    """
    sent = 0
    with transaction.atomic():
        pending = list(
            BudgetEvent.objects.unscoped_all_orgs()
            .select_for_update(skip_locked=True)
            .filter(mailed_at__isnull=True)
            .select_related("organization")
            .order_by("pk")[:limit]
        )
        for event in pending:
            organization = event.organization
            recipients = _recipients(event.organization_id)
            if recipients:
                spent = money.format_micros(event.committed_micros, event.currency)
                budget = money.format_micros(event.budget_micros, event.currency)
                send_mail(
                    subject=f"[{organization.name}] {event.threshold_percent}% of the monthly budget reached",
                    message=(
                        f"{organization.name} ({organization.slug}) has committed {spent} {event.currency} of its "
                        f"{budget} {event.currency} budget for {event.month:%B %Y} (UTC), "
                        f"{event.threshold_percent}% or more.\n\nCommitted spend counts settled requests and "
                        "requests in flight at their most.\n"
                    ),
                    from_email=settings.DEFAULT_FROM_EMAIL,
                    recipient_list=recipients,
                )
                sent += 1
            else:
                logger.warning("budget alert without recipients", extra={"organization": organization.slug})
            event.mailed_at = timezone.now()
            event.save(update_fields=["mailed_at", "updated_at"])
    return sent
