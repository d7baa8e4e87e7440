"""Credit grant expiry (beat): recording what expired grants left unspent, audited.

An expired grant is never spent whether or not this has run: holds draw only on grants unexpired at the
request's admission, and the balance counts only unexpired grants. This job writes down when each grant
expired and how much of it was forfeited, with an audit record, so that finance sees it. What open holds
still reserve on a grant at its expiry stays theirs: requests admitted before the expiry settle on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from billing import locks
from billing.models import CreditGrant
from controlplane.core import money
from controlplane.core.services import Actor, audit_record


@dataclass(frozen=True, slots=True)
class ExpiredGrant:
    grant_id: int
    organization_id: int
    currency: str
    forfeited_micros: int


def credit_grants_expire(*, at: datetime | None = None, actor: Actor | None = None) -> list[ExpiredGrant]:
    """Record every grant whose expiry has passed and is not recorded yet. Idempotent.

    Each organisation's grants are handled in one transaction under its lock (the same lock that holds
    and settlements take), so the forfeited amount is read while nothing draws on the grant.
    """
    at = at or timezone.now()
    actor = actor or Actor.system("credit_grants_expire")
    due = (
        CreditGrant.objects.unscoped_all_orgs()
        .filter(expires_at__lte=at, expired_at__isnull=True)
        .values_list("organization_id", flat=True)
        .distinct()
    )
    expired: list[ExpiredGrant] = []
    for organization_id in sorted(set(due)):
        with transaction.atomic():
            locks.organization_lock(organization_id=organization_id)
            grants = CreditGrant.objects.unscoped_all_orgs().filter(
                organization_id=organization_id, expires_at__lte=at, expired_at__isnull=True
            )
            for grant in grants.order_by("pk"):
                forfeited = grant.remaining_micros
                grant.expired_at, grant.expired_micros = at, forfeited
                grant.save(update_fields=["expired_at", "expired_micros", "updated_at"])
                audit_record(
                    actor=actor,
                    action="credit_grant.expire",
                    target_type="CreditGrant",
                    target_id=grant.pk,
                    organization_id=organization_id,
                    changes={
                        "expires_at": grant.expires_at.isoformat() if grant.expires_at else None,
                        "forfeited": f"{money.micros_to_units(forfeited).normalize():f}",
                        "currency": grant.currency,
                        "still_held": f"{money.micros_to_units(grant.held_micros).normalize():f}",
                    },
                )
                expired.append(
                    ExpiredGrant(
                        grant_id=grant.pk,
                        organization_id=organization_id,
                        currency=grant.currency,
                        forfeited_micros=forfeited,
                    )
                )
    return expired
