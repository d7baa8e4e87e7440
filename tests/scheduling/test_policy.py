"""Every rule of the placement policy, with hand-built host states (real specs and list prices)."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest

from controlplane.scheduling.perf import PerfEstimate
from controlplane.scheduling.policy import DEFAULT_CONFIG, PlacementConfig, PlacementRequest, place
from tests.scheduling.builders import QWEN_05B, SMOL, estimate, host, request

# One region with three generation hosts: the T4 is cheapest per token for the small model, the
# 8 x A100 host the dearest (it is far faster, but the model cannot use it).
DXB = [host(1, "nvidia-a100-80gb", count=8), host(2, "nvidia-l4"), host(3, "nvidia-t4")]


def test_cheapest_cost_per_token_wins_and_the_ranking_is_by_cost() -> None:
    placement = place(request(), DXB)
    assert placement.placed
    assert (placement.host_id, placement.region, placement.country, placement.accelerator) == (
        3,
        "dxb",
        "AE",
        "nvidia-t4",
    )
    assert [s.host_id for s in placement.ranking] == [3, 2, 1]
    costs = [s.cost_per_token for s in placement.ranking]
    assert costs == sorted(costs)
    assert placement.refusal is None
    assert placement.reasons[-3].startswith("chose host 3 (dxb-nvidia-t4-3, dxb, nvidia-t4)")


def test_cost_per_token_is_price_times_host_seconds_over_tokens() -> None:
    t4 = DXB[2]
    perf = t4.perf
    assert perf is not None
    assert perf.host_prefill_tokens_per_s is not None
    assert perf.host_decode_tokens_per_s is not None
    seconds = 200 / perf.host_prefill_tokens_per_s + 256 / perf.host_decode_tokens_per_s
    expected = Decimal("0.526") * Decimal(repr(seconds)) / 3600 / 456
    placement = place(request(prompt=200, output=256), [t4])
    assert placement.estimated_cost_per_token == expected
    assert isinstance(placement.estimated_cost_per_token, Decimal)
    assert not placement.price_assumed


def test_the_choice_stays_inside_the_allowed_regions_even_when_elsewhere_is_cheaper() -> None:
    hosts = [host(1, "nvidia-h100-sxm", "dxb", count=8), host(2, "nvidia-t4", "fra"), host(3, "nvidia-t4", "sin")]
    placement = place(request(allowed=("dxb",)), hosts)
    assert placement.host_id == 1
    assert "2 host(s) outside the candidate regions not considered" in placement.reasons
    # Positive control: allowed in Frankfurt too, the cheap T4 there wins.
    assert place(request(allowed=("dxb", "fra")), hosts).host_id == 2


def test_x_region_outside_the_allowed_regions_is_region_not_allowed() -> None:
    placement = place(request(allowed=("dxb", "ruh"), region="fra"), [*DXB, host(9, "nvidia-t4", "fra")])
    assert placement.refusal == "region_not_allowed"
    assert not placement.placed
    assert placement.host_id is None
    assert placement.region is None
    assert placement.reasons == ("X-Region fra is outside the allowed regions dxb, ruh",)


def test_a_policy_that_allows_no_region_is_region_not_allowed() -> None:
    assert place(request(allowed=()), DXB).refusal == "region_not_allowed"


def test_x_region_inside_the_allowed_regions_narrows_the_choice() -> None:
    hosts = [host(1, "nvidia-l4", "dxb"), host(2, "nvidia-t4", "ruh")]
    assert place(request(allowed=("dxb", "ruh")), hosts).host_id == 2
    narrowed = place(request(allowed=("dxb", "ruh"), region="dxb"), hosts)
    assert narrowed.host_id == 1
    assert narrowed.reasons[0] == "candidate regions: dxb (narrowed by X-Region)"


def test_allowed_but_none_live_is_region_unavailable_and_never_routed_elsewhere() -> None:
    dead_dxb = [dataclasses.replace(h, live=False) for h in DXB]
    placement = place(request(allowed=("dxb",)), [*dead_dxb, host(9, "nvidia-t4", "fra")])
    assert placement.refusal == "region_unavailable"
    assert placement.retry_after_s == DEFAULT_CONFIG.unavailable_retry_after_s
    assert placement.ranking == ()
    assert any("excluded: not live" in reason for reason in placement.reasons)
    # Positive control: one live host in the allowed region takes the request.
    revived = [*dead_dxb[:2], DXB[2]]
    assert place(request(allowed=("dxb",)), revived).host_id == 3


def test_dead_hosts_get_nothing() -> None:
    hosts = [dataclasses.replace(DXB[2], live=False), DXB[1]]
    placement = place(request(), hosts)
    assert placement.host_id == 2
    assert "host 3 (dxb-nvidia-t4-3, dxb, nvidia-t4) excluded: not live" in placement.reasons[1]


def test_draining_hosts_get_nothing_new() -> None:
    draining_t4 = dataclasses.replace(DXB[2], draining=True)
    placement = place(request(), [DXB[1], draining_t4])
    assert placement.host_id == 2
    assert any("excluded: draining" in reason for reason in placement.reasons)
    # Draining wins over a fresh heartbeat, and with only draining hosts the region is unavailable.
    assert place(request(), [draining_t4]).refusal == "region_unavailable"


def test_hosts_that_do_not_serve_the_model_get_nothing_and_none_anywhere_is_model_not_found() -> None:
    idle_t4 = dataclasses.replace(DXB[2], serves_model=False)
    assert place(request(), [DXB[1], idle_t4]).host_id == 2
    nowhere = [dataclasses.replace(h, serves_model=False) for h in DXB]
    placement = place(request(), nowhere)
    assert placement.refusal == "model_not_found"
    assert placement.reasons[-1] == f"no host serves {SMOL.name}"
    assert place(request(), []).refusal == "model_not_found"


def test_every_queue_at_its_cap_is_region_busy_and_one_below_it_takes_the_work() -> None:
    cap = DEFAULT_CONFIG.max_queue_per_slot * 8
    full = [dataclasses.replace(h, running=8, queued=cap) for h in DXB]
    busy = place(request(), full)
    assert busy.refusal == "region_busy"
    assert busy.retry_after_s is not None
    assert 1 <= busy.retry_after_s <= DEFAULT_CONFIG.max_retry_after_s
    assert busy.reasons[-1] == "every eligible host's queue is at its cap of 4 per slot"

    # Positive control: the dearest host one below its cap takes the request.
    some_room = [*full[1:], dataclasses.replace(full[0], queued=cap - 1)]
    assert place(request(), some_room).host_id == 1


def test_queue_penalty_moves_interactive_work_to_the_next_host_but_batch_work_waits() -> None:
    queued_t4 = dataclasses.replace(DXB[2], running=8, queued=8)
    hosts = [DXB[1], queued_t4]
    assert place(request(workload="interactive"), [DXB[1], DXB[2]]).host_id == 3
    assert place(request(workload="interactive"), hosts).host_id == 2
    assert place(request(workload="batch"), hosts).host_id == 3
    # A free slot costs nothing: a half-full host keeps its work.
    half = dataclasses.replace(DXB[2], running=4)
    assert place(request(workload="interactive"), [DXB[1], half]).host_id == 3


def _perf(base: PerfEstimate, *, decode_tokens_per_s: float) -> PerfEstimate:
    return dataclasses.replace(base, decode_tokens_per_s=decode_tokens_per_s)


def test_latency_targets_steer_interactive_work_but_not_batch_work() -> None:
    """A host that is cheap per token but streams at 3 tokens/s (tpot 0.33 s, over the 0.1 s target)."""
    slow_perf = _perf(estimate("nvidia-t4"), decode_tokens_per_s=3.0)
    slow_cheap = host(1, "nvidia-t4", perf=slow_perf)
    fast_dear = host(2, "nvidia-l4")
    interactive = place(request(workload="interactive"), [slow_cheap, fast_dear])
    assert interactive.host_id == 2
    assert place(request(workload="batch"), [slow_cheap, fast_dear]).host_id == 1
    scores = {s.host_id: s for s in interactive.ranking}
    assert scores[1].cost_per_token < scores[2].cost_per_token
    assert scores[1].tpot_s == pytest.approx(1 / 3)


def test_accelerator_family_pin() -> None:
    hosts = [host(1, "nvidia-t4"), host(2, "amd-mi300x", count=8), host(3, "hanguang-800")]
    assert place(request(), hosts).host_id == 1
    amd = place(request(family="amd"), hosts)
    assert (amd.host_id, amd.accelerator) == (2, "amd-mi300x")
    assert any("accelerator family nvidia, policy pins amd" in reason for reason in amd.reasons)
    # Pinned to the NPU: it cannot decode, so chat is unavailable while embeddings run there.
    assert place(request(family="npu"), hosts).refusal == "region_unavailable"
    assert place(request(family="npu", workload="embedding"), hosts).host_id == 3


def test_embeddings_go_to_the_hanguang_when_the_model_fits() -> None:
    hgh = [host(1, "hanguang-800", "hgh"), host(2, "nvidia-t4", "hgh"), host(3, "nvidia-a10", "hgh")]
    embedding = place(request(allowed=("hgh",), workload="embedding", prompt=64), hgh)
    assert (embedding.host_id, embedding.accelerator) == (1, "hanguang-800")
    assert embedding.price_assumed  # Alibaba publishes no price: the stated assumption is used
    assert embedding.estimated_tpot_s is None
    assert "price assumed" in embedding.reasons[-3]

    chat = place(request(allowed=("hgh",), workload="interactive"), hgh)
    assert chat.host_id == 2
    assert any("embeddings only" in reason for reason in chat.reasons)

    # A model too big for 192 MB on chip embeds on a GPU instead.
    big = [host(1, "hanguang-800", "hgh", model=QWEN_05B), host(2, "nvidia-t4", "hgh", model=QWEN_05B)]
    assert place(request(allowed=("hgh",), workload="embedding", model=QWEN_05B.name), big).host_id == 2

    # With unpriced devices left out (the simulator's second reading), the T4 takes the embeddings.
    priced_only = PlacementConfig(unpriced_usd_per_hour=None)
    assert place(request(allowed=("hgh",), workload="embedding"), hgh, config=priced_only).host_id == 2


def test_ties_break_deterministically_by_host_id_whatever_the_order() -> None:
    twins = [host(7, "nvidia-t4"), host(3, "nvidia-t4"), host(5, "nvidia-t4")]
    first = place(request(), twins)
    assert first.host_id == 3
    assert [s.host_id for s in first.ranking] == [3, 5, 7]
    assert place(request(), list(reversed(twins))) == first
    assert place(request(), sorted(twins, key=lambda h: h.name)) == first


def test_placement_is_the_same_for_the_same_input() -> None:
    hosts = [*DXB, host(4, "nvidia-h200-sxm", "ruh", count=8), host(5, "hanguang-800", "ruh")]
    req = request(allowed=("dxb", "ruh"))
    assert place(req, hosts) == place(req, list(reversed(hosts)))


def test_bad_input_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown workload"):
        PlacementRequest(
            model="m",
            prompt_tokens=1,
            max_output_tokens=1,
            workload="video",  # type: ignore[arg-type]  # deliberately outside the Literal
            allowed_regions=frozenset({"dxb"}),
        )
    with pytest.raises(ValueError, match="negative"):
        request(prompt=-1)
    with pytest.raises(ValueError, match="unique"):
        place(request(), [DXB[0], DXB[0]])
    with pytest.raises(ValueError, match="slots"):
        dataclasses.replace(DXB[0], slots=0)
