"""The ORM adapter: HostState rows from real fleet rows (PostgreSQL), fed to the policy."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.conf import settings
from django.utils import timezone

from controlplane.core.services import Actor
from controlplane.fleet import selectors, services
from controlplane.fleet.models import CatalogModel, Deployment, Host
from controlplane.scheduling.fleet_view import accelerator_spec, host_states
from controlplane.scheduling.perf import AcceleratorSpec, perf_estimate
from controlplane.scheduling.policy import place
from tests.scheduling.builders import HARDWARE, SMOL, request

ACTOR = Actor.system("test")


def _host(name: str, region: str, slug: str, *, count: int = 1) -> Host:
    return services.host_create(
        actor=ACTOR,
        name=name,
        region=selectors.region_get(code=region),
        accelerator_class=selectors.accelerator_class_get(slug=slug),
        accelerator_count=count,
    )


@pytest.fixture
def fleet(db: None) -> dict[str, Any]:
    """A fleet with one host in each state the policy must tell apart."""
    services.regions_sync()
    services.accelerator_classes_sync()
    services.catalog_sync()
    now = timezone.now()
    smol = CatalogModel.objects.get(name=SMOL.name)
    hosts = {
        "t4": _host("dxb-t4", "dxb", "nvidia-t4"),
        "a100": _host("dxb-a100", "dxb", "nvidia-a100-80gb", count=8),
        "draining": _host("dxb-l4", "dxb", "nvidia-l4"),
        "down": _host("dxb-mi300x", "dxb", "amd-mi300x", count=8),
        "stale": _host("ruh-h200", "ruh", "nvidia-h200-sxm", count=8),
        "hanguang": _host("hgh-hanguang", "hgh", "hanguang-800"),
        "undeployed": _host("fra-t4", "fra", "nvidia-t4"),
        "disabled": _host("sin-t4", "sin", "nvidia-t4"),
    }
    for key, host in hosts.items():
        if key != "undeployed":
            deployment = services.deployment_create(actor=ACTOR, model=smol, host=host)
            if key == "disabled":
                services.deployment_set_status(actor=ACTOR, deployment=deployment, status=Deployment.Status.DISABLED)
    services.host_heartbeat(host_ids=[h.pk for k, h in hosts.items() if k != "stale"], at=now)
    stale_at = now - timedelta(seconds=settings.HOST_HEARTBEAT_STALE_S + 1)
    services.host_heartbeat(host_ids=[hosts["stale"].pk], at=stale_at)
    services.host_drain(actor=ACTOR, host=hosts["draining"])
    services.host_set_status(actor=ACTOR, host=hosts["down"], status=Host.Status.DOWN)
    return {"now": now, "hosts": hosts}


def _by_name(now: datetime, load: dict[int, tuple[int, int]] | None = None) -> dict[str, Any]:
    return {state.name: state for state in host_states(model_name=SMOL.name, now=now, load=load or {})}


@pytest.mark.django_db
def test_host_states_carry_each_hosts_flags_price_load_and_estimate(fleet: dict[str, Any]) -> None:
    hosts: dict[str, Host] = fleet["hosts"]
    states = _by_name(fleet["now"], {hosts["t4"].pk: (8, 5)})
    assert set(states) == {host.name for host in hosts.values()}

    t4 = states["dxb-t4"]
    assert (t4.host_id, t4.region, t4.country, t4.accelerator, t4.family) == (
        hosts["t4"].pk,
        "dxb",
        "AE",
        "nvidia-t4",
        "nvidia",
    )
    assert (t4.live, t4.draining, t4.serves_model, t4.fits_memory) == (True, False, True, True)
    assert (t4.slots, t4.running, t4.queued) == (8, 8, 5)
    assert t4.usd_per_hour == Decimal("0.526")

    a100 = states["dxb-a100"]
    assert a100.usd_per_hour == Decimal("3.4309") * 8  # AWS p4de.24xlarge / 8 GPUs, per hardware.json
    assert (a100.running, a100.queued) == (0, 0)
    assert a100.perf is not None
    assert a100.perf.replicas == 8

    assert (states["dxb-l4"].live, states["dxb-l4"].draining) == (False, True)
    assert (states["dxb-mi300x"].live, states["dxb-mi300x"].draining) == (False, False)
    assert not states["ruh-h200"].live
    assert not states["fra-t4"].serves_model
    assert not states["sin-t4"].serves_model
    assert states["sin-t4"].live

    hanguang = states["hgh-hanguang"]
    assert hanguang.family == "npu"
    assert hanguang.usd_per_hour is None
    assert hanguang.fits_memory
    assert hanguang.perf is not None
    assert hanguang.perf.can_prefill
    assert not hanguang.perf.can_decode


@pytest.mark.django_db
def test_accelerator_rows_give_the_same_spec_as_the_hardware_data(fleet: dict[str, Any]) -> None:
    for entry in HARDWARE:
        row = selectors.accelerator_class_get(slug=entry["id"])
        assert accelerator_spec(row) == AcceleratorSpec.from_mapping(entry)
    t4 = _by_name(fleet["now"])["dxb-t4"]
    expected = perf_estimate(
        accelerator=AcceleratorSpec.from_mapping(next(e for e in HARDWARE if e["id"] == "nvidia-t4")),
        accelerator_count=1,
        model=SMOL,
        slots=8,
    )
    assert t4.perf == expected


@pytest.mark.django_db
def test_the_policy_over_the_real_fleet(fleet: dict[str, Any]) -> None:
    hosts: dict[str, Host] = fleet["hosts"]
    now = fleet["now"]
    states = host_states(model_name=SMOL.name, now=now, load={})
    chat = place(request(allowed=("dxb", "ruh")), states)
    assert chat.host_id == hosts["t4"].pk
    assert any("dxb-l4" in reason and "draining" in reason for reason in chat.reasons)
    assert any("dxb-mi300x" in reason and "not live" in reason for reason in chat.reasons)
    assert any("ruh-h200" in reason and "not live" in reason for reason in chat.reasons)

    busy_t4 = host_states(model_name=SMOL.name, now=now, load={hosts["t4"].pk: (8, 32)})
    assert place(request(allowed=("dxb",)), busy_t4).host_id == hosts["a100"].pk

    assert place(request(allowed=("ruh",)), states).refusal == "region_unavailable"
    assert place(request(allowed=("fra",)), states).refusal == "region_unavailable"
    assert place(request(allowed=("hgh",), workload="embedding"), states).host_id == hosts["hanguang"].pk
    assert place(request(allowed=("hgh",)), states).refusal == "region_unavailable"


@pytest.mark.django_db
def test_models_outside_the_catalog_or_deployed_nowhere_are_model_not_found(fleet: dict[str, Any]) -> None:
    now = fleet["now"]
    assert host_states(model_name="no-such-model", now=now, load={}) == []
    assert place(request(model="no-such-model"), []).refusal == "model_not_found"
    qwen = host_states(model_name="Qwen2.5-7B-Instruct", now=now, load={})
    assert qwen
    assert not any(state.serves_model or state.fits_memory for state in qwen)
    assert place(request(model="Qwen2.5-7B-Instruct"), qwen).refusal == "model_not_found"


@pytest.mark.django_db
def test_host_states_read_a_fixed_number_of_queries(fleet: dict[str, Any], django_assert_num_queries: Any) -> None:
    now = fleet["now"]
    with django_assert_num_queries(4):
        host_states(model_name=SMOL.name, now=now, load={})
    for index in range(5):
        _host(f"iad-t4-{index}", "iad", "nvidia-t4")
    with django_assert_num_queries(4):
        assert len(host_states(model_name=SMOL.name, now=now, load={})) == 13
