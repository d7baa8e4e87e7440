"""Every model declares where its rows live, and the router agrees with the migrations."""

from __future__ import annotations

import pytest
from django.apps import apps
from django.db import connections

from controlplane.core.models import DataHome
from controlplane.core.regions import REGION_CODES, region_db_alias
from controlplane.core.routers import data_home_of

PROJECT_APPS = {"core", "fleet", "inference", "tenants", "billing"}


def test_every_project_model_declares_a_data_home() -> None:
    project_models = [m for m in apps.get_models() if m._meta.app_label in PROJECT_APPS]
    assert len(project_models) >= 15
    for model in project_models:
        assert isinstance(model.__dict__.get("data_home") or getattr(model, "data_home", None), DataHome), model


@pytest.mark.django_db(databases="__all__")
def test_tables_are_where_their_data_home_says() -> None:
    central_tables = set(connections["default"].introspection.table_names())
    for model in apps.get_models():
        home = data_home_of(model)
        table = model._meta.db_table
        for code in REGION_CODES:
            regional_tables = set(connections[region_db_alias(code)].introspection.table_names())
            assert (table in regional_tables) == (home is DataHome.REGIONAL), (model, code)
        assert (table in central_tables) == (home is DataHome.CENTRAL), model
