"""The fleet as the placement policy sees it: HostState rows built from the fleet's selectors.

The only module in ``controlplane.scheduling`` that reads the ORM; the policy and the performance model
stay pure so that the simulator can feed them without a database.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from controlplane.core.errors import NotFound
from controlplane.fleet import selectors as fleet_selectors
from controlplane.fleet.models import AcceleratorClass, Deployment, Host
from controlplane.scheduling.perf import AcceleratorSpec, model_spec, perf_estimate
from controlplane.scheduling.policy import HostState


def accelerator_spec(accelerator: AcceleratorClass) -> AcceleratorSpec:
    """The roofline's view of an accelerator class row (Decimal columns become floats: specs, not money)."""

    def figure(value: object) -> float | None:
        return None if value is None else float(str(value))

    return AcceleratorSpec(
        slug=accelerator.slug,
        int8_tops_dense=figure(accelerator.int8_tops_dense),
        fp16_tflops_dense=figure(accelerator.fp16_tflops_dense),
        bf16_tflops_dense=figure(accelerator.bf16_tflops_dense),
        memory_gb=figure(accelerator.memory_gb),
        on_chip_memory_mb=figure(accelerator.on_chip_memory_mb),
        memory_bandwidth_gbps=figure(accelerator.memory_bandwidth_gbps),
    )


def host_states(*, model_name: str, now: datetime, load: Mapping[int, tuple[int, int]]) -> list[HostState]:
    """Every host in the fleet, as seen for serving ``model_name`` at ``now``; empty when the model is
    not in the catalog (the policy then answers ``model_not_found``).

    ``load`` maps host id → (running, queued), supplied by the caller; hosts it omits are idle. Liveness
    is the fleet's own rule (``hosts_live``: active, region active, fresh heartbeat); a draining host is
    therefore not live, and is marked draining. A host serves the model when it has an active deployment
    of it. Reads a fixed number of queries whatever the fleet's size.
    """
    try:
        model = fleet_selectors.catalog_get(name=model_name)
    except NotFound:
        return []
    spec = model_spec(
        name=model.name,
        parameters=model.parameters,
        quantization=model.quantization,
        artifact_bytes=model.artifact_bytes,
    )
    live_ids = set(fleet_selectors.hosts_live(region_code=None, model_name=None, now=now).values_list("id", flat=True))
    serving_ids = set(
        fleet_selectors.deployments_list(model_name=model_name)
        .filter(status=Deployment.Status.ACTIVE)
        .values_list("host_id", flat=True)
    )
    specs: dict[int, AcceleratorSpec] = {}
    states: list[HostState] = []
    for host in fleet_selectors.hosts_list():
        accelerator = host.accelerator_class
        if accelerator.pk not in specs:
            specs[accelerator.pk] = accelerator_spec(accelerator)
        running, queued = load.get(host.pk, (0, 0))
        price = accelerator.usd_per_gpu_hour
        states.append(
            HostState(
                host_id=host.pk,
                name=host.name,
                region=host.region.code,
                country=host.region.country,
                accelerator=accelerator.slug,
                family=accelerator.family,
                usd_per_hour=None if price is None else price * host.accelerator_count,
                fits_memory=fleet_selectors.model_fits_host(model=model, host=host),
                serves_model=host.pk in serving_ids,
                live=host.pk in live_ids,
                draining=host.status == Host.Status.DRAINING,
                slots=host.max_concurrent_requests,
                running=running,
                queued=queued,
                perf=perf_estimate(
                    accelerator=specs[accelerator.pk],
                    accelerator_count=host.accelerator_count,
                    model=spec,
                    slots=host.max_concurrent_requests,
                ),
            )
        )
    return states
