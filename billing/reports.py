"""Reads for customers: the list prices in force per region, and this month's use per region next to the
organisation's regional limits."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import Count, F, OuterRef, QuerySet, Subquery, Sum
from django.utils import timezone

from billing.budgets import month_start
from billing.invoicing import month_bounds
from billing.models import CreditHold, LedgerEntry, PriceBookEntry
from controlplane.core.regions import REGION_CODES
from tenants import selectors as tenant_selectors
from tenants.models import Organization, RegionalQuota


def prices_in_force(
    *, at: datetime | None = None, region: str | None = None, model_name: str | None = None
) -> QuerySet[PriceBookEntry]:
    """The version of every (model, region, token kind) price in force at `at` (default: now)."""
    at = at or timezone.now()
    latest = (
        PriceBookEntry.objects.filter(
            model_name=OuterRef("model_name"),
            region=OuterRef("region"),
            token_kind=OuterRef("token_kind"),
            effective_from__lte=at,
        )
        .order_by("-effective_from")
        .values("pk")[:1]
    )
    entries = PriceBookEntry.objects.filter(effective_from__lte=at).annotate(latest=Subquery(latest))
    entries = entries.filter(pk=F("latest"))
    if region is not None:
        entries = entries.filter(region=region)
    if model_name is not None:
        entries = entries.filter(model_name=model_name)
    return entries


@dataclass(frozen=True, slots=True)
class RegionUse:
    region: str
    requests_per_minute: int
    tokens_per_minute: int
    concurrent_requests: int
    monthly_tokens: int
    requests: int
    input_tokens: int
    output_tokens: int
    spend_micros: int
    open_requests: int
    held_micros: int


def usage_by_region(*, organization: Organization, at: datetime | None = None) -> tuple[str, list[RegionUse]]:
    """This calendar month's settled use and open holds per region (UTC, by admission), with the limits.

    Returns the month ('YYYY-MM') and one row per region, in region-code order, with the limits in
    force there (the organisation's plan, with its overrides in that region).
    """
    month = month_start(at or timezone.now())
    start, end = month_bounds(month)
    settled = {
        row["region"]: row
        for row in LedgerEntry.objects.unscoped_all_orgs()
        .filter(organization=organization, admitted_at__gte=start, admitted_at__lt=end)
        .values("region")
        .annotate(
            requests=Count("pk"), input=Sum("input_tokens"), output=Sum("output_tokens"), spend=Sum("amount_micros")
        )
        .order_by()
    }
    held = {
        row["region"]: row
        for row in CreditHold.objects.unscoped_all_orgs()
        .filter(organization=organization, status=CreditHold.Status.OPEN)
        .values("region")
        .annotate(requests=Count("pk"), held=Sum("amount_micros"))
        .order_by()
    }
    quota_rows = RegionalQuota.objects.unscoped_all_orgs().filter(organization=organization)
    plan = tenant_selectors.quota_plan_of(organization=organization)
    quotas = {row.region: tenant_selectors.quota_effective(row, region=row.region, plan=plan) for row in quota_rows}
    rows = []
    for region in REGION_CODES:
        quota = quotas.get(region) or tenant_selectors.quota_effective(None, region=region, plan=plan)
        used, open_holds = settled.get(region, {}), held.get(region, {})
        rows.append(
            RegionUse(
                region=region,
                requests_per_minute=quota.requests_per_minute,
                tokens_per_minute=quota.tokens_per_minute,
                concurrent_requests=quota.concurrent_requests,
                monthly_tokens=quota.monthly_tokens,
                requests=int(used.get("requests") or 0),
                input_tokens=int(used.get("input") or 0),
                output_tokens=int(used.get("output") or 0),
                spend_micros=int(used.get("spend") or 0),
                open_requests=int(open_holds.get("requests") or 0),
                held_micros=int(open_holds.get("held") or 0),
            )
        )
    return f"{month:%Y-%m}", rows
