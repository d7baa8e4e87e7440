"""The admission path's cache (controlplane.core.hotcache): repeated admissions read the
read-mostly rows from memory (a fixed, small number of queries), and every change made through the
services is seen by the very next request: a narrowed residency policy, a revoked key, a suspended
organisation, a new price, a lower quota. A token replaced in Redis by another process invalidates
this process's entries too."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connections
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing.models import CreditHold
from billing.services import price_entry_add
from controlplane.core import hotcache
from controlplane.core.errors import DomainError
from controlplane.core.services import Actor
from controlplane.inference import admission
from controlplane.inference.admission import Admission, request_admit
from controlplane.inference.models import InferenceRequest
from controlplane.inference.openai_schema import parse_generation
from tenants import services as tenant_services
from tenants.models import ApiKey, Organization
from tests.factories import Customer
from tests.stack import serving_customer

MODEL = "SmolLM2-135M-Instruct"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")
ACTOR = Actor.system("tests")

# central queries of one admission with a warm cache (PostgreSQL): the host load, then the central write,
# one statement (hold, request, outbox, audit), both prepared statements by then
WARM_CENTRAL_QUERIES = 2


@pytest.fixture(autouse=True)
def no_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admission, "outbox_send", lambda **_: True)


@pytest.fixture
def gulf(transactional_db: None) -> Customer:
    return serving_customer()


def _admit(customer: Customer, key: ApiKey | None = None) -> Admission:
    key = key or ApiKey.objects.unscoped_all_orgs().select_related("organization").get(
        organization=customer.organization
    )
    organization = key.organization
    return request_admit(
        api_key=key, organization=organization, parsed=parse_generation(BODY, "chat"), raw_body=BODY,
        region_header=None, idempotency_key=None,
    )  # fmt: skip


def _central_queries(customer: Customer) -> list[str]:
    key = ApiKey.objects.unscoped_all_orgs().select_related("organization").get(organization=customer.organization)
    with CaptureQueriesContext(connections["default"]) as captured:
        _admit(customer, key)
    return [q["sql"] for q in captured.captured_queries if q["sql"] not in {"BEGIN", "COMMIT"}]


def test_a_warm_admission_reads_only_what_changes_with_every_request(gulf: Customer) -> None:
    cold = _central_queries(gulf)
    warm = _central_queries(gulf)
    assert len(warm) == WARM_CENTRAL_QUERIES, "\n".join(warm)
    assert len(cold) > len(warm)  # positive control: the first one loaded the cached rows
    for table in ("fleet_catalogmodel", "tenants_residencypolicy", "tenants_regionalquota", "tenants_quotaplan",
                  "fleet_host"):  # fmt: skip
        assert any(table in q for q in cold), table
        assert not any(f'FROM "{table}"' in q for q in warm), table
    # prices and FX rates are read by the hold's statement itself, from the tables, on every admission
    assert warm[0] == "EXECUTE inference_host_load"
    assert warm[1].startswith("EXECUTE inference_central_write (")


def test_a_narrowed_policy_is_seen_by_the_next_request(gulf: Customer) -> None:
    _admit(gulf)
    tenant_services.residency_policy_update(
        actor=ACTOR, organization=gulf.organization, allowed_countries=["DE"], allowed_zones=[],
        accelerator_family="", retention_days=1,
    )  # fmt: skip
    with pytest.raises(DomainError) as refused:
        _admit(gulf)
    assert refused.value.code in {"region_not_allowed", "region_unavailable"}
    assert InferenceRequest.objects.unscoped_all_orgs().count() == 1


def _refusal_code(client: Client, customer: Customer) -> str:
    """Authenticated through the cached key (and its cached organisation), then refused before
    anything is written: X-Region names a region the policy does not allow."""
    response = client.post(
        "/v1/chat/completions", data=BODY, content_type="application/json",
        headers={"Authorization": f"Bearer {customer.api_key}", "X-Region": "fra"},
    )  # fmt: skip
    code: str = response.json()["error"]["code"]
    return code


def test_a_lower_quota_and_a_suspension_are_seen_at_once(gulf: Customer, client: Client) -> None:
    _admit(gulf)
    tenant_services.regional_quota_set(
        actor=ACTOR, organization=gulf.organization, region="dxb", requests_per_minute=1,
        tokens_per_minute=10**6, concurrent_requests=100, monthly_tokens=10**9,
    )  # fmt: skip
    with pytest.raises(DomainError) as limited:
        _admit(gulf)
    assert limited.value.code == "rate_limit_requests_per_minute"
    assert _refusal_code(client, gulf) == "region_not_allowed"
    tenant_services.organization_suspend(actor=ACTOR, organization=gulf.organization, reason="tests")
    assert _refusal_code(client, gulf) == "organization_suspended"


def test_a_new_price_applies_to_the_next_hold(gulf: Customer) -> None:
    first = _admit(gulf)
    entry = price_entry_add(
        actor=ACTOR, model_name=MODEL, region="dxb", token_kind="input", usd_per_million="7.5",
        effective_from=timezone.now() - timedelta(seconds=1),
    )  # fmt: skip
    second = _admit(gulf)
    holds = {h.request_id: h for h in CreditHold.objects.unscoped_all_orgs().all()}
    assert holds[first.request_id].input_price_id != entry.pk
    assert holds[second.request_id].input_price_id == entry.pk


def test_a_revoked_key_is_refused_on_its_next_call(gulf: Customer, client: Client) -> None:
    headers = {"Authorization": f"Bearer {gulf.api_key}"}
    bad = {**BODY, "temperature": "hot"}  # refused after authentication: nothing is enqueued
    first = client.post("/v1/chat/completions", data=bad, content_type="application/json", headers=headers)
    assert first.json()["error"]["code"] == "invalid_type"
    key = ApiKey.objects.unscoped_all_orgs().get(organization=gulf.organization)
    tenant_services.api_key_revoke(actor=ACTOR, organization=gulf.organization, api_key=key)
    second = client.post("/v1/chat/completions", data=bad, content_type="application/json", headers=headers)
    assert (second.status_code, second.json()["error"]["code"]) == (401, "invalid_api_key")


def test_a_token_replaced_elsewhere_invalidates_this_process(gulf: Customer, client: Client) -> None:
    assert _refusal_code(client, gulf) == "region_not_allowed"
    # another process changed a row behind this one's back: a direct update sends no signal ...
    Organization.objects.filter(pk=gulf.organization.pk).update(status=Organization.Status.SUSPENDED)
    assert _refusal_code(client, gulf) == "region_not_allowed"  # ... so the cached row still says active
    # ... until that process's save replaces the token in Redis
    hotcache.client().set(hotcache.org_key(gulf.organization.pk), "from-another-process")
    assert _refusal_code(client, gulf) == "organization_suspended"


def test_the_operator_command_invalidates_every_process(gulf: Customer, client: Client) -> None:
    from django.core.management import call_command

    assert _refusal_code(client, gulf) == "region_not_allowed"
    Organization.objects.filter(pk=gulf.organization.pk).update(status=Organization.Status.SUSPENDED)
    assert _refusal_code(client, gulf) == "region_not_allowed"
    call_command("cache_invalidate")
    assert _refusal_code(client, gulf) == "organization_suspended"
