"""The simulator's plots (matplotlib, PNG): cost over time per policy, utilisation per accelerator class,
SLO attainment per workload class. Input: one or more reports as ``runner.report_build`` writes them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never a display

import matplotlib.pyplot as plt


def _label(report: dict[str, Any]) -> str:
    mechanisms = report.get("mechanisms")
    suffix = (
        f" ({'+'.join(mechanisms) or 'autoscaling only'})" if mechanisms is not None and len(mechanisms) < 2 else ""
    )
    return f"{report['policy']}{suffix}"


def plots_write(reports: Sequence[dict[str, Any]], directory: Path) -> list[Path]:
    """Write the three plots for ``reports`` into ``directory``; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    figure, axes = plt.subplots(figsize=(8, 4.5))
    for report in reports:
        times = [point["t_s"] / 60 for point in report["timeline"]]
        running = 0.0
        cumulative = []
        for point in report["timeline"]:
            running += point["cost_usd"]
            cumulative.append(running)
        if "executed_cost_usd" in report:
            label = (
                f"{_label(report)}: lower bound {report['total_cost_usd']:.2f} USD "
                f"(curve: its plan executed, {report['executed_cost_usd']:.2f} USD)"
            )
        else:
            label = f"{_label(report)}: {report['total_cost_usd']:.2f} USD"
        axes.plot(times, cumulative, label=label)
    axes.set_xlabel("minutes into the trace")
    axes.set_ylabel("cumulative cost (USD)")
    axes.set_title(f"Cost over time: {reports[0]['trace']}, scenario {reports[0]['scenario']}")
    axes.legend()
    figure.tight_layout()
    path = directory / "cost_over_time.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    written.append(path)

    figure, grid = plt.subplots(len(reports), 1, figsize=(8, 3 * len(reports)), squeeze=False)
    for row, report in zip(grid, reports, strict=True):
        axes = row[0]
        slugs = sorted({slug for point in report["timeline"] for slug in point["utilisation"]})
        for slug in slugs:
            xs = [p["t_s"] / 60 for p in report["timeline"] if p["utilisation"].get(slug) is not None]
            ys = [p["utilisation"][slug] for p in report["timeline"] if p["utilisation"].get(slug) is not None]
            axes.plot(xs, ys, label=slug)
        axes.set_ylim(0, 1)
        axes.set_ylabel("busy share of slots")
        axes.set_title(f"Utilisation per accelerator class: {_label(report)}")
        axes.legend(fontsize="small", ncol=2)
    grid[-1][0].set_xlabel("minutes into the trace")
    figure.tight_layout()
    path = directory / "utilisation.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    written.append(path)

    figure, axes = plt.subplots(figsize=(8, 4.5))
    classes = sorted({c for report in reports for c in report["per_class"]})
    width = 0.8 / max(1, len(reports))
    for i, report in enumerate(reports):
        values = [report["per_class"].get(c, {}).get("slo_attainment") or 0.0 for c in classes]
        axes.bar([x + i * width for x in range(len(classes))], values, width=width, label=_label(report))
    axes.set_xticks([x + width * (len(reports) - 1) / 2 for x in range(len(classes))], classes)
    axes.set_ylim(0.9, 1.0)
    axes.axhline(0.99, color="black", linewidth=0.8, linestyle="--")
    axes.set_ylabel("SLO attainment")
    axes.set_title("SLO attainment per workload class (dashed: 0.99)")
    axes.legend()
    figure.tight_layout()
    path = directory / "slo_attainment.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    written.append(path)
    return written
