"""manage.py simulate_matrix: the scenario matrix of docs/tco.md (residency mixes x seeds x policies,
with and without the devices that have no published price, plus the dynamic policy with its mechanisms
switched off one by one), summarised as one JSON file; plots of one case."""

from __future__ import annotations

import json
import multiprocessing
import statistics
import sys
from argparse import ArgumentParser
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from controlplane.inference.management.commands.simulate import trace_path
from controlplane.scheduling.plots import plots_write
from controlplane.scheduling.runner import Mechanism, Policy, RunSpec, simulation_run
from controlplane.scheduling.scenario import SCENARIO_DIR

SCENARIOS = ("pinned", "balanced", "open")
VARIANTS: tuple[tuple[str, Policy, frozenset[Mechanism], bool], ...] = (
    ("static", "static", frozenset(), False),
    ("dynamic", "dynamic", frozenset({"mix", "pool"}), False),
    ("optimal", "optimal", frozenset(), False),
    ("dynamic-autoscaling-only", "dynamic", frozenset(), False),
    ("dynamic-mix", "dynamic", frozenset({"mix"}), False),
    ("static-priced-only", "static", frozenset(), True),
    ("dynamic-priced-only", "dynamic", frozenset({"mix", "pool"}), True),
    ("optimal-priced-only", "optimal", frozenset(), True),
)
SUMMARY_KEYS = (
    "total_cost_usd", "executed_cost_usd", "provisioned_bound_usd", "energy_kwh", "slo_attainment",
    "residency_violations", "quota_rejections", "refused_context", "deferred", "served", "instances", "wall_s",
    "accelerators_chosen",
)  # fmt: skip


def _ratios(
    runs: list[dict[str, Any]], numerator: str, denominator: str, key: str = "total_cost_usd"
) -> dict[str, float] | None:
    values = [r[numerator]["total_cost_usd"] / r[denominator][key] for r in runs if numerator in r and denominator in r]
    if not values:
        return None
    return {"median": statistics.median(values), "worst": max(values), "best": min(values)}


def _by_mix(cases: list[dict[str, Any]], numerator: str, denominator: str, key: str = "total_cost_usd") -> Any:
    return {mix: _ratios([c for c in cases if c["scenario"] == mix], numerator, denominator, key) for mix in SCENARIOS}


def _case(
    job: tuple[str, int],
    *,
    trace: Path,
    variants: list[tuple[str, Policy, frozenset[Mechanism], bool]],
    duration_s: float | None,
    rate_scale: int,
    plots: bool,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One mix and seed: every variant's summary, and the full reports of the case that is plotted."""
    scenario, seed = job
    case: dict[str, Any] = {"scenario": scenario, "seed": seed}
    plot_reports: list[dict[str, Any]] = []
    for name, policy, mechanisms, priced_only in variants:
        report = simulation_run(
            RunSpec(
                trace=trace, policy=policy, scenario=SCENARIO_DIR / f"{scenario}.json", seed=seed,
                duration_s=duration_s, mechanisms=mechanisms, exclude_unpriced=priced_only, rate_scale=rate_scale,
            )
        ).report  # fmt: skip
        case[name] = {k: report[k] for k in SUMMARY_KEYS if k in report}
        case[name]["per_class"] = {c: v["slo_attainment"] for c, v in report["per_class"].items()}
        if plots and scenario == SCENARIOS[0] and seed == 0 and name in ("static", "dynamic", "optimal"):
            plot_reports.append(report)
    return case, plot_reports


class Command(BaseCommand):
    help = "Run the scenario matrix and write its summary (JSON) and one case's plots."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--trace", default="azure-llm-inference-2023/AzureLLMInferenceTrace_conv.csv")
        parser.add_argument("--seeds", type=int, default=5)
        parser.add_argument("--duration", type=float, help="seconds of the trace (all when omitted)")
        parser.add_argument("--out", type=Path, required=True, help="summary JSON")
        parser.add_argument("--plots", type=Path, help="plots of the first scenario's first seed")
        parser.add_argument(
            "--rate-scale", type=int, default=1, help="each trace request stands for this many (volume x N)"
        )
        parser.add_argument(
            "--variants",
            default=",".join(name for name, *_ in VARIANTS),
            help="which runs of each case (default: all; static, dynamic and optimal are needed for the ratios)",
        )
        parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="which residency mixes")
        parser.add_argument("--jobs", type=int, default=1, help="cases run in parallel processes")

    def handle(self, *args: Any, **options: Any) -> None:
        trace = trace_path(options["trace"])
        wanted = {v.strip() for v in str(options["variants"]).split(",") if v.strip()}
        unknown = wanted - {name for name, *_ in VARIANTS}
        if unknown:
            raise CommandError(f"unknown variants {', '.join(sorted(unknown))}")
        variants = [v for v in VARIANTS if v[0] in wanted]
        scenarios = [m.strip() for m in str(options["scenarios"]).split(",") if m.strip()]
        if set(scenarios) - set(SCENARIOS):
            raise CommandError(f"unknown mixes; known: {', '.join(SCENARIOS)}")
        jobs = [(scenario, seed) for scenario in scenarios for seed in range(options["seeds"])]
        run = partial(
            _case,
            trace=trace,
            variants=variants,
            duration_s=options["duration"],
            rate_scale=options["rate_scale"],
            plots=options["plots"] is not None,
        )
        cases: list[dict[str, Any]] = []
        with tqdm(total=len(jobs), desc="matrix", unit="case", file=sys.stderr) as bar:
            if options["jobs"] > 1:
                with ProcessPoolExecutor(options["jobs"], mp_context=multiprocessing.get_context("fork")) as pool:
                    done = list(pool.map(run, jobs))
                    bar.update(len(jobs))
            else:
                done = []
                for job in jobs:
                    done.append(run(job))
                    bar.update(1)
        for case, plot_reports in done:
            if plot_reports:
                plots_write(plot_reports, options["plots"])
            cases.append(case)
        ratios = {
            "dynamic_over_static": ("dynamic", "static", "total_cost_usd"),
            "dynamic_over_optimal": ("dynamic", "optimal", "total_cost_usd"),
            "dynamic_over_optimal_provisioned": ("dynamic", "optimal", "provisioned_bound_usd"),
            "dynamic_over_static_priced_only": ("dynamic-priced-only", "static-priced-only", "total_cost_usd"),
            "dynamic_over_optimal_priced_only": ("dynamic-priced-only", "optimal-priced-only", "total_cost_usd"),
            "dynamic_over_optimal_provisioned_priced_only": (
                "dynamic-priced-only", "optimal-priced-only", "provisioned_bound_usd",
            ),
            "autoscaling_only_over_static": ("dynamic-autoscaling-only", "static", "total_cost_usd"),
            "mix_over_static": ("dynamic-mix", "static", "total_cost_usd"),
        }  # fmt: skip
        summary: dict[str, Any] = {"trace": trace.name, "rate_scale": options["rate_scale"], "cases": len(cases)}
        for label, (numerator, denominator, key) in ratios.items():
            summary[label] = _ratios(cases, numerator, denominator, key)
            summary[f"{label}_by_mix"] = _by_mix(cases, numerator, denominator, key)
        for name, *_ in variants:
            summary[f"{name}_slo_min"] = min(c[name]["slo_attainment"] for c in cases)
            summary[f"{name}_wall_s_max"] = max(c[name]["wall_s"] for c in cases)
        summary["residency_violations_total"] = sum(
            c[name]["residency_violations"] for c in cases for name, *_ in variants
        )
        summary["per_case"] = cases
        options["out"].parent.mkdir(parents=True, exist_ok=True)
        options["out"].write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
        self.stdout.write(json.dumps({k: v for k, v in summary.items() if k != "per_case"}, indent=1))
