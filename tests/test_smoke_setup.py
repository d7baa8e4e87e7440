import pytest

from controlplane.core.regions import REGION_CODES, region_db_alias
from controlplane.inference.models import RequestContent


@pytest.mark.django_db(databases="__all__")
def test_regional_tables_exist_only_in_regional_stores() -> None:
    from django.db import connections

    for code in REGION_CODES:
        tables = connections[region_db_alias(code)].introspection.table_names()
        assert RequestContent._meta.db_table in tables
        assert "tenants_organization" not in tables
    central = connections["default"].introspection.table_names()
    assert RequestContent._meta.db_table not in central
    assert "tenants_organization" in central
