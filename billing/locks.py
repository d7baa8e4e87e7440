"""The one way money-changing code locks organisations: `SELECT ... FOR UPDATE`, in primary-key order.

Every write that changes what an organisation may spend (holds, settlements, releases, grants, and
later invoices) first locks the organisation's row through this helper, inside its transaction. Taking
the locks in primary-key order means two writers that need several organisations cannot deadlock, and
one organisation's writers queue behind each other across processes and machines (a PostgreSQL row
lock; SQLite serialises writers with its IMMEDIATE transactions).
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db import transaction

from tenants.models import Organization


def organizations_lock(*, organization_ids: Iterable[int]) -> list[Organization]:
    """Lock the organisations' rows until the transaction ends; returns them, fresh, in primary-key order."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("organizations_lock must run inside the transaction it protects")
    ids = sorted(set(organization_ids))
    # ORDER BY is applied before the rows are locked, so the locks are taken in this order.
    rows = list(Organization.objects.select_for_update().filter(pk__in=ids).order_by("pk"))
    if len(rows) != len(ids):
        missing = sorted(set(ids) - {row.pk for row in rows})
        raise Organization.DoesNotExist(f"organisations {missing} do not exist")
    return rows


def organization_lock(*, organization_id: int) -> Organization:
    """Lock one organisation's row (see `organizations_lock`)."""
    [row] = organizations_lock(organization_ids=[organization_id])
    return row
