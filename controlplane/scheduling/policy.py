"""Placement: the pure policy that picks a host for one request, or refuses it with a reason.

Live admission and the trace-driven simulator call the same function with typed input and output. It
reads nothing (no ORM, no I/O, no clock): the caller hands it the request and every host's state.

The rules, in order:

1. The tenant's allowed regions bound everything. An empty allowance, or an ``X-Region`` outside it,
   is ``region_not_allowed``; ``X-Region`` inside it narrows the candidates to that one region.
2. When no host anywhere serves the model: ``model_not_found``.
3. A host is eligible when it is in a candidate region, of the pinned accelerator family (if any),
   serves the model, is live and not draining, holds the weights in memory, has a performance estimate
   for the workload (prefill for embeddings; prefill and decode for generation) and has a price (its
   own, or ``PlacementConfig.unpriced_usd_per_hour`` as a stated assumption when that is set). None
   eligible: ``region_unavailable``.
4. A host whose queue has reached ``max_queue_per_slot * slots`` takes no more. Every eligible host
   there: ``region_busy``.
5. Among the rest, the lowest score wins, ties broken by cost per token and then host id:

       score = cost per token * (1 + queue_weight * backlog) * (1 + latency_weight * overshoot)

   cost per token = hourly price * host-seconds the request uses / 3600 / its tokens, where the
   host-seconds are prompt tokens / the host's prefill rate plus output tokens / its decode rate at a full
   batch (perf.py); backlog = requests ahead of this one beyond the free slots, in units of the host's
   slots; overshoot = how far the estimated time to first token and time per output token exceed the
   workload class's targets, as fractions of them. The weights and targets depend on the workload class.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal, get_args

from controlplane.scheduling.perf import PerfEstimate

Workload = Literal["interactive", "batch", "embedding"]
Refusal = Literal["region_not_allowed", "region_unavailable", "region_busy", "model_not_found"]
WORKLOADS: tuple[Workload, ...] = get_args(Workload)
REFUSALS: tuple[Refusal, ...] = get_args(Refusal)

_SECONDS_PER_HOUR = Decimal(3600)


@dataclass(frozen=True, slots=True)
class PlacementRequest:
    model: str
    prompt_tokens: int
    max_output_tokens: int
    """Ignored for embeddings, which produce no tokens."""
    workload: Workload
    allowed_regions: frozenset[str]
    requested_region: str | None = None
    """The ``X-Region`` header, if sent."""
    accelerator_family: str | None = None
    """The residency policy's accelerator family pin (npu, nvidia, amd), if any."""

    def __post_init__(self) -> None:
        if self.workload not in WORKLOADS:
            raise ValueError(f"unknown workload {self.workload!r}; known: {', '.join(WORKLOADS)}")
        if self.prompt_tokens < 0 or self.max_output_tokens < 0:
            raise ValueError("token counts must not be negative")

    @property
    def output_tokens(self) -> int:
        return 0 if self.workload == "embedding" else self.max_output_tokens


@dataclass(frozen=True, slots=True)
class HostState:
    """One host as the policy sees it for one model: where it is, what it costs, whether it may take
    work, and how loaded it is (``running`` sequences in its ``slots``, ``queued`` waiting)."""

    host_id: int
    name: str
    region: str
    country: str
    accelerator: str
    """Accelerator class slug, e.g. ``nvidia-l4``."""
    family: str
    usd_per_hour: Decimal | None
    """The whole host's price per hour (per device * devices); None when no price is published."""
    fits_memory: bool
    serves_model: bool
    live: bool
    """Active, in an active region, with a fresh heartbeat."""
    draining: bool
    slots: int
    running: int
    queued: int
    perf: PerfEstimate | None

    def __post_init__(self) -> None:
        if self.slots < 1 or self.running < 0 or self.queued < 0:
            raise ValueError("slots must be positive and loads not negative")


@dataclass(frozen=True, slots=True)
class WorkloadTargets:
    """What a workload class asks of a host; a target of None is not checked."""

    ttft_target_s: float | None
    tpot_target_s: float | None
    queue_weight: Decimal
    latency_weight: Decimal


@dataclass(frozen=True, slots=True)
class PlacementConfig:
    interactive: WorkloadTargets = field(
        default_factory=lambda: WorkloadTargets(
            ttft_target_s=2.0, tpot_target_s=0.1, queue_weight=Decimal(1), latency_weight=Decimal(4)
        )
    )
    """Chat: a person waits for the first token and reads as it streams; queues and slowness cost."""
    batch: WorkloadTargets = field(
        default_factory=lambda: WorkloadTargets(
            ttft_target_s=None, tpot_target_s=None, queue_weight=Decimal("0.1"), latency_weight=Decimal(0)
        )
    )
    """Offline work: price first; a queue matters only a little (it ties up the request's lease)."""
    embedding: WorkloadTargets = field(
        default_factory=lambda: WorkloadTargets(
            ttft_target_s=1.0, tpot_target_s=None, queue_weight=Decimal("0.5"), latency_weight=Decimal(2)
        )
    )
    """Embeddings: one prefill, usually inside a caller's own request path."""
    max_queue_per_slot: int = 4
    """A host with this many queued requests per slot takes no more (``region_busy`` when all are so)."""
    unpriced_usd_per_hour: Decimal | None = Decimal("0.526")
    """Assumed hourly price of a host without a published price (the Hanguang 800: Alibaba publishes
    none). The default is the cheapest published accelerator-hour in the hardware data (T4, AWS
    g4dn.xlarge, us-east-1): an assumption, not a price. None leaves such hosts out."""
    unavailable_retry_after_s: int = 30
    max_retry_after_s: int = 60

    def targets(self, workload: Workload) -> WorkloadTargets:
        return {"interactive": self.interactive, "batch": self.batch, "embedding": self.embedding}[workload]


DEFAULT_CONFIG = PlacementConfig()


@dataclass(frozen=True, slots=True)
class HostScore:
    """One eligible host's estimates for the request (USD; seconds)."""

    host_id: int
    cost_per_token: Decimal
    backlog: Decimal
    ttft_s: float
    tpot_s: float | None
    score: Decimal
    saturated: bool
    price_assumed: bool


@dataclass(frozen=True, slots=True)
class Placement:
    host_id: int | None
    region: str | None
    country: str | None
    accelerator: str | None
    refusal: Refusal | None
    reasons: tuple[str, ...]
    """Human-readable, in decision order; recorded with the request."""
    estimated_cost_per_token: Decimal | None = None
    estimated_ttft_s: float | None = None
    estimated_tpot_s: float | None = None
    price_assumed: bool = False
    retry_after_s: int | None = None
    """For region_unavailable and region_busy: when trying again may succeed."""
    ranking: tuple[HostScore, ...] = ()
    """Hosts that could take the request, best first."""

    @property
    def placed(self) -> bool:
        return self.host_id is not None


def _refuse(refusal: Refusal, reasons: list[str], *, retry_after_s: int | None = None) -> Placement:
    return Placement(
        host_id=None,
        region=None,
        country=None,
        accelerator=None,
        refusal=refusal,
        reasons=tuple(reasons),
        retry_after_s=retry_after_s,
    )


def _exclusion(host: HostState, request: PlacementRequest, config: PlacementConfig) -> str | None:
    """Why a host in a candidate region cannot take the request; None when it can."""
    if request.accelerator_family is not None and host.family != request.accelerator_family:
        return f"accelerator family {host.family}, policy pins {request.accelerator_family}"
    if not host.serves_model:
        return f"does not serve {request.model}"
    if host.draining:
        return "draining: finishes its work, takes no new work"
    if not host.live:
        return "not live (down, region inactive or heartbeat stale)"
    if not host.fits_memory or host.perf is None or not host.perf.fits:
        return "the model's weights do not fit its accelerator memory"
    if not host.perf.can_prefill:
        return "no compute figure published for its accelerator"
    if request.workload != "embedding" and not host.perf.can_decode:
        return "no decode estimate (no memory bandwidth published): embeddings only"
    if host.usd_per_hour is None and config.unpriced_usd_per_hour is None:
        return "no published price, and unpriced hosts are left out"
    return None


def _dec(value: float) -> Decimal:
    return Decimal(repr(value))


def _score(host: HostState, request: PlacementRequest, config: PlacementConfig) -> HostScore:
    perf = host.perf
    if perf is None or perf.prefill_tokens_per_s is None or perf.host_prefill_tokens_per_s is None:
        raise AssertionError("only eligible hosts are scored")
    output = request.output_tokens
    host_seconds = request.prompt_tokens / perf.host_prefill_tokens_per_s
    prefill_s = request.prompt_tokens / perf.prefill_tokens_per_s
    tpot_s: float | None = None
    if output:
        if perf.decode_tokens_per_s is None or perf.host_decode_tokens_per_s is None:
            raise AssertionError("only hosts with a decode estimate are scored for generation")
        host_seconds += output / perf.host_decode_tokens_per_s
        tpot_s = 1 / perf.decode_tokens_per_s
    price_assumed = host.usd_per_hour is None
    price = config.unpriced_usd_per_hour if host.usd_per_hour is None else host.usd_per_hour
    if price is None:
        raise AssertionError("only priced hosts are scored")
    tokens = max(1, request.prompt_tokens + output)
    cost_per_token = price * _dec(host_seconds) / _SECONDS_PER_HOUR / tokens

    # Requests ahead of this one beyond the free slots; each wave of ``slots`` of them holds a slot
    # for about one service time (this request's own is the estimate).
    ahead = max(0, host.running + host.queued + 1 - host.slots)
    backlog = Decimal(ahead) / Decimal(host.slots)
    service_s = prefill_s + output * (tpot_s or 0.0)
    ttft_s = ahead / host.slots * service_s + prefill_s

    targets = config.targets(request.workload)
    overshoot = 0.0
    if targets.ttft_target_s is not None:
        overshoot += max(0.0, ttft_s / targets.ttft_target_s - 1)
    if targets.tpot_target_s is not None and tpot_s is not None:
        overshoot += max(0.0, tpot_s / targets.tpot_target_s - 1)
    score = cost_per_token * (1 + targets.queue_weight * backlog) * (1 + targets.latency_weight * _dec(overshoot))
    return HostScore(
        host_id=host.host_id,
        cost_per_token=cost_per_token,
        backlog=backlog,
        ttft_s=ttft_s,
        tpot_s=tpot_s,
        score=score,
        saturated=host.queued >= config.max_queue_per_slot * host.slots,
        price_assumed=price_assumed,
    )


def _label(host: HostState) -> str:
    return f"host {host.host_id} ({host.name}, {host.region}, {host.accelerator})"


def _describe(host: HostState, scored: HostScore) -> str:
    assumed = ", price assumed" if scored.price_assumed else ""
    tpot = "" if scored.tpot_s is None else f", tpot {scored.tpot_s:.4f} s"
    return (
        f"{_label(host)}: {scored.cost_per_token:.3e} USD/token{assumed}, backlog {scored.backlog:.2f} "
        f"of its {host.slots} slots, ttft {scored.ttft_s:.3f} s{tpot}, score {scored.score:.3e}"
    )


def place(
    request: PlacementRequest, hosts: Sequence[HostState], *, config: PlacementConfig = DEFAULT_CONFIG
) -> Placement:
    """Choose the host for ``request`` among ``hosts``, or refuse with a reason (see the module docstring)."""
    if len({host.host_id for host in hosts}) != len(hosts):
        raise ValueError("host ids must be unique")
    reasons: list[str] = []
    allowed = sorted(request.allowed_regions)
    if not allowed:
        reasons.append("the residency policy allows no region")
        return _refuse("region_not_allowed", reasons)
    if request.requested_region is not None and request.requested_region not in request.allowed_regions:
        reasons.append(f"X-Region {request.requested_region} is outside the allowed regions {', '.join(allowed)}")
        return _refuse("region_not_allowed", reasons)
    regions = [request.requested_region] if request.requested_region is not None else allowed
    narrowed = " (narrowed by X-Region)" if request.requested_region is not None else ""
    reasons.append(f"candidate regions: {', '.join(regions)}{narrowed}")
    if request.accelerator_family is not None:
        reasons.append(f"accelerator family pinned to {request.accelerator_family}")

    ordered = sorted(hosts, key=lambda h: h.host_id)
    if not any(host.serves_model for host in ordered):
        reasons.append(f"no host serves {request.model}")
        return _refuse("model_not_found", reasons)

    outside = 0
    eligible: list[HostState] = []
    for host in ordered:
        if host.region not in regions:
            outside += 1
            continue
        why = _exclusion(host, request, config)
        if why is None:
            eligible.append(host)
        else:
            reasons.append(f"{_label(host)} excluded: {why}")
    if outside:
        reasons.append(f"{outside} host(s) outside the candidate regions not considered")
    if not eligible:
        reasons.append(f"no live host in {', '.join(regions)} can serve {request.model} for {request.workload}")
        return _refuse("region_unavailable", reasons, retry_after_s=config.unavailable_retry_after_s)

    by_id = {host.host_id: host for host in eligible}
    scores = [_score(host, request, config) for host in eligible]
    open_scores = [s for s in scores if not s.saturated]
    cap = config.max_queue_per_slot
    for saturated in (s for s in scores if s.saturated):
        host = by_id[saturated.host_id]
        reasons.append(f"{_label(host)} excluded: {host.queued} queued, at its cap of {cap} per slot")
    if not open_scores:
        soonest = min(s.ttft_s for s in scores)
        retry = min(config.max_retry_after_s, max(1, math.ceil(soonest)))
        reasons.append(f"every eligible host's queue is at its cap of {cap} per slot")
        return _refuse("region_busy", reasons, retry_after_s=retry)

    ranking = tuple(sorted(open_scores, key=lambda s: (s.score, s.cost_per_token, s.host_id)))
    best = ranking[0]
    chosen = by_id[best.host_id]
    reasons.append(f"chose {_describe(chosen, best)}")
    reasons.extend(f"runner-up {_describe(by_id[other.host_id], other)}" for other in ranking[1:3])
    return Placement(
        host_id=chosen.host_id,
        region=chosen.region,
        country=chosen.country,
        accelerator=chosen.accelerator,
        refusal=None,
        reasons=tuple(reasons),
        estimated_cost_per_token=best.cost_per_token,
        estimated_ttft_s=best.ttft_s,
        estimated_tpot_s=best.tpot_s,
        price_assumed=best.price_assumed,
        retry_after_s=None,
        ranking=ranking,
    )
