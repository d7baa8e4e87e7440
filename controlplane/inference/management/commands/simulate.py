"""manage.py simulate: replay a request trace over the simulated multi-region fleet under one placement
policy (static, dynamic or optimal) and report cost, energy, SLO attainment and residency (see
controlplane/scheduling/simulator.py and docs/tco.md)."""

from __future__ import annotations

import json
import sys
from argparse import ArgumentParser
from pathlib import Path
from typing import Any, cast

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from controlplane.scheduling.plots import plots_write
from controlplane.scheduling.runner import MECHANISMS, POLICIES, Mechanism, Policy, RunSpec, simulation_run
from controlplane.scheduling.scenario import DEFAULT_FLEET, DEFAULT_SCENARIO, ScenarioError
from controlplane.scheduling.traces import TIME_UNITS, TimeUnit, TraceError, parse_columns


def traces_dir() -> Path:
    """The shared trace collection: ``SIMULATOR_TRACES_DIR`` when set, else ``shared/data/traces`` next
    to the checkout."""
    configured = getattr(settings, "SIMULATOR_TRACES_DIR", None)
    return Path(configured) if configured else Path(settings.BASE_DIR).parent / "shared" / "data" / "traces"


def trace_path(given: str) -> Path:
    """A trace named as a path, or relative to the shared trace collection."""
    path = Path(given)
    if path.is_file():
        return path
    shared = traces_dir() / given
    if shared.is_file():
        return shared
    raise CommandError(f"no trace at {given} (nor under {traces_dir()})")


class Command(BaseCommand):
    help = "Replay a trace under a placement policy; print (or write) the JSON report."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--trace", required=True, help="CSV or JSONL; a path, or relative to shared/data/traces")
        parser.add_argument("--policy", required=True, choices=POLICIES)
        parser.add_argument("--scenario", type=Path, default=DEFAULT_SCENARIO)
        parser.add_argument("--fleet", type=Path, default=DEFAULT_FLEET)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--json", type=Path, dest="json_out", help="write the report here (else stdout)")
        parser.add_argument("--plots", type=Path, help="write PNG plots into this folder")
        parser.add_argument("--columns", help="time=...,input=...,output=... (found by name when omitted)")
        parser.add_argument("--time-unit", choices=TIME_UNITS, help="s, ms or iso (detected when omitted)")
        parser.add_argument("--start", type=float, default=0.0, help="seconds into the trace to start at")
        parser.add_argument("--duration", type=float, help="seconds of the trace to replay (all when omitted)")
        parser.add_argument(
            "--exclude-unpriced", action="store_true", help="leave out devices without a published price"
        )
        parser.add_argument(
            "--mechanisms",
            default=",".join(MECHANISMS),
            help="dynamic only: which of mix,pool to use (empty: autoscaling alone)",
        )
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        mechanisms = {m.strip() for m in str(options["mechanisms"]).split(",") if m.strip()}
        unknown = mechanisms - set(MECHANISMS)
        if unknown:
            raise CommandError(f"unknown mechanisms {', '.join(sorted(unknown))}; known: {', '.join(MECHANISMS)}")
        try:
            spec = RunSpec(
                trace=trace_path(options["trace"]),
                policy=cast(Policy, options["policy"]),
                scenario=options["scenario"],
                fleet=options["fleet"],
                seed=options["seed"],
                columns=parse_columns(options["columns"]) or None,
                time_unit=cast(TimeUnit | None, options["time_unit"]),
                start_s=options["start"],
                duration_s=options["duration"],
                exclude_unpriced=options["exclude_unpriced"],
                mechanisms=frozenset(cast(set[Mechanism], mechanisms)),
            )
            with tqdm(
                desc=f"simulate {spec.policy}", unit="req", disable=options["no_progress"], file=sys.stderr
            ) as bar:

                def advance(done: int) -> None:
                    bar.update(done)

                result = simulation_run(spec, progress=advance)
        except (TraceError, ScenarioError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        document = json.dumps(result.report, indent=1)
        if options["json_out"] is not None:
            options["json_out"].parent.mkdir(parents=True, exist_ok=True)
            options["json_out"].write_text(document + "\n", encoding="utf-8")
            self.stderr.write(f"report written to {options['json_out']}")
        else:
            self.stdout.write(document)
        if options["plots"] is not None:
            written = plots_write([result.report], options["plots"])
            self.stderr.write(f"plots: {', '.join(str(p) for p in written)}")
