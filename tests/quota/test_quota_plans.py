"""Quota plans: tiers of default limits. An organisation follows its plan (the default plan when it names
none) in every region, except where an operator overrides a single limit in a single region; a null
override returns that limit to the plan. Customers read the limits in force with their source;
operators edit plans and overrides in the API and the admin panel, audited, with exactly one default
plan at all times; admission enforces the limits in force from the very next request."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from controlplane.core.errors import Conflict, DomainError, ValidationFailed
from controlplane.core.models import AuditEvent
from controlplane.core.regions import REGION_CODES
from controlplane.core.services import Actor
from controlplane.inference import admission
from controlplane.inference.admission import request_admit
from controlplane.inference.openai_schema import parse_generation
from tenants import selectors
from tenants import services as tenant_services
from tenants.models import QUOTA_FIELDS, ApiKey, Organization, QuotaPlan, RegionalQuota
from tests.factories import make_operator, make_org, make_user, session_client
from tests.stack import outbox_sends_recorded, serving_customer

ACTOR = Actor.system("tests")
PLAN_BODY = {
    "slug": "research",
    "name": "Research",
    "requests_per_minute": 30,
    "tokens_per_minute": 9_000,
    "concurrent_requests": 3,
    "monthly_tokens": 5_000_000,
}


@pytest.fixture(autouse=True)
def plans() -> None:
    """The migration seeds the plans; a transactional test before this one may have emptied the table.
    (pytest-django's own autouse fixture has opened the database by now.)"""
    tenant_services.quota_plans_seed(actor=ACTOR)


def _limits(client: Any, organization: Organization) -> dict[str, dict[str, Any]]:
    response = client.get(f"/api/v1/orgs/{organization.slug}/quotas")
    assert response.status_code == 200, response.content
    return {row["region"]: row for row in response.json()["results"]}


def _plan(slug: str) -> QuotaPlan:
    return QuotaPlan.objects.get(slug=slug)


@pytest.mark.django_db
def test_without_a_default_plan_the_builtin_standard_limits_apply() -> None:
    QuotaPlan.objects.all().delete()
    limits = selectors.regional_quota_effective(organization=make_org(), region="dxb")
    assert (limits.plan, limits.tokens_per_minute, limits.concurrent_requests) == ("standard", 200_000, 16)
    assert len(tenant_services.quota_plans_seed(actor=ACTOR)) == 3
    assert tenant_services.quota_plans_seed(actor=ACTOR) == []  # idempotent
    assert list(QuotaPlan.objects.filter(is_default=True).values_list("slug", flat=True)) == ["standard"]


@pytest.mark.django_db
def test_the_seeded_plans_have_exactly_one_default() -> None:
    plans = {plan.slug: plan for plan in QuotaPlan.objects.all()}
    assert {"free", "standard", "enterprise"} <= set(plans)
    assert [slug for slug, plan in plans.items() if plan.is_default] == ["standard"]
    assert plans["free"].tokens_per_minute < plans["standard"].tokens_per_minute < plans["enterprise"].tokens_per_minute


@pytest.mark.django_db
def test_a_new_organisation_follows_the_default_plan_everywhere() -> None:
    owner = make_user()
    organization = make_org(owner=owner)
    standard = _plan("standard")
    rows = _limits(session_client(owner), organization)
    assert sorted(rows) == sorted(REGION_CODES)
    for row in rows.values():
        assert row["plan"] == "standard"
        assert row["overridden"] == []
        for field in QUOTA_FIELDS:
            assert row[field] == getattr(standard, field), field
    assert RegionalQuota.objects.unscoped_all_orgs().filter(organization=organization).count() == len(REGION_CODES)


@pytest.mark.django_db
def test_overrides_win_per_limit_and_region_and_null_returns_to_the_plan() -> None:
    owner = make_user()
    organization = make_org(owner=owner)
    operator = session_client(make_operator())
    url = f"/api/v1/ops/orgs/{organization.slug}/quotas/dxb"

    response = operator.put(url, {"tokens_per_minute": 1234}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["tokens_per_minute"] == 1234
    assert response.json()["overridden"] == ["tokens_per_minute"]

    # the plan changes under the override: the overridden limit stays, the others follow the plan
    operator.put(f"/api/v1/ops/orgs/{organization.slug}/quota-plan", {"plan": "free"}, format="json")
    free = _plan("free")
    rows = _limits(session_client(owner), organization)
    assert rows["dxb"]["plan"] == "free"
    assert rows["dxb"]["tokens_per_minute"] == 1234
    assert rows["dxb"]["requests_per_minute"] == free.requests_per_minute
    assert rows["ruh"]["tokens_per_minute"] == free.tokens_per_minute
    assert rows["ruh"]["overridden"] == []

    cleared = operator.put(url, {"tokens_per_minute": None}, format="json")
    assert cleared.status_code == 200, cleared.content
    assert cleared.json()["tokens_per_minute"] == free.tokens_per_minute
    assert cleared.json()["overridden"] == []
    events = AuditEvent.objects.unscoped_all_orgs().filter(organization=organization, action="regional_quota.set")
    assert [e.changes["after"]["tokens_per_minute"] for e in events.order_by("pk")] == [1234, None]


@pytest.mark.django_db
def test_override_input_is_validated_and_nothing_is_written() -> None:
    organization = make_org()
    operator = session_client(make_operator())
    url = f"/api/v1/ops/orgs/{organization.slug}/quotas/dxb"
    for body in ({}, {"tokens_per_minute": -1}, {"tokens_per_minute": 2**31}, {"tokens_per_minute": "many"},
                 {"tokens_per_minute": 5, "burst": 9}):  # fmt: skip
        response = operator.put(url, body, format="json")
        assert response.status_code == 400, (body, response.content)
        assert response.json()["error"]["code"] in {"invalid_request", "validation_failed", "unknown_field"}, body
    row = RegionalQuota.objects.unscoped_all_orgs().get(organization=organization, region="dxb")
    assert row.overridden == ()
    assert not AuditEvent.objects.unscoped_all_orgs().filter(action="regional_quota.set").exists()
    with pytest.raises(ValidationFailed):
        tenant_services.regional_quota_set(actor=ACTOR, organization=organization, region="dxb")


@pytest.mark.django_db
def test_operators_manage_plans_and_customers_cannot() -> None:
    owner = make_user()
    organization = make_org(owner=owner)
    operator = session_client(make_operator())
    customer = session_client(owner)

    assert customer.get("/api/v1/ops/quota-plans").status_code == 403
    assert customer.post("/api/v1/ops/quota-plans", PLAN_BODY, format="json").status_code == 403
    assert customer.put(f"/api/v1/ops/orgs/{organization.slug}/quota-plan", {"plan": "enterprise"},
                        format="json").status_code == 403  # fmt: skip

    created = operator.post("/api/v1/ops/quota-plans", PLAN_BODY, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["is_default"] is False
    again = operator.post("/api/v1/ops/quota-plans", PLAN_BODY, format="json")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "quota_plan_exists"
    listed = [plan["slug"] for plan in operator.get("/api/v1/ops/quota-plans").json()]
    assert "research" in listed
    assert "standard" in listed

    moved = operator.put(f"/api/v1/ops/orgs/{organization.slug}/quota-plan", {"plan": "research"}, format="json")
    assert moved.status_code == 200, moved.content
    assert moved.json() == {"organization": organization.slug, "plan": "research", "plan_named": True}
    assert _limits(customer, organization)["sin"]["concurrent_requests"] == 3

    update = {k: v for k, v in PLAN_BODY.items() if k != "slug"} | {"concurrent_requests": 4}
    changed = operator.put("/api/v1/ops/quota-plans/research", update, format="json")
    assert changed.status_code == 200, changed.content
    assert _limits(customer, organization)["sin"]["concurrent_requests"] == 4

    unknown = operator.put(f"/api/v1/ops/orgs/{organization.slug}/quota-plan", {"plan": "gold"}, format="json")
    assert unknown.status_code == 404
    back = operator.put(f"/api/v1/ops/orgs/{organization.slug}/quota-plan", {"plan": None}, format="json")
    assert back.json() == {"organization": organization.slug, "plan": "standard", "plan_named": False}

    actions = set(AuditEvent.objects.unscoped_all_orgs().values_list("action", flat=True))
    assert {"quota_plan.create", "quota_plan.update", "organization.quota_plan_set"} <= actions


@pytest.mark.django_db
def test_plan_input_is_validated() -> None:
    operator = session_client(make_operator())
    for bad in ({"slug": "Bad Slug!"}, {"tokens_per_minute": -5}, {"monthly_tokens": 2**63}, {"name": ""},
                {"extra": 1}):  # fmt: skip
        response = operator.post("/api/v1/ops/quota-plans", PLAN_BODY | bad, format="json")
        assert response.status_code == 400, (bad, response.content)
    assert not QuotaPlan.objects.filter(slug="research").exists()
    assert operator.get("/api/v1/ops/quota-plans/nope").status_code == 404


@pytest.mark.django_db
def test_there_is_always_exactly_one_default_plan() -> None:
    operator = session_client(make_operator())
    standard = {k: getattr(_plan("standard"), k) for k in ("name", *QUOTA_FIELDS)}
    refused = operator.put("/api/v1/ops/quota-plans/standard", standard | {"is_default": False}, format="json")
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "default_plan_required"
    assert _plan("standard").is_default

    free = {k: getattr(_plan("free"), k) for k in ("name", *QUOTA_FIELDS)}
    assert operator.put("/api/v1/ops/quota-plans/free", free | {"is_default": True}, format="json").status_code == 200
    assert list(QuotaPlan.objects.filter(is_default=True).values_list("slug", flat=True)) == ["free"]
    organization = make_org()
    assert selectors.regional_quota_effective(organization=organization, region="fra").plan == "free"
    with pytest.raises(Conflict):
        tenant_services.quota_plan_save(actor=ACTOR, slug="free", is_default=False, **free)


@pytest.mark.django_db
def test_the_admin_panel_edits_plans_through_the_audited_service() -> None:
    client = Client()
    client.force_login(make_operator())
    plan = _plan("enterprise")
    url = f"/admin/tenants/quotaplan/{plan.pk}/change/"
    assert client.get(url).status_code == 200
    form = {"name": "Enterprise", "description": "", "requests_per_minute": 7000, "tokens_per_minute": 2_000_000,
            "concurrent_requests": 128, "monthly_tokens": 2_000_000_000}  # fmt: skip
    assert client.post(url, form).status_code == 302
    assert _plan("enterprise").requests_per_minute == 7000
    assert AuditEvent.objects.unscoped_all_orgs().filter(action="quota_plan.update", target_id="enterprise").exists()

    standard = _plan("standard")
    standard_form = {k: getattr(standard, k) for k in ("name", "description", *QUOTA_FIELDS)}  # is_default unticked
    page = client.post(f"/admin/tenants/quotaplan/{standard.pk}/change/", standard_form)
    assert page.status_code == 200  # the form again, with the error
    assert b"mark another plan as the default" in page.content
    assert _plan("standard").is_default


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_admission_enforces_the_plan_in_force_from_the_next_request(monkeypatch: pytest.MonkeyPatch) -> None:
    outbox_sends_recorded(monkeypatch)
    customer = serving_customer(slug="planned")
    client = admission.quota_client()
    stale = list(client.scan_iter(match=f"quota:{{{customer.organization.pk}:*"))
    if stale:
        client.delete(*stale)
    body = {"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}

    def admit() -> None:  # as the API does: the key and its organisation as they are now
        key = ApiKey.objects.unscoped_all_orgs().select_related("organization").get(organization=customer.organization)
        request_admit(
            api_key=key, organization=key.organization, parsed=parse_generation(body, "chat"), raw_body=body,
            region_header=None, idempotency_key=None,
        )  # fmt: skip

    admit()  # the standard plan allows this and warms the cache
    assert admission.quota_limits(customer.organization, "dxb").requests_per_minute == 600

    tenant_services.quota_plan_save(actor=ACTOR, slug="trickle", name="Trickle", requests_per_minute=1,
                                    tokens_per_minute=10**6, concurrent_requests=10, monthly_tokens=10**9)  # fmt: skip
    tenant_services.organization_quota_plan_set(
        actor=ACTOR, organization=customer.organization, plan=_plan("trickle")
    )
    with pytest.raises(DomainError) as limited:
        admit()  # one request already counted in this minute
    assert limited.value.code == "rate_limit_requests_per_minute"

    # a change to the plan itself (a global change) reaches the cached limits too
    tenant_services.quota_plan_save(actor=ACTOR, slug="trickle", name="Trickle", requests_per_minute=100,
                                    tokens_per_minute=10**6, concurrent_requests=10, monthly_tokens=10**9)  # fmt: skip
    admit()
    organization = Organization.objects.get(pk=customer.organization.pk)
    assert admission.quota_limits(organization, "dxb").requests_per_minute == 100
