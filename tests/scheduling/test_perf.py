"""The roofline: prefill bound by compute, decode by bandwidth and batch, weights must fit memory."""

from __future__ import annotations

import pytest

from controlplane.scheduling.perf import (
    BANDWIDTH_UTILISATION,
    COMPUTE_UTILISATION,
    AcceleratorSpec,
    model_spec,
    perf_estimate,
    precision_order,
)
from tests.scheduling.builders import HARDWARE, QWEN_05B, QWEN_7B, SMOL, SPECS, estimate

LLAMA_70B = model_spec(name="Llama-2-70B", parameters=70_000_000_000, quantization="INT8", artifact_bytes=None)
QWEN_72B = model_spec(name="Qwen2.5-72B-Instruct", parameters=72706203648, quantization="BF16", artifact_bytes=None)


def _rate(value: float | None) -> float:
    assert value is not None
    return value


def test_prefill_is_the_utilised_dense_peak_over_two_flops_per_parameter() -> None:
    t4 = estimate("nvidia-t4")
    assert t4.precision == "int8"
    expected = 130e12 * COMPUTE_UTILISATION / (2 * SMOL.parameters)
    assert t4.prefill_tokens_per_s == pytest.approx(expected)
    assert t4.host_prefill_tokens_per_s == pytest.approx(expected)


def test_decode_is_bandwidth_bound_at_a_small_batch_and_compute_bound_at_a_large_one() -> None:
    step = SMOL.weight_bytes / (320e9 * BANDWIDTH_UTILISATION)
    small = estimate("nvidia-t4", slots=8)
    assert small.decode_tokens_per_s == pytest.approx(1 / step)
    assert small.host_decode_tokens_per_s == pytest.approx(8 / step)

    large = estimate("nvidia-t4", slots=4096)
    assert large.host_decode_tokens_per_s is not None
    assert large.host_prefill_tokens_per_s is not None
    # Past the ridge point every step is compute: the batch earns the compute roof and no more.
    assert large.host_decode_tokens_per_s == pytest.approx(large.host_prefill_tokens_per_s)

    rates = [estimate("nvidia-t4", slots=slots) for slots in (1, 2, 8, 64, 512, 4096)]
    aggregate = [_rate(r.host_decode_tokens_per_s) for r in rates]
    per_sequence = [_rate(r.decode_tokens_per_s) for r in rates]
    assert aggregate == sorted(aggregate)
    assert per_sequence == sorted(per_sequence, reverse=True)


def test_missing_int8_figure_falls_back_to_fp16_and_bf16_models_use_half_precision() -> None:
    assert precision_order("Q4_1") == ("int8", "fp16", "bf16")
    assert precision_order("BF16") == ("bf16", "fp16")
    assert estimate("nvidia-l4").precision == "fp16"  # the L4's INT8 figure is published sparse only
    assert estimate("nvidia-t4", model=QWEN_05B).precision == "fp16"  # no BF16 on the T4
    assert estimate("nvidia-h100-sxm", model=QWEN_05B).precision == "bf16"


def test_hanguang_holds_small_models_on_chip_prefills_them_and_never_decodes() -> None:
    smol = estimate("hanguang-800")
    assert smol.fits
    assert smol.memory_bytes == 192_000_000
    assert smol.precision == "int8"
    assert smol.can_prefill
    assert smol.prefill_tokens_per_s == pytest.approx(825e12 * COMPUTE_UTILISATION / (2 * SMOL.parameters))
    assert not smol.can_decode  # no memory bandwidth published: embeddings only

    too_big = estimate("hanguang-800", model=QWEN_05B)
    assert QWEN_05B.weight_bytes > 192_000_000
    assert not too_big.fits
    assert not too_big.can_prefill
    assert too_big.replicas == 0

    # A half-precision model small enough to fit still has no compute figure on an INT8-only chip.
    tiny_bf16 = model_spec(name="tiny", parameters=50_000_000, quantization="BF16", artifact_bytes=None)
    tiny = estimate("hanguang-800", model=tiny_bf16)
    assert tiny.fits
    assert tiny.precision is None
    assert not tiny.can_prefill


def test_a_host_runs_as_many_replicas_as_its_devices_hold() -> None:
    seven = estimate("nvidia-h100-sxm", model=QWEN_7B, count=8)
    assert (seven.devices_per_replica, seven.replicas) == (1, 8)
    one = estimate("nvidia-h100-sxm", model=QWEN_7B, count=1)
    assert seven.host_prefill_tokens_per_s == pytest.approx(8 * _rate(one.host_prefill_tokens_per_s))
    assert seven.prefill_tokens_per_s == pytest.approx(one.prefill_tokens_per_s)

    split = estimate("nvidia-h100-sxm", model=QWEN_72B, count=8)
    assert QWEN_72B.weight_bytes > 80_000_000_000
    assert (split.devices_per_replica, split.replicas) == (2, 4)
    assert not estimate("nvidia-h100-sxm", model=QWEN_72B, count=1).fits
    assert estimate("amd-mi300x", model=QWEN_72B, count=1).fits


def test_weights_come_from_the_artifact_or_from_parameters_and_format() -> None:
    assert SMOL.weight_bytes == 98362432
    assert QWEN_7B.weight_bytes == 2 * 7615616512
    assert model_spec(name="q", parameters=64, quantization="Q4_0", artifact_bytes=None).weight_bytes == 36
    with pytest.raises(ValueError, match="unknown quantization"):
        model_spec(name="x", parameters=10, quantization="Q3_K", artifact_bytes=None)
    with pytest.raises(ValueError, match="positive"):
        perf_estimate(accelerator=SPECS["nvidia-t4"], accelerator_count=0, model=SMOL, slots=8)


def test_unknown_specs_give_no_estimate_rather_than_a_guess() -> None:
    blank = AcceleratorSpec(slug="unknown")
    result = perf_estimate(accelerator=blank, accelerator_count=1, model=SMOL, slots=8)
    assert result.memory_bytes is None
    assert not result.fits
    assert not result.can_prefill
    assert not result.can_decode


@pytest.mark.parametrize(
    "entry", [e for e in HARDWARE if any("Llama-2-70B" in t["model"] for t in e["llm_throughput"])]
)
def test_compute_roof_is_above_the_published_mlperf_result_but_within_three_times_it(entry: dict[str, object]) -> None:
    """MLPerf Offline Llama-2-70B on 8-GPU systems (hardware.json): the roof must bound the measurement
    from above (it is an upper bound) without being absurdly optimistic. 70B parameters rounds the model
    up, which lowers the roof, so the lower check is conservative."""
    throughput = entry["llm_throughput"]
    assert isinstance(throughput, list)
    published = next(t for t in throughput if "Llama-2-70B" in t["model"])
    system = float(published["tokens_per_s"])
    roof = estimate(str(entry["id"]), model=LLAMA_70B, count=8, slots=4096).host_prefill_tokens_per_s
    assert roof is not None
    assert system <= roof <= 3 * system
