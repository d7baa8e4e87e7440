"""Test data built through the services, so that it obeys the same rules as real data.

`make_user`, `make_org(owner=...)`, `make_member(org, ...)`, `make_api_key(org, user, scopes=None)`
and the two client helpers are meant for every app's tests.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from rest_framework.test import APIClient

from controlplane.core.services import Actor
from tenants.models import ApiKey, Membership, Organization, Role, User
from tenants.services import api_key_create, membership_create, organization_create, user_create

DEFAULT_PASSWORD = "correct-horse-battery-staple-42"
TEST_ACTOR = Actor.system("tests")


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def make_user(
    *,
    email: str | None = None,
    password: str = DEFAULT_PASSWORD,
    full_name: str = "Test Person",
    is_staff: bool = False,
    email_verified: bool = True,
) -> User:
    return user_create(
        email=email or f"{_unique('user')}@example.com",
        password=password,
        full_name=full_name,
        is_staff=is_staff,
        email_verified=email_verified,
    )


def make_operator(*, email: str | None = None) -> User:
    """A staff superuser: may use the admin panel and `/api/v1/ops/`."""
    operator = make_user(email=email, is_staff=True)
    User.objects.filter(pk=operator.pk).update(is_superuser=True)
    operator.refresh_from_db()
    return operator


def make_org(
    *,
    owner: User | None = None,
    slug: str | None = None,
    name: str = "Test Organisation",
    billing_country: str = "SG",
    billing_currency: str = "USD",
    billing_mode: str = "prepaid",
) -> Organization:
    return organization_create(
        actor=TEST_ACTOR,
        owner=owner or make_user(),
        slug=slug or _unique("org"),
        name=name,
        billing_country=billing_country,
        billing_currency=billing_currency,
        billing_mode=billing_mode,
    )


def make_member(organization: Organization, *, user: User | None = None, role: str = Role.DEVELOPER) -> Membership:
    return membership_create(actor=TEST_ACTOR, organization=organization, user=user or make_user(), role=role)


def make_api_key(
    organization: Organization,
    user: User,
    scopes: list[str] | None = None,
    *,
    name: str = "test key",
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """A key created by `user` (who must be a member); returns the row and the full secret."""
    return api_key_create(
        actor=TEST_ACTOR,
        organization=organization,
        created_by=user,
        name=name,
        scopes=scopes,
        expires_at=expires_at,
    )


def session_client(user: User, *, enforce_csrf_checks: bool = False) -> APIClient:
    client = APIClient(enforce_csrf_checks=enforce_csrf_checks)
    client.force_login(user)
    return client


def key_client(secret: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


@dataclass(frozen=True)
class Customer:
    """A member who owns an organisation, with a full-scope API key."""

    user: User
    organization: Organization
    api_key: str


def make_customer(*, email: str | None = None, slug: str | None = None, owner: User | None = None) -> Customer:
    user = owner or make_user(email=email)
    organization = make_org(owner=user, slug=slug, name="Customer", billing_country="AE")
    _, secret = make_api_key(organization, user, name="ci")
    return Customer(user=user, organization=organization, api_key=secret)


# --- Billing: prices, FX, credit and holds (built through the billing services) --------------------------
# This block was appended after the shared factories; its imports stay with it (the lead may hoist them).

from datetime import UTC  # noqa: E402

from django.utils import timezone  # noqa: E402

from billing.models import CreditGrant, CreditHold, FxRate, PriceBookEntry  # noqa: E402
from billing.services import credit_grant_create, fx_rate_add, hold_place, price_entry_add  # noqa: E402

BILLING_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def make_prices(
    *,
    model_name: str = "SmolLM2-135M-Instruct",
    region: str = "dxb",
    input_usd_per_million: str = "1.00",
    output_usd_per_million: str = "2.00",
    effective_from: datetime = BILLING_EPOCH,
) -> tuple[PriceBookEntry, PriceBookEntry]:
    """An input and an output price version of one model in one region."""
    input_entry, output_entry = (
        price_entry_add(
            actor=TEST_ACTOR,
            model_name=model_name,
            region=region,
            token_kind=kind,
            usd_per_million=price,
            effective_from=effective_from,
        )
        for kind, price in (("input", input_usd_per_million), ("output", output_usd_per_million))
    )
    return input_entry, output_entry


def make_fx(currency: str, per_usd: str, *, effective_from: datetime = BILLING_EPOCH) -> FxRate:
    return fx_rate_add(actor=TEST_ACTOR, currency=currency, per_usd=per_usd, effective_from=effective_from)


def make_grant(
    organization: Organization,
    amount: str = "10.00",
    *,
    expires_at: datetime | None = None,
    priority: int = 100,
    reason: str = "test credit",
) -> CreditGrant:
    return credit_grant_create(
        actor=TEST_ACTOR,
        organization=organization,
        amount=amount,
        currency=organization.billing_currency,
        expires_at=expires_at,
        priority=priority,
        reason=reason,
    )


def make_hold(
    organization: Organization,
    *,
    request_id: str | None = None,
    model_name: str = "SmolLM2-135M-Instruct",
    region: str = "dxb",
    input_tokens: int = 1000,
    max_output_tokens: int = 1000,
    at: datetime | None = None,
) -> CreditHold:
    return hold_place(
        organization=organization,
        request_id=request_id or _unique("req"),
        model_name=model_name,
        region=region,
        input_tokens=input_tokens,
        max_output_tokens=max_output_tokens,
        at=at or timezone.now(),
    )


# --- Inference: request index rows and their regional content ---------------------------------------------
# Rows made directly, not through admission (which needs a live fleet, quotas and a tokenizer): for tests of
# reads (the request log, the admin). This block was appended after the shared factories; its imports stay
# with it (the lead may hoist them).

from datetime import timedelta  # noqa: E402
from typing import Any  # noqa: E402

from controlplane.core.regions import region_db_alias  # noqa: E402
from controlplane.core.scoping import org_scope  # noqa: E402
from controlplane.inference.models import InferenceRequest, RequestContent  # noqa: E402


def make_inference_request(
    organization: Organization | None = None, *, created_at: datetime | None = None, **fields: Any
) -> InferenceRequest:
    """A completed chat request in Dubai (a fresh organisation unless one is given); any model field may be
    overridden. `created_at` is set after the insert (the column is filled on insert otherwise)."""
    organization = organization or make_org(billing_country="AE")
    now = timezone.now()
    values: dict[str, Any] = {
        "request_id": f"req_{uuid.uuid4().hex[:24]}",
        "kind": InferenceRequest.Kind.CHAT,
        "model_name": "SmolLM2-135M-Instruct",
        "region": "dxb",
        "country": "AE",
        "accelerator_class": "nvidia-t4",
        "workload": "interactive",
        "status": InferenceRequest.Status.COMPLETED,
        "prompt_tokens": 12,
        "max_tokens": 64,
        "completion_tokens": 20,
        "finish_reason": "stop",
        "retention_days": 30,
        "deadline_at": now + timedelta(minutes=5),
        "completed_at": now,
        "timings": {"admission_ms": 3.5, "generate_ms": 120.0},
        **fields,
    }
    values.setdefault("reserved_tokens", values["prompt_tokens"] + values["max_tokens"])
    with org_scope(organization.pk):
        row: InferenceRequest = InferenceRequest.objects.create(organization=organization, **values)
    if created_at is not None:
        InferenceRequest.objects.unscoped_all_orgs().filter(pk=row.pk).update(created_at=created_at)
        row.created_at = created_at
    return row


def make_request_content(request: InferenceRequest, **fields: Any) -> RequestContent:
    """The request's content, written to its region's store only: by default a one-message chat body and
    its stored response, kept for the request's retention."""
    values: dict[str, Any] = {
        "body": {
            "endpoint": "chat",
            "request": {"model": request.model_name, "messages": [{"role": "user", "content": "Hello"}]},
        },
        "completion": {"status": 200, "response": {"id": request.request_id, "object": "chat.completion"}},
        "salt": uuid.uuid4().hex,
        "expires_at": timezone.now() + timedelta(days=request.retention_days or 1),
        **fields,
    }
    content: RequestContent = RequestContent.objects.using(region_db_alias(request.region)).create(
        region=request.region, request_id=request.request_id, organization_id=request.organization_id, **values
    )
    return content
