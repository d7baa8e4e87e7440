from typing import Any

from django.apps import AppConfig


class InferenceConfig(AppConfig):
    name = "controlplane.inference"
    label = "inference"
    verbose_name = "Inference"

    def ready(self) -> None:
        """Writes to the rows that admission caches replace their scope's generation token
        (controlplane.core.hotcache): organisation rows per organisation, the rest globally."""
        from django.contrib.auth import get_user_model
        from django.db.models import Model
        from django.db.models.signals import post_delete, post_save

        from billing.models import FxRate, PriceBookEntry
        from controlplane.core import hotcache
        from controlplane.fleet.models import AcceleratorClass, CatalogModel, Deployment, Host, Region
        from tenants.models import ApiKey, Organization, QuotaPlan, RegionalQuota, ResidencyPolicy

        def global_changed(sender: Any, update_fields: Any = None, **kwargs: Any) -> None:
            if update_fields is not None and set(update_fields) <= {"last_login"}:
                return  # a login changes nothing admission reads
            hotcache.bump(org_id=None)

        def org_changed(sender: Any, instance: Any, **kwargs: Any) -> None:
            org_id = instance.pk if sender is Organization else instance.organization_id
            hotcache.bump(org_id=org_id)

        # weak=False: the receivers are local functions, which a weak reference would let go at once
        global_models: tuple[type[Model], ...] = (
            CatalogModel, Host, Deployment, Region, AcceleratorClass, PriceBookEntry, FxRate, QuotaPlan,
            get_user_model(),
        )
        org_models: tuple[type[Model], ...] = (Organization, ApiKey, RegionalQuota, ResidencyPolicy)
        for model in global_models:
            uid = f"hotcache-{model.__name__}"
            post_save.connect(global_changed, sender=model, weak=False, dispatch_uid=f"{uid}-save")
            post_delete.connect(global_changed, sender=model, weak=False, dispatch_uid=f"{uid}-delete")
        for model in org_models:
            uid = f"hotcache-{model.__name__}"
            post_save.connect(org_changed, sender=model, weak=False, dispatch_uid=f"{uid}-save")
            post_delete.connect(org_changed, sender=model, weak=False, dispatch_uid=f"{uid}-delete")
