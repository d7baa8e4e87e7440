"""The simulated fleet's building blocks: the catalog's models and, per region, accelerator class and
model, the shape of one rentable instance (a pool of identical instances) with its price and speed.

Pure: the hardware and catalog data, the fleet file and the calibration in; frozen values out. An
instance holds one replica of the model over the fewest devices (of the fleet's instance sizes) that
hold its weights, ``memory_reserve`` of the memory for the runtime, and a KV cache of
``kv_context_tokens`` for at least one sequence; its batch (slots) is as many sequences as that KV cache
holds, at most ``max_batch``. Its speed is perf.py's roofline at the calibrated utilisation.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

from controlplane.core.regions import REGIONS
from controlplane.scheduling.calibration import Utilisation
from controlplane.scheduling.costs import DeviceCost
from controlplane.scheduling.perf import (
    BANDWIDTH_UTILISATION,
    COMPUTE_UTILISATION,
    AcceleratorSpec,
    ModelSpec,
    PerfEstimate,
    model_spec,
    perf_estimate,
)
from controlplane.scheduling.policy import HostState, Workload
from controlplane.scheduling.scenario import ClassTargets, Fleet

FAMILY_BY_VENDOR = {"Alibaba T-Head": "npu", "NVIDIA": "nvidia", "AMD": "amd"}
"""Residency policies may pin a family; the hardware data names vendors (the fleet sync's mapping)."""
COUNTRY = {region.code: region.country for region in REGIONS}


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    spec: ModelSpec
    context_length: int
    supports_chat: bool
    supports_embeddings: bool


def catalog_read(path: Path) -> dict[str, CatalogEntry]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return {
        m["name"]: CatalogEntry(
            spec=model_spec(
                name=m["name"],
                parameters=int(m["parameters"]),
                quantization=m["quantization"],
                artifact_bytes=m.get("artifact_bytes"),
            ),
            context_length=int(m["context_length"]),
            supports_chat=bool(m.get("supports_chat", True)),
            supports_embeddings=bool(m.get("supports_embeddings", False)),
        )
        for m in data["models"]
    }


def hardware_read(path: Path) -> list[dict[str, Any]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of accelerators")
    return data


@dataclass(frozen=True, slots=True)
class PoolSpec:
    index: int
    region: str
    accelerator: str
    model: str
    devices: int
    slots: int
    perf: PerfEstimate
    usd_per_hour: Decimal
    """The instance's price per hour (per device * devices), assumed or published."""
    price_assumed: bool
    watts: float
    """The instance's devices' TDP."""
    template: HostState
    """What the placement policy sees of an idle instance of this pool (host id set per instance)."""

    @property
    def prefill_tokens_per_s(self) -> float:
        rate = self.perf.prefill_tokens_per_s
        if rate is None:
            raise AssertionError("pools are built only where the roofline can prefill")
        return rate

    @property
    def tpot_s(self) -> float | None:
        rate = self.perf.decode_tokens_per_s
        return None if rate is None else 1 / rate

    def serves(self, workload: Workload, targets: ClassTargets) -> bool:
        """Whether this pool can serve a class at all: generation needs a decode estimate within the
        class's time-per-output-token target."""
        if workload == "embedding":
            return self.perf.can_prefill
        tpot = self.tpot_s
        if tpot is None:
            return False
        return targets.tpot_s is None or tpot <= targets.tpot_s

    def work_s(self, input_tokens: float, output_tokens: float) -> float:
        """Instance-seconds that these tokens take: prompts hold the whole replica's compute; each output
        token holds one batch slot for one decode step."""
        host_prefill = self.perf.host_prefill_tokens_per_s or self.prefill_tokens_per_s
        tpot = self.tpot_s or 0.0
        return input_tokens / host_prefill + output_tokens * tpot / self.slots


def host_state_for(
    *,
    host_id: int,
    name: str,
    region: str,
    hardware_entry: Mapping[str, object],
    accelerator_count: int,
    slots: int,
    model: ModelSpec,
    cost: DeviceCost | None,
    utilisation: Utilisation | None = None,
    min_devices_per_replica: int = 1,
    serves_model: bool = True,
    live: bool = True,
    draining: bool = False,
    running: int = 0,
    queued: int = 0,
) -> HostState:
    """A host as the placement policy sees it, built from the hardware data alone (no ORM): the
    simulator's counterpart of ``fleet_view.host_states``. Without ``utilisation`` the roofline runs at
    perf.py's defaults, as live placement does; an unpriced device's price is left to the policy's
    ``unpriced_usd_per_hour`` (also as live placement does)."""
    spec = AcceleratorSpec.from_mapping(hardware_entry)
    memory = spec.memory_bytes
    perf = perf_estimate(
        accelerator=spec,
        accelerator_count=accelerator_count,
        model=model,
        slots=slots,
        compute_utilisation=utilisation.compute if utilisation else COMPUTE_UTILISATION,
        bandwidth_utilisation=utilisation.bandwidth if utilisation else BANDWIDTH_UTILISATION,
        min_devices_per_replica=min_devices_per_replica,
    )
    price = None
    if cost is not None and cost.basis != "assumed":
        price = cost.usd_per_device_hour * accelerator_count
    return HostState(
        host_id=host_id,
        name=name,
        region=region,
        country=COUNTRY[region],
        accelerator=spec.slug,
        family=FAMILY_BY_VENDOR[str(hardware_entry["vendor"])],
        usd_per_hour=price,
        fits_memory=memory is not None and model.weight_bytes <= memory * accelerator_count,
        serves_model=serves_model,
        live=live,
        draining=draining,
        slots=slots,
        running=running,
        queued=queued,
        perf=perf,
    )


def instance_shape(
    *, accelerator: AcceleratorSpec, model: ModelSpec, kv_bytes_per_token: int, fleet: Fleet
) -> tuple[int, int] | None:
    """(devices, slots) of one instance, or None when no allowed size holds the weights and one
    sequence's KV cache."""
    memory = accelerator.memory_bytes
    if memory is None:
        return None
    per_slot = kv_bytes_per_token * fleet.kv_context_tokens
    for devices in fleet.instance_sizes:
        usable = devices * memory * (1 - fleet.memory_reserve) - model.weight_bytes
        if usable >= per_slot:
            return devices, min(fleet.max_batch, int(usable // per_slot))
    return None


def pools_build(
    *,
    fleet: Fleet,
    hardware: Sequence[Mapping[str, object]],
    catalog: Mapping[str, CatalogEntry],
    costs: Mapping[str, DeviceCost],
    utilisation: Mapping[str, Utilisation],
    models: Sequence[str],
) -> list[PoolSpec]:
    """Every pool the fleet file allows for ``models``: classes offered in the region, priced (or
    assumed), that hold the model."""
    entries = {str(e["id"]): e for e in hardware}
    pools: list[PoolSpec] = []
    for region, offered in sorted(fleet.regions.items()):
        for model_name in sorted(models):
            model = catalog[model_name].spec
            facts = fleet.models.get(model_name)
            if facts is None:
                raise ValueError(f"the fleet file has no KV-cache facts for {model_name}")
            for slug in offered:
                if slug not in entries:
                    raise ValueError(f"the fleet offers {slug}, which is not in the hardware data")
                cost = costs.get(slug)
                if cost is None:
                    continue
                spec = AcceleratorSpec.from_mapping(entries[slug])
                shape = instance_shape(
                    accelerator=spec, model=model, kv_bytes_per_token=facts.kv_bytes_per_token, fleet=fleet
                )
                if shape is None:
                    continue
                devices, slots = shape
                cost_for_policy = cost if devices == 1 or cost.basis != "assumed" else replace(cost, basis="cloud")
                template = host_state_for(
                    host_id=0,
                    name=f"{region}-{slug}-{model_name}",
                    region=region,
                    hardware_entry=entries[slug],
                    accelerator_count=devices,
                    slots=slots,
                    model=model,
                    cost=cost_for_policy,
                    utilisation=utilisation[slug],
                    min_devices_per_replica=devices,
                )
                perf = template.perf
                if perf is None or not perf.fits or not perf.can_prefill:
                    continue
                price = cost.usd_per_device_hour * devices
                assumed = cost.basis == "assumed"
                tdp = entries[slug].get("tdp_watts")
                pools.append(
                    PoolSpec(
                        index=len(pools),
                        region=region,
                        accelerator=slug,
                        model=model_name,
                        devices=devices,
                        slots=slots,
                        perf=perf,
                        usd_per_hour=price,
                        price_assumed=assumed,
                        watts=float(str(tdp)) * devices if tdp is not None else 0.0,
                        template=template,
                    )
                )
    return pools
