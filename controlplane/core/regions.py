"""The fixed region codes (DESIGN section 2), used in queues, settings, headers and the price book."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RegionSpec:
    code: str
    name: str
    country: str
    zones: tuple[str, ...]


REGIONS: tuple[RegionSpec, ...] = (
    RegionSpec("sin", "Singapore", "SG", ("ASEAN", "APAC")),
    RegionSpec("cgk", "Jakarta", "ID", ("ASEAN", "APAC")),
    RegionSpec("dxb", "Dubai", "AE", ("GCC", "MENA")),
    RegionSpec("ruh", "Riyadh", "SA", ("GCC", "MENA")),
    RegionSpec("fra", "Frankfurt", "DE", ("EU", "EEA")),
    RegionSpec("iad", "Virginia", "US", ("NA",)),
    RegionSpec("gru", "São Paulo", "BR", ("LATAM", "MERCOSUR")),
    RegionSpec("hgh", "Hangzhou", "CN", ("APAC",)),
)

REGION_CODES: tuple[str, ...] = tuple(region.code for region in REGIONS)
ZONES: tuple[str, ...] = tuple(sorted({zone for region in REGIONS for zone in region.zones}))
COUNTRIES: tuple[str, ...] = tuple(region.country for region in REGIONS)


def region_db_alias(code: str) -> str:
    """Database alias of a region's store."""
    if code not in REGION_CODES:
        raise ValueError(f"unknown region code {code!r}; known: {', '.join(REGION_CODES)}")
    return f"region_{code}"


def region_queue(code: str) -> str:
    if code not in REGION_CODES:
        raise ValueError(f"unknown region code {code!r}")
    return f"region.{code}"


CENTRAL_QUEUE = "central"
