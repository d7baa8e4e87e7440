"""A discrete-event simulation of the multi-region fleet serving a request trace under one policy.

Every request goes through the live placement policy (``policy.place``) over the instances that are up
in its candidate regions; the policies differ only in which instances exist when (a ``Planner`` sets each
pool's instance count at every window boundary) and in the regions a request may use (``pool_regions``).

The model of an instance: ``slots`` batch slots, each a server in a first-come-first-served queue. A
request holds a slot for its prompt (prompt tokens / the replica's prefill rate) and then one decode
step per output token (the time per output token at a full batch). Its time to first token is its
wait plus its prompt time. Instances take ``provision_delay_s`` from request to ready and are billed
from request to release in whole ``billing_unit_s``; a drained instance stays (paid, idle) until its
billing unit ends and can be taken back until then.

The policy sees one host per pool: the instance it would choose among the pool's identical instances
(the fewest requests ahead of the new one beyond its free slots, then the lowest id), which gives the
same decision as showing it every instance (tests/simulator proves it on random states).
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Protocol

from controlplane.scheduling.policy import (
    HostState,
    PlacementConfig,
    PlacementRequest,
    Workload,
    WorkloadTargets,
    place,
)
from controlplane.scheduling.pools import CatalogEntry, PoolSpec
from controlplane.scheduling.scenario import Fleet, Scenario
from controlplane.scheduling.traces import Trace

_SECONDS_PER_HOUR = Decimal(3600)


# --- requests -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SimRequest:
    index: int
    t: float
    tenant: int
    """Index into the scenario's tenants."""
    workload: Workload
    model: str
    input_tokens: int
    output_tokens: int
    """0 for embeddings."""


def requests_generate(trace: Trace, scenario: Scenario, *, seed: int) -> list[SimRequest]:
    """Give each trace request a tenant (weight times the diurnal factor at the tenant's local hour), a
    workload class and a model (the scenario's shares), drawn with ``seed``."""
    rng = random.Random(seed)  # noqa: S311  # a reproducible simulation, not a secret
    start_hour = trace.start_utc_hour if trace.start_utc_hour is not None else scenario.default_start_utc_hour
    classes = list(scenario.classes)
    class_weights = [scenario.classes[c].share for c in classes]
    mixes = {c: (list(scenario.models[c]), list(scenario.models[c].values())) for c in classes}
    tenants = list(range(len(scenario.tenants)))
    requests: list[SimRequest] = []
    cached_hour = -1
    weights: list[float] = []
    for row in trace.requests:
        hour = int(start_hour + row.t / 3600)
        if hour != cached_hour:
            cached_hour = hour
            weights = [t.weight * scenario.diurnal[int(hour + t.utc_offset_h) % 24] for t in scenario.tenants]
        for copy in range(scenario.rate_scale):
            tenant = rng.choices(tenants, weights)[0]
            workload = rng.choices(classes, class_weights)[0]
            names, shares = mixes[workload]
            model = rng.choices(names, shares)[0]
            requests.append(
                SimRequest(
                    index=len(requests),
                    t=row.t + copy * 0.001,
                    tenant=tenant,
                    workload=workload,
                    model=model,
                    input_tokens=row.input_tokens,
                    output_tokens=0 if workload == "embedding" else row.output_tokens,
                )
            )
    return requests


def placement_config(scenario: Scenario, *, unpriced_usd_per_hour: Decimal | None) -> PlacementConfig:
    """The live policy's configuration with the scenario's latency targets (weights unchanged)."""
    base = PlacementConfig()

    def targets(workload: Workload) -> WorkloadTargets:
        own = scenario.classes[workload]
        return replace(base.targets(workload), ttft_target_s=own.ttft_s, tpot_target_s=own.tpot_s)

    return replace(
        base,
        interactive=targets("interactive"),
        batch=targets("batch"),
        embedding=targets("embedding"),
        unpriced_usd_per_hour=unpriced_usd_per_hour,
    )


@dataclass(frozen=True, slots=True)
class Prepared:
    """The requests that reach placement, after the tenants' quotas and the models' contexts."""

    admitted: tuple[SimRequest, ...]
    quota_rejections: int
    refused_context: int
    """Longer than the assigned model's context and than every catalog model's the fleet serves."""
    rerouted_context: int
    """Longer than the assigned model's context, sent to a catalog model that fits."""


def requests_prepare(
    requests: Sequence[SimRequest],
    *,
    scenario: Scenario,
    catalog: Mapping[str, CatalogEntry],
    served_models: Iterable[str],
) -> Prepared:
    """Apply each tenant's requests-per-minute quota (a sliding minute, the same for every policy) and
    move requests longer than their model's context to the smallest served catalog model that takes
    them (or refuse them: counted apart, outside the SLO figure)."""
    by_size = sorted(served_models, key=lambda name: catalog[name].spec.parameters)
    minute: dict[int, deque[float]] = defaultdict(deque)
    admitted: list[SimRequest] = []
    rejected = refused = rerouted = 0
    for request in requests:
        times = minute[request.tenant]
        while times and times[0] <= request.t - 60:
            times.popleft()
        if len(times) >= scenario.tenants[request.tenant].requests_per_minute:
            rejected += 1
            continue
        times.append(request.t)
        needed = request.input_tokens + request.output_tokens
        if needed > catalog[request.model].context_length:
            fallback = next(
                (
                    name
                    for name in by_size
                    if catalog[name].context_length >= needed
                    and (
                        catalog[name].supports_embeddings
                        if request.workload == "embedding"
                        else catalog[name].supports_chat
                    )
                ),
                None,
            )
            if fallback is None:
                refused += 1
                continue
            rerouted += 1
            request = replace(request, model=fallback)
        admitted.append(request)
    return Prepared(
        admitted=tuple(admitted), quota_rejections=rejected, refused_context=refused, rerouted_context=rerouted
    )


def _pool_key(host: HostState) -> tuple[object, ...]:
    """What makes hosts interchangeable to the policy: everything but identity and load."""
    return (
        host.region, host.country, host.accelerator, host.family, host.usd_per_hour, host.fits_memory,
        host.serves_model, host.live, host.draining, host.slots, host.perf,
    )  # fmt: skip


def representatives(hosts: Sequence[HostState]) -> list[HostState]:
    """One host per group of interchangeable hosts: the one the policy would prefer among them (the
    fewest requests ahead of a new one beyond its free slots, then the lowest id). Its score is the
    group's lowest and the policy breaks ties by id, so ``place`` decides the same over these as over
    all the hosts; the simulator relies on this to show the policy one host per pool."""
    best: dict[tuple[object, ...], HostState] = {}
    for host in hosts:
        key = _pool_key(host)
        current = best.get(key)
        rank = (max(0, host.running + host.queued + 1 - host.slots), host.host_id)
        if current is None or rank < (max(0, current.running + current.queued + 1 - current.slots), current.host_id):
            best[key] = host
    return sorted(best.values(), key=lambda h: h.host_id)


# --- instances ------------------------------------------------------------------------------------


class Instance:
    """One rented instance: its slots' free times, the starts still ahead and the finishes pending."""

    __slots__ = (
        "busy_slot_s",
        "draining",
        "finishes",
        "free",
        "id",
        "last_finish",
        "pool",
        "ready_at",
        "released_at",
        "requested_at",
        "served",
        "starts",
    )

    def __init__(self, *, instance_id: int, pool: PoolSpec, requested_at: float, ready_at: float) -> None:
        self.id = instance_id
        self.pool = pool
        self.requested_at = requested_at
        self.ready_at = ready_at
        self.draining = False
        self.released_at: float | None = None
        self.free = [ready_at] * pool.slots
        self.starts: deque[float] = deque()
        self.finishes: list[float] = []
        self.last_finish = ready_at
        self.busy_slot_s = 0.0
        self.served = 0

    def load(self, now: float) -> tuple[int, int]:
        """(running, queued) at ``now``."""
        starts, finishes = self.starts, self.finishes
        while starts and starts[0] <= now:
            starts.popleft()
        while finishes and finishes[0] <= now:
            heapq.heappop(finishes)
        queued = len(starts)
        return len(finishes) - queued, queued

    def earliest_start(self, now: float) -> float:
        return max(now, self.free[0])

    def assign(self, now: float, service_s: float) -> float:
        """Queue a request needing ``service_s`` of one slot; returns when it starts."""
        start = max(now, heapq.heappop(self.free))
        finish = start + service_s
        heapq.heappush(self.free, finish)
        if start > now:
            self.starts.append(start)
        heapq.heappush(self.finishes, finish)
        self.last_finish = max(self.last_finish, finish)
        self.busy_slot_s += service_s
        self.served += 1
        return start

    def paid_until(self, moment: float, unit_s: int) -> float:
        """The end of the billing unit that ``moment`` falls in (at least one unit)."""
        units = max(1, math.ceil((moment - self.requested_at) / unit_s - 1e-9))
        return self.requested_at + units * unit_s


# --- demand, as planners see it -------------------------------------------------------------------

GroupKey = tuple[frozenset[str], str, Workload]
"""(regions a request may use, model, workload class): requests that any pool can serve alike."""


@dataclass(slots=True)
class Demand:
    count: int = 0
    input_tokens: float = 0.0
    output_tokens: float = 0.0

    def add(self, other: Demand) -> None:
        self.count += other.count
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens


def demand_by_window(
    requests: Iterable[SimRequest], *, window_s: int, regions_of: Callable[[SimRequest], frozenset[str]]
) -> dict[int, dict[GroupKey, Demand]]:
    windows: dict[int, dict[GroupKey, Demand]] = defaultdict(dict)
    for r in requests:
        key = (regions_of(r), r.model, r.workload)
        bucket = windows[int(r.t // window_s)].setdefault(key, Demand())
        bucket.count += 1
        bucket.input_tokens += r.input_tokens
        bucket.output_tokens += r.output_tokens
    return windows


class Planner(Protocol):
    """Sets each pool's instance count. ``lead_s`` > 0 asks the simulation to order instances that much
    ahead of the window (perfect knowledge); 0 orders them at the boundary."""

    lead_s: float

    def plan(self, sim: Simulation, window: int) -> Mapping[int, int]: ...


# --- the simulation -------------------------------------------------------------------------------


@dataclass(slots=True)
class ClassStats:
    requests: int = 0
    attained: int = 0
    ttfts: list[float] = field(default_factory=list)


@dataclass(slots=True)
class Outcome:
    """What one run measured; ``report.py`` turns it into the JSON document."""

    served: int = 0
    attained: int = 0
    residency_violations: int = 0
    quota_rejections: int = 0
    refused_context: int = 0
    rerouted_context: int = 0
    unservable: int = 0
    """Requests no pool in their allowed regions can serve at all (none in the scenarios shipped)."""
    deferred: int = 0
    """Requests the policy could not place at arrival (no live instance, or every queue at its cap)
    that waited for an instance instead; their waits count in their time to first token."""
    per_class: dict[str, ClassStats] = field(default_factory=lambda: defaultdict(ClassStats))
    requests_by_region: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    requests_by_accelerator: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    chosen_accelerators: set[str] = field(default_factory=set)
    busy_slot_s: dict[tuple[int, str], float] = field(default_factory=lambda: defaultdict(float))
    """(window, accelerator class) → slot-seconds of work started in that window."""


class Simulation:
    def __init__(
        self,
        *,
        requests: Prepared,
        scenario: Scenario,
        fleet: Fleet,
        pools: Sequence[PoolSpec],
        catalog: Mapping[str, CatalogEntry],
        config: PlacementConfig,
        planner: Planner,
        pool_regions: bool,
    ) -> None:
        self.requests = requests.admitted
        self.outcome = Outcome(
            quota_rejections=requests.quota_rejections,
            refused_context=requests.refused_context,
            rerouted_context=requests.rerouted_context,
        )
        self.scenario = scenario
        self.fleet = fleet
        self.pools = list(pools)
        self.catalog = catalog
        self.config = config
        self.planner = planner
        self.pool_regions = pool_regions
        self.instances: list[Instance] = []
        self.by_pool: dict[int, list[Instance]] = defaultdict(list)
        self.window_demand: dict[int, dict[GroupKey, Demand]] = defaultdict(dict)
        self._candidates: dict[tuple[frozenset[str], str], list[PoolSpec]] = {}
        self.end_s = 0.0

    # regions and pools

    def regions_of(self, request: SimRequest) -> frozenset[str]:
        tenant = self.scenario.tenants[request.tenant]
        return tenant.allowed_regions if self.pool_regions else frozenset({tenant.home})

    def candidates(self, regions: frozenset[str], model: str) -> list[PoolSpec]:
        key = (regions, model)
        found = self._candidates.get(key)
        if found is None:
            found = [p for p in self.pools if p.model == model and p.region in regions]
            self._candidates[key] = found
        return found

    def feasible(self, regions: frozenset[str], model: str, workload: Workload) -> list[PoolSpec]:
        targets = self.scenario.classes[workload]
        return [p for p in self.candidates(regions, model) if p.serves(workload, targets)]

    def active(self, pool: PoolSpec) -> list[Instance]:
        return [i for i in self.by_pool[pool.index] if not i.draining]

    # fleet changes

    def _provision(self, pool: PoolSpec, now: float, lead_s: float) -> Instance:
        """Order an instance at ``now - lead_s`` (a planner with perfect knowledge orders ahead, so that
        it is up at ``now``); it is billed from the order."""
        requested = max(0.0, now - lead_s)
        delay = self.fleet.provision_delay_s
        ready = now if lead_s >= delay else requested + delay
        instance = Instance(instance_id=len(self.instances) + 1, pool=pool, requested_at=requested, ready_at=ready)
        self.instances.append(instance)
        self.by_pool[pool.index].append(instance)
        return instance

    def _drain(self, instance: Instance, now: float) -> None:
        instance.draining = True
        busy_until = now if instance.ready_at > now else max(now, instance.last_finish)
        instance.released_at = instance.paid_until(busy_until, self.fleet.billing_unit_s)

    def apply(self, targets: Mapping[int, int], now: float, *, lead_s: float = 0.0, initial: bool = False) -> None:
        for pool in self.pools:
            want = targets.get(pool.index, 0)
            instances = self.by_pool[pool.index]
            active = [i for i in instances if not i.draining]
            if len(active) < want:
                for back in sorted(
                    (i for i in instances if i.draining and i.released_at is not None and i.released_at > now),
                    key=lambda i: -i.id,
                ):
                    if len(active) >= want:
                        break
                    back.draining, back.released_at = False, None
                    active.append(back)
                while len(active) < want:
                    if initial:
                        instance = Instance(
                            instance_id=len(self.instances) + 1, pool=pool, requested_at=0.0, ready_at=0.0
                        )
                        self.instances.append(instance)
                        instances.append(instance)
                    else:
                        instance = self._provision(pool, now, lead_s)
                    active.append(instance)
            elif len(active) > want:
                # Cancel what is not up yet, then let go of the least busy (newest first on ties).
                order = sorted(active, key=lambda i: (i.ready_at <= now, sum(i.load(now)), -i.id))
                for instance in order[: len(active) - want]:
                    self._drain(instance, now)

    # one request

    def hosts_for(self, pools: Iterable[PoolSpec], now: float) -> tuple[list[HostState], dict[int, Instance]]:
        """One host per pool: the live instance the policy would pick among the pool's instances."""
        hosts: list[HostState] = []
        chosen: dict[int, Instance] = {}
        for pool in pools:
            best: Instance | None = None
            best_key = (0, 0)
            best_load = (0, 0)
            for instance in self.by_pool[pool.index]:
                if instance.draining or instance.ready_at > now:
                    continue
                running, queued = instance.load(now)
                key = (max(0, running + queued + 1 - pool.slots), instance.id)
                if best is None or key < best_key:
                    best, best_key, best_load = instance, key, (running, queued)
            if best is not None:
                chosen[best.id] = best
                hosts.append(replace(pool.template, host_id=best.id, running=best_load[0], queued=best_load[1]))
        return hosts, chosen

    def _fallback(self, pools: Sequence[PoolSpec], now: float) -> Instance | None:
        """When the policy refuses for want of capacity: the instance (up or coming) that can start the
        request soonest; the request waits for it, as a client honouring Retry-After would."""
        best: Instance | None = None
        best_start = math.inf
        for pool in pools:
            for instance in self.by_pool[pool.index]:
                if instance.draining:
                    continue
                start = instance.earliest_start(now)
                if start < best_start:
                    best, best_start = instance, start
        return best

    def serve(self, request: SimRequest) -> None:
        outcome = self.outcome
        regions = self.regions_of(request)
        bucket = self.window_demand[int(request.t // self.fleet.window_s)].setdefault(
            (regions, request.model, request.workload), Demand()
        )
        bucket.count += 1
        bucket.input_tokens += request.input_tokens
        bucket.output_tokens += request.output_tokens

        feasible = self.feasible(regions, request.model, request.workload)
        now = request.t
        hosts, chosen = self.hosts_for(feasible, now)
        placement = place(
            PlacementRequest(
                model=request.model,
                prompt_tokens=request.input_tokens,
                max_output_tokens=request.output_tokens,
                workload=request.workload,
                allowed_regions=regions,
            ),
            hosts,
            config=self.config,
        )
        instance = chosen.get(placement.host_id) if placement.host_id is not None else None
        if instance is None:
            outcome.deferred += 1
            instance = self._fallback(feasible, now)
            if instance is None:
                cheapest = min(feasible, key=lambda p: (p.usd_per_hour, p.index), default=None)
                if cheapest is None:
                    outcome.unservable += 1
                    return
                instance = self._provision(cheapest, now, 0.0)
        pool = instance.pool
        if pool.region not in self.scenario.tenants[request.tenant].allowed_regions:
            outcome.residency_violations += 1
        prefill_s = request.input_tokens / pool.prefill_tokens_per_s
        tpot = pool.tpot_s if request.output_tokens else None
        service = prefill_s + request.output_tokens * (tpot or 0.0)
        start = instance.assign(now, service)
        self.end_s = max(self.end_s, start + service)
        ttft = start - now + prefill_s
        targets = self.scenario.classes[request.workload]
        attained = (targets.ttft_s is None or ttft <= targets.ttft_s) and (
            targets.tpot_s is None or tpot is None or tpot <= targets.tpot_s
        )
        stats = outcome.per_class[request.workload]
        stats.requests += 1
        stats.ttfts.append(ttft)
        outcome.served += 1
        if attained:
            stats.attained += 1
            outcome.attained += 1
        outcome.requests_by_region[pool.region] += 1
        outcome.requests_by_accelerator[pool.accelerator] += 1
        outcome.chosen_accelerators.add(pool.accelerator)
        outcome.busy_slot_s[(int(start // self.fleet.window_s), pool.accelerator)] += service

    # the run

    def run(self, *, progress: Callable[[int], None] | None = None) -> float:
        """Replay every request; returns the wall-clock seconds it took."""
        began = time.perf_counter()
        window_s = self.fleet.window_s
        self.apply(self.planner.plan(self, 0), 0.0, initial=True)
        next_window = 1
        lead = self.planner.lead_s
        step = 0
        for request in self.requests:
            while next_window * window_s <= request.t:
                boundary = next_window * window_s
                self.apply(self.planner.plan(self, next_window), boundary, lead_s=lead)
                next_window += 1
            self.serve(request)
            step += 1
            if progress is not None and step % 512 == 0:
                progress(512)
        if progress is not None:
            progress(step % 512)
        trace_end = self.requests[-1].t if self.requests else 0.0
        self.end_s = max(self.end_s, trace_end)
        unit = self.fleet.billing_unit_s
        for instance in self.instances:
            if instance.released_at is None:
                instance.released_at = instance.paid_until(max(trace_end, instance.last_finish), unit)
        return time.perf_counter() - began
