"""The simulator on a short slice of the Azure conversation trace: the three policies, their report, the
accounting, the residency check (with a positive control), the command end to end, and the pieces
(queueing, billing, the one-host-per-pool reduction, traces, costs, calibration)."""

from __future__ import annotations

import json
import random
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.inference.management.commands.simulate import traces_dir
from controlplane.scheduling.calibration import calibrate
from controlplane.scheduling.costs import OwnedDevice, OwnedEnergy, cost_table
from controlplane.scheduling.optimal import pack, solver_new
from controlplane.scheduling.policy import place
from controlplane.scheduling.pools import hardware_read
from controlplane.scheduling.runner import HARDWARE_FILE, RunSpec, simulation_run
from controlplane.scheduling.scenario import DEFAULT_FLEET, ScenarioError, fleet_load
from controlplane.scheduling.simulator import Demand, GroupKey, Instance, Simulation, representatives
from controlplane.scheduling.traces import TraceError, detect_unit, parse_columns, trace_load
from tests.scheduling.builders import host, request

# The first 300 s of the Azure LLM inference 2023 conversation trace (CC-BY 4.0, Patel et al.; the
# whole trace is in the shared data, see docs/tco.md), kept here so that a checkout anywhere can run it.
TRACES = Path(__file__).parent / "data"
CONV = TRACES / "azure-llm-inference-2023" / "AzureLLMInferenceTrace_conv.csv"


@pytest.fixture(autouse=True)
def _traces_here(settings: Any) -> None:
    settings.SIMULATOR_TRACES_DIR = str(TRACES)
    assert traces_dir() == TRACES
SLICE_S = 240.0
REPORT_KEYS = {
    "policy", "trace", "scenario", "seed", "total_cost_usd", "energy_kwh", "slo_attainment",
    "residency_violations", "quota_rejections", "refused_context", "per_class", "per_region", "per_accelerator",
}  # fmt: skip


@pytest.fixture(scope="module")
def reports() -> dict[str, dict[str, Any]]:
    return {
        policy: simulation_run(RunSpec(trace=CONV, policy=policy, duration_s=SLICE_S, seed=3)).report
        for policy in ("static", "dynamic", "optimal")
    }


def test_every_policy_reports_the_agreed_keys_with_zero_residency_violations(
    reports: dict[str, dict[str, Any]],
) -> None:
    for policy, report in reports.items():
        assert set(report) >= REPORT_KEYS, policy
        assert report["policy"] == policy
        assert report["residency_violations"] == 0
        slo = report["slo_attainment"]
        assert isinstance(slo, float)
        assert 0 <= slo <= 1
        assert report["served"] == sum(c["requests"] for c in report["per_class"].values())
        # quota refusals are counted apart from the served requests (br-fintech's tight quota)
        assert report["served"] + report["quota_rejections"] + report["refused_context"] == report["requests"]


def test_costs_add_up_and_the_optimum_bounds_the_online_policies(reports: dict[str, dict[str, Any]]) -> None:
    for report in reports.values():
        regions = sum(Decimal(str(r["cost_usd"])) for r in report["per_region"].values())
        accelerators = sum(Decimal(str(a["cost_usd"])) for a in report["per_accelerator"].values())
        total = Decimal(str(report.get("executed_cost_usd", report["total_cost_usd"])))
        assert abs(regions - total) < Decimal("0.0001")
        assert abs(accelerators - total) < Decimal("0.0001")
        assert report["energy_kwh"] > 0
    bound = reports["optimal"]["total_cost_usd"]
    assert isinstance(bound, float)
    assert 0 < bound <= reports["dynamic"]["total_cost_usd"]
    assert bound <= reports["static"]["total_cost_usd"]
    assert reports["optimal"]["executed_cost_usd"] >= bound
    # the bound over all windows at once, provisioning paid, is tighter and still under the online policies
    provisioned = reports["optimal"]["provisioned_bound_usd"]
    assert bound * 0.999 <= provisioned <= reports["dynamic"]["total_cost_usd"]
    # static pins one class per region and model for the whole run: its pools are listed
    assert reports["static"]["static_pools"]


def test_residency_violations_are_counted_when_a_request_leaves_its_allowance(monkeypatch: pytest.MonkeyPatch) -> None:
    """Positive control for the zero above: placing every request over every region is caught."""
    everywhere = frozenset({"sin", "cgk", "dxb", "ruh", "fra", "iad", "gru", "hgh"})
    monkeypatch.setattr(Simulation, "regions_of", lambda self, r: everywhere)
    report = simulation_run(RunSpec(trace=CONV, policy="dynamic", duration_s=60.0, seed=3)).report
    assert report["residency_violations"] > 0


def test_the_command_writes_the_report_and_the_plots(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    call_command(
        "simulate", "--trace", "azure-llm-inference-2023/AzureLLMInferenceTrace_conv.csv", "--policy", "static",
        "--duration", "120", "--seed", "1", "--json", str(out), "--plots", str(tmp_path / "plots"), "--no-progress",
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert set(report) >= REPORT_KEYS
    assert report["seed"] == 1
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "cost_over_time.png", "slo_attainment.png", "utilisation.png",
    ]  # fmt: skip
    with pytest.raises(CommandError, match="no trace"):
        call_command("simulate", "--trace", "missing.csv", "--policy", "static", "--no-progress")
    with pytest.raises(CommandError, match="unknown mechanisms"):
        call_command("simulate", "--trace", str(CONV), "--policy", "dynamic", "--mechanisms", "spot", "--no-progress")


def test_excluding_unpriced_devices_removes_the_hanguang_800() -> None:
    hardware = hardware_read(HARDWARE_FILE)
    assumed = cost_table(hardware, unpriced_usd_per_hour=Decimal("0.526"))
    excluded = cost_table(hardware, unpriced_usd_per_hour=None)
    assert assumed["hanguang-800"].basis == "assumed"
    assert "hanguang-800" not in excluded
    assert excluded["nvidia-t4"].usd_per_device_hour == Decimal("0.526")  # the first listed price, as live


def test_an_owned_device_costs_amortisation_plus_power_never_the_cloud_price_too() -> None:
    hardware = hardware_read(HARDWARE_FILE)
    energy = OwnedEnergy(usd_per_kwh=Decimal("0.10"), pue=Decimal("1.5"), power_share_of_tdp=Decimal("0.5"))
    owned = {"nvidia-t4": OwnedDevice(purchase_usd=Decimal("8760"), amortisation_years=Decimal(1))}
    table = cost_table(hardware, basis="owned", owned=owned, energy=energy, unpriced_usd_per_hour=None)
    # 8760 USD over 8760 h = 1 USD/h; 70 W * 0.5 * 1.5 = 0.0525 kW at 0.10 USD/kWh = 0.00525 USD/h
    assert table["nvidia-t4"].usd_per_device_hour == Decimal("1.00525")
    assert set(table) == {"nvidia-t4"}  # no cloud prices mixed in
    with pytest.raises(ValueError, match="owned basis"):
        cost_table(hardware, basis="owned", owned=owned, unpriced_usd_per_hour=None)


def test_calibration_comes_from_the_three_mlperf_results_and_stays_a_fraction() -> None:
    table = calibrate(hardware_read(HARDWARE_FILE))
    measured = {slug for slug, u in table.items() if u.source == "mlperf"}
    assert measured == {"nvidia-h100-sxm", "nvidia-h200-sxm", "amd-mi300x"}
    for u in table.values():
        assert 0 < u.compute <= 1
    assert table["nvidia-t4"].source == "median"


def test_a_pool_instance_is_a_first_come_first_served_queue_over_its_slots() -> None:
    pool = simulation_run(RunSpec(trace=CONV, policy="static", duration_s=30.0)).simulation.pools[0]
    instance = Instance(instance_id=1, pool=pool, requested_at=0.0, ready_at=0.0)
    starts = [instance.assign(0.0, 10.0) for _ in range(pool.slots + 2)]
    assert starts[: pool.slots] == [0.0] * pool.slots
    assert starts[pool.slots :] == [10.0, 10.0]  # the next two wait for the first slots to free
    assert instance.load(5.0) == (pool.slots, 2)
    assert instance.load(10.0) == (2, 0)
    assert instance.paid_until(61.0, 60) == 120.0  # billed in whole units from the order
    assert instance.paid_until(0.0, 60) == 60.0  # at least one unit


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_one_host_per_pool_gives_the_policy_the_same_decision_as_every_host(seed: int) -> None:
    rng = random.Random(seed)
    hosts = []
    for host_id in range(1, rng.randint(1, 12) + 1):
        accelerator, region = rng.choice([("nvidia-t4", "dxb"), ("nvidia-l4", "dxb"), ("nvidia-t4", "ruh")])
        hosts.append(
            host(
                host_id,
                accelerator,
                region,
                slots=4,
                running=rng.randint(0, 4),
                queued=rng.choice([0, 0, 3, 16]),
                live=rng.random() > 0.1,
            )
        )
    asked = request(allowed=("dxb", "ruh"), workload=rng.choice(["interactive", "batch", "embedding"]))
    full, reduced = place(asked, hosts), place(asked, representatives(hosts))
    assert (full.host_id, full.refusal) == (reduced.host_id, reduced.refusal)


def test_traces_name_their_columns_and_units(tmp_path: Path) -> None:
    csv_ms = tmp_path / "ms.csv"
    csv_ms.write_text("arrival_time,prompt_tokens,completion_tokens\n0,10,5\n120000,20,6\n60000,30,7\n")
    trace = trace_load(csv_ms)
    assert trace.time_unit == "ms"
    assert [(r.t, r.input_tokens) for r in trace.requests] == [(0.0, 10), (60.0, 30), (120.0, 20)]
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text('{"ts": 5.5, "a": 1, "b": 2}\n{"ts": 6.0, "a": 3, "b": 4}\n')
    with pytest.raises(TraceError, match="no time column"):
        trace_load(jsonl)
    named = trace_load(jsonl, columns=parse_columns("time=ts,input=a,output=b"), time_unit="s")
    assert [(r.t, r.output_tokens) for r in named.requests] == [(0.0, 2), (0.5, 4)]
    conv = trace_load(CONV, duration_s=60.0)
    assert conv.time_unit == "iso"
    assert conv.start_utc_hour is not None
    assert 18 <= conv.start_utc_hour < 19
    assert detect_unit("t", ["1.5", "2.5"]) == "s"
    with pytest.raises(TraceError):
        parse_columns("when=x")


def test_fleet_files_refuse_provisioning_or_billing_under_a_minute(tmp_path: Path) -> None:
    data = json.loads(DEFAULT_FLEET.read_text())
    assert fleet_load(DEFAULT_FLEET).provision_delay_s >= 60
    data["provision_delay_s"] = 30
    bad = tmp_path / "fleet.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(ScenarioError, match="at least 60 s"):
        fleet_load(bad)


def test_the_dynamic_planner_keeps_its_fleet_unless_a_change_pays_for_itself() -> None:
    """The packing programme with the current fleet: a new instance costs its start on top, so a pool that
    already runs keeps the demand unless another is cheaper by more than that."""
    sim = simulation_run(RunSpec(trace=CONV, policy="static", duration_s=30.0)).simulation
    key: GroupKey = (frozenset({"iad"}), "Qwen2.5-7B-Instruct", "interactive")
    options = sim.feasible(*key)
    cheapest = min(options, key=lambda p: (p.usd_per_hour, p.index))
    dearer = min((p for p in options if p.usd_per_hour > cheapest.usd_per_hour), key=lambda p: p.usd_per_hour)
    small = {key: Demand(count=1, input_tokens=100, output_tokens=10)}
    highs = solver_new(5.0)

    def plan(current: dict[int, int] | None, start_cost: float) -> dict[int, int]:
        return pack(highs, sim=sim, groups=small, utilisation=0.9, options=lambda k: options,
                    current=current, start_cost=start_cost).instances  # fmt: skip

    assert plan(None, 0.0) == {cheapest.index: 1}
    # running the dearer class already: switching would cost the cheaper one's start, more than it saves
    ratio = float(dearer.usd_per_hour / cheapest.usd_per_hour)
    assert plan({dearer.index: 1}, start_cost=ratio) == {dearer.index: 1}
    assert plan({dearer.index: 1}, start_cost=0.0) == {cheapest.index: 1}


def test_the_rate_scale_multiplies_the_volume_and_keeps_the_shape() -> None:
    once = simulation_run(RunSpec(trace=CONV, policy="static", duration_s=30.0, seed=2)).report
    thrice = simulation_run(RunSpec(trace=CONV, policy="static", duration_s=30.0, seed=2, rate_scale=3)).report
    assert thrice["requests"] == once["requests"]  # the trace's own rows
    assert thrice["served"] + thrice["quota_rejections"] + thrice["refused_context"] == 3 * once["requests"]
    with pytest.raises(ValueError, match="rate scale"):
        simulation_run(RunSpec(trace=CONV, policy="static", duration_s=30.0, rate_scale=0))
