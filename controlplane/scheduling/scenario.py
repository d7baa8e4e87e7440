"""Scenario and fleet files for the simulator, read into typed, validated values.

A scenario says who sends the trace's requests: tenants (residency, home region, time zone, weight,
requests-per-minute quota), the model mix per workload class and each class's latency targets. A fleet
says what can be rented where: accelerator classes offered per region, instance sizing (memory reserve,
KV cache per token, batch cap), autoscaling timings, the cost basis and the per-model facts the KV-cache
sizing needs. Both are JSON; the defaults live next to this module in ``scenarios/``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

from controlplane.core.regions import REGION_CODES, REGIONS
from controlplane.scheduling.costs import CostBasis, OwnedDevice, OwnedEnergy
from controlplane.scheduling.policy import WORKLOADS, Workload

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
DEFAULT_SCENARIO = SCENARIO_DIR / "balanced.json"
DEFAULT_FLEET = SCENARIO_DIR / "fleet.json"
RESIDENCY_KINDS = ("pinned", "zone", "unrestricted")


class ScenarioError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    kind: str
    """pinned (single countries), zone (GCC, ASEAN, ...) or unrestricted."""
    allowed_regions: frozenset[str]
    home: str
    """The region static allocation serves it from (nearest by time zone, inside the allowance)."""
    utc_offset_h: float
    weight: float
    requests_per_minute: int


@dataclass(frozen=True, slots=True)
class ClassTargets:
    share: float
    ttft_s: float | None
    tpot_s: float | None


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    tenants: tuple[Tenant, ...]
    classes: Mapping[Workload, ClassTargets]
    models: Mapping[Workload, Mapping[str, float]]
    diurnal: tuple[float, ...]
    """24 factors, by the tenant's local hour: how busy a tenant is then relative to its weight."""
    default_start_utc_hour: float
    rate_scale: int = 1
    """Each trace request stands for this many requests (each with its own tenant, class and model,
    1 ms apart): the trace's shape over time is kept, its volume multiplied."""


@dataclass(frozen=True, slots=True)
class ModelFacts:
    kv_bytes_per_token: int
    source: str


@dataclass(frozen=True, slots=True)
class Fleet:
    name: str
    regions: Mapping[str, tuple[str, ...]]
    """Region code → accelerator classes that can be rented there."""
    window_s: int
    provision_delay_s: int
    billing_unit_s: int
    memory_reserve: float
    """Share of device memory kept for activations and the runtime (not weights, not KV cache)."""
    kv_context_tokens: int
    """Tokens of KV cache reserved per batch slot."""
    max_batch: int
    instance_sizes: tuple[int, ...]
    """Device counts an instance may have (one model replica per instance)."""
    target_utilisation: float
    """Planned busy share of an instance (static and dynamic alike); the rest absorbs bursts."""
    idle_power_share: float
    cost_basis: CostBasis
    unpriced_usd_per_hour: Decimal | None
    owned: Mapping[str, OwnedDevice]
    owned_energy: OwnedEnergy | None
    models: Mapping[str, ModelFacts]


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ScenarioError(f"{path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: expected a JSON object")
    return data


def region_allowance(countries: list[str], zones: list[str]) -> frozenset[str]:
    """The regions a residency policy naming these countries and zones allows (admission's rule)."""
    return frozenset(r.code for r in REGIONS if r.country in countries or set(zones).intersection(r.zones))


def _optional_float(value: object) -> float | None:
    return None if value is None else float(cast(float, value))


def scenario_load(path: Path) -> Scenario:
    data = _load(path)
    tenants: list[Tenant] = []
    for raw in data.get("tenants", []):
        kind = raw["kind"]
        if kind not in RESIDENCY_KINDS:
            raise ScenarioError(f"tenant {raw['name']}: kind must be one of {', '.join(RESIDENCY_KINDS)}")
        if kind == "unrestricted":
            allowed = frozenset(REGION_CODES)
        else:
            allowed = region_allowance(list(raw.get("countries", [])), list(raw.get("zones", [])))
        if not allowed:
            raise ScenarioError(f"tenant {raw['name']}: its countries and zones allow no region")
        home = raw["home"]
        if home not in allowed:
            raise ScenarioError(f"tenant {raw['name']}: home {home} is outside its allowed regions")
        tenants.append(
            Tenant(
                name=raw["name"],
                kind=kind,
                allowed_regions=allowed,
                home=home,
                utc_offset_h=float(raw.get("utc_offset_h", 0)),
                weight=float(raw["weight"]),
                requests_per_minute=int(raw["requests_per_minute"]),
            )
        )
    kinds = {t.kind for t in tenants}
    if len(kinds) < len(RESIDENCY_KINDS):
        raise ScenarioError(
            f"{path.name}: a scenario needs tenants of every residency kind ({', '.join(RESIDENCY_KINDS)})"
        )
    classes: dict[Workload, ClassTargets] = {}
    models: dict[Workload, dict[str, float]] = {}
    for workload in WORKLOADS:
        raw_class = data["classes"][workload]
        classes[workload] = ClassTargets(
            share=float(raw_class["share"]),
            ttft_s=_optional_float(raw_class.get("ttft_s")),
            tpot_s=_optional_float(raw_class.get("tpot_s")),
        )
        mix = {str(k): float(v) for k, v in data["models"][workload].items()}
        if classes[workload].share > 0 and not mix:
            raise ScenarioError(f"{path.name}: class {workload} has a share but no model")
        models[workload] = mix
    diurnal = tuple(float(x) for x in data.get("diurnal", [1.0] * 24))
    if len(diurnal) != 24:
        raise ScenarioError(f"{path.name}: diurnal needs 24 hourly factors")
    return Scenario(
        name=str(data.get("name", path.stem)),
        tenants=tuple(tenants),
        classes=classes,
        models=models,
        diurnal=diurnal,
        default_start_utc_hour=float(data.get("default_start_utc_hour", 12.0)),
        rate_scale=int(data.get("rate_scale", 1)),
    )


def fleet_load(path: Path) -> Fleet:
    data = _load(path)
    regions = {str(code): tuple(str(a) for a in classes) for code, classes in data["regions"].items()}
    unknown = set(regions) - set(REGION_CODES)
    if unknown:
        raise ScenarioError(f"{path.name}: unknown regions {', '.join(sorted(unknown))}")
    cost = data.get("cost", {})
    basis = cost.get("basis", "cloud")
    if basis not in ("cloud", "owned"):
        raise ScenarioError(f"{path.name}: cost basis must be cloud or owned")
    unpriced = cost.get("unpriced_usd_per_hour")
    owned = {
        slug: OwnedDevice(purchase_usd=Decimal(str(v["purchase_usd"])), amortisation_years=Decimal(str(v["years"])))
        for slug, v in cost.get("owned", {}).items()
    }
    energy_raw = cost.get("owned_energy")
    energy = (
        None
        if energy_raw is None
        else OwnedEnergy(
            usd_per_kwh=Decimal(str(energy_raw["usd_per_kwh"])),
            pue=Decimal(str(energy_raw["pue"])),
            power_share_of_tdp=Decimal(str(energy_raw["power_share_of_tdp"])),
        )
    )
    fleet = Fleet(
        name=str(data.get("name", path.stem)),
        regions=regions,
        window_s=int(data["window_s"]),
        provision_delay_s=int(data["provision_delay_s"]),
        billing_unit_s=int(data["billing_unit_s"]),
        memory_reserve=float(data["memory_reserve"]),
        kv_context_tokens=int(data["kv_context_tokens"]),
        max_batch=int(data["max_batch"]),
        instance_sizes=tuple(int(x) for x in data["instance_sizes"]),
        target_utilisation=float(data["target_utilisation"]),
        idle_power_share=float(data["idle_power_share"]),
        cost_basis=basis,
        unpriced_usd_per_hour=None if unpriced is None else Decimal(str(unpriced)),
        owned=owned,
        owned_energy=energy,
        models={
            name: ModelFacts(kv_bytes_per_token=int(v["kv_bytes_per_token"]), source=str(v.get("source", "")))
            for name, v in data["models"].items()
        },
    )
    if fleet.provision_delay_s < 60 or fleet.billing_unit_s < 60:
        raise ScenarioError(f"{path.name}: provisioning delay and billing unit must be at least 60 s")
    if not 0 < fleet.target_utilisation <= 1:
        raise ScenarioError(f"{path.name}: target_utilisation must be in (0, 1]")
    return fleet
