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


def solver_new(time_limit_s: float, *, rel_gap: float = 1e-6) -> highspy.Highs:
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
    highs.setOptionValue("mip_rel_gap", rel_gap)
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
    rel_gap: float = 1e-4
    lead_s: float = 0.0
    solutions: dict[int, WindowSolution] = field(default_factory=dict)
    _highs: highspy.Highs | None = None

    def _solver(self) -> highspy.Highs:
        if self._highs is None:
            self._highs = solver_new(self.time_limit_s, rel_gap=self.rel_gap)
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
    utilisation: float | Callable[[GroupKey], float],
    options: Callable[[GroupKey], Sequence[PoolSpec]],
    current: Mapping[int, int] | None = None,
    start_cost: float = 0.0,
) -> WindowSolution:
    """The cheapest integer instance counts for one window's demand groups, each pool at most
    ``utilisation`` busy (the integer programme in the module docstring; a callable gives each group
    its own: its work counts as work / utilisation).

    With ``current`` (instances each pool has now), every instance beyond them costs ``start_cost``
    windows of its price on top: an online planner's price for changing its fleet (the new instance is
    billed while it provisions), which makes it keep what it has unless a change pays for itself."""
    fleet = sim.fleet
    share: Callable[[GroupKey], float] | None = None
    cap = 1.0
    if callable(utilisation):
        share = utilisation
    else:
        cap = utilisation
    columns: list[tuple[int, PoolSpec, float]] = []  # (group number, pool, work)
    used: dict[int, PoolSpec] = {}
    ordered = sorted(groups.items(), key=lambda kv: (sorted(kv[0][0]), kv[0][1], kv[0][2]))
    for g, (key, demand) in enumerate(ordered):
        choices = options(key)
        if not choices:
            raise ValueError(f"no pool can serve {key[1]} for {key[2]} in {', '.join(sorted(key[0]))}")
        scale = 1.0 if share is None else 1.0 / share(key)
        for pool in choices:
            work = max(pool.work_s(demand.input_tokens, demand.output_tokens) / fleet.window_s, MIN_WORK) * scale
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
    starts = [index for index in pools if current is not None and start_cost > 0]
    for index in starts:
        # s_p >= n_p - current_p: the instances this window starts
        highs.addCol(
            float(used[index].usd_per_hour) * fleet.window_s / 3600 * start_cost,
            0.0, highspy.kHighsInf, 0, empty_i, empty_f,
        )  # fmt: skip
    offset = len(pools) + len(starts)
    for _ in columns:
        highs.addCol(0.0, 0.0, 1.0, 0, empty_i, empty_f)
    members: dict[int, list[int]] = {}
    for c, (g, _, _) in enumerate(columns):
        members.setdefault(g, []).append(offset + c)
    for idx in members.values():
        highs.addRow(1.0, 1.0, len(idx), np.array(idx, dtype=np.int32), np.ones(len(idx)))
    for j, index in enumerate(starts):
        have = float((current or {}).get(index, 0))
        highs.addRow(
            -highspy.kHighsInf, have, 2, np.array([n_col[index], len(pools) + j], dtype=np.int32), np.array([1.0, -1.0])
        )
    rows: dict[int, tuple[list[int], list[float]]] = {index: ([n_col[index]], [-cap]) for index in pools}
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
    optimal = status == highspy.HighsModelStatus.kOptimal and info.mip_gap <= 1e-6
    if optimal:
        bound = sum(
            (Decimal(count) * used[index].usd_per_hour * fleet.window_s / _SECONDS_PER_HOUR
             for index, count in instances.items()),
            Decimal(0),
        )  # fmt: skip
    elif (
        status in (highspy.HighsModelStatus.kOptimal, highspy.HighsModelStatus.kTimeLimit)
        and math.isfinite(info.mip_dual_bound)
        and instances
    ):
        # stopped within the gap or at the time limit: HiGHS's proven dual bound is still a lower bound
        bound = Decimal(repr(info.mip_dual_bound))
    else:
        raise RuntimeError(f"HiGHS could not solve a window: {highs.modelStatusToString(status)}")
    return WindowSolution(instances=instances, bound_usd=bound, optimal=optimal)


@dataclass(frozen=True, slots=True)
class CoupledBound:
    bound_usd: Decimal
    """HiGHS's proven dual bound: a lower bound whether or not the search finished."""
    solution_usd: Decimal | None
    """The best integer plan found (an upper bound on this programme's optimum), if any."""
    optimal: bool
    seconds: float


def coupled_bound(
    sim: Simulation,
    windows: Mapping[int, Mapping[GroupKey, Demand]],
    *,
    time_limit_s: float,
    rel_gap: float = 1e-4,
) -> CoupledBound:
    """The per-window programme over every window at once, with perfect knowledge, where (as in the
    simulation, for every policy) an instance serves only once it has been provisioning for
    ``provision_delay_s``, billed meanwhile: each instance started after the first window costs that
    many seconds of its price on top. Instances up in the first window cost no start (every policy
    starts warm). Still no billing rounding, no queueing, 100 % utilisation and work served in the
    window it arrives: a lower bound on any policy's cost under the window model, tighter than the sum
    of the separate windows' optima (which may switch an instance off for a single quiet window and
    have it back, serving, the next)::

        minimise   sum_k sum_p price_p * (n_pk + start_s * s_pk)
        subject to sum_p x_gpk = 1,   sum_g x_gpk * work_gpk <= n_pk,   s_pk >= n_pk - n_p(k-1)  (k > 0)
    """
    import time

    fleet = sim.fleet
    began = time.perf_counter()
    ks = sorted(windows)
    if not ks:
        return CoupledBound(Decimal(0), Decimal(0), True, 0.0)
    per_window = float(fleet.window_s) / 3600
    start_windows = fleet.provision_delay_s / fleet.window_s
    groups_k: list[list[tuple[GroupKey, Demand, list[PoolSpec]]]] = []
    pools: dict[int, PoolSpec] = {}
    for k in ks:
        entries = []
        for key, demand in sorted(windows[k].items(), key=lambda kv: (sorted(kv[0][0]), kv[0][1], kv[0][2])):
            options = sim.feasible(*key)
            if not options:
                raise ValueError(f"no pool can serve {key[1]} for {key[2]} in {', '.join(sorted(key[0]))}")
            entries.append((key, demand, options))
            pools.update((p.index, p) for p in options)
        groups_k.append(entries)
    order = sorted(pools)
    first, last = ks[0], ks[-1]
    span = list(range(first, last + 1))
    # columns: n_pk for every pool and window, s_pk for k > first, then the x_gpk
    n_col = {(index, k): i for i, (k, index) in enumerate((k, index) for k in span for index in order)}
    costs: list[float] = [float(pools[index].usd_per_hour) * per_window for k in span for index in order]
    s_col: dict[tuple[int, int], int] = {}
    for k in span[1:]:
        for index in order:
            s_col[(index, k)] = len(costs)
            costs.append(float(pools[index].usd_per_hour) * per_window * start_windows)
    x_cols: list[tuple[int, int, int, float]] = []  # (column, k, pool index, work)
    assign_rows: list[list[int]] = []
    by_k = dict(zip(ks, groups_k, strict=True))
    for k in span:
        for _, demand, options in by_k.get(k, []):
            row = []
            for pool in options:
                work = max(pool.work_s(demand.input_tokens, demand.output_tokens) / fleet.window_s, MIN_WORK)
                x_cols.append((len(costs), k, pool.index, work))
                row.append(len(costs))
                costs.append(0.0)
            assign_rows.append(row)
    n_total = len(costs)
    highs = solver_new(time_limit_s, rel_gap=rel_gap)
    lower = np.zeros(n_total)
    upper = np.full(n_total, highspy.kHighsInf)
    for column, *_ in x_cols:
        upper[column] = 1.0
    highs.addCols(n_total, np.array(costs), lower, upper, 0, np.array([], dtype=np.int32),
                  np.array([], dtype=np.int32), np.array([], dtype=np.float64))  # fmt: skip
    starts: list[int] = []
    indices: list[int] = []
    values: list[float] = []
    row_lo: list[float] = []
    row_hi: list[float] = []

    def add(cols: Sequence[int], vals: Sequence[float], lo: float, hi: float) -> None:
        starts.append(len(indices))
        indices.extend(cols)
        values.extend(vals)
        row_lo.append(lo)
        row_hi.append(hi)

    for row in assign_rows:
        add(row, [1.0] * len(row), 1.0, 1.0)
    capacity: dict[tuple[int, int], tuple[list[int], list[float]]] = {}
    for column, k, index, work in x_cols:
        entry = capacity.setdefault((index, k), ([n_col[(index, k)]], [-1.0]))
        entry[0].append(column)
        entry[1].append(work)
    for cols, vals in capacity.values():
        add(cols, vals, -highspy.kHighsInf, 0.0)
    for (index, k), column in s_col.items():
        # n_pk - n_p(k-1) - s_pk <= 0
        add([n_col[(index, k)], n_col[(index, k - 1)], column], [1.0, -1.0, -1.0], -highspy.kHighsInf, 0.0)
    highs.addRows(len(row_lo), np.array(row_lo), np.array(row_hi), len(indices), np.array(starts, dtype=np.int32),
                  np.array(indices, dtype=np.int32), np.array(values))  # fmt: skip
    integer = np.array(sorted(n_col.values()), dtype=np.int32)
    highs.changeColsIntegrality(len(integer), integer, np.array([highspy.HighsVarType.kInteger] * len(integer)))
    highs.run()
    status = highs.getModelStatus()
    info = highs.getInfo()
    if status not in (highspy.HighsModelStatus.kOptimal, highspy.HighsModelStatus.kTimeLimit):
        raise RuntimeError(f"HiGHS could not solve the coupled programme: {highs.modelStatusToString(status)}")
    if not math.isfinite(info.mip_dual_bound):
        raise RuntimeError("HiGHS found no bound for the coupled programme in its time limit")
    solution = Decimal(repr(info.objective_function_value)) if math.isfinite(info.objective_function_value) else None
    return CoupledBound(
        bound_usd=Decimal(repr(info.mip_dual_bound)),
        solution_usd=solution,
        optimal=status == highspy.HighsModelStatus.kOptimal,
        seconds=time.perf_counter() - began,
    )
