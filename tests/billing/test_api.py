"""GET /api/v1/orgs/{org}/billing/balance: the organisation's own balance, for callers with `billing:read`."""

from __future__ import annotations

import pytest

from tenants.models import Role
from tests.factories import key_client, make_api_key, make_grant, make_hold, make_member, make_org, make_user

pytestmark = pytest.mark.django_db


def test_the_balance_is_the_callers_own_and_needs_billing_read(prices: object) -> None:
    owner, other_owner = make_user(), make_user()
    org = make_org(owner=owner, billing_currency="USD")
    other = make_org(owner=other_owner)
    make_grant(org, "12.50")
    make_hold(org)  # 3000 micros held
    _, secret = make_api_key(org, owner)
    url = f"/api/v1/orgs/{org.slug}/billing/balance"

    response = key_client(secret).get(url)
    assert response.status_code == 200, response.content
    assert response.json() == {
        "currency": "USD",
        "billing_mode": "prepaid",
        "granted": "12.500000",
        "settled": "0.000000",
        "held": "0.003000",
        "available": "12.497000",
    }
    # Someone else's organisation is not found, exactly like a missing one.
    _, other_secret = make_api_key(other, other_owner)
    for path in (url, "/api/v1/orgs/no-such-org/billing/balance"):
        refused = key_client(other_secret).get(path)
        assert refused.status_code == 404
        assert refused.json()["error"]["code"] == "not_found"
    assert key_client(other_secret).get(f"/api/v1/orgs/{other.slug}/billing/balance").status_code == 200
    # A developer lacks `billing:read`; a billing member has it.
    developer, accountant = make_user(), make_user()
    make_member(org, user=developer, role=Role.DEVELOPER)
    make_member(org, user=accountant, role=Role.BILLING)
    _, developer_secret = make_api_key(org, developer)
    _, accountant_secret = make_api_key(org, accountant)
    forbidden = key_client(developer_secret).get(url)
    assert (forbidden.status_code, forbidden.json()["error"]["code"]) == (403, "permission_denied")
    assert key_client(accountant_secret).get(url).json()["available"] == "12.497000"
    assert key_client(secret).post(url, {}, format="json").status_code == 405
