"""The three policies' fleet planners: how many instances each pool has in each window.

- ``StaticPlanner``: for each region and model, one always-on pool of the single accelerator class that
  is cheapest at the trace's peak while meeting the latency targets, sized for that peak at the fleet's
  target utilisation. Requests are served from their tenant's home region. It knows the whole trace's
  peak in advance, which makes it a strong baseline.
- ``DynamicPlanner``: it starts warm, as a system that had been running would: its first fleet is
  planned from the first ``history`` windows' demand, and it keeps one instance for every group the
  previous ``keep_warm`` windows would have shown it (taken from the trace's first ones). Then, at each
  window boundary, it forecasts each group's demand as the largest of its last ``history`` windows (no
  knowledge of the future) and packs the forecast onto the cheapest set of instances, choosing the
  accelerator classes and the regions each group's allowance permits: the same integer programme as the
  optimum's (optimal.py), at the fleet's target utilisation (batch, which may wait minutes, at
  ``batch_utilisation``). The programme knows the fleet it has: every instance beyond it costs
  ``change_cost_windows`` windows of its price on top, so it keeps what runs unless a change pays for
  itself (no flapping between classes). Scale-ups are ordered at once; where a model's fleet is changing
  (instances ordered or still provisioning), what the last plans had stays until the replacements are
  up; elsewhere the forecast's look-back is the scale-down hysteresis. Mixing classes and pooling across
  allowed regions can be switched off, to measure what each brings.
- ``OptimalPlanner`` (optimal.py): the same windows with perfect knowledge, solved exactly.

Work is measured in instance-seconds (``PoolSpec.work_s``): prompts hold the replica's compute, output
tokens hold a batch slot for a decode step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import highspy

from controlplane.scheduling.optimal import pack, solver_new
from controlplane.scheduling.policy import Workload
from controlplane.scheduling.pools import PoolSpec
from controlplane.scheduling.scenario import Fleet, Scenario
from controlplane.scheduling.simulator import Demand, GroupKey, SimRequest, Simulation, demand_by_window

KEEP_WARM_DEMAND_S = 1e-6
"""Instance-seconds per second a recently active group is planned with when it sent nothing in the
last windows: enough to keep one instance of a feasible pool up for it."""


def _instances(need: float, utilisation: float) -> int:
    return 0 if need <= 0 else max(1, math.ceil(need / utilisation - 1e-9))


@dataclass(frozen=True, slots=True)
class StaticChoice:
    region: str
    model: str
    pool: PoolSpec
    instances: int
    peak_work: float
    """Instance-seconds per second in the trace's busiest window."""


def static_plan(
    *,
    requests: Sequence[SimRequest],
    scenario: Scenario,
    fleet: Fleet,
    pools: Sequence[PoolSpec],
) -> list[StaticChoice]:
    """One pool per (home region, model) with demand: the class and size that cost least at the peak."""
    windows = demand_by_window(
        requests,
        window_s=fleet.window_s,
        regions_of=lambda r: frozenset({scenario.tenants[r.tenant].home}),
    )
    pairs: dict[tuple[str, str], set[Workload]] = {}
    for groups in windows.values():
        for regions, model, workload in groups:
            (region,) = regions
            pairs.setdefault((region, model), set()).add(workload)
    choices: list[StaticChoice] = []
    for (region, model), workloads in sorted(pairs.items()):
        options = [
            p
            for p in pools
            if p.region == region and p.model == model and all(p.serves(w, scenario.classes[w]) for w in workloads)
        ]
        if not options:
            raise ValueError(f"no accelerator class in {region} serves {model} for {', '.join(sorted(workloads))}")
        best: StaticChoice | None = None
        for pool in options:
            peak = 0.0
            for groups in windows.values():
                work = sum(
                    pool.work_s(d.input_tokens, d.output_tokens)
                    for (regions, m, _), d in groups.items()
                    if m == model and region in regions
                )
                peak = max(peak, work / fleet.window_s)
            count = max(1, _instances(peak, fleet.target_utilisation))
            candidate = StaticChoice(region=region, model=model, pool=pool, instances=count, peak_work=peak)
            if best is None or (count * pool.usd_per_hour, count, pool.index) < (
                best.instances * best.pool.usd_per_hour,
                best.instances,
                best.pool.index,
            ):
                best = candidate
        if best is not None:
            choices.append(best)
    return choices


class StaticPlanner:
    lead_s = 0.0

    def __init__(self, choices: Sequence[StaticChoice]) -> None:
        self.choices = tuple(choices)
        self.targets = {c.pool.index: c.instances for c in choices}

    def plan(self, sim: Simulation, window: int) -> Mapping[int, int]:
        return self.targets


class DynamicPlanner:
    lead_s = 0.0

    def __init__(
        self,
        *,
        first_window: Mapping[GroupKey, Demand],
        warm_groups: frozenset[GroupKey] = frozenset(),
        mix_accelerators: bool = True,
        static_types: Mapping[tuple[str, str], str] | None = None,
        history: int = 3,
        keep_warm: int = 60,
        utilisation: float | None = None,
        batch_utilisation: float = 1.0,
        change_cost_windows: float = 1.0,
        time_limit_s: float = 2.0,
        rel_gap: float = 1e-3,
    ) -> None:
        self.first_window = dict(first_window)
        self.warm_groups = warm_groups
        self.mix_accelerators = mix_accelerators
        self.static_types = dict(static_types or {})
        if not mix_accelerators and not self.static_types:
            raise ValueError("without mixing, each region and model needs its static class")
        self.history = history
        self.keep_warm = keep_warm
        self.utilisation = utilisation
        self.batch_utilisation = batch_utilisation
        self.change_cost_windows = change_cost_windows
        self.recent: list[Mapping[int, int]] = []
        self.time_limit_s = time_limit_s
        self.rel_gap = rel_gap
        self._highs: highspy.Highs | None = None

    def forecast(self, sim: Simulation, window: int) -> dict[GroupKey, Demand]:
        forecast: dict[GroupKey, Demand] = {}
        if window < self.keep_warm:
            forecast.update((key, Demand()) for key in self.warm_groups)
        if window == 0:
            for key, d in self.first_window.items():
                forecast[key] = Demand(d.count, d.input_tokens, d.output_tokens)
            return forecast
        for past in range(max(0, window - self.keep_warm), window):
            recent = past >= window - self.history
            for key, d in sim.window_demand.get(past, {}).items():
                seen = forecast.setdefault(key, Demand())
                if recent:
                    seen.count = max(seen.count, d.count)
                    seen.input_tokens = max(seen.input_tokens, d.input_tokens)
                    seen.output_tokens = max(seen.output_tokens, d.output_tokens)
        return forecast

    def options(self, sim: Simulation, key: GroupKey) -> list[PoolSpec]:
        regions, model, workload = key
        feasible = sim.feasible(regions, model, workload)
        if self.mix_accelerators:
            return feasible
        same = [p for p in feasible if self.static_types.get((p.region, p.model)) == p.accelerator]
        return same or feasible

    def plan(self, sim: Simulation, window: int) -> Mapping[int, int]:
        fleet = sim.fleet
        now = window * fleet.window_s
        if self._highs is None:
            self._highs = solver_new(self.time_limit_s, rel_gap=self.rel_gap)
        target = fleet.target_utilisation if self.utilisation is None else self.utilisation
        current: dict[int, int] = {}
        provisioning: set[str] = set()
        for pool in sim.pools:
            active = sim.active(pool)
            if active:
                current[pool.index] = len(active)
                if any(i.ready_at > now for i in active):
                    provisioning.add(pool.model)

        def utilisation(key: GroupKey) -> float:
            # batch may wait (minutes): its work can fill an instance; the others keep headroom
            return self.batch_utilisation if key[2] == "batch" else target

        solution = pack(
            self._highs,
            sim=sim,
            groups=self.forecast(sim, window),
            utilisation=utilisation,
            options=lambda key: self.options(sim, key),
            current=current if window > 0 else None,
            start_cost=self.change_cost_windows,
        )
        planned = solution.instances
        # Scale up at once. Where a model's fleet is changing (instances ordered now or still coming
        # up), what it had in the last windows stays until the replacements are up, so that capacity
        # is never let go before its replacement serves; elsewhere the forecast (the largest of the
        # last windows) is the hysteresis.
        changing = provisioning | {sim.pools[i].model for i, n in planned.items() if n > current.get(i, 0)}
        self.recent.append(planned)
        hold = 1 + math.ceil(fleet.provision_delay_s / fleet.window_s)
        del self.recent[:-hold]
        kept: dict[int, int] = dict(planned)
        for past in self.recent:
            for index, count in past.items():
                if sim.pools[index].model in changing:
                    kept[index] = max(kept.get(index, 0), count)
        return kept
