"""The router refuses to put a regional row anywhere but its own region's store."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connections
from django.utils import timezone

from controlplane.core.errors import ResidencyViolation
from controlplane.inference.models import RequestContent


def _content(region: str, request_id: str) -> RequestContent:
    return RequestContent(
        region=region, request_id=request_id, organization_id=1, body={"messages": []},
        expires_at=timezone.now() + timedelta(days=1),
    )


@pytest.mark.django_db(databases="__all__")
def test_regional_row_lands_in_its_region_only() -> None:
    _content("dxb", "req_a").save()
    assert RequestContent.objects.using("region_dxb").filter(request_id="req_a").count() == 1
    for alias in ("region_sin", "region_fra", "region_ruh"):
        assert RequestContent.objects.using(alias).filter(request_id="req_a").count() == 0
    with connections["default"].cursor() as cursor:
        tables = connections["default"].introspection.table_names(cursor)
    assert RequestContent._meta.db_table not in tables


@pytest.mark.django_db(databases="__all__")
def test_writing_to_another_region_or_central_is_refused() -> None:
    with pytest.raises(ResidencyViolation):
        _content("dxb", "req_b").save(using="region_fra")
    with pytest.raises(ResidencyViolation):
        _content("dxb", "req_c").save(using="default")
    with pytest.raises(ResidencyViolation):
        RequestContent.objects.using("region_sin").create(
            region="dxb", request_id="req_d", organization_id=1, body={}, expires_at=timezone.now()
        )
    with pytest.raises(ResidencyViolation):
        RequestContent.objects.using("region_sin").bulk_create([_content("dxb", "req_e")])
    for alias in ("region_dxb", "region_fra", "region_sin"):
        refused = ["req_b", "req_c", "req_d", "req_e"]
        assert not RequestContent.objects.using(alias).filter(request_id__in=refused).exists()


@pytest.mark.django_db(databases="__all__")
def test_unrouted_regional_query_is_refused() -> None:
    with pytest.raises(ResidencyViolation):
        list(RequestContent.objects.all())
    # Positive control: the same query with an explicit region works.
    _content("sin", "req_f").save()
    assert [c.request_id for c in RequestContent.objects.using("region_sin").all()] == ["req_f"]
