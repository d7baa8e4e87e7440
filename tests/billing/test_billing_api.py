"""The billing API for customers and operators: the price list per region, this month's use per region next
to the limits, invoices (issued ones only, JSON and CSV), and the operators' invoice list."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connections
from django.test.utils import CaptureQueriesContext

from billing import budgets, invoicing
from billing.models import Invoice
from controlplane.core.services import Actor
from tenants.models import Role
from tests.billing.world import MODEL, PRICES, price_world, request
from tests.factories import key_client, make_api_key, make_member, make_operator, make_org, make_user, session_client

pytestmark = pytest.mark.django_db
SEPTEMBER = datetime(2026, 9, 1, tzinfo=UTC)


def test_the_price_list_shows_the_versions_in_force_per_region(db: None) -> None:
    price_world()
    later = datetime.now(UTC) + timedelta(days=30)
    from tests.factories import make_prices

    make_prices(model_name=MODEL, region="sin", input_usd_per_million="9.99", output_usd_per_million="19.99",
                effective_from=later)  # fmt: skip  # scheduled, not in force yet
    owner = make_user()
    _, secret = make_api_key(make_org(owner=owner), owner)
    client = key_client(secret)
    rows = client.get("/api/v1/prices?region=sin").json()["results"]
    assert [(row["region"], row["token_kind"], Decimal(row["usd_per_million"])) for row in rows] == [
        ("sin", "input", PRICES["sin"][0]),
        ("sin", "output", PRICES["sin"][1].quantize(Decimal("0.000001"))),
    ]
    everything = client.get("/api/v1/prices?page_size=200").json()["results"]
    assert len(everything) == 16  # one model, eight regions, two kinds
    assert client.get("/api/v1/prices?region=xyz").status_code == 400
    assert client.get(f"/api/v1/prices?model={MODEL}&region=fra").json()["results"][0]["model_name"] == MODEL
    assert client.get("/api/v1/prices?model=unknown").json()["results"] == []


def test_usage_per_region_shows_this_months_use_next_to_the_limits(db: None) -> None:
    price_world()
    owner = make_user()
    org = make_org(owner=owner, billing_mode="postpaid", billing_currency="USD", billing_country="US")
    now = datetime.now(UTC)
    request(org, request_id="u1", region="fra", at=now, input_tokens=1000, max_output_tokens=500, output_tokens=200)
    request(org, request_id="u2", region="fra", at=now, input_tokens=10, max_output_tokens=5, output_tokens=None)
    request(org, request_id="old", region="fra", at=now - timedelta(days=40), input_tokens=7, max_output_tokens=5,
            output_tokens=5)  # fmt: skip
    _, secret = make_api_key(org, owner)
    body = key_client(secret).get(f"/api/v1/orgs/{org.slug}/billing/usage").json()
    assert (body["month"], body["currency"]) == (f"{now:%Y-%m}", "USD")
    fra = next(row for row in body["regions"] if row["region"] == "fra")
    assert (fra["requests"], fra["input_tokens"], fra["output_tokens"], fra["open_requests"]) == (1, 1000, 200, 1)
    assert fra["monthly_tokens"] == 100_000_000 and fra["concurrent_requests"] == 16  # noqa: PT018  # the limits
    assert Decimal(fra["spend"]) > 0 and Decimal(fra["held"]) > 0  # noqa: PT018  # both counted
    assert [row["region"] for row in body["regions"]] == ["sin", "cgk", "dxb", "ruh", "fra", "iad", "gru", "hgh"]


def test_customers_see_their_issued_invoices_as_json_and_csv(db: None) -> None:
    price_world()
    owner, developer, accountant = make_user(), make_user(), make_user()
    org = make_org(owner=owner, billing_mode="postpaid", billing_currency="SGD", billing_country="SG")
    make_member(org, user=developer, role=Role.DEVELOPER)
    make_member(org, user=accountant, role=Role.BILLING)
    for index, region in enumerate(("sin", "cgk")):
        request(org, request_id=f"i{index}", region=region, at=SEPTEMBER + timedelta(days=index), input_tokens=40_000,
                max_output_tokens=40_000, output_tokens=30_000)  # fmt: skip
    [draft] = invoicing.invoice_close_month(actor=Actor.system("tests"), organization=org, month=SEPTEMBER.date())
    [invoice] = draft.invoices
    _, accountant_key = make_api_key(org, accountant)
    client = key_client(accountant_key)
    base = f"/api/v1/orgs/{org.slug}/invoices"
    assert client.get(base).json()["results"] == []  # a draft is not the customer's yet
    invoice = invoicing.invoice_finalize(actor=Actor.system("tests"), invoice=invoice)
    [listed] = client.get(base).json()["results"]
    assert listed == {
        "number": invoice.number, "status": "finalized", "period": "2026-09", "currency": "SGD",
        "subtotal": invoicing.invoice_document(invoice=invoice)["subtotal"], "credits": "0.00",
        "tax": listed["tax"], "total": listed["total"], "reverse_charge": False,
        "finalized_at": listed["finalized_at"], "paid_at": None, "voided_at": None,
    }  # fmt: skip
    detail = client.get(f"{base}/{invoice.number}").json()
    assert detail == invoicing.invoice_document(invoice=Invoice.objects.unscoped_all_orgs().get(pk=invoice.pk)) | {
        "finalized_at": detail["finalized_at"]
    }
    assert Decimal(detail["subtotal"]) + Decimal(detail["tax"]["amount"]) == Decimal(detail["total"])
    exported = client.get(f"{base}/{invoice.number}/csv")
    assert exported.status_code == 200
    assert exported["Content-Type"].startswith("text/csv")
    assert exported["Content-Disposition"] == f'attachment; filename="{invoice.number}.csv"'
    rows = list(csv.reader(io.StringIO(exported.content.decode())))
    assert rows[-1][3:] == ["total", "", "", "", "", detail["total"], "SGD"]
    # A developer lacks billing:read; another organisation's key finds nothing.
    _, developer_key = make_api_key(org, developer)
    assert key_client(developer_key).get(base).status_code == 403
    stranger = make_user()
    _, stranger_key = make_api_key(make_org(owner=stranger), stranger)
    assert key_client(stranger_key).get(f"{base}/{invoice.number}").status_code == 404
    assert client.get(f"{base}/INV-000000-0000000").status_code == 404


def test_operators_list_every_invoice_drafts_included(db: None) -> None:
    price_world()
    orgs = [make_org(billing_mode="postpaid", billing_currency="USD", billing_country="US") for _ in range(2)]
    for index, org in enumerate(orgs):
        request(org, request_id=f"o{index}", region="iad", at=SEPTEMBER + timedelta(days=2), input_tokens=1000,
                max_output_tokens=1000, output_tokens=1000)  # fmt: skip
        invoicing.invoice_close_month(actor=Actor.system("tests"), organization=org, month=SEPTEMBER.date(),
                                      finalize=index == 0)  # fmt: skip
    operator = session_client(make_operator())
    rows = operator.get("/api/v1/ops/invoices").json()["results"]
    assert sorted((row["organization"], row["status"]) for row in rows) == sorted(
        [(orgs[0].slug, "finalized"), (orgs[1].slug, "draft")]
    )
    drafts = operator.get(f"/api/v1/ops/invoices?status=draft&month=2026-09&org={orgs[1].slug}").json()["results"]
    assert [row["organization"] for row in drafts] == [orgs[1].slug]
    assert operator.get("/api/v1/ops/invoices?month=2026-13").status_code == 400


def _queries(client: Any, url: str) -> int:
    with CaptureQueriesContext(connections["default"]) as captured:
        response = client.get(url)
    assert response.status_code == 200, response.content
    assert response.json()["results"]
    return len(captured.captured_queries)


def test_billing_lists_have_pinned_query_counts(db: None) -> None:
    price_world()
    owner = make_user()
    org = make_org(owner=owner, billing_mode="postpaid", billing_currency="USD", billing_country="US")
    budgets.budget_set(actor=Actor.system("tests"), organization=org, amount="0.01", alert_thresholds=[1],
                       hard_stop=False)  # fmt: skip
    _, secret = make_api_key(org, owner)
    client, operator = key_client(secret), session_client(make_operator())
    urls = [f"/api/v1/orgs/{org.slug}/invoices", f"/api/v1/orgs/{org.slug}/billing/budget/events",
            "/api/v1/ops/invoices", "/api/v1/prices"]  # fmt: skip

    def grow(month: int) -> None:
        start = datetime(2026, month, 3, tzinfo=UTC)
        request(org, request_id=f"q{month}", region="iad", at=start, input_tokens=10_000, max_output_tokens=10_000,
                output_tokens=10_000)  # fmt: skip
        invoicing.invoice_close_month(actor=Actor.system("tests"), organization=org, month=start.date(), finalize=True)

    grow(1)
    key_client(secret).get(urls[0])  # the key's first use stamps last_used_at; not part of a list
    few = [_queries(operator if "/ops/" in url else client, url) for url in urls]
    for month in range(2, 7):
        grow(month)
    many = [_queries(operator if "/ops/" in url else client, url) for url in urls]
    assert many == few
    assert max(few) <= 8
