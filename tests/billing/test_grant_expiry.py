"""Credit grant expiry (beat): expired grants are recorded once with what they forfeited, audited; they are
not spent before or after the record, and what open holds reserve on them stays theirs."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from billing import grants, selectors, services
from billing.models import CreditGrant
from controlplane.core.models import AuditEvent
from tests.factories import make_grant, make_hold, make_org

pytestmark = pytest.mark.django_db


def test_expired_grants_are_recorded_once_and_never_spent(prices: object) -> None:
    org = make_org()
    soon = make_grant(org, "0.01", priority=0, expires_at=timezone.now() + timedelta(hours=1))
    lasting = make_grant(org, "1.00", priority=9)
    held = make_hold(org, request_id="before-expiry")  # 3000 micros, drawn from the first grant in burn order
    assert CreditGrant.objects.unscoped_all_orgs().get(pk=soon.pk).held_micros == 3000
    assert grants.credit_grants_expire() == []  # nothing has expired yet
    later = timezone.now() + timedelta(hours=2)
    [expired] = grants.credit_grants_expire(at=later)
    assert (expired.grant_id, expired.forfeited_micros) == (soon.pk, 10_000 - 3000)
    assert grants.credit_grants_expire(at=later + timedelta(minutes=1)) == []  # once
    soon.refresh_from_db()
    assert (soon.expired_at, soon.expired_micros) == (later, 7000)
    [audit] = AuditEvent.objects.unscoped_all_orgs().filter(action="credit_grant.expire")
    assert soon.expires_at is not None
    assert audit.changes == {"expires_at": soon.expires_at.isoformat(), "forfeited": "0.007", "currency": "USD",
                             "still_held": "0.003"}  # fmt: skip
    # A request admitted after the expiry draws only on the lasting grant; the one admitted before settles on
    # the expired grant's reservation.
    make_hold(org, request_id="after-expiry", at=later)
    services.hold_settle(request_id=held.request_id, input_tokens=500, output_tokens=500, api_key_id=None, at=later)
    soon.refresh_from_db()
    lasting.refresh_from_db()
    assert (soon.consumed_micros, soon.held_micros) == (1500, 0)
    assert (lasting.consumed_micros, lasting.held_micros) == (0, 3000)
    balance = selectors.balance_get(organization=org, at=later)
    assert (balance.granted, balance.held) == (1_000_000, 3000)
