"""Roofline estimates of how fast an accelerator class serves a model, from published specs alone.

Pure (plain numbers in and out; no ORM, no I/O) so that live placement and the simulator use the same
figures. They are upper-bound estimates, not measurements. Assumptions, each one stated where it is used:

- Compute: one token through a decoder costs ``2 * parameters`` FLOPs (one multiply and one add per
  weight). Attention over the context is not counted; for short and medium contexts it is small next to
  the weight matmuls, and it grows with the context, so long prompts are estimated too fast.
- Precision: integer-quantised weights (GGUF Q8_0/Q4_0/Q4_1, INT8) are multiplied with INT8 dot products
  (as llama.cpp's quantised matmuls do), so they use the class's dense INT8 figure; half-precision weights
  use the dense FP16 or BF16 figure (a BF16 checkpoint on a card without BF16, the T4, runs converted
  to FP16). When the preferred figure is not published the next one is used; when none is, the class
  gets no compute estimate. Sparse figures are never used (HARDWARE.md caveat 1). FP8 is not used.
- Utilisation: ``COMPUTE_UTILISATION`` of the dense peak and ``BANDWIDTH_UTILISATION`` of the memory
  bandwidth are achieved. Both are assumptions, not calibrated; the simulator issue calibrates them
  against the published MLPerf results.
- Prefill is compute-bound: tokens/s = utilised peak / (2 * parameters).
- Decode is bandwidth-bound until the batch makes it compute-bound: one step reads every weight once and
  produces one token for each sequence in the batch, so step time = max(weight bytes / utilised
  bandwidth, batch * 2 * parameters / utilised peak). KV-cache reads are not counted (short contexts).
- Fit: the weights must fit in the device memory (the rule the fleet applies to deployments: weights
  only; the KV cache and activations are not counted). A model that does not fit one device is split
  over the fewest devices that hold it (tensor parallel, communication ignored), and a host runs as many
  such replicas as its devices allow; throughput adds up over replicas.
- The Hanguang 800 has 192 MB of on-chip SRAM and no DRAM: only models whose weights fit in it can run,
  and no memory bandwidth is published, so it gets no decode estimate. It can prefill (and therefore
  serve embeddings) but is never a generation target, as HARDWARE.md caveat 5 advises.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

Precision = Literal["int8", "fp16", "bf16"]

FLOPS_PER_PARAMETER_PER_TOKEN = 2
COMPUTE_UTILISATION = 0.5
"""Share of the dense tensor peak that prefill (and compute-bound decode) achieves; assumed."""
BANDWIDTH_UTILISATION = 0.7
"""Share of the memory bandwidth that a bandwidth-bound decode step achieves; assumed."""

_TERA = 1e12
_GIGA = 1e9
_MB = 1_000_000
_GB = 1_000_000_000

# Bits per weight of each storage format. GGUF block formats carry per-block scales: Q8_0 stores 32
# weights in 34 bytes, Q4_0 in 18 bytes and Q4_1 in 20 bytes (ggml's block layouts).
_BITS_PER_WEIGHT: dict[str, float] = {
    "F32": 32.0,
    "F16": 16.0,
    "BF16": 16.0,
    "FP8": 8.0,
    "INT8": 8.0,
    "Q8_0": 8.5,
    "Q4_0": 4.5,
    "Q4_1": 5.0,
}
_INTEGER_FORMATS = frozenset({"INT8", "Q8_0", "Q4_0", "Q4_1"})


def _positive(value: float | Decimal | int | None) -> float | None:
    """A published figure as float; missing or non-positive figures are unknown."""
    if value is None:
        return None
    number = float(value)
    return number if number > 0 else None


@dataclass(frozen=True, slots=True)
class AcceleratorSpec:
    """The published figures of one accelerator class that the roofline needs (per device)."""

    slug: str
    int8_tops_dense: float | None = None
    fp16_tflops_dense: float | None = None
    bf16_tflops_dense: float | None = None
    memory_gb: float | None = None
    on_chip_memory_mb: float | None = None
    memory_bandwidth_gbps: float | None = None

    @classmethod
    def from_mapping(cls, entry: Mapping[str, object]) -> AcceleratorSpec:
        """From a hardware.json entry (``id`` is the slug); absent or null figures stay unknown."""

        def figure(name: str) -> float | None:
            value = entry.get(name)
            if value is None:
                return None
            if not isinstance(value, int | float | Decimal):
                raise TypeError(f"{name} must be a number, got {type(value).__name__}")
            return _positive(value)

        return cls(
            slug=str(entry["id"]),
            int8_tops_dense=figure("int8_tops_dense"),
            fp16_tflops_dense=figure("fp16_tflops_dense"),
            bf16_tflops_dense=figure("bf16_tflops_dense"),
            memory_gb=figure("memory_gb"),
            on_chip_memory_mb=figure("on_chip_memory_mb"),
            memory_bandwidth_gbps=figure("memory_bandwidth_gbps"),
        )

    @property
    def memory_bytes(self) -> int | None:
        """Memory that can hold weights: device memory, else on-chip memory (the Hanguang 800)."""
        if self.memory_gb is not None:
            return int(self.memory_gb * _GB)
        if self.on_chip_memory_mb is not None:
            return int(self.on_chip_memory_mb * _MB)
        return None

    def peak_ops_per_s(self, precision: Precision) -> float | None:
        tera = {"int8": self.int8_tops_dense, "fp16": self.fp16_tflops_dense, "bf16": self.bf16_tflops_dense}
        value = _positive(tera[precision])
        return None if value is None else value * _TERA


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    parameters: int
    quantization: str
    weight_bytes: int


def model_spec(*, name: str, parameters: int, quantization: str, artifact_bytes: int | None) -> ModelSpec:
    """The model's weight size: the artifact's size when known, else parameters * bits per weight."""
    if parameters <= 0:
        raise ValueError("parameters must be positive")
    if artifact_bytes is not None:
        weight_bytes = artifact_bytes
    else:
        bits = _BITS_PER_WEIGHT.get(quantization.upper())
        if bits is None:
            raise ValueError(f"unknown quantization {quantization!r}; known: {', '.join(sorted(_BITS_PER_WEIGHT))}")
        weight_bytes = math.ceil(parameters * bits / 8)
    return ModelSpec(name=name, parameters=parameters, quantization=quantization, weight_bytes=weight_bytes)


def precision_order(quantization: str) -> tuple[Precision, ...]:
    """Which dense throughput figures a model in this format can use, best first."""
    fmt = quantization.upper()
    if fmt in _INTEGER_FORMATS:
        return ("int8", "fp16", "bf16")
    if fmt == "BF16":
        return ("bf16", "fp16")
    return ("fp16", "bf16")


@dataclass(frozen=True, slots=True)
class PerfEstimate:
    """What one host (all its devices) can do with one model. Rates are tokens per second."""

    accelerator: str
    model: str
    fits: bool
    weight_bytes: int
    memory_bytes: int | None
    """Memory of the whole host (device memory * devices); None when the specs do not say."""
    devices_per_replica: int
    """Devices one copy of the weights is split over; 0 when it does not fit."""
    replicas: int
    batch: int
    """Sequences decoding together on the host (its slots), spread over the replicas."""
    precision: Precision | None
    """Which dense figure the compute estimate uses; None when none is published."""
    prefill_tokens_per_s: float | None
    """One prompt on one replica: sets the time to first token."""
    host_prefill_tokens_per_s: float | None
    """All replicas busy with prompts: sets what prompt tokens cost."""
    decode_tokens_per_s: float | None
    """One sequence at a full batch: sets the time per output token."""
    host_decode_tokens_per_s: float | None
    """All sequences together at a full batch: sets what output tokens cost."""

    @property
    def can_prefill(self) -> bool:
        return self.prefill_tokens_per_s is not None and self.host_prefill_tokens_per_s is not None

    @property
    def can_decode(self) -> bool:
        return self.decode_tokens_per_s is not None and self.host_decode_tokens_per_s is not None


def perf_estimate(
    *,
    accelerator: AcceleratorSpec,
    accelerator_count: int,
    model: ModelSpec,
    slots: int,
    compute_utilisation: float = COMPUTE_UTILISATION,
    bandwidth_utilisation: float = BANDWIDTH_UTILISATION,
    min_devices_per_replica: int = 1,
) -> PerfEstimate:
    """Roofline estimate of a host with ``accelerator_count`` devices serving ``model`` with ``slots``
    sequences in its decode batch (see the module docstring for every assumption). The utilisations
    default to the stated assumptions; the simulator passes the MLPerf-calibrated ones (calibration.py).
    ``min_devices_per_replica`` splits a replica over more devices than its weights need (room for
    the KV cache: the simulator's instances are one replica each)."""
    if accelerator_count < 1 or slots < 1:
        raise ValueError("accelerator_count and slots must be positive")
    if min_devices_per_replica < 1:
        raise ValueError("min_devices_per_replica must be positive")
    if not (0 < compute_utilisation <= 1 and 0 < bandwidth_utilisation <= 1):
        raise ValueError("utilisations must be in (0, 1]")
    device_memory = accelerator.memory_bytes
    devices_per_replica = 0
    replicas = 0
    if device_memory is not None and device_memory > 0:
        needed = max(min_devices_per_replica, math.ceil(model.weight_bytes / device_memory))
        if needed <= accelerator_count:
            devices_per_replica, replicas = needed, accelerator_count // needed
    fits = replicas >= 1

    precision: Precision | None = None
    peak: float | None = None
    for candidate in precision_order(model.quantization):
        peak = accelerator.peak_ops_per_s(candidate)
        if peak is not None:
            precision = candidate
            break

    flops_per_token = FLOPS_PER_PARAMETER_PER_TOKEN * model.parameters
    prefill = host_prefill = decode = host_decode = None
    if fits and peak is not None:
        replica_ops = devices_per_replica * peak * compute_utilisation
        prefill = replica_ops / flops_per_token
        host_prefill = prefill * replicas
        bandwidth = _positive(accelerator.memory_bandwidth_gbps)
        if bandwidth is not None:
            # The busiest replica decides the step time; every sequence gains one token per step.
            batch_per_replica = math.ceil(slots / replicas)
            memory_time = model.weight_bytes / (devices_per_replica * bandwidth * _GIGA * bandwidth_utilisation)
            compute_time = batch_per_replica * flops_per_token / replica_ops
            step = max(memory_time, compute_time)
            decode = 1 / step
            host_decode = slots / step
    return PerfEstimate(
        accelerator=accelerator.slug,
        model=model.name,
        fits=fits,
        weight_bytes=model.weight_bytes,
        memory_bytes=None if device_memory is None else device_memory * accelerator_count,
        devices_per_replica=devices_per_replica,
        replicas=replicas,
        batch=slots,
        precision=precision,
        prefill_tokens_per_s=prefill,
        host_prefill_tokens_per_s=host_prefill,
        decode_tokens_per_s=decode,
        host_decode_tokens_per_s=host_decode,
    )
