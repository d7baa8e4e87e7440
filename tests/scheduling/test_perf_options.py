"""The roofline's options that the simulator uses: calibrated utilisations and one replica spread over
more devices than its weights need (room for the KV cache). Their defaults leave live placement's
estimates as they were."""

from __future__ import annotations

import pytest

from controlplane.scheduling.perf import BANDWIDTH_UTILISATION, COMPUTE_UTILISATION, perf_estimate
from tests.scheduling.builders import QWEN_7B, SPECS, estimate


def test_the_defaults_are_the_stated_assumptions() -> None:
    spec = SPECS["nvidia-h100-sxm"]
    explicit = perf_estimate(
        accelerator=spec,
        accelerator_count=2,
        model=QWEN_7B,
        slots=16,
        compute_utilisation=COMPUTE_UTILISATION,
        bandwidth_utilisation=BANDWIDTH_UTILISATION,
        min_devices_per_replica=1,
    )
    assert explicit == estimate("nvidia-h100-sxm", model=QWEN_7B, count=2, slots=16)


def test_utilisations_scale_the_rates_they_govern() -> None:
    spec = SPECS["nvidia-l4"]
    base = perf_estimate(accelerator=spec, accelerator_count=1, model=QWEN_7B, slots=8)
    half = perf_estimate(
        accelerator=spec, accelerator_count=1, model=QWEN_7B, slots=8, compute_utilisation=COMPUTE_UTILISATION / 2
    )
    assert base.prefill_tokens_per_s is not None
    assert half.prefill_tokens_per_s == pytest.approx(base.prefill_tokens_per_s / 2)
    assert half.decode_tokens_per_s == base.decode_tokens_per_s  # decode stays bandwidth-bound here
    with pytest.raises(ValueError, match="utilisations"):
        perf_estimate(accelerator=spec, accelerator_count=1, model=QWEN_7B, slots=8, bandwidth_utilisation=1.5)


def test_a_replica_may_span_more_devices_than_its_weights_need() -> None:
    spec = SPECS["nvidia-a100-80gb"]
    two_replicas = perf_estimate(accelerator=spec, accelerator_count=2, model=QWEN_7B, slots=8)
    one_wide = perf_estimate(accelerator=spec, accelerator_count=2, model=QWEN_7B, slots=8, min_devices_per_replica=2)
    assert (two_replicas.replicas, two_replicas.devices_per_replica) == (2, 1)
    assert (one_wide.replicas, one_wide.devices_per_replica) == (1, 2)
    assert two_replicas.prefill_tokens_per_s is not None
    assert one_wide.prefill_tokens_per_s == pytest.approx(2 * two_replicas.prefill_tokens_per_s)
    with pytest.raises(ValueError, match="min_devices_per_replica"):
        perf_estimate(accelerator=spec, accelerator_count=2, model=QWEN_7B, slots=8, min_devices_per_replica=0)
