"""What one accelerator-hour costs, in Decimal USD: a cloud list price, or an owned device's amortised
purchase plus its power, never both (a cloud price already pays for the power).

Pure: hardware.json entries and the fleet file's figures in, a price per device-hour out.

- ``cloud`` (the default): the class's first published on-demand price in hardware.json, per device;
  the same figure the fleet sync stores as ``usd_per_gpu_hour`` and live placement prices hosts by.
- ``owned``: purchase price / amortisation hours + TDP * power share * PUE * electricity price. Each of
  those figures must come from the fleet file; hardware.json has no purchase prices.
- A class without a figure in the chosen basis gets ``unpriced_usd_per_hour`` as a stated assumption
  (the Hanguang 800 has no public price), or is left out of the fleet when that is None.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

CostBasis = Literal["cloud", "owned"]
HOURS_PER_YEAR = Decimal(8760)


@dataclass(frozen=True, slots=True)
class OwnedDevice:
    """An owned device's figures (fleet file): what it cost and how long it is written off over."""

    purchase_usd: Decimal
    amortisation_years: Decimal


@dataclass(frozen=True, slots=True)
class OwnedEnergy:
    usd_per_kwh: Decimal
    pue: Decimal
    """Facility power over IT power."""
    power_share_of_tdp: Decimal
    """Average draw as a share of TDP over the device's life."""


@dataclass(frozen=True, slots=True)
class DeviceCost:
    slug: str
    usd_per_device_hour: Decimal
    basis: Literal["cloud", "owned", "assumed"]
    source: str


def _decimal(value: object) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def cost_table(
    hardware: Sequence[Mapping[str, object]],
    *,
    basis: CostBasis = "cloud",
    owned: Mapping[str, OwnedDevice] | None = None,
    energy: OwnedEnergy | None = None,
    unpriced_usd_per_hour: Decimal | None,
) -> dict[str, DeviceCost]:
    """Price per device-hour of every class in ``hardware`` that has one (or gets the assumption)."""
    if basis == "owned" and energy is None:
        raise ValueError("the owned basis needs electricity price, PUE and power share (fleet file: owned_energy)")
    table: dict[str, DeviceCost] = {}
    for entry in hardware:
        slug = str(entry["id"])
        price: Decimal | None = None
        source = ""
        if basis == "cloud":
            prices = entry.get("cloud_prices")
            if isinstance(prices, list) and prices and isinstance(prices[0], dict):
                first = prices[0]
                price = _decimal(first.get("usd_per_gpu_hour"))
                where = f"{first.get('instance_type')} {first.get('region')}"
                source = f"{first.get('provider')} {where} ({first.get('source')})"
        else:
            device = (owned or {}).get(slug)
            tdp = _decimal(entry.get("tdp_watts"))
            if device is not None and tdp is not None and energy is not None:
                amortised = device.purchase_usd / (device.amortisation_years * HOURS_PER_YEAR)
                kw = tdp / 1000 * energy.power_share_of_tdp * energy.pue
                price = amortised + kw * energy.usd_per_kwh
                source = f"purchase {device.purchase_usd} USD over {device.amortisation_years} years + power"
        if price is not None:
            table[slug] = DeviceCost(slug=slug, usd_per_device_hour=price, basis=basis, source=source)
        elif unpriced_usd_per_hour is not None:
            table[slug] = DeviceCost(
                slug=slug,
                usd_per_device_hour=unpriced_usd_per_hour,
                basis="assumed",
                source="no published price: stated assumption",
            )
    return table
