"""Input and output serializers of the fleet API: regions, accelerators, catalog, hosts, deployments."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from controlplane.core.api.serializers import StrictInputSerializer
from controlplane.core.errors import NotFound
from controlplane.fleet import selectors
from controlplane.fleet.models import AcceleratorClass, CatalogModel, Deployment, Host, Region

# --- Output ----------------------------------------------------------------------------------------


class RegionOutputSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]  # drf-stubs: untyped model serializer
    class Meta:
        model = Region
        fields = ("code", "name", "country", "zones", "status")
        read_only_fields = fields


class AcceleratorClassOutputSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]  # drf-stubs: untyped model serializer
    class Meta:
        model = AcceleratorClass
        fields = (
            "slug",
            "name",
            "vendor",
            "family",
            "kind",
            "int8_tops_dense",
            "int8_tops_sparse",
            "fp8_tflops_dense",
            "fp16_tflops_dense",
            "fp16_tflops_sparse",
            "bf16_tflops_dense",
            "bf16_tflops_sparse",
            "memory_gb",
            "on_chip_memory_mb",
            "memory_type",
            "memory_bandwidth_gbps",
            "tdp_watts",
            "host_interface",
            "process",
            "usd_per_gpu_hour",
            "cloud_prices",
            "llm_throughput",
            "other_benchmarks",
            "notes",
            "sources",
        )
        read_only_fields = fields


class CatalogModelOutputSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]  # drf-stubs: untyped model serializer
    deployable = serializers.BooleanField(read_only=True)

    class Meta:
        model = CatalogModel
        fields = (
            "name",
            "display_name",
            "family",
            "architecture",
            "parameters",
            "context_length",
            "quantization",
            "license",
            "deployable",
            "artifact_sha256",
            "artifact_bytes",
            "default_max_tokens",
            "supports_chat",
            "supports_embeddings",
            "embedding_dimensions",
            "source_url",
            "notes",
            "status",
        )
        read_only_fields = fields


class HostOutputSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]  # drf-stubs: untyped model serializer
    region = serializers.CharField(source="region.code", read_only=True)
    accelerator_class = serializers.CharField(source="accelerator_class.slug", read_only=True)

    class Meta:
        model = Host
        fields = (
            "id",
            "name",
            "region",
            "accelerator_class",
            "accelerator_count",
            "host_memory_gb",
            "max_concurrent_requests",
            "status",
            "last_heartbeat_at",
            "created_at",
            "updated_at",
        )
        read_only_fields = fields


class DeploymentOutputSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]  # drf-stubs: untyped model serializer
    model = serializers.CharField(source="model.name", read_only=True)
    host = serializers.IntegerField(source="host.id", read_only=True)
    host_name = serializers.CharField(source="host.name", read_only=True)
    region = serializers.CharField(source="host.region.code", read_only=True)

    class Meta:
        model = Deployment
        fields = ("id", "model", "host", "host_name", "region", "status", "created_at")
        read_only_fields = fields


# --- Input -----------------------------------------------------------------------------------------


class HostCreateInputSerializer(StrictInputSerializer):
    name = serializers.RegexField(r"^[a-z0-9][a-z0-9-]{1,78}[a-z0-9]$", max_length=80)
    region = serializers.CharField(max_length=8)
    accelerator_class = serializers.CharField(max_length=40)
    accelerator_count = serializers.IntegerField(min_value=1, max_value=64, default=1)
    host_memory_gb = serializers.IntegerField(min_value=1, max_value=65536, default=64)
    max_concurrent_requests = serializers.IntegerField(min_value=1, max_value=4096, default=8)

    def validate_region(self, value: str) -> Region:
        try:
            return selectors.region_get(code=value)
        except NotFound as exc:
            raise serializers.ValidationError(exc.message) from exc

    def validate_accelerator_class(self, value: str) -> AcceleratorClass:
        try:
            return selectors.accelerator_class_get(slug=value)
        except NotFound as exc:
            raise serializers.ValidationError(exc.message) from exc


class HostUpdateInputSerializer(StrictInputSerializer):
    status = serializers.ChoiceField(choices=Host.Status.choices, required=False)
    max_concurrent_requests = serializers.IntegerField(min_value=1, max_value=4096, required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not attrs:
            raise serializers.ValidationError("Give at least one of status, max_concurrent_requests.")
        return attrs


class DeploymentCreateInputSerializer(StrictInputSerializer):
    model = serializers.CharField(max_length=120)
    host = serializers.IntegerField(min_value=1)

    def validate_model(self, value: str) -> CatalogModel:
        try:
            return selectors.catalog_get(name=value)
        except NotFound as exc:
            raise serializers.ValidationError(exc.message) from exc

    def validate_host(self, value: int) -> Host:
        try:
            return selectors.host_get(host_id=value)
        except NotFound as exc:
            raise serializers.ValidationError(exc.message) from exc
