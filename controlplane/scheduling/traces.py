"""Request traces for the simulator: any CSV or JSONL file with a time column and input and output token
columns (the Azure LLM inference traces, Mooncake, BurstGPT, or one's own).

Columns are named with ``time=...,input=...,output=...`` or found among well-known names. Times may be
seconds or milliseconds (numbers) or ISO datetimes; the unit is detected when not given:
ISO when the value does not parse as a number; for numbers, ``ms`` when the column's name says so,
epoch milliseconds above 1e12, epoch seconds above 1e9, otherwise (relative times) milliseconds when the
mean gap between requests exceeds 50 units (a trace averaging one request per 50 s is rare; one per
50 ms common), else seconds. Rows are returned in time order, relative to the first request.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

TimeUnit = Literal["s", "ms", "iso"]
TIME_UNITS: tuple[TimeUnit, ...] = ("s", "ms", "iso")

_KNOWN = {
    "time": ("TIMESTAMP", "timestamp", "Timestamp", "time", "arrival_time", "created"),
    "input": ("ContextTokens", "input_length", "input_tokens", "Request tokens", "prompt_tokens", "input"),
    "output": ("GeneratedTokens", "output_length", "output_tokens", "Response tokens", "completion_tokens", "output"),
}


class TraceError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class TraceRequest:
    t: float
    """Seconds since the trace's first request."""
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class Trace:
    name: str
    requests: tuple[TraceRequest, ...]
    time_unit: TimeUnit
    columns: Mapping[str, str]
    start_utc_hour: float | None = None
    """Hour of day (UTC) of the first request when the trace has absolute times, else None."""

    @property
    def duration_s(self) -> float:
        return self.requests[-1].t if self.requests else 0.0


def parse_columns(spec: str | None) -> dict[str, str]:
    """``time=TIMESTAMP,input=ContextTokens,output=GeneratedTokens`` → a mapping (all three keys)."""
    if not spec:
        return {}
    result: dict[str, str] = {}
    for part in spec.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in _KNOWN or not value.strip():
            raise TraceError(f"--columns takes time=...,input=...,output=...; got {part!r}")
        result[key] = value.strip()
    return result


def _rows(path: Path) -> Iterator[Mapping[str, object]]:
    if path.suffix.lower() in {".jsonl", ".ndjson"}:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise TraceError(f"{path.name} line {number}: not a JSON object")
                    yield row
    else:
        with path.open(encoding="utf-8", newline="") as handle:
            yield from csv.DictReader(handle)


def _pick(fields: list[str], role: str, given: Mapping[str, str]) -> str:
    if role in given:
        if given[role] not in fields:
            raise TraceError(f"column {given[role]!r} not in the trace (it has {', '.join(fields)})")
        return given[role]
    for name in _KNOWN[role]:
        if name in fields:
            return name
    raise TraceError(f"no {role} column found among {', '.join(fields)}; name it with --columns {role}=...")


def _number(value: object) -> float | None:
    try:
        number = float(str(value))
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _iso_seconds(value: object) -> float:
    text = str(value).strip().replace("Z", "+00:00")
    # Python's parser takes at most six fractional digits; the Azure traces carry seven.
    head, dot, tail = text.partition(".")
    if dot:
        digits = "".join(c for c in tail if c.isdigit())
        rest = tail[len(digits) :]
        text = f"{head}.{digits[:6]}{rest}"
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # traces without a zone are read as UTC
    return moment.timestamp()


def detect_unit(column: str, values: list[object]) -> TimeUnit:
    numbers = [_number(v) for v in values]
    if any(n is None for n in numbers):
        return "iso"
    present = [n for n in numbers if n is not None]
    if "ms" in column.lower():
        return "ms"
    top = max(present, default=0.0)
    if top > 1e12:
        return "ms"
    if top > 1e9:
        return "s"
    span = top - min(present, default=0.0)
    mean_gap = span / max(1, len(present) - 1)
    return "ms" if mean_gap > 50 else "s"


def trace_load(
    path: Path,
    *,
    columns: Mapping[str, str] | None = None,
    time_unit: TimeUnit | None = None,
    start_s: float = 0.0,
    duration_s: float | None = None,
) -> Trace:
    """The trace at ``path``, optionally the slice [start_s, start_s + duration_s) of it (relative to the
    first request), re-based so that the slice starts at 0."""
    rows = list(_rows(path))
    if not rows:
        raise TraceError(f"{path.name} has no rows")
    fields = list(rows[0].keys())
    given = dict(columns or {})
    time_col, input_col, output_col = (_pick(fields, role, given) for role in ("time", "input", "output"))
    unit = time_unit or detect_unit(time_col, [row[time_col] for row in rows])
    parsed: list[tuple[float, int, int]] = []
    for number, row in enumerate(rows, 2):
        raw = row.get(time_col)
        if unit == "iso":
            stamp = _iso_seconds(raw)
        else:
            value = _number(raw)
            if value is None:
                raise TraceError(f"{path.name} row {number}: time {raw!r} is not a number (use --time-unit iso)")
            stamp = value / 1000 if unit == "ms" else value
        tokens_in, tokens_out = _number(row.get(input_col)), _number(row.get(output_col))
        if tokens_in is None or tokens_out is None or tokens_in < 0 or tokens_out < 0:
            raise TraceError(f"{path.name} row {number}: token counts must be non-negative numbers")
        parsed.append((stamp, int(tokens_in), int(tokens_out)))
    parsed.sort(key=lambda item: item[0])
    origin = parsed[0][0]
    end = math.inf if duration_s is None else start_s + duration_s
    requests = tuple(
        TraceRequest(t=stamp - origin - start_s, input_tokens=tokens_in, output_tokens=tokens_out)
        for stamp, tokens_in, tokens_out in parsed
        if start_s <= stamp - origin < end
    )
    if not requests:
        raise TraceError(f"{path.name}: no request in the slice starting at {start_s} s")
    start_utc_hour: float | None = None
    first = origin + start_s
    if unit == "iso" or first > 1e9:
        moment = datetime.fromtimestamp(first, tz=UTC)
        start_utc_hour = moment.hour + moment.minute / 60 + moment.second / 3600
    return Trace(
        name=path.name,
        requests=requests,
        time_unit=unit,
        columns={"time": time_col, "input": input_col, "output": output_col},
        start_utc_hour=start_utc_hour,
    )
