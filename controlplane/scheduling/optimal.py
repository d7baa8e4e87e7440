"""The offline optimum: with perfect knowledge of every window's demand, the cheapest fleet that has the
capacity for it, by integer programming with HiGHS (``highspy``).

For each window, separately (nothing couples windows once provisioning takes no time):

    minimise   sum_p  n_p * price_p * window / 3600
    subject to sum_p x_gp = 1                          for every demand group g
               sum_g x_gp * work_gp <= n_p             for every pool p
               0 <= x_gp <= 1,  x_gp = 0 where p cannot serve g (region outside g's allowance,
               class without the model or too slow for g's class),  n_p integer >= 0

``work_gp`` is group g's instance-seconds per second on pool p (``PoolSpec.work_s``). The bound leaves
out what any online policy pays for: provisioning time, whole billing units, queueing headroom (an
instance may be planned 100 % busy) and waiting for the next window. It is therefore a lower bound on the
cost of serving the demand under the same performance model, not a schedule that meets the SLO; when
HiGHS stops at its time limit the reported bound is its proven dual bound (still a lower bound). The
planner also executes the integer solution (instances ordered ``provision_delay_s`` ahead), which the
simulation reports as the plan's SLO attainment.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

import highspy
import numpy as np

from controlplane.scheduling.pools import PoolSpec
from controlplane.scheduling.simulator import Demand, GroupKey, Simulation

_SECONDS_PER_HOUR = Decimal(3600)
MIN_WORK = 1e-6
"""Work a group with no tokens is planned with, so that it still gets an instance it can use."""


def solver_new(time_limit_s: float) -> highspy.Highs:
    """A quiet HiGHS instance. Its constructor prints a banner to the process's standard output (in C,
    past Python's sys.stdout), which would corrupt a JSON report on stdout: it goes to stderr instead."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        highs = highspy.Highs()  # type: ignore[no-untyped-call]  # highspy leaves its constructor unannotated
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    highs.setOptionValue("output_flag", False)
    highs.setOptionValue("time_limit", time_limit_s)
    highs.setOptionValue("mip_rel_gap", 1e-6)
    return highs


@dataclass(slots=True)
class WindowSolution:
    instances: dict[int, int]
    bound_usd: Decimal
    optimal: bool


@dataclass(slots=True)
class OptimalPlanner:
    windows: Mapping[int, Mapping[GroupKey, Demand]]
    time_limit_s: float = 10.0
    lead_s: float = 0.0
    solutions: dict[int, WindowSolution] = field(default_factory=dict)
    _highs: highspy.Highs | None = None

    def _solver(self) -> highspy.Highs:
        if self._highs is None:
            self._highs = solver_new(self.time_limit_s)
        return self._highs

    def solve(self, sim: Simulation, window: int) -> WindowSolution:
        return pack(
            self._solver(),
            sim=sim,
            groups=self.windows.get(window, {}),
            utilisation=1.0,
            options=lambda key: sim.feasible(*key),
        )

    def plan(self, sim: Simulation, window: int) -> Mapping[int, int]:
        if window not in self.solutions:
            self.solutions[window] = self.solve(sim, window)
        return self.solutions[window].instances

    def bound_usd(self) -> Decimal:
        return sum((s.bound_usd for s in self.solutions.values()), Decimal(0))

    def all_optimal(self) -> bool:
        return all(s.optimal for s in self.solutions.values())


def pack(
    highs: highspy.Highs,
    *,
    sim: Simulation,
    groups: Mapping[GroupKey, Demand],
    utilisation: float,
    options: Callable[[GroupKey], Sequence[PoolSpec]],
) -> WindowSolution:
    """The cheapest integer instance counts for one window's demand groups, each pool at most
    ``utilisation`` busy (the integer programme in the module docstring)."""
    fleet = sim.fleet
    columns: list[tuple[int, PoolSpec, float]] = []  # (group number, pool, work)
    used: dict[int, PoolSpec] = {}
    ordered = sorted(groups.items(), key=lambda kv: (sorted(kv[0][0]), kv[0][1], kv[0][2]))
    for g, (key, demand) in enumerate(ordered):
        choices = options(key)
        if not choices:
            raise ValueError(f"no pool can serve {key[1]} for {key[2]} in {', '.join(sorted(key[0]))}")
        for pool in choices:
            work = max(pool.work_s(demand.input_tokens, demand.output_tokens) / fleet.window_s, MIN_WORK)
            columns.append((g, pool, work))
            used[pool.index] = pool
    if not columns:
        return WindowSolution(instances={}, bound_usd=Decimal(0), optimal=True)
    highs.clearModel()
    pools = sorted(used)
    n_col = {index: i for i, index in enumerate(pools)}
    empty_i, empty_f = np.array([], dtype=np.int32), np.array([], dtype=np.float64)
    for index in pools:
        highs.addCol(
            float(used[index].usd_per_hour) * fleet.window_s / 3600, 0.0, highspy.kHighsInf, 0, empty_i, empty_f
        )
    offset = len(pools)
    for _ in columns:
        highs.addCol(0.0, 0.0, 1.0, 0, empty_i, empty_f)
    members: dict[int, list[int]] = {}
    for c, (g, _, _) in enumerate(columns):
        members.setdefault(g, []).append(offset + c)
    for idx in members.values():
        highs.addRow(1.0, 1.0, len(idx), np.array(idx, dtype=np.int32), np.ones(len(idx)))
    rows: dict[int, tuple[list[int], list[float]]] = {index: ([n_col[index]], [-utilisation]) for index in pools}
    for c, (_, pool, work) in enumerate(columns):
        rows[pool.index][0].append(offset + c)
        rows[pool.index][1].append(work)
    for idx, val in rows.values():
        highs.addRow(-highspy.kHighsInf, 0.0, len(idx), np.array(idx, dtype=np.int32), np.array(val))
    highs.changeColsIntegrality(
        len(pools), np.arange(len(pools), dtype=np.int32), np.array([highspy.HighsVarType.kInteger] * len(pools))
    )
    highs.run()
    status = highs.getModelStatus()
    info = highs.getInfo()
    values = highs.getSolution().col_value
    instances = {index: round(values[n_col[index]]) for index in pools if round(values[n_col[index]]) > 0}
    optimal = status == highspy.HighsModelStatus.kOptimal
    if optimal:
        bound = sum(
            (Decimal(count) * used[index].usd_per_hour * fleet.window_s / _SECONDS_PER_HOUR
             for index, count in instances.items()),
            Decimal(0),
        )  # fmt: skip
    elif status == highspy.HighsModelStatus.kTimeLimit and math.isfinite(info.mip_dual_bound) and instances:
        bound = Decimal(repr(info.mip_dual_bound))
    else:
        raise RuntimeError(f"HiGHS could not solve a window: {highs.modelStatusToString(status)}")
    return WindowSolution(instances=instances, bound_usd=bound, optimal=optimal)
