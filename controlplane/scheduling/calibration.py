"""The roofline's compute utilisation, calibrated against the published MLPerf Llama-2-70B results.

Pure: hardware.json entries in, one utilisation per accelerator class out. The three published results
(MLPerf Inference v4.1 closed, Offline, 8-accelerator systems: H100, H200, MI300X) report output tokens
per second; each is turned into the share of the system's dense FP8 peak that it achieved, because all
three submissions ran Llama-2-70B in FP8 (TensorRT-LLM; vLLM on ROCm):

    utilisation = output tokens/s * (1 + input/output) * 2 * parameters / (devices * dense FP8 peak)

Assumptions, stated where they are used:

- ``LLAMA2_70B_PARAMETERS``: Llama-2-70B's parameter count (68.98 B, the released checkpoint).
- ``MLPERF_INPUT_PER_OUTPUT``: the ratio of prompt to output tokens in the MLPerf OpenOrca set. Our data
  holds only output tokens per second (about 290 output tokens per sample, tokens/s over samples/s in
  the cited logs); the input length is not in it, so the ratio is taken as 1 (an assumption: a ratio of
  0.5 would lower every calibrated utilisation by a quarter).
- Classes without a published LLM result (T4, A10, L4, A100, Hanguang 800) get the median of the
  calibrated ones.
- The decode bandwidth utilisation is not calibrated (no decode-only figure is published): it stays
  ``perf.BANDWIDTH_UTILISATION``.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from controlplane.scheduling.perf import BANDWIDTH_UTILISATION, COMPUTE_UTILISATION

LLAMA2_70B_PARAMETERS = 68_976_648_192
MLPERF_INPUT_PER_OUTPUT = 1.0
MLPERF_DEVICES = 8
_TERA = 1e12


@dataclass(frozen=True, slots=True)
class Utilisation:
    compute: float
    bandwidth: float
    source: str
    """Where the compute figure comes from: ``mlperf`` (this class's own result), ``median`` of the
    calibrated classes, or ``assumed`` (perf.py's default, when nothing is calibrated)."""


def _mlperf_utilisation(entry: Mapping[str, object]) -> float | None:
    throughput = entry.get("llm_throughput")
    if not isinstance(throughput, list):
        return None
    published = next((t for t in throughput if isinstance(t, dict) and "Llama-2-70B" in str(t.get("model"))), None)
    peak = entry.get("fp8_tflops_dense")
    if published is None or peak is None or published.get("tokens_per_s") is None:
        return None
    output_tokens_per_s = float(str(published["tokens_per_s"]))
    flops = output_tokens_per_s * (1 + MLPERF_INPUT_PER_OUTPUT) * 2 * LLAMA2_70B_PARAMETERS
    return flops / (MLPERF_DEVICES * float(str(peak)) * _TERA)


def calibrate(hardware: Sequence[Mapping[str, object]]) -> dict[str, Utilisation]:
    """One utilisation per accelerator class of ``hardware`` (hardware.json's list)."""
    measured = {str(e["id"]): u for e in hardware if (u := _mlperf_utilisation(e)) is not None}
    if measured:
        fallback, fallback_source = statistics.median(measured.values()), "median"
    else:
        fallback, fallback_source = COMPUTE_UTILISATION, "assumed"
    result: dict[str, Utilisation] = {}
    for entry in hardware:
        slug = str(entry["id"])
        if slug in measured:
            result[slug] = Utilisation(
                compute=min(1.0, measured[slug]), bandwidth=BANDWIDTH_UTILISATION, source="mlperf"
            )
        else:
            result[slug] = Utilisation(compute=fallback, bandwidth=BANDWIDTH_UTILISATION, source=fallback_source)
    return result
