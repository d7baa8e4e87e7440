"""One simulator run from files to its report: load the trace, scenario, fleet, hardware and catalog,
build the pools, generate the tenants' requests, run the chosen policy, and summarise.

No ORM: the command (``manage.py simulate``) resolves paths and calls ``simulation_run``.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, get_args

import controlplane.fleet
from controlplane.scheduling.calibration import calibrate
from controlplane.scheduling.costs import cost_table
from controlplane.scheduling.optimal import OptimalPlanner, coupled_bound
from controlplane.scheduling.planners import DynamicPlanner, StaticPlanner, static_plan
from controlplane.scheduling.pools import catalog_read, hardware_read, pools_build
from controlplane.scheduling.scenario import DEFAULT_FLEET, DEFAULT_SCENARIO, fleet_load, scenario_load
from controlplane.scheduling.simulator import (
    Demand,
    GroupKey,
    Planner,
    Simulation,
    demand_by_window,
    placement_config,
    requests_generate,
    requests_prepare,
)
from controlplane.scheduling.traces import TimeUnit, trace_load

Policy = Literal["static", "dynamic", "optimal"]
POLICIES: tuple[Policy, ...] = get_args(Policy)
Mechanism = Literal["mix", "pool"]
MECHANISMS: tuple[Mechanism, ...] = get_args(Mechanism)

FLEET_DATA = Path(controlplane.fleet.__file__).resolve().parent / "data"
HARDWARE_FILE = FLEET_DATA / "hardware.json"
CATALOG_FILE = FLEET_DATA / "catalog.json"
_SECONDS_PER_HOUR = Decimal(3600)


@dataclass(frozen=True, slots=True)
class RunSpec:
    trace: Path
    policy: Policy
    scenario: Path = DEFAULT_SCENARIO
    fleet: Path = DEFAULT_FLEET
    seed: int = 0
    columns: dict[str, str] | None = None
    time_unit: TimeUnit | None = None
    start_s: float = 0.0
    duration_s: float | None = None
    exclude_unpriced: bool = False
    """Leave out accelerator classes without a published price instead of assuming one."""
    mechanisms: frozenset[Mechanism] = frozenset(MECHANISMS)
    """For ``dynamic``: mixing accelerator classes, pooling across allowed regions."""
    hardware: Path = HARDWARE_FILE
    catalog: Path = CATALOG_FILE
    optimal_time_limit_s: float = 10.0
    coupled_time_limit_s: float | None = 60.0
    """For ``optimal``: also bound all windows at once with provisioning paid (None: skip it)."""
    rate_scale: int | None = None
    """Overrides the scenario's ``rate_scale``: each trace request stands for this many."""


@dataclass(frozen=True, slots=True)
class RunResult:
    report: dict[str, Any]
    simulation: Simulation
    planner: Planner


def _money(value: Decimal) -> float:
    return float(value.quantize(Decimal("0.000001")))


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def simulation_run(spec: RunSpec, *, progress: Callable[[int], None] | None = None) -> RunResult:
    if spec.policy not in POLICIES:
        raise ValueError(f"unknown policy {spec.policy!r}; known: {', '.join(POLICIES)}")
    trace = trace_load(
        spec.trace, columns=spec.columns, time_unit=spec.time_unit, start_s=spec.start_s, duration_s=spec.duration_s
    )
    scenario = scenario_load(spec.scenario)
    if spec.rate_scale is not None:
        if spec.rate_scale < 1:
            raise ValueError("the rate scale is a whole number of at least 1")
        scenario = replace(scenario, rate_scale=spec.rate_scale)
    fleet = fleet_load(spec.fleet)
    hardware = hardware_read(spec.hardware)
    catalog = catalog_read(spec.catalog)
    unpriced = None if spec.exclude_unpriced else fleet.unpriced_usd_per_hour
    costs = cost_table(
        hardware,
        basis=fleet.cost_basis,
        owned=fleet.owned,
        energy=fleet.owned_energy,
        unpriced_usd_per_hour=unpriced,
    )
    utilisation = calibrate(hardware)
    served = sorted(fleet.models)
    missing = {m for mix in scenario.models.values() for m in mix} - set(served)
    if missing:
        raise ValueError(f"the fleet file has no facts for the scenario's models {', '.join(sorted(missing))}")
    pools = pools_build(
        fleet=fleet, hardware=hardware, catalog=catalog, costs=costs, utilisation=utilisation, models=served
    )
    generated = requests_generate(trace, scenario, seed=spec.seed)
    prepared = requests_prepare(generated, scenario=scenario, catalog=catalog, served_models=served)
    config = placement_config(scenario, unpriced_usd_per_hour=unpriced)
    choices = static_plan(requests=prepared.admitted, scenario=scenario, fleet=fleet, pools=pools)

    pool_regions = spec.policy == "optimal" or (spec.policy == "dynamic" and "pool" in spec.mechanisms)

    def regions_of(request: Any) -> frozenset[str]:
        tenant = scenario.tenants[request.tenant]
        return tenant.allowed_regions if pool_regions else frozenset({tenant.home})

    planner: Planner
    if spec.policy == "static":
        planner = StaticPlanner(choices)
    elif spec.policy == "dynamic":
        by_window = demand_by_window(prepared.admitted, window_s=fleet.window_s, regions_of=regions_of)
        history, keep_warm = 3, 60
        first: dict[GroupKey, Demand] = {}
        for k in range(history):
            for key, d in by_window.get(k, {}).items():
                seen = first.setdefault(key, Demand())
                seen.count = max(seen.count, d.count)
                seen.input_tokens = max(seen.input_tokens, d.input_tokens)
                seen.output_tokens = max(seen.output_tokens, d.output_tokens)
        planner = DynamicPlanner(
            first_window=first,
            warm_groups=frozenset(key for k in range(keep_warm) for key in by_window.get(k, {})),
            history=history,
            keep_warm=keep_warm,
            mix_accelerators="mix" in spec.mechanisms,
            static_types={(c.region, c.model): c.pool.accelerator for c in choices},
        )
    else:
        planner = OptimalPlanner(
            windows=demand_by_window(prepared.admitted, window_s=fleet.window_s, regions_of=regions_of),
            time_limit_s=spec.optimal_time_limit_s,
            lead_s=float(fleet.provision_delay_s),
        )
    simulation = Simulation(
        requests=prepared,
        scenario=scenario,
        fleet=fleet,
        pools=pools,
        catalog=catalog,
        config=config,
        planner=planner,
        pool_regions=pool_regions,
    )
    wall_s = simulation.run(progress=progress)
    report = report_build(
        simulation,
        spec=spec,
        trace_name=trace.name,
        scenario_name=scenario.name,
        fleet_name=fleet.name,
        wall_s=wall_s,
        trace_requests=len(trace.requests),
        unpriced=unpriced,
        assumed=sorted(slug for slug, c in costs.items() if c.basis == "assumed"),
    )
    if isinstance(planner, OptimalPlanner):
        report["executed_cost_usd"] = report["total_cost_usd"]
        report["total_cost_usd"] = _money(planner.bound_usd())
        report["optimal"] = {
            "kind": "integer programme (HiGHS), one per window",
            "bound": "proven optimum"
            if planner.all_optimal()
            else "HiGHS dual bound (some windows stopped within the 0.01 % gap or at the time limit)",
            "windows": len(planner.solutions),
            "note": "total_cost_usd is the lower bound; executed_cost_usd is the simulated fleet that "
            "follows the integer solution, instances ordered ahead, billed in whole units",
        }
        if spec.coupled_time_limit_s is not None:
            coupled = coupled_bound(simulation, planner.windows, time_limit_s=spec.coupled_time_limit_s)
            report["provisioned_bound_usd"] = _money(coupled.bound_usd)
            report["optimal"]["provisioned"] = {
                "kind": "one integer programme over all windows, each instance started after the first "
                "window paying its provisioning time (HiGHS)",
                "bound": "proven optimum (0.01 % gap)" if coupled.optimal else "HiGHS dual bound (time limit reached)",
                "best_plan_usd": None if coupled.solution_usd is None else _money(coupled.solution_usd),
                "wall_s": round(coupled.seconds, 3),
            }
    if isinstance(planner, StaticPlanner):
        report["static_pools"] = [
            {"region": c.region, "model": c.model, "accelerator": c.pool.accelerator, "instances": c.instances}
            for c in planner.choices
        ]
    return RunResult(report=report, simulation=simulation, planner=planner)


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def report_build(
    sim: Simulation,
    *,
    spec: RunSpec,
    trace_name: str,
    scenario_name: str,
    fleet_name: str,
    wall_s: float,
    trace_requests: int,
    unpriced: Decimal | None,
    assumed: Iterable[str],
) -> dict[str, Any]:
    outcome = sim.outcome
    fleet = sim.fleet
    window = fleet.window_s
    total = Decimal(0)
    energy_kwh = 0.0
    region_cost: dict[str, Decimal] = defaultdict(Decimal)
    region_hours: dict[str, float] = defaultdict(float)
    accel_cost: dict[str, Decimal] = defaultdict(Decimal)
    accel_device_hours: dict[str, float] = defaultdict(float)
    accel_alive_slot_s: dict[str, float] = defaultdict(float)
    accel_busy_slot_s: dict[str, float] = defaultdict(float)
    horizon = max((i.released_at or 0.0) for i in sim.instances) if sim.instances else 0.0
    windows = max(1, math.ceil(horizon / window))
    cost_series = [Decimal(0)] * windows
    alive_series: dict[str, list[float]] = defaultdict(lambda: [0.0] * windows)
    for instance in sim.instances:
        released = instance.released_at
        if released is None:
            raise AssertionError("every instance is released when the run ends")
        pool = instance.pool
        billed_s = Decimal(round(released - instance.requested_at))
        cost = pool.usd_per_hour * billed_s / _SECONDS_PER_HOUR
        total += cost
        region_cost[pool.region] += cost
        accel_cost[pool.accelerator] += cost
        hours = float(billed_s) / 3600
        region_hours[pool.region] += hours
        accel_device_hours[pool.accelerator] += hours * pool.devices
        alive_s = max(0.0, released - instance.ready_at)
        accel_alive_slot_s[pool.accelerator] += alive_s * pool.slots
        accel_busy_slot_s[pool.accelerator] += instance.busy_slot_s
        busy_share = min(1.0, instance.busy_slot_s / (pool.slots * alive_s)) if alive_s > 0 else 0.0
        power_w = pool.watts * (fleet.idle_power_share + (1 - fleet.idle_power_share) * busy_share)
        energy_kwh += power_w * float(billed_s) / 3.6e6
        first, last = int(instance.requested_at // window), min(windows - 1, int(released // window))
        for k in range(first, last + 1):
            paid = _overlap(instance.requested_at, released, k * window, (k + 1) * window)
            cost_series[k] += pool.usd_per_hour * Decimal(repr(paid)) / _SECONDS_PER_HOUR
            alive_series[pool.accelerator][k] += (
                _overlap(instance.ready_at, released, k * window, (k + 1) * window) * pool.slots
            )
    per_class: dict[str, Any] = {}
    for workload, stats in sorted(outcome.per_class.items()):
        per_class[workload] = {
            "requests": stats.requests,
            "slo_attainment": stats.attained / stats.requests if stats.requests else None,
            "ttft_p50_s": _quantile(stats.ttfts, 0.5),
            "ttft_p99_s": _quantile(stats.ttfts, 0.99),
            "ttft_target_s": sim.scenario.classes[workload].ttft_s,  # type: ignore[index]  # keys are Workload values
            "tpot_target_s": sim.scenario.classes[workload].tpot_s,  # type: ignore[index]  # keys are Workload values
        }
    timeline = []
    for k in range(windows):
        utilisation = {
            slug: (outcome.busy_slot_s.get((k, slug), 0.0) / alive[k]) if alive[k] > 0 else None
            for slug, alive in sorted(alive_series.items())
        }
        timeline.append({"t_s": k * window, "cost_usd": _money(cost_series[k]), "utilisation": utilisation})
    return {
        "policy": spec.policy,
        "trace": trace_name,
        "scenario": scenario_name,
        "seed": spec.seed,
        "fleet": fleet_name,
        "mechanisms": sorted(spec.mechanisms) if spec.policy == "dynamic" else None,
        "total_cost_usd": _money(total),
        "energy_kwh": round(energy_kwh, 3),
        "slo_attainment": outcome.attained / outcome.served if outcome.served else None,
        "residency_violations": outcome.residency_violations,
        "quota_rejections": outcome.quota_rejections,
        "refused_context": outcome.refused_context,
        "rerouted_context": outcome.rerouted_context,
        "deferred": outcome.deferred,
        "unservable": outcome.unservable,
        "requests": trace_requests,
        "served": outcome.served,
        "accelerators_chosen": sorted(outcome.chosen_accelerators),
        "unpriced_usd_per_hour": None if unpriced is None else str(unpriced),
        "prices_assumed_for": sorted(assumed),
        "per_class": per_class,
        "per_region": {
            region: {
                "requests": outcome.requests_by_region.get(region, 0),
                "cost_usd": _money(region_cost[region]),
                "instance_hours": round(region_hours[region], 4),
            }
            for region in sorted(set(region_cost) | set(outcome.requests_by_region))
        },
        "per_accelerator": {
            slug: {
                "requests": outcome.requests_by_accelerator.get(slug, 0),
                "cost_usd": _money(accel_cost[slug]),
                "device_hours": round(accel_device_hours[slug], 4),
                "utilisation": accel_busy_slot_s[slug] / accel_alive_slot_s[slug] if accel_alive_slot_s[slug] else None,
            }
            for slug in sorted(set(accel_cost) | set(outcome.requests_by_accelerator))
        },
        "instances": len(sim.instances),
        "wall_s": round(wall_s, 3),
        "mean_ttft_s": statistics.fmean(t for s in outcome.per_class.values() for t in s.ttfts)
        if outcome.served
        else None,
        "timeline": timeline,
    }
