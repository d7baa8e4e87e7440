"""manage.py simulate_matrix: the scenario matrix of docs/tco.md (residency mixes x seeds x policies,
with and without the devices that have no published price, plus the dynamic policy with its mechanisms
switched off one by one), summarised as one JSON file; plots of one case."""

from __future__ import annotations

import json
import statistics
import sys
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand
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
    "total_cost_usd", "executed_cost_usd", "energy_kwh", "slo_attainment", "residency_violations",
    "quota_rejections", "refused_context", "deferred", "served", "instances", "wall_s", "accelerators_chosen",
)  # fmt: skip


def _ratios(runs: list[dict[str, Any]], numerator: str, denominator: str) -> dict[str, float]:
    values = [r[numerator]["total_cost_usd"] / r[denominator]["total_cost_usd"] for r in runs]
    return {"median": statistics.median(values), "worst": max(values), "best": min(values)}


class Command(BaseCommand):
    help = "Run the scenario matrix and write its summary (JSON) and one case's plots."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--trace", default="azure-llm-inference-2023/AzureLLMInferenceTrace_conv.csv")
        parser.add_argument("--seeds", type=int, default=5)
        parser.add_argument("--duration", type=float, help="seconds of the trace (all when omitted)")
        parser.add_argument("--out", type=Path, required=True, help="summary JSON")
        parser.add_argument("--plots", type=Path, help="plots of the first scenario's first seed")

    def handle(self, *args: Any, **options: Any) -> None:
        trace = trace_path(options["trace"])
        cases: list[dict[str, Any]] = []
        total = len(SCENARIOS) * options["seeds"] * len(VARIANTS)
        with tqdm(total=total, desc="matrix", unit="run", file=sys.stderr) as bar:
            for scenario in SCENARIOS:
                for seed in range(options["seeds"]):
                    case: dict[str, Any] = {"scenario": scenario, "seed": seed}
                    for name, policy, mechanisms, priced_only in VARIANTS:
                        report = simulation_run(
                            RunSpec(
                                trace=trace, policy=policy, scenario=SCENARIO_DIR / f"{scenario}.json", seed=seed,
                                duration_s=options["duration"], mechanisms=mechanisms, exclude_unpriced=priced_only,
                            )
                        ).report  # fmt: skip
                        case[name] = {k: report[k] for k in SUMMARY_KEYS if k in report}
                        case[name]["per_class"] = {c: v["slo_attainment"] for c, v in report["per_class"].items()}
                        if scenario == SCENARIOS[0] and seed == 0 and options["plots"] and name in (
                            "static", "dynamic", "optimal",
                        ):  # fmt: skip
                            case.setdefault("_plot_reports", []).append(report)
                        bar.update(1)
                    if "_plot_reports" in case:
                        plots_write(case.pop("_plot_reports"), options["plots"])
                    cases.append(case)
        summary = {
            "trace": trace.name,
            "cases": len(cases),
            "dynamic_over_static": _ratios(cases, "dynamic", "static"),
            "dynamic_over_optimal": _ratios(cases, "dynamic", "optimal"),
            "dynamic_over_static_priced_only": _ratios(cases, "dynamic-priced-only", "static-priced-only"),
            "dynamic_over_optimal_priced_only": _ratios(cases, "dynamic-priced-only", "optimal-priced-only"),
            "autoscaling_only_over_static": _ratios(cases, "dynamic-autoscaling-only", "static"),
            "mix_over_static": _ratios(cases, "dynamic-mix", "static"),
            "dynamic_slo_min": min(c["dynamic"]["slo_attainment"] for c in cases),
            "static_slo_min": min(c["static"]["slo_attainment"] for c in cases),
            "residency_violations_total": sum(c[name]["residency_violations"] for c in cases for name, *_ in VARIANTS),
            "per_case": cases,
        }
        options["out"].parent.mkdir(parents=True, exist_ok=True)
        options["out"].write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
        self.stdout.write(json.dumps({k: v for k, v in summary.items() if k != "per_case"}, indent=1))
