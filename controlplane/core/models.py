"""Base models (central, tenant-owned, regional) and the audit log."""

from __future__ import annotations

import enum
from typing import Any, ClassVar

from django.conf import settings
from django.db import models

from controlplane.core.errors import ResidencyViolation
from controlplane.core.regions import REGION_CODES, region_db_alias
from controlplane.core.scoping import OrgScopedManager


class DataHome(enum.Enum):
    """Where a model's rows live (DESIGN section 3). Every concrete model declares one."""

    CENTRAL = "central"
    REGIONAL = "regional"


class CentralModel(models.Model):
    data_home: ClassVar[DataHome] = DataHome.CENTRAL
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True


class OrgOwnedModel(CentralModel):
    """A central row owned by one organisation; its default manager needs an active scope."""

    organization = models.ForeignKey("tenants.Organization", on_delete=models.CASCADE, related_name="+")

    objects: ClassVar[OrgScopedManager[Any]] = OrgScopedManager()

    class Meta:
        abstract = True


class RegionalQuerySet(models.QuerySet[Any]):
    def bulk_create(self, objs: Any, *args: Any, **kwargs: Any) -> Any:
        objs = list(objs)
        for obj in objs:
            expected = region_db_alias(obj.region)
            if self.db != expected:
                raise ResidencyViolation(
                    f"{type(obj).__name__} of region {obj.region!r} may only be written to "
                    f"{expected!r}, not {self.db!r}"
                )
        return super().bulk_create(objs, *args, **kwargs)


class RegionalModel(models.Model):
    """A row that lives only in its region's store: request content, stored responses, salts."""

    data_home: ClassVar[DataHome] = DataHome.REGIONAL
    region = models.CharField(max_length=8, choices=[(code, code) for code in REGION_CODES])
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    objects: ClassVar[models.Manager[Any]] = RegionalQuerySet.as_manager()

    class Meta:
        abstract = True

    def save(self, *args: Any, **kwargs: Any) -> None:
        expected = region_db_alias(self.region)
        using = kwargs.get("using") or expected
        if using != expected:
            raise ResidencyViolation(
                f"{type(self).__name__} of region {self.region!r} may only be written to {expected!r}, not {using!r}"
            )
        kwargs["using"] = expected
        super().save(*args, **kwargs)


class AuditEvent(CentralModel):
    """Who did what to which object, written by services inside the same transaction (I6)."""

    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_label = models.CharField(max_length=200, help_text="user email, api key id or 'system'")
    organization = models.ForeignKey(
        "tenants.Organization", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    action = models.CharField(max_length=80, db_index=True)
    target_type = models.CharField(max_length=80)
    target_id = models.CharField(max_length=80)
    changes = models.JSONField(default=dict, blank=True)
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    request_id = models.CharField(max_length=64, blank=True)

    objects: ClassVar[OrgScopedManager[Any]] = OrgScopedManager()

    class Meta:
        ordering = ("-created_at", "-id")
        indexes = (models.Index(fields=["organization", "-created_at"]),)

    def __str__(self) -> str:
        when = f"{self.created_at:%Y-%m-%d %H:%M:%S}"
        return f"{when} {self.actor_label} {self.action} {self.target_type}:{self.target_id}"
