"""Which hosts may get work (active, fresh heartbeat, active region, serving the model) and which models fit."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from controlplane.core.errors import Conflict, ValidationFailed
from controlplane.core.models import AuditEvent
from controlplane.core.services import Actor
from controlplane.fleet import selectors, services
from controlplane.fleet.models import CatalogModel, Host, Region

ACTOR = Actor.system("test")


def _host(name: str, region: str, slug: str) -> Host:
    return services.host_create(
        actor=ACTOR,
        name=name,
        region=selectors.region_get(code=region),
        accelerator_class=selectors.accelerator_class_get(slug=slug),
    )


def _live(region: str | None = None, model: str | None = None) -> set[str]:
    return {h.name for h in selectors.hosts_live(region_code=region, model_name=model, now=timezone.now())}


@pytest.mark.django_db
def test_liveness_needs_active_status_fresh_heartbeat_and_active_region(synced: None) -> None:
    fresh, stale, silent = (
        _host("sin-a", "sin", "nvidia-t4"),
        _host("sin-b", "sin", "nvidia-t4"),
        _host("sin-c", "sin", "nvidia-t4"),
    )
    other = _host("dxb-a", "dxb", "nvidia-l4")
    now = timezone.now()
    services.host_heartbeat(host_ids=[fresh.pk, other.pk], at=now)
    services.host_heartbeat(host_ids=[stale.pk], at=now - timedelta(seconds=settings.HOST_HEARTBEAT_STALE_S + 1))
    assert silent.last_heartbeat_at is None
    assert _live("sin") == {"sin-a"}
    assert _live() == {"sin-a", "dxb-a"}

    services.host_set_status(actor=ACTOR, host=fresh, status=Host.Status.DOWN)
    assert _live("sin") == set()
    services.host_set_status(actor=ACTOR, host=fresh, status=Host.Status.ACTIVE)
    assert _live("sin") == {"sin-a"}

    services.region_set_status(actor=ACTOR, region=Region.objects.get(code="sin"), status=Region.Status.MAINTENANCE)
    assert _live("sin") == set()
    assert _live("dxb") == {"dxb-a"}


@pytest.mark.django_db
def test_liveness_by_model_follows_deployments(synced: None) -> None:
    serving, idle = _host("fra-a", "fra", "nvidia-a10"), _host("fra-b", "fra", "nvidia-t4")
    services.host_heartbeat(host_ids=[serving.pk, idle.pk])
    smol = CatalogModel.objects.get(name="SmolLM2-135M-Instruct")
    services.deployment_create(actor=ACTOR, model=smol, host=serving)
    assert _live("fra", "SmolLM2-135M-Instruct") == {"fra-a"}
    assert _live("fra", "Qwen2.5-7B-Instruct") == set()
    assert _live("fra") == {"fra-a", "fra-b"}


@pytest.mark.django_db
def test_heartbeat_is_telemetry_without_audit(synced: None) -> None:
    host = _host("iad-a", "iad", "nvidia-l4")
    before = AuditEvent.objects.unscoped_all_orgs().count()
    assert services.host_heartbeat(host_ids=[host.pk]) == 1
    host.refresh_from_db()
    assert host.last_heartbeat_at is not None
    assert AuditEvent.objects.unscoped_all_orgs().count() == before


@pytest.mark.django_db
def test_smollm2_fits_the_hanguang_on_chip_memory_but_a_larger_artifact_does_not(synced: None) -> None:
    hanguang = _host("hgh-a", "hgh", "hanguang-800")
    smol = CatalogModel.objects.get(name="SmolLM2-135M-Instruct")
    assert smol.artifact_bytes is not None
    assert smol.artifact_bytes < 192_000_000
    assert selectors.model_fits_host(model=smol, host=hanguang)
    services.deployment_create(actor=ACTOR, model=smol, host=hanguang)

    big = CatalogModel.objects.get(name="Qwen2.5-0.5B-Instruct")
    big.artifact_path, big.artifact_sha256, big.artifact_bytes = "pkg:x/y.gguf", "0" * 64, 400_000_000
    assert not selectors.model_fits_host(model=big, host=hanguang)
    with pytest.raises(ValidationFailed) as refused:
        services.deployment_create(actor=ACTOR, model=big, host=hanguang)
    assert refused.value.code == "model_does_not_fit"
    assert selectors.model_fits_host(model=big, host=_host("hgh-b", "hgh", "nvidia-t4"))


@pytest.mark.django_db
def test_drain_twice_is_one_change_and_draining_a_down_host_conflicts(synced: None) -> None:
    host = _host("ruh-a", "ruh", "nvidia-t4")
    services.host_drain(actor=ACTOR, host=host)
    services.host_drain(actor=ACTOR, host=host)
    assert AuditEvent.objects.unscoped_all_orgs().filter(action="host.drain").count() == 1
    services.host_set_status(actor=ACTOR, host=host, status=Host.Status.DOWN)
    with pytest.raises(Conflict):
        services.host_drain(actor=ACTOR, host=host)
