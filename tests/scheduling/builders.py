"""Hand-built host states for the policy's tests, with real specs and list prices from the hardware data."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import controlplane.fleet
from controlplane.core.regions import REGIONS
from controlplane.scheduling.perf import AcceleratorSpec, ModelSpec, PerfEstimate, model_spec, perf_estimate
from controlplane.scheduling.policy import HostState, PlacementRequest, Workload

HARDWARE_FILE = Path(controlplane.fleet.__file__).resolve().parent / "data" / "hardware.json"
HARDWARE: list[dict[str, Any]] = json.loads(HARDWARE_FILE.read_text(encoding="utf-8"), parse_float=Decimal)
SPECS: dict[str, AcceleratorSpec] = {entry["id"]: AcceleratorSpec.from_mapping(entry) for entry in HARDWARE}
LIST_PRICE: dict[str, Decimal | None] = {
    entry["id"]: Decimal(entry["cloud_prices"][0]["usd_per_gpu_hour"]) if entry["cloud_prices"] else None
    for entry in HARDWARE
}
FAMILY = {"Alibaba T-Head": "npu", "NVIDIA": "nvidia", "AMD": "amd"}
FAMILIES: dict[str, str] = {entry["id"]: FAMILY[entry["vendor"]] for entry in HARDWARE}
COUNTRY: dict[str, str] = {region.code: region.country for region in REGIONS}

# Catalog facts (controlplane/fleet/data/catalog.json): the deployable Q4_1 SmolLM2 and two BF16 models
# whose weights are sized from their parameter counts.
SMOL = model_spec(name="SmolLM2-135M-Instruct", parameters=134515008, quantization="Q4_1", artifact_bytes=98362432)
QWEN_05B = model_spec(name="Qwen2.5-0.5B-Instruct", parameters=494032768, quantization="BF16", artifact_bytes=None)
QWEN_7B = model_spec(name="Qwen2.5-7B-Instruct", parameters=7615616512, quantization="BF16", artifact_bytes=None)

LIST = "list"


def estimate(accelerator: str, *, model: ModelSpec = SMOL, count: int = 1, slots: int = 8) -> PerfEstimate:
    return perf_estimate(accelerator=SPECS[accelerator], accelerator_count=count, model=model, slots=slots)


def host(
    host_id: int,
    accelerator: str = "nvidia-t4",
    region: str = "dxb",
    *,
    model: ModelSpec = SMOL,
    count: int = 1,
    slots: int = 8,
    running: int = 0,
    queued: int = 0,
    live: bool = True,
    draining: bool = False,
    serves: bool = True,
    price: Decimal | str | None = LIST,
    perf: PerfEstimate | str | None = LIST,
) -> HostState:
    """A host with the class's real specs; price and perf default to the list price and the roofline."""
    if price == LIST:
        unit = LIST_PRICE[accelerator]
        usd_per_hour = None if unit is None else unit * count
    else:
        assert not isinstance(price, str)
        usd_per_hour = price
    if perf == LIST:
        estimated: PerfEstimate | None = estimate(accelerator, model=model, count=count, slots=slots)
    else:
        assert not isinstance(perf, str)
        estimated = perf
    return HostState(
        host_id=host_id,
        name=f"{region}-{accelerator}-{host_id}",
        region=region,
        country=COUNTRY[region],
        accelerator=accelerator,
        family=FAMILIES[accelerator],
        usd_per_hour=usd_per_hour,
        fits_memory=estimated is not None and estimated.fits,
        serves_model=serves,
        live=live,
        draining=draining,
        slots=slots,
        running=running,
        queued=queued,
        perf=estimated,
    )


def request(
    *,
    allowed: tuple[str, ...] = ("dxb",),
    workload: Workload = "interactive",
    prompt: int = 200,
    output: int = 256,
    model: str = SMOL.name,
    region: str | None = None,
    family: str | None = None,
) -> PlacementRequest:
    return PlacementRequest(
        model=model,
        prompt_tokens=prompt,
        max_output_tokens=output,
        workload=workload,
        allowed_regions=frozenset(allowed),
        requested_region=region,
        accelerator_family=family,
    )
