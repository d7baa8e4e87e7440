"""The request log: `/api/v1/orgs/{org}/requests` lists the central index with filters and cursor
pages; the detail adds the content read from the request's own regional store while the
organisation's retention keeps it, and nothing of it otherwise."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from controlplane.core.regions import REGION_CODES, region_db_alias
from controlplane.inference.models import InferenceRequest, RequestContent
from tenants.models import ApiKey, Organization, Role, User
from tests.factories import (
    key_client,
    make_api_key,
    make_inference_request,
    make_member,
    make_org,
    make_request_content,
    make_user,
    session_client,
)

pytestmark = pytest.mark.django_db(databases="__all__")

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Tenant:
    def __init__(self, tag: str) -> None:
        self.owner: User = make_user(email=f"owner@{tag}.example")
        self.org: Organization = make_org(owner=self.owner, slug=f"{tag}-corp", billing_country="AE")
        self.key, secret = make_api_key(self.org, self.owner, name=f"{tag} key")
        self.client: APIClient = key_client(secret)

    def url(self, suffix: str = "") -> str:
        return f"/api/v1/orgs/{self.org.slug}/requests{suffix}"


@pytest.fixture(autouse=True)
def _fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def alpha() -> Tenant:
    return Tenant("alpha")


@pytest.fixture
def bravo() -> Tenant:
    return Tenant("bravo")


def _ids(response: Any) -> list[str]:
    assert response.status_code == 200, response.content
    return [row["request_id"] for row in response.json()["results"]]


# --- list, pages, filters --------------------------------------------------------------------------------


def test_list_pages_newest_first_with_cursors(alpha: Tenant) -> None:
    rows = [make_inference_request(alpha.org, created_at=T0 + timedelta(minutes=i)) for i in range(5)]
    newest_first = [row.request_id for row in reversed(rows)]

    seen: list[str] = []
    next_url: str | None = alpha.url("?page_size=2")
    pages = 0
    while next_url:
        response = alpha.client.get(next_url)
        seen += _ids(response)
        next_url = response.json()["next"]
        pages += 1
    assert seen == newest_first
    assert pages == 3
    first = alpha.client.get(alpha.url()).json()["results"][0]
    assert first["request_id"] == newest_first[0]
    assert first["model"] == "SmolLM2-135M-Instruct"
    assert first["total_tokens"] == first["prompt_tokens"] + first["completion_tokens"] == 32
    assert "content" not in first
    assert "receipt" not in first


def test_each_filter_selects_exactly_its_rows(alpha: Tenant) -> None:
    other_key, _ = make_api_key(alpha.org, alpha.owner, name="other key")
    plain = make_inference_request(alpha.org, api_key=alpha.key, created_at=T0)
    failed = make_inference_request(alpha.org, status="failed", error_code="deadline_exceeded",
                                     created_at=T0 + timedelta(hours=1))  # fmt: skip
    other_model = make_inference_request(alpha.org, model_name="Qwen2.5-0.5B-Instruct",
                                          created_at=T0 + timedelta(hours=2))  # fmt: skip
    in_fra = make_inference_request(alpha.org, region="fra", country="DE",
                                     created_at=T0 + timedelta(hours=3))  # fmt: skip
    embedding = make_inference_request(alpha.org, kind="embedding", api_key=other_key,
                                        created_at=T0 + timedelta(hours=4))  # fmt: skip
    everything = {plain, failed, other_model, in_fra, embedding}

    def listed(**query: str) -> set[str]:
        return set(_ids(alpha.client.get(alpha.url(), query)))

    assert listed() == {row.request_id for row in everything}
    assert listed(status="failed") == {failed.request_id}
    assert listed(status="completed") == {row.request_id for row in everything - {failed}}
    assert listed(model="Qwen2.5-0.5B-Instruct") == {other_model.request_id}
    assert listed(region="fra") == {in_fra.request_id}
    assert listed(kind="embedding") == {embedding.request_id}
    assert listed(api_key=alpha.key.key_id) == {plain.request_id}
    assert listed(api_key=other_key.key_id) == {embedding.request_id}
    assert listed(created_after=(T0 + timedelta(hours=3)).isoformat()) == {in_fra.request_id, embedding.request_id}
    assert listed(created_before=(T0 + timedelta(hours=1)).isoformat()) == {plain.request_id}
    assert listed(
        created_after=(T0 + timedelta(minutes=30)).isoformat(), created_before=(T0 + timedelta(hours=2)).isoformat()
    ) == {failed.request_id}
    assert listed(status="completed", region="dxb", kind="chat") == {plain.request_id, other_model.request_id}
    assert listed(status="", model="") == {row.request_id for row in everything}, "an empty value is no filter"
    assert listed(model="no-such-model") == set()


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"status": "finished"}, "status"),
        ({"region": "lhr"}, "region"),
        ({"kind": "image"}, "kind"),
        ({"created_after": "yesterday"}, "created_after"),
        ({"created_before": "2026-13-01T00:00:00Z"}, "created_before"),
        ({"created_after": "2026-03-02T00:00:00Z", "created_before": "2026-03-01T00:00:00Z"}, "created_before"),
        ({"model": "m" * 121}, "model"),
        ({"api_key": "k" * 17}, "api_key"),
    ],
)
def test_bad_filter_values_are_400_with_a_code(alpha: Tenant, query: dict[str, str], field: str) -> None:
    make_inference_request(alpha.org)
    response = alpha.client.get(alpha.url(), query)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid_filter"
    assert field in error["details"]
    # Positive control: the same list without the bad value answers.
    assert _ids(alpha.client.get(alpha.url()))


def test_nul_in_a_filter_is_refused_before_any_query(alpha: Tenant) -> None:
    response = alpha.client.get(alpha.url(), {"model": "a\x00b"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_characters"


# --- detail and content ----------------------------------------------------------------------------------


def test_detail_shows_the_index_fields(alpha: Tenant) -> None:
    receipt = {"claims": {"request_id": "x"}, "kid": "0011223344556677", "alg": "Ed25519", "signature": "c2ln"}
    row = make_inference_request(
        organization=alpha.org,
        api_key=alpha.key,
        region="ruh",
        country="SA",
        accelerator_class="hanguang-800",
        finish_reason="length",
        completion_tokens=64,
        receipt=receipt,
        timings={"admission_ms": 2.5, "generate_ms": 80, "admitted_unix": 1.7e9, "ledger_entry": 42, "max_batch": 3},
        started_at=T0,
        first_token_at=T0 + timedelta(milliseconds=40),
        completed_at=T0 + timedelta(seconds=1),
        retention_days=0,
    )
    response = alpha.client.get(alpha.url(f"/{row.request_id}"))
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["request_id"] == row.request_id
    assert body["api_key"] == alpha.key.key_id
    assert (body["model"], body["region"], body["country"]) == ("SmolLM2-135M-Instruct", "ruh", "SA")
    assert body["accelerator_class"] == "hanguang-800"
    assert (body["status"], body["finish_reason"]) == ("completed", "length")
    assert (body["prompt_tokens"], body["completion_tokens"], body["total_tokens"]) == (12, 64, 76)
    assert body["receipt"] == receipt
    # Durations only: internal bookkeeping (the ledger row's id, batch sizes) is not the customer's.
    assert body["timings"] == {"admission_ms": 2.5, "generate_ms": 80.0}
    assert body["first_token_at"] == "2026-03-01T12:00:00.040000Z"
    assert body["content_retained"] is False
    assert body["content"] is None


def test_detail_reads_retained_content_from_the_regional_store(alpha: Tenant) -> None:
    row = make_inference_request(alpha.org, region="fra", country="DE", retention_days=7)
    prompt = {"model": row.model_name, "messages": [{"role": "user", "content": "Wie spät ist es in Frankfurt?"}]}
    answer = {"id": row.request_id, "object": "chat.completion", "choices": [{"message": {"content": "Zwölf."}}]}
    make_request_content(row, body={"endpoint": "chat", "request": prompt},
                          completion={"status": 200, "response": answer})  # fmt: skip
    assert RequestContent.objects.using(region_db_alias("fra")).filter(request_id=row.request_id).exists()
    for code in REGION_CODES:
        if code != "fra":
            assert not RequestContent.objects.using(region_db_alias(code)).exists(), code

    with CaptureQueriesContext(connections[region_db_alias("fra")]) as regional:
        response = alpha.client.get(alpha.url(f"/{row.request_id}"))
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["content_retained"] is True
    salt = body["content"].pop("receipt_salt")
    assert body["content"] == {"request": prompt, "response": answer}
    assert bytes.fromhex(salt)  # the hex key that the receipt HMACs were made with
    assert len(regional.captured_queries) == 1
    # The list never carries content, only the index.
    assert "Frankfurt" not in alpha.client.get(alpha.url()).content.decode()


def test_running_request_shows_its_body_and_no_response_yet(alpha: Tenant) -> None:
    row = make_inference_request(alpha.org, status="running", completed_at=None, finish_reason="")
    make_request_content(row, completion=None)
    body = alpha.client.get(alpha.url(f"/{row.request_id}")).json()
    assert body["content_retained"] is True
    assert body["content"]["request"]["messages"][0]["content"] == "Hello"
    assert body["content"]["response"] is None


def test_retention_zero_shows_no_content_and_never_reads_the_region(alpha: Tenant) -> None:
    # While a retention-0 request runs its body is still in the region (the worker needs it): still not shown.
    row = make_inference_request(alpha.org, status="queued", completed_at=None, retention_days=0)
    make_request_content(row, completion=None, expires_at=timezone.now() + timedelta(minutes=5))
    with CaptureQueriesContext(connections[region_db_alias("dxb")]) as regional:
        response = alpha.client.get(alpha.url(f"/{row.request_id}"))
    assert response.status_code == 200, response.content
    assert response.json()["content_retained"] is False
    assert response.json()["content"] is None
    assert "Hello" not in response.content.decode()
    assert regional.captured_queries == []
    # Positive control: the same row with a retention shows the content.
    InferenceRequest.objects.unscoped_all_orgs().filter(pk=row.pk).update(retention_days=1)
    assert alpha.client.get(alpha.url(f"/{row.request_id}")).json()["content_retained"] is True


@pytest.mark.parametrize("state", ["expired", "purged", "missing"])
def test_expired_or_purged_content_is_not_retained(alpha: Tenant, state: str) -> None:
    row = make_inference_request(alpha.org, retention_days=1)
    if state == "expired":
        make_request_content(row, expires_at=timezone.now() - timedelta(seconds=1))
    elif state == "purged":
        make_request_content(row, body=None, completion=None)
    body = alpha.client.get(alpha.url(f"/{row.request_id}")).json()
    assert body["content_retained"] is False
    assert body["content"] is None


# --- isolation and scopes --------------------------------------------------------------------------------


def test_another_organisations_request_is_404_and_its_owner_gets_200(alpha: Tenant, bravo: Tenant) -> None:
    make_inference_request(alpha.org)
    theirs = make_inference_request(bravo.org, retention_days=7)
    make_request_content(theirs, body={"endpoint": "chat", "request": {"messages": "bravo secret"}})

    for url in (alpha.url(f"/{theirs.request_id}"), bravo.url(f"/{theirs.request_id}")):
        response = alpha.client.get(url)
        assert response.status_code == 404, (url, response.content)
        assert response.json()["error"]["code"] == "not_found"
        assert "bravo secret" not in response.content.decode()
    assert theirs.request_id not in _ids(alpha.client.get(alpha.url()))
    assert _ids(alpha.client.get(alpha.url(), {"api_key": bravo.key.key_id})) == []
    assert _ids(alpha.client.get(alpha.url(), {"region": "dxb"}))
    # Positive control: B's owner reads it, content included.
    response = bravo.client.get(bravo.url(f"/{theirs.request_id}"))
    assert response.status_code == 200, response.content
    assert response.json()["content"]["request"] == {"messages": "bravo secret"}
    assert _ids(bravo.client.get(bravo.url())) == [theirs.request_id]


def test_reading_the_log_needs_usage_read(alpha: Tenant) -> None:
    row = make_inference_request(alpha.org)
    _, narrow = make_api_key(alpha.org, alpha.owner, scopes=["org:read", "keys:read"], name="narrow")
    for url in (alpha.url(), alpha.url(f"/{row.request_id}")):
        response = key_client(narrow).get(url)
        assert response.status_code == 403, url
        assert response.json()["error"]["code"] == "permission_denied"
    viewer = make_member(alpha.org, role=Role.VIEWER).user
    for url in (alpha.url(), alpha.url(f"/{row.request_id}")):
        assert session_client(viewer).get(url).status_code == 200, url
    assert session_client(viewer).post(alpha.url(), {}, format="json").status_code == 405


# --- pinned query counts ---------------------------------------------------------------------------------


def _count_default(client: APIClient, url: str) -> int:
    with CaptureQueriesContext(connections["default"]) as captured:
        response = client.get(url)
    assert response.status_code == 200, response.content
    return len(captured.captured_queries)


def test_list_query_count_does_not_grow_with_rows(alpha: Tenant) -> None:
    keys: list[ApiKey] = [make_api_key(alpha.org, alpha.owner, name=f"key {i}")[0] for i in range(6)]
    make_inference_request(alpha.org, api_key=keys[0])
    url = alpha.url("?page_size=50")
    alpha.client.get(url)  # the key's first use stamps last_used_at, once a minute; not part of a list
    few = _count_default(alpha.client, url)
    for key in keys:
        for _ in range(3):
            make_inference_request(alpha.org, api_key=key)
    many = _count_default(alpha.client, url)
    assert len(_ids(alpha.client.get(url))) == 19
    assert many == few, f"{few} queries with one row, {many} with 19 (an N+1)"
    assert few <= 6, f"{few} queries per page"


def test_detail_query_counts_are_pinned(alpha: Tenant) -> None:
    row = make_inference_request(alpha.org, api_key=alpha.key)
    make_request_content(row)
    url = alpha.url(f"/{row.request_id}")
    alpha.client.get(url)
    with CaptureQueriesContext(connections[region_db_alias("dxb")]) as regional:
        central = _count_default(alpha.client, url)
    assert central <= 6, f"{central} central queries for one request"
    assert len(regional.captured_queries) == 1
