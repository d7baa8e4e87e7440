"""Properties of the placement policy over generated fleets and requests (hypothesis).

Eligibility is restated here from the rules, independently of the policy's code: the choice is always
an eligible host inside the allowed regions (never draining, dead, non-serving or non-fitting), a
refusal happens exactly when no host is eligible, its code says which rule refused, and the answer does
not depend on the order of the hosts.
"""

from __future__ import annotations

import random
from decimal import Decimal

from hypothesis import event, given, settings
from hypothesis import strategies as st

from controlplane.scheduling.policy import (
    DEFAULT_CONFIG,
    WORKLOADS,
    HostState,
    Placement,
    PlacementConfig,
    PlacementRequest,
    place,
)
from tests.scheduling.builders import COUNTRY, FAMILIES, LIST_PRICE, QWEN_05B, QWEN_7B, SMOL, SPECS, estimate

REGION_CODES = ("sin", "dxb", "ruh", "fra", "hgh")
MODELS = {model.name: model for model in (SMOL, QWEN_05B, QWEN_7B)}
CONFIGS = (DEFAULT_CONFIG, PlacementConfig(unpriced_usd_per_hour=None, max_queue_per_slot=1))


def _mostly(value: bool) -> st.SearchStrategy[bool]:
    """Booleans that are ``value`` three times in four, so that enough generated hosts are eligible."""
    return st.sampled_from((value, value, value, not value))


@st.composite
def host_states(draw: st.DrawFn, host_id: int, model_name: str, allowed: frozenset[str]) -> HostState:
    accelerator = draw(st.sampled_from(sorted(SPECS)))
    count = draw(st.sampled_from((1, 1, 2, 8)))
    slots = draw(st.integers(min_value=1, max_value=16))
    estimated = estimate(accelerator, model=MODELS[model_name], count=count, slots=slots)
    perf = estimated if draw(_mostly(True)) else None
    list_price = LIST_PRICE[accelerator]
    price = draw(
        st.sampled_from(
            (None if list_price is None else list_price * count, None, Decimal("0.01"), Decimal("40")),
        )
    )
    # Mostly inside the tenant's allowed regions, so that the rules beyond residency get exercised.
    inside = bool(allowed) and draw(_mostly(True))
    region = draw(st.sampled_from(sorted(allowed) if inside else REGION_CODES))
    # Usually the fleet's rule (weights within memory); sometimes contradicting the estimate.
    fits_memory = estimated.fits if draw(_mostly(True)) else draw(st.booleans())
    return HostState(
        host_id=host_id,
        name=f"h{host_id}",
        region=region,
        country=COUNTRY[region],
        accelerator=accelerator,
        family=FAMILIES[accelerator],
        usd_per_hour=price,
        fits_memory=fits_memory,
        serves_model=draw(_mostly(True)),
        live=draw(_mostly(True)),
        draining=draw(_mostly(False)),
        slots=slots,
        running=draw(st.integers(min_value=0, max_value=slots)),
        queued=draw(st.sampled_from((0, slots, 4 * slots)) | st.integers(min_value=0, max_value=5 * slots)),
        perf=perf,
    )


@st.composite
def cases(draw: st.DrawFn) -> tuple[PlacementRequest, list[HostState], PlacementConfig]:
    model_name = draw(st.sampled_from(sorted(MODELS)))
    allows_some = draw(st.sampled_from((True,) * 7 + (False,)))
    allowed = draw(st.frozensets(st.sampled_from(REGION_CODES), min_size=1)) if allows_some else frozenset()
    ids = draw(st.lists(st.integers(min_value=1, max_value=10_000), unique=True, min_size=1, max_size=12))
    hosts = [draw(host_states(host_id, model_name, allowed)) for host_id in ids]
    # X-Region: mostly absent, else one of the allowed regions, else any region (maybe outside them).
    requested = draw(
        st.sampled_from(("absent",) * 4 + ("inside",) * 2 + ("any",)).flatmap(
            lambda kind: (
                st.none()
                if kind == "absent" or (kind == "inside" and not allowed)
                else st.sampled_from(sorted(allowed) if kind == "inside" else REGION_CODES)
            )
        )
    )
    request = PlacementRequest(
        model=model_name,
        prompt_tokens=draw(st.integers(min_value=0, max_value=32_000)),
        max_output_tokens=draw(st.integers(min_value=0, max_value=4_096)),
        workload=draw(st.sampled_from(WORKLOADS)),
        allowed_regions=allowed,
        requested_region=requested,
        accelerator_family=draw(st.sampled_from((None,) * 5 + ("npu", "nvidia", "amd"))),
    )
    return request, hosts, draw(st.sampled_from(CONFIGS))


def _in_scope(host: HostState, request: PlacementRequest) -> bool:
    if request.requested_region is not None:
        return host.region == request.requested_region and request.requested_region in request.allowed_regions
    return host.region in request.allowed_regions


def _could_serve(host: HostState, request: PlacementRequest, config: PlacementConfig) -> bool:
    """Every rule but the queue cap."""
    perf = host.perf
    return (
        _in_scope(host, request)
        and request.accelerator_family in (None, host.family)
        and host.serves_model
        and host.live
        and not host.draining
        and host.fits_memory
        and perf is not None
        and perf.fits
        and perf.prefill_tokens_per_s is not None
        and (request.workload == "embedding" or perf.decode_tokens_per_s is not None)
        and (host.usd_per_hour is not None or config.unpriced_usd_per_hour is not None)
    )


def _eligible(host: HostState, request: PlacementRequest, config: PlacementConfig) -> bool:
    return _could_serve(host, request, config) and host.queued < config.max_queue_per_slot * host.slots


@settings(max_examples=250, deadline=None, database=None)
@given(cases())
def test_choice_is_eligible_inside_the_allowed_regions_and_refusal_iff_none_is(
    case: tuple[PlacementRequest, list[HostState], PlacementConfig],
) -> None:
    request, hosts, config = case
    placement = place(request, hosts, config=config)
    eligible = {h.host_id for h in hosts if _eligible(h, request, config)}
    event(f"outcome: {placement.refusal or 'placed'}")

    assert placement.placed == bool(eligible)
    assert (placement.refusal is None) == placement.placed
    if placement.placed:
        chosen = next(h for h in hosts if h.host_id == placement.host_id)
        assert chosen.host_id in eligible
        assert chosen.region in request.allowed_regions
        assert request.requested_region in (None, chosen.region)
        assert chosen.live
        assert not chosen.draining
        assert chosen.serves_model
        assert chosen.fits_memory
        assert (placement.region, placement.country, placement.accelerator) == (
            chosen.region,
            chosen.country,
            chosen.accelerator,
        )
        assert {s.host_id for s in placement.ranking} == eligible
        assert placement.ranking[0].host_id == placement.host_id
        assert placement.ranking[0].score == min(s.score for s in placement.ranking)
        assert placement.estimated_cost_per_token is not None
        assert placement.estimated_cost_per_token >= 0
    else:
        assert placement.host_id is None
        assert placement.region is None
        assert placement.ranking == ()
        assert placement.reasons


@settings(max_examples=250, deadline=None, database=None)
@given(cases())
def test_refusal_code_names_the_rule_that_refused(
    case: tuple[PlacementRequest, list[HostState], PlacementConfig],
) -> None:
    request, hosts, config = case
    placement = place(request, hosts, config=config)
    header_or_policy = not request.allowed_regions or (
        request.requested_region is not None and request.requested_region not in request.allowed_regions
    )
    if header_or_policy:
        expected = "region_not_allowed"
    elif not any(h.serves_model for h in hosts):
        expected = "model_not_found"
    elif any(_eligible(h, request, config) for h in hosts):
        expected = None
    elif any(_could_serve(h, request, config) for h in hosts):
        expected = "region_busy"
    else:
        expected = "region_unavailable"
    event(f"outcome: {expected or 'placed'}")
    assert placement.refusal == expected
    if expected in ("region_unavailable", "region_busy"):
        assert placement.retry_after_s is not None
        assert 1 <= placement.retry_after_s <= config.max_retry_after_s
    else:
        assert placement.retry_after_s is None


@settings(max_examples=100, deadline=None, database=None)
@given(cases(), st.randoms(use_true_random=False))
def test_the_answer_does_not_depend_on_the_order_of_the_hosts(
    case: tuple[PlacementRequest, list[HostState], PlacementConfig], rng: random.Random
) -> None:
    request, hosts, config = case
    shuffled = list(hosts)
    rng.shuffle(shuffled)
    first: Placement = place(request, hosts, config=config)
    assert place(request, shuffled, config=config) == first
