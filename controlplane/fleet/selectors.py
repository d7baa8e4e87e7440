"""Reads of the fleet: regions, accelerator classes, the catalog, hosts, deployments and liveness."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import QuerySet

from controlplane.core.errors import NotFound
from controlplane.fleet.models import AcceleratorClass, CatalogModel, Deployment, Host, Region

_MB = 1_000_000
_GB = 1_000_000_000


def regions_list() -> QuerySet[Region]:
    return Region.objects.order_by("code")


def region_get(*, code: str) -> Region:
    region = Region.objects.filter(code=code).first()
    if region is None:
        raise NotFound(f"No region {code!r}.")
    return region


def accelerator_classes_list() -> QuerySet[AcceleratorClass]:
    return AcceleratorClass.objects.order_by("slug")


def accelerator_class_get(*, slug: str) -> AcceleratorClass:
    accelerator = AcceleratorClass.objects.filter(slug=slug).first()
    if accelerator is None:
        raise NotFound(f"No accelerator class {slug!r}.")
    return accelerator


def catalog_list(*, deployable_only: bool = False) -> QuerySet[CatalogModel]:
    models = CatalogModel.objects.order_by("name")
    if deployable_only:
        models = models.exclude(artifact_path="").exclude(artifact_sha256="")
    return models


def catalog_get(*, name: str) -> CatalogModel:
    model = CatalogModel.objects.filter(name=name).first()
    if model is None:
        raise NotFound(f"No model {name!r} in the catalog.")
    return model


def hosts_list(*, region_code: str | None = None, status: str | None = None) -> QuerySet[Host]:
    hosts = Host.objects.select_related("region", "accelerator_class").order_by("id")
    if region_code is not None:
        hosts = hosts.filter(region__code=region_code)
    if status is not None:
        hosts = hosts.filter(status=status)
    return hosts


def host_get(*, host_id: int) -> Host:
    host = Host.objects.select_related("region", "accelerator_class").filter(pk=host_id).first()
    if host is None:
        raise NotFound(f"No host {host_id}.")
    return host


def hosts_live(*, region_code: str | None, model_name: str | None, now: datetime) -> QuerySet[Host]:
    """Hosts that may be offered new work now.

    Live means active (draining and down hosts finish or lose their work but get none), in an
    active region, with a heartbeat newer than HOST_HEARTBEAT_STALE_S. With a model name, only
    hosts with an active deployment of it.
    """
    fresh_after = now - timedelta(seconds=settings.HOST_HEARTBEAT_STALE_S)
    hosts = Host.objects.select_related("region", "accelerator_class").filter(
        status=Host.Status.ACTIVE,
        region__status=Region.Status.ACTIVE,
        last_heartbeat_at__gt=fresh_after,
    )
    if region_code is not None:
        hosts = hosts.filter(region__code=region_code)
    if model_name is not None:
        hosts = hosts.filter(
            deployments__model__name=model_name, deployments__status=Deployment.Status.ACTIVE
        ).distinct()
    return hosts.order_by("id")


def deployments_list(*, host_id: int | None = None, model_name: str | None = None) -> QuerySet[Deployment]:
    deployments = Deployment.objects.select_related(
        "model", "host", "host__region", "host__accelerator_class"
    ).order_by("id")
    if host_id is not None:
        deployments = deployments.filter(host_id=host_id)
    if model_name is not None:
        deployments = deployments.filter(model__name=model_name)
    return deployments


def host_memory_bytes(*, host: Host) -> int | None:
    """Accelerator memory of a host (per device times devices); None when the specs do not say."""
    accelerator = host.accelerator_class
    if accelerator.memory_gb is not None:
        per_device = int(accelerator.memory_gb * _GB)
    elif accelerator.on_chip_memory_mb is not None:
        per_device = accelerator.on_chip_memory_mb * _MB
    else:
        return None
    return per_device * host.accelerator_count


def model_fits_host(*, model: CatalogModel, host: Host) -> bool:
    """Whether the model's weights fit in the host's accelerator memory; unknown sizes never fit."""
    memory = host_memory_bytes(host=host)
    if memory is None or model.artifact_bytes is None:
        return False
    return model.artifact_bytes <= memory
