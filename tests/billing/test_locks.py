"""The one lock helper: organisation rows, `SELECT ... FOR UPDATE`, in primary-key order, inside a transaction."""

from __future__ import annotations

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from billing import locks
from tenants.models import Organization
from tests.factories import make_org

pytestmark = pytest.mark.django_db


def test_organisations_are_locked_in_primary_key_order() -> None:
    first, second, third = make_org(), make_org(), make_org()
    with transaction.atomic(), CaptureQueriesContext(connection) as captured:
        rows = locks.organizations_lock(organization_ids=[third.pk, first.pk, second.pk, first.pk])
    assert [row.pk for row in rows] == sorted([first.pk, second.pk, third.pk])
    [query] = [q["sql"] for q in captured.captured_queries if "FOR UPDATE" in q["sql"]]
    assert 'ORDER BY "tenants_organization"."id" ASC' in query
    assert query.rstrip().endswith("FOR UPDATE")


@pytest.mark.django_db(transaction=True)  # no test-wide transaction around it: outside means outside
def test_the_lock_needs_a_transaction_and_existing_organisations() -> None:
    org = make_org()
    with pytest.raises(RuntimeError, match="inside the transaction"):
        locks.organization_lock(organization_id=org.pk)
    with pytest.raises(Organization.DoesNotExist), transaction.atomic():
        locks.organizations_lock(organization_ids=[org.pk, org.pk + 10_000])
    with transaction.atomic():  # positive control
        assert locks.organization_lock(organization_id=org.pk).pk == org.pk
