"""Writes of the fleet: data syncs, hosts (status, drain, heartbeats) and deployments."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Model
from django.utils import timezone

from controlplane.core.errors import Conflict, ValidationFailed
from controlplane.core.regions import REGIONS, region_queue
from controlplane.core.services import Actor, audit_record
from controlplane.fleet.models import AcceleratorClass, CatalogModel, Deployment, Host, Region
from controlplane.fleet.selectors import model_fits_host

DATA_DIR = Path(__file__).resolve().parent / "data"
HARDWARE_FILE = DATA_DIR / "hardware.json"
CATALOG_FILE = DATA_DIR / "catalog.json"

# Residency policies may pin an accelerator family; the data names vendors.
_FAMILY_BY_VENDOR = {"Alibaba T-Head": "npu", "NVIDIA": "nvidia", "AMD": "amd"}
_DECIMAL_SPECS = (
    "int8_tops_dense",
    "int8_tops_sparse",
    "fp8_tflops_dense",
    "fp16_tflops_dense",
    "fp16_tflops_sparse",
    "bf16_tflops_dense",
    "bf16_tflops_sparse",
    "memory_gb",
    "memory_bandwidth_gbps",
)
_CATALOG_FIELDS = (
    "display_name",
    "family",
    "architecture",
    "parameters",
    "context_length",
    "quantization",
    "license",
    "artifact_path",
    "artifact_sha256",
    "artifact_bytes",
    "default_max_tokens",
    "supports_chat",
    "supports_embeddings",
    "embedding_dimensions",
    "source_url",
    "notes",
    "status",
)


@dataclass(slots=True)
class SyncResult:
    created: list[str] = field(default_factory=list)
    updated: dict[str, list[str]] = field(default_factory=dict)
    unchanged: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated)


def _decimal_or_none(value: Any) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, float):
        raise ValidationFailed("numbers must be parsed as Decimal, never float")
    return Decimal(value)


def _upsert(
    model: type[Model], *, lookup: dict[str, Any], values: dict[str, Any], key: str, result: SyncResult
) -> None:
    """Create the row or update only the fields that differ, so that a second run writes nothing."""
    row = model._default_manager.filter(**lookup).first()
    if row is None:
        model._default_manager.create(**lookup, **values)
        result.created.append(key)
        return
    differing = [name for name, value in values.items() if getattr(row, name) != value]
    if not differing:
        result.unchanged += 1
        return
    for name in differing:
        setattr(row, name, values[name])
    row.save(update_fields=[*differing, "updated_at"])
    result.updated[key] = differing


def _audit_sync(*, actor: Actor, action: str, target_type: str, result: SyncResult) -> None:
    if result.changed:
        audit_record(
            actor=actor,
            action=action,
            target_type=target_type,
            target_id="all",
            changes={"created": result.created, "updated": result.updated},
        )


def regions_sync(*, actor: Actor | None = None) -> SyncResult:
    """Create or update the fixed regions; an operator-set status is left alone."""
    actor = actor or Actor.system("regions_sync")
    result = SyncResult()
    with transaction.atomic():
        for spec in REGIONS:
            _upsert(
                Region,
                lookup={"code": spec.code},
                values={
                    "name": spec.name,
                    "country": spec.country,
                    "zones": list(spec.zones),
                    "queue_name": region_queue(spec.code),
                },
                key=spec.code,
                result=result,
            )
        _audit_sync(actor=actor, action="regions.sync", target_type="Region", result=result)
    return result


def _accelerator_values(exact: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
    vendor = exact["vendor"]
    if vendor not in _FAMILY_BY_VENDOR:
        raise ValidationFailed(f"unknown accelerator vendor {vendor!r} in the hardware data")
    prices = exact.get("cloud_prices") or []
    values: dict[str, Any] = {
        "name": exact["name"],
        "vendor": vendor,
        "family": _FAMILY_BY_VENDOR[vendor],
        "kind": exact.get("kind") or "",
        "on_chip_memory_mb": exact.get("on_chip_memory_mb"),
        "memory_type": exact.get("memory_type") or "",
        "tdp_watts": exact.get("tdp_watts"),
        "host_interface": exact.get("host_interface") or "",
        "process": exact.get("process") or "",
        "usd_per_gpu_hour": _decimal_or_none(prices[0].get("usd_per_gpu_hour")) if prices else None,
        "notes": exact.get("notes") or "",
        # The JSON columns keep the source document as written (its numbers round-trip unchanged);
        # prices used for money are the Decimal columns above.
        "cloud_prices": raw.get("cloud_prices") or [],
        "llm_throughput": raw.get("llm_throughput") or [],
        "other_benchmarks": raw.get("other_benchmarks") or [],
        "sources": raw.get("sources") or [],
    }
    for name in _DECIMAL_SPECS:
        values[name] = _decimal_or_none(exact.get(name))
    return values


def accelerator_classes_sync(*, actor: Actor | None = None, path: Path = HARDWARE_FILE) -> SyncResult:
    """Load the accelerator classes from the hardware data; idempotent, unknown values stay null."""
    actor = actor or Actor.system("accelerator_classes_sync")
    text = path.read_text(encoding="utf-8")
    exact_entries: list[dict[str, Any]] = json.loads(text, parse_float=Decimal)
    raw_entries: list[dict[str, Any]] = json.loads(text)
    result = SyncResult()
    with transaction.atomic():
        for exact, raw in zip(exact_entries, raw_entries, strict=True):
            _upsert(
                AcceleratorClass,
                lookup={"slug": exact["id"]},
                values=_accelerator_values(exact, raw),
                key=exact["id"],
                result=result,
            )
        _audit_sync(actor=actor, action="accelerator_classes.sync", target_type="AcceleratorClass", result=result)
    return result


def catalog_sync(*, actor: Actor | None = None, path: Path = CATALOG_FILE) -> SyncResult:
    """Load the model catalog; idempotent. Models missing from the file are left for operators to retire."""
    actor = actor or Actor.system("catalog_sync")
    document = json.loads(path.read_text(encoding="utf-8"), parse_float=Decimal)
    result = SyncResult()
    with transaction.atomic():
        for entry in document["models"]:
            values = {name: entry[name] for name in _CATALOG_FIELDS}
            values["embedding_dimensions"] = entry.get("embedding_dimensions")
            values["artifact_bytes"] = entry.get("artifact_bytes")
            _upsert(CatalogModel, lookup={"name": entry["name"]}, values=values, key=entry["name"], result=result)
        _audit_sync(actor=actor, action="catalog.sync", target_type="CatalogModel", result=result)
    return result


def region_set_status(*, actor: Actor, region: Region, status: str) -> Region:
    if status not in Region.Status.values:
        raise ValidationFailed(f"unknown region status {status!r}")
    with transaction.atomic():
        region = Region.objects.select_for_update().get(pk=region.pk)
        previous = region.status
        if previous == status:
            return region
        region.status = status
        region.save(update_fields=["status", "updated_at"])
        audit_record(
            actor=actor,
            action="region.status_set",
            target_type="Region",
            target_id=region.code,
            changes={"status": [previous, status]},
        )
    return region


def host_create(
    *,
    actor: Actor,
    name: str,
    region: Region,
    accelerator_class: AcceleratorClass,
    accelerator_count: int = 1,
    host_memory_gb: int = 64,
    max_concurrent_requests: int = 8,
) -> Host:
    if accelerator_count < 1 or max_concurrent_requests < 1 or host_memory_gb < 1:
        raise ValidationFailed("accelerator_count, host_memory_gb and max_concurrent_requests must be positive")
    try:
        with transaction.atomic():
            host = Host.objects.create(
                name=name,
                region=region,
                accelerator_class=accelerator_class,
                accelerator_count=accelerator_count,
                host_memory_gb=host_memory_gb,
                max_concurrent_requests=max_concurrent_requests,
            )
            audit_record(
                actor=actor,
                action="host.create",
                target_type="Host",
                target_id=host.pk,
                changes={
                    "name": name,
                    "region": region.code,
                    "accelerator_class": accelerator_class.slug,
                    "accelerator_count": accelerator_count,
                },
            )
    except IntegrityError as exc:
        raise Conflict(f"A host named {name!r} already exists.", code="host_exists") from exc
    return host


def _host_status_change(*, actor: Actor, host: Host, status: str, action: str) -> Host:
    """Change a locked host's status with its audit row; the caller holds the transaction."""
    previous = host.status
    if previous == status:
        return host
    host.status = status
    host.save(update_fields=["status", "updated_at"])
    audit_record(
        actor=actor,
        action=action,
        target_type="Host",
        target_id=host.pk,
        changes={"status": [previous, status]},
    )
    return host


def host_set_status(*, actor: Actor, host: Host, status: str) -> Host:
    if status not in Host.Status.values:
        raise ValidationFailed(f"unknown host status {status!r}")
    with transaction.atomic():
        locked = Host.objects.select_for_update().get(pk=host.pk)
        return _host_status_change(actor=actor, host=locked, status=status, action="host.status_set")


def host_drain(*, actor: Actor, host: Host) -> Host:
    """Stop offering the host new work; requests already on it finish. Draining twice is a no-op."""
    with transaction.atomic():
        locked = Host.objects.select_for_update().get(pk=host.pk)
        if locked.status == Host.Status.DOWN:
            raise Conflict(f"Host {locked.name} is down; mark it active before draining it.", code="host_down")
        return _host_status_change(actor=actor, host=locked, status=Host.Status.DRAINING, action="host.drain")


def host_update(
    *, actor: Actor, host: Host, status: str | None = None, max_concurrent_requests: int | None = None
) -> Host:
    """Operator edits of a host: its status and its batch slots, in one audited change."""
    if status is not None and status not in Host.Status.values:
        raise ValidationFailed(f"unknown host status {status!r}")
    if max_concurrent_requests is not None and max_concurrent_requests < 1:
        raise ValidationFailed("max_concurrent_requests must be positive")
    with transaction.atomic():
        locked = Host.objects.select_for_update().get(pk=host.pk)
        changes: dict[str, Any] = {}
        if status is not None and status != locked.status:
            changes["status"] = [locked.status, status]
            locked.status = status
        if max_concurrent_requests is not None and max_concurrent_requests != locked.max_concurrent_requests:
            changes["max_concurrent_requests"] = [locked.max_concurrent_requests, max_concurrent_requests]
            locked.max_concurrent_requests = max_concurrent_requests
        if changes:
            locked.save(update_fields=[*changes, "updated_at"])
            audit_record(actor=actor, action="host.update", target_type="Host", target_id=locked.pk, changes=changes)
    return locked


def host_heartbeat(*, host_ids: list[int], at: datetime | None = None) -> int:
    """Record that the hosts are alive. Telemetry, not an operator action: no audit row."""
    moment = at or timezone.now()
    if timezone.is_naive(moment):
        raise ValidationFailed("heartbeat times must be timezone-aware")
    return Host.objects.filter(pk__in=host_ids).update(last_heartbeat_at=moment)


def deployment_validate(*, model: CatalogModel, host: Host) -> None:
    """Only models with an artifact whose weights fit the host's accelerator memory are deployable."""
    if not model.deployable:
        raise ValidationFailed(f"{model.name} has no artifact yet and cannot be deployed.", code="model_not_deployable")
    if not model_fits_host(model=model, host=host):
        raise ValidationFailed(
            f"{model.name} does not fit in the accelerator memory of {host.name}.", code="model_does_not_fit"
        )


def deployment_create(*, actor: Actor, model: CatalogModel, host: Host) -> Deployment:
    """Serve a catalog model on a host."""
    deployment_validate(model=model, host=host)
    try:
        with transaction.atomic():
            deployment = Deployment.objects.create(model=model, host=host)
            audit_record(
                actor=actor,
                action="deployment.create",
                target_type="Deployment",
                target_id=deployment.pk,
                changes={"model": model.name, "host": host.name},
            )
    except IntegrityError as exc:
        raise Conflict(f"{model.name} is already deployed on {host.name}.", code="deployment_exists") from exc
    return deployment


def deployment_set_status(*, actor: Actor, deployment: Deployment, status: str) -> Deployment:
    if status not in Deployment.Status.values:
        raise ValidationFailed(f"unknown deployment status {status!r}")
    with transaction.atomic():
        locked = Deployment.objects.select_for_update().get(pk=deployment.pk)
        previous = locked.status
        if previous != status:
            locked.status = status
            locked.save(update_fields=["status", "updated_at"])
            audit_record(
                actor=actor,
                action="deployment.status_set",
                target_type="Deployment",
                target_id=locked.pk,
                changes={"status": [previous, status]},
            )
    return locked
