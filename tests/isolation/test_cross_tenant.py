"""I1 isolation: walk every organisation route and method from the URL configuration.

Organisation B owns at least one object of every kind. A member (session) and an API key of A get
404 on each of B's objects, through B's URL and through A's own URL with B's ids, and see none of
B's rows in any list, filter or page; B gets 2xx on the same requests (positive control) and A's own
lists are non-empty. The suite fails when an organisation route is added without coverage here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from rest_framework.test import APIClient

from billing.budgets import budget_set
from billing.invoicing import invoice_close_month
from billing.models import Invoice
from billing.services import fx_tax_seed, hold_place, hold_settle
from controlplane.core.services import Actor
from controlplane.fleet.models import AcceleratorClass, Host, Region
from controlplane.inference.models import InferenceRequest
from tenants.api.base import OrgScopedAPIView
from tenants.models import ApiKey, Invitation, Membership, Organization, Role
from tenants.services import invitation_create, quota_plans_seed, residency_policy_update
from tests.factories import (
    key_client,
    make_api_key,
    make_inference_request,
    make_member,
    make_operator,
    make_org,
    make_prices,
    make_request_content,
    make_user,
    session_client,
)
from tests.routes import Route, api_routes

# Request content lives in the regional stores: the request routes read them.
pytestmark = pytest.mark.django_db(databases="__all__")
BILLED_AT = datetime(2026, 1, 15, 12, tzinfo=UTC)  # in a month that is over, so that it can be invoiced


@pytest.fixture(autouse=True)
def _fast_passwords(settings: Any) -> None:
    # Password hashing is not under test here; Argon2 would make each world take seconds.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@dataclass
class Tenant:
    org: Organization
    owner_session: APIClient
    owner_key: APIClient
    member: Membership  # a developer, the target of member PATCH/DELETE
    invitation: Invitation
    spare_key: ApiKey  # the target of key GET/DELETE
    rotate_key: ApiKey  # the target of key rotation
    request: InferenceRequest  # an inference request with content retained in its region
    invoice: Invoice  # a finalised invoice (postpaid usage of a closed month), with a budget alert
    markers: set[str] = field(default_factory=set)


def _tenant(tag: str) -> Tenant:
    owner = make_user(email=f"owner-{tag}@{tag}-corp.example")
    org = make_org(owner=owner, slug=f"{tag}-corp", name=f"{tag.title()} Corporation", billing_country="AE",
                   billing_mode="postpaid")  # fmt: skip
    member_user = make_user(email=f"dev-{tag}@{tag}-corp.example")
    member = make_member(org, user=member_user, role=Role.DEVELOPER)
    invitation, _ = invitation_create(actor=Actor.system("tests"), organization=org,
                                      email=f"invitee-{tag}@{tag}-corp.example", role=Role.VIEWER)
    _, owner_secret = make_api_key(org, owner, name=f"{tag} owner key")
    spare_key, _ = make_api_key(org, owner, name=f"{tag} spare key")
    rotate_key, _ = make_api_key(org, owner, name=f"{tag} rotate key")
    residency_policy_update(actor=Actor.system("tests"), organization=org, allowed_countries=["AE"],
                            allowed_zones=["GCC"], accelerator_family="", retention_days=7)
    request = make_inference_request(org, api_key=spare_key, model_name=f"{tag}-tuned-model", retention_days=7)
    prompt = f"{tag} confidential prompt"
    make_request_content(request, body={"endpoint": "chat", "request": {"messages": [{"role": "user",
                                                                                    "content": prompt}]}})
    # Billing: a budget whose 1% alert the first request reaches, and that request invoiced in a closed month.
    budget_set(actor=Actor.system("tests"), organization=org, amount="10.00", alert_thresholds=[1], hard_stop=False)
    billed = f"{tag}-billed-request"
    hold_place(organization=org, request_id=billed, model_name="SmolLM2-135M-Instruct", region="dxb",
               input_tokens=100_000, max_output_tokens=100_000, at=BILLED_AT)
    hold_settle(request_id=billed, input_tokens=100_000, output_tokens=50_000, api_key_id=None, at=BILLED_AT)
    [closed] = invoice_close_month(actor=Actor.system("tests"), organization=org, month=BILLED_AT.date(),
                                   finalize=True)
    [invoice] = closed.invoices
    tenant = Tenant(org=org, owner_session=session_client(owner), owner_key=key_client(owner_secret),
                    member=member, invitation=invitation, spare_key=spare_key, rotate_key=rotate_key, request=request,
                    invoice=invoice)
    tenant.markers = {org.slug, owner.email, member_user.email, invitation.email, member.public_id,
                      invitation.public_id, spare_key.key_id, rotate_key.key_id, f"{tag.title()} Corporation",
                      request.request_id, request.model_name, prompt, billed, invoice.number}
    return tenant


@pytest.fixture
def tenants() -> tuple[Tenant, Tenant]:
    fx_tax_seed()
    make_prices(model_name="SmolLM2-135M-Instruct", region="dxb")
    return _tenant("alpha"), _tenant("bravo")


# Route pattern -> how to name B's object in each URL argument other than `org`, and a valid body for
# each unsafe method. `foreign_ids` is False where the argument names no object of the tenant.
@dataclass(frozen=True)
class Coverage:
    ids: dict[str, Callable[[Tenant], str]] = field(default_factory=dict)
    bodies: dict[str, Callable[[Tenant], dict[str, Any]]] = field(default_factory=dict)
    foreign_ids: bool = True


ORG = "api/v1/orgs/<slug:org>"
COVERAGE: dict[str, Coverage] = {
    ORG: Coverage(bodies={"PATCH": lambda t: {"name": "Renamed Corporation"}}),
    f"{ORG}/members": Coverage(),
    f"{ORG}/members/<str:member_id>": Coverage(
        ids={"member_id": lambda t: t.member.public_id},
        bodies={"PATCH": lambda t: {"role": "viewer"}},
    ),
    f"{ORG}/invitations": Coverage(bodies={"POST": lambda t: {"email": "new-person@example.com", "role": "viewer"}}),
    f"{ORG}/invitations/<str:invitation_id>": Coverage(ids={"invitation_id": lambda t: t.invitation.public_id}),
    f"{ORG}/api-keys": Coverage(bodies={"POST": lambda t: {"name": "fresh key"}}),
    f"{ORG}/api-keys/<str:key_id>": Coverage(ids={"key_id": lambda t: t.spare_key.key_id}),
    f"{ORG}/api-keys/<str:key_id>/rotate": Coverage(
        ids={"key_id": lambda t: t.rotate_key.key_id}, bodies={"POST": lambda t: {}}
    ),
    f"{ORG}/residency-policy": Coverage(bodies={"PUT": lambda t: {
        "allowed_countries": ["AE", "SA"], "allowed_zones": ["GCC"], "accelerator_family": "", "retention_days": 1,
    }}),
    f"{ORG}/quotas": Coverage(),
    f"{ORG}/quotas/<str:region>": Coverage(ids={"region": lambda t: "dxb"}, foreign_ids=False),
    f"{ORG}/audit-events": Coverage(),
    f"{ORG}/billing/balance": Coverage(),
    f"{ORG}/billing/usage": Coverage(),
    f"{ORG}/billing/budget": Coverage(bodies={"PUT": lambda t: {"amount": "250.00", "hard_stop": True}}),
    f"{ORG}/billing/budget/events": Coverage(),
    f"{ORG}/invoices": Coverage(),
    f"{ORG}/invoices/<str:number>": Coverage(ids={"number": lambda t: t.invoice.number}),
    f"{ORG}/invoices/<str:number>/csv": Coverage(ids={"number": lambda t: t.invoice.number}),
    f"{ORG}/requests": Coverage(),
    f"{ORG}/quota-usage": Coverage(),
    f"{ORG}/requests/<str:request_id>": Coverage(ids={"request_id": lambda t: t.request.request_id}),
}


def _org_routes() -> list[Route]:
    return [r for r in api_routes() if r.view_class is not None and issubclass(r.view_class, OrgScopedAPIView)]


def _cases() -> list[tuple[str, str]]:
    cases = []
    for route in _org_routes():
        view = route.view_class
        assert view is not None
        for method in view.required_scopes:  # type: ignore[attr-defined]  # OrgScopedAPIView attribute
            cases.append((route.pattern, method))
    return sorted(cases)


def _url(pattern: str, tenant_for_org: Tenant, tenant_for_ids: Tenant) -> str:
    coverage = COVERAGE[pattern]

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "org":
            return tenant_for_org.org.slug
        return coverage.ids[name](tenant_for_ids)

    return "/" + re.sub(r"<(?:\w+:)?(\w+)>", fill, pattern)


def _call(client: APIClient, method: str, url: str, body: dict[str, Any] | None) -> Any:
    return client.generic(method, url, data=json.dumps(body) if body is not None else "",
                          content_type="application/json")


def test_every_org_route_is_covered() -> None:
    patterns = {route.pattern for route in _org_routes()}
    assert patterns, "no organisation routes found"
    missing = patterns - set(COVERAGE)
    assert not missing, f"organisation routes without isolation coverage: {sorted(missing)}"
    assert not set(COVERAGE) - patterns, "coverage lists routes that no longer exist"


@pytest.mark.parametrize(("pattern", "method"), _cases())
def test_foreign_objects_are_404_and_owner_gets_2xx(tenants: tuple[Tenant, Tenant], pattern: str, method: str) -> None:
    a, b = tenants
    coverage = COVERAGE[pattern]
    body_for = coverage.bodies.get(method)
    if method not in {"GET", "DELETE"}:
        assert body_for is not None, f"no body for {method} {pattern}"
    for label, client in (("A session", a.owner_session), ("A key", a.owner_key)):
        response = _call(client, method, _url(pattern, b, b), body_for(b) if body_for else None)
        assert response.status_code == 404, (label, method, pattern, response.status_code, response.content)
        assert response.json()["error"]["code"] == "not_found"
        if coverage.ids and coverage.foreign_ids:
            response = _call(client, method, _url(pattern, a, b), body_for(a) if body_for else None)
            assert response.status_code == 404, (label, "own org, foreign id", method, pattern, response.content)
    # Nothing of B's changed: its objects are all still there and unrevoked.
    b.member.refresh_from_db()
    assert b.member.role == Role.DEVELOPER
    assert ApiKey.objects.unscoped_all_orgs().get(pk=b.spare_key.pk).revoked_at is None
    assert Invitation.objects.unscoped_all_orgs().get(pk=b.invitation.pk).status == Invitation.Status.PENDING
    assert Organization.objects.get(pk=b.org.pk).name == "Bravo Corporation"
    # Positive control: B's owner key gets 2xx on the very same request.
    response = _call(b.owner_key, method, _url(pattern, b, b), body_for(b) if body_for else None)
    assert 200 <= response.status_code < 300, (method, pattern, response.status_code, response.content)


def _list_patterns() -> list[str]:
    return sorted(
        route.pattern for route in _org_routes()
        if "GET" in route.view_class.required_scopes  # type: ignore[union-attr]  # org views have it
        # an uncovered route fails test_every_org_route_is_covered, not the collection of the whole module
        and route.pattern in COVERAGE and not COVERAGE[route.pattern].ids
        and route.pattern not in {ORG, f"{ORG}/residency-policy", f"{ORG}/billing/balance", f"{ORG}/billing/usage",
                                  f"{ORG}/billing/budget", f"{ORG}/quota-usage"}
    )


@pytest.mark.parametrize("pattern", _list_patterns())
def test_lists_show_no_foreign_rows_on_any_page(tenants: tuple[Tenant, Tenant], pattern: str) -> None:
    a, b = tenants
    for client in (a.owner_session, a.owner_key):
        url = _url(pattern, a, a)
        pages, seen = 0, 0
        next_url: str | None = f"{url}?page_size=1"
        while next_url:
            response = client.get(next_url)
            assert response.status_code == 200, response.content
            text = response.content.decode()
            for marker in b.markers:
                assert marker not in text, (pattern, marker)
            payload = response.json()
            seen += len(payload["results"])
            pages += 1
            next_url = payload["next"]
            assert pages < 200
        assert seen > 0, f"A's own list {pattern} is empty: the check above proves nothing"
    # Positive control: B's own list has rows, and where rows name people or keys, B's show up.
    response = b.owner_key.get(_url(pattern, b, b) + "?page_size=200")
    assert response.json()["results"]
    if not pattern.endswith(("/quotas", "/audit-events")):
        assert any(marker in response.content.decode() for marker in b.markers)


def test_filters_do_not_reach_foreign_rows(tenants: tuple[Tenant, Tenant]) -> None:
    a, b = tenants
    url = _url(f"{ORG}/audit-events", a, a)
    for query in ("?target_type=api_key", "?action=api_key.create", "?target_type=membership"):
        response = a.owner_key.get(url + query)
        assert response.status_code == 200
        text = response.content.decode()
        for marker in b.markers:
            assert marker not in text
        assert response.json()["results"], f"A has rows for {query}: the filter check is meaningful"


def test_request_filters_do_not_reach_foreign_rows(tenants: tuple[Tenant, Tenant]) -> None:
    a, b = tenants
    url = _url(f"{ORG}/requests", a, a)
    # Filters naming B's key, model or request find nothing of B's, and say nothing about them either.
    for query in (f"?api_key={b.spare_key.key_id}", f"?model={b.request.model_name}"):
        response = a.owner_key.get(url + query)
        assert response.status_code == 200, (query, response.content)
        assert response.json()["results"] == [], query
    for query in (f"?api_key={a.spare_key.key_id}", f"?model={a.request.model_name}", "?region=dxb&status=completed"):
        response = a.owner_key.get(url + query)
        assert response.status_code == 200
        for marker in b.markers:
            assert marker not in response.content.decode(), (query, marker)
        assert [row["request_id"] for row in response.json()["results"]] == [a.request.request_id], query
    # Positive control: B's own filter finds B's request, with its content in the detail.
    found = b.owner_key.get(_url(f"{ORG}/requests", b, b) + f"?api_key={b.spare_key.key_id}").json()["results"]
    assert [row["request_id"] for row in found] == [b.request.request_id]
    detail = b.owner_key.get(_url(f"{ORG}/requests/<str:request_id>", b, b)).json()
    assert detail["content"]["request"]["messages"][0]["content"] == "bravo confidential prompt"


def test_my_organisations_lists_only_my_own(tenants: tuple[Tenant, Tenant]) -> None:
    a, b = tenants
    for client in (a.owner_session, a.owner_key):
        slugs = [org["slug"] for org in client.get("/api/v1/orgs").json()["results"]]
        assert slugs == [a.org.slug]
    me = a.owner_session.get("/api/v1/auth/me").content.decode()
    assert a.org.slug in me
    assert b.org.slug not in me


def _operator_cases() -> list[tuple[str, str]]:
    cases = []
    for route in api_routes():
        if route.pattern.startswith("api/v1/ops/"):
            view = route.view_class
            assert view is not None
            for method in ("get", "post", "put", "patch", "delete"):
                if hasattr(view, method):
                    cases.append((route.pattern, method.upper()))
    return sorted(cases)


def _host() -> Host:
    region = Region.objects.create(code="dxb", name="Dubai", country="AE", zones=["GCC"], queue_name="region.dxb")
    t4 = AcceleratorClass.objects.create(slug="nvidia-t4", name="T4", vendor="NVIDIA", family="nvidia", kind="GPU")
    return Host.objects.create(name="dxb-t4-01", region=region, accelerator_class=t4)


@pytest.mark.parametrize(("pattern", "method"), _operator_cases())
def test_operator_routes_refuse_customers(tenants: tuple[Tenant, Tenant], pattern: str, method: str) -> None:
    a, b = tenants
    quota_plans_seed(actor=Actor.system("tests"))  # a transactional test before may have emptied them
    values = {"org": b.org.slug, "region": "dxb", "host_id": str(_host().pk), "plan": "standard"}
    url = "/" + re.sub(r"<(?:\w+:)?(\w+)>", lambda m: values[m.group(1)], pattern)
    for client in (a.owner_session, a.owner_key, b.owner_key):
        response = _call(client, method, url, {})
        assert response.status_code in {403, 404}, (pattern, method, response.status_code)
    if method == "GET":
        operator = session_client(make_operator())
        response = operator.get(url)
        assert response.status_code == 200, (pattern, response.status_code, response.content)


@pytest.mark.parametrize(("pattern", "method"), _cases())
def test_keys_lacking_a_scope_are_refused(tenants: tuple[Tenant, Tenant], pattern: str, method: str) -> None:
    a, _ = tenants
    view = next(r.view_class for r in _org_routes() if r.pattern == pattern)
    required = view.required_scopes[method]  # type: ignore[union-attr]  # org views have it
    owner = a.owner_key  # the owner's full-scope key is the positive control below
    others = sorted({"org:read", "keys:read", "audit:read"} - {required})
    membership = Membership.objects.unscoped_all_orgs().filter(organization=a.org, role=Role.OWNER).get()
    _, narrow_secret = make_api_key(a.org, membership.user, scopes=others, name="narrow")
    body_for = COVERAGE[pattern].bodies.get(method)
    response = _call(key_client(narrow_secret), method, _url(pattern, a, a), body_for(a) if body_for else None)
    assert response.status_code == 403, (pattern, method, response.status_code)
    assert response.json()["error"]["code"] == "permission_denied"
    response = _call(owner, method, _url(pattern, a, a), body_for(a) if body_for else None)
    assert 200 <= response.status_code < 300, (pattern, method, response.status_code, response.content)
