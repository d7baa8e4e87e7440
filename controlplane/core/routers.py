"""Database router: central models live in `default`, regional models only in their region's store."""

from __future__ import annotations

from typing import Any

from django.db.models import Model

from controlplane.core.errors import ResidencyViolation
from controlplane.core.models import DataHome
from controlplane.core.regions import REGION_CODES, region_db_alias

REGIONAL_ALIASES = frozenset(region_db_alias(code) for code in REGION_CODES)


def data_home_of(model: type[Model]) -> DataHome:
    home = getattr(model, "data_home", None)
    if isinstance(home, DataHome):
        return home
    from django.apps import apps  # migrations hand us historical models, which lack `data_home`

    try:
        live = apps.get_model(model._meta.app_label, model._meta.model_name)
    except LookupError:
        live = None
    if live is not None and live is not model:
        return data_home_of(live)
    # Django's own apps (auth, sessions, admin, contenttypes) are central.
    if model._meta.app_label in {"auth", "contenttypes", "sessions", "admin", "messages"}:
        return DataHome.CENTRAL
    raise ResidencyViolation(f"{model._meta.label} declares no data home (central or regional)")


class ResidencyRouter:
    def db_for_read(self, model: type[Model], **hints: Any) -> str | None:
        if data_home_of(model) is DataHome.CENTRAL:
            return "default"
        instance = hints.get("instance")
        region = getattr(instance, "region", None)
        if region:
            return region_db_alias(region)
        raise ResidencyViolation(f"read of regional {model._meta.label} without a region: use .using(<region alias>)")

    def db_for_write(self, model: type[Model], **hints: Any) -> str | None:
        if data_home_of(model) is DataHome.CENTRAL:
            return "default"
        instance = hints.get("instance")
        region = getattr(instance, "region", None)
        if not region:
            raise ResidencyViolation(f"write of regional {model._meta.label} without a region")
        return region_db_alias(region)

    def allow_relation(self, obj1: Model, obj2: Model, **hints: Any) -> bool | None:
        homes = {data_home_of(type(obj1)), data_home_of(type(obj2))}
        if homes == {DataHome.CENTRAL}:
            return True
        # Regional rows never hold database relations to other stores.
        return bool(obj1._state.db == obj2._state.db)

    def allow_migrate(self, db: str, app_label: str, model_name: str | None = None, **hints: Any) -> bool | None:
        if model_name is None:
            # RunPython/RunSQL without a model: only on the central store.
            return db == "default"
        from django.apps import apps  # the live registry: historical models lack `data_home`

        try:
            model = apps.get_model(app_label, model_name)
        except LookupError:
            return db == "default"
        if data_home_of(model) is DataHome.CENTRAL:
            return db == "default"
        return db in REGIONAL_ALIASES
