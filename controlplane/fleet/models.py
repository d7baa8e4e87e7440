"""Regions, accelerator classes, hosts, catalog models and deployments (all central)."""

from __future__ import annotations

from django.db import models

from controlplane.core.models import CentralModel
from controlplane.core.regions import REGION_CODES


class Region(CentralModel):
    class Status(models.TextChoices):
        ACTIVE = "active", "active"
        MAINTENANCE = "maintenance", "maintenance"
        OFFLINE = "offline", "offline"

    code = models.CharField(max_length=8, unique=True, choices=[(c, c) for c in REGION_CODES])
    name = models.CharField(max_length=80)
    country = models.CharField(max_length=2, help_text="ISO 3166-1 alpha-2")
    zones = models.JSONField(default=list, help_text="e.g. ['GCC', 'MENA']")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    queue_name = models.CharField(max_length=32, unique=True)

    class Meta:
        ordering = ("code",)

    def __str__(self) -> str:
        return f"{self.code} ({self.name}, {self.country})"


class AcceleratorClass(CentralModel):
    """One accelerator model with its published specs and prices; unknown values stay null."""

    slug = models.SlugField(max_length=40, unique=True)
    name = models.CharField(max_length=120)
    vendor = models.CharField(max_length=60)
    family = models.CharField(max_length=20, help_text="npu, nvidia or amd; residency policies may pin one")
    kind = models.CharField(max_length=80)
    int8_tops_dense = models.DecimalField(max_digits=10, decimal_places=2, null=True, blank=True)
    int8_tops_sparse = models.DecimalField(max_digits=10, decimal_places=2, null=True, blank=True)
    fp8_tflops_dense = models.DecimalField(max_digits=10, decimal_places=2, null=True, blank=True)
    fp16_tflops_dense = models.DecimalField(max_digits=10, decimal_places=2, null=True, blank=True)
    fp16_tflops_sparse = models.DecimalField(max_digits=10, decimal_places=2, null=True, blank=True)
    bf16_tflops_dense = models.DecimalField(max_digits=10, decimal_places=2, null=True, blank=True)
    bf16_tflops_sparse = models.DecimalField(max_digits=10, decimal_places=2, null=True, blank=True)
    memory_gb = models.DecimalField(max_digits=8, decimal_places=2, null=True, blank=True)
    on_chip_memory_mb = models.IntegerField(null=True, blank=True)
    memory_type = models.CharField(max_length=80, blank=True)
    memory_bandwidth_gbps = models.DecimalField(max_digits=10, decimal_places=2, null=True, blank=True)
    tdp_watts = models.IntegerField(null=True, blank=True)
    host_interface = models.CharField(max_length=80, blank=True)
    process = models.CharField(max_length=120, blank=True)
    usd_per_gpu_hour = models.DecimalField(
        max_digits=12,
        decimal_places=6,
        null=True,
        blank=True,
        help_text="reference on-demand price per accelerator-hour (the first published cloud price); null if none",
    )
    cloud_prices = models.JSONField(default=list, blank=True)
    llm_throughput = models.JSONField(default=list, blank=True)
    other_benchmarks = models.JSONField(default=list, blank=True)
    notes = models.TextField(blank=True)
    sources = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ("slug",)
        verbose_name_plural = "accelerator classes"

    def __str__(self) -> str:
        return self.name


class Host(CentralModel):
    class Status(models.TextChoices):
        ACTIVE = "active", "active"
        DRAINING = "draining", "draining"
        DOWN = "down", "down"

    name = models.CharField(max_length=80, unique=True)
    region = models.ForeignKey(Region, on_delete=models.PROTECT, related_name="hosts")
    accelerator_class = models.ForeignKey(AcceleratorClass, on_delete=models.PROTECT, related_name="hosts")
    accelerator_count = models.PositiveSmallIntegerField(default=1)
    host_memory_gb = models.PositiveIntegerField(default=64)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE, db_index=True)
    last_heartbeat_at = models.DateTimeField(null=True, blank=True)
    max_concurrent_requests = models.PositiveIntegerField(default=8, help_text="batch slots on this host")

    class Meta:
        ordering = ("region__code", "name")

    def __str__(self) -> str:
        return self.name


class CatalogModel(CentralModel):
    class Status(models.TextChoices):
        AVAILABLE = "available", "available"
        PREVIEW = "preview", "preview"
        RETIRED = "retired", "retired"

    name = models.CharField(max_length=120, unique=True, help_text="the `model` clients send")
    display_name = models.CharField(max_length=120)
    family = models.CharField(max_length=40)
    architecture = models.CharField(max_length=20, help_text="GGUF general.architecture: llama, qwen2")
    parameters = models.BigIntegerField(help_text="parameter count")
    context_length = models.PositiveIntegerField()
    quantization = models.CharField(max_length=20)
    license = models.CharField(max_length=60)
    artifact_path = models.CharField(max_length=300, blank=True, help_text="how workers find the weights")
    artifact_sha256 = models.CharField(max_length=64, blank=True)
    artifact_bytes = models.BigIntegerField(null=True, blank=True)
    default_max_tokens = models.PositiveIntegerField(default=1024)
    supports_chat = models.BooleanField(default=True)
    supports_embeddings = models.BooleanField(default=True)
    embedding_dimensions = models.PositiveIntegerField(null=True, blank=True)
    source_url = models.URLField(blank=True)
    notes = models.TextField(blank=True, help_text="where the facts come from and what is not recorded")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.AVAILABLE)

    class Meta:
        ordering = ("family", "parameters")

    def __str__(self) -> str:
        return self.name

    @property
    def deployable(self) -> bool:
        return bool(self.artifact_path and self.artifact_sha256)


class Deployment(CentralModel):
    """Which host serves which catalog model."""

    class Status(models.TextChoices):
        ACTIVE = "active", "active"
        DISABLED = "disabled", "disabled"

    model = models.ForeignKey(CatalogModel, on_delete=models.CASCADE, related_name="deployments")
    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="deployments")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)

    class Meta:
        ordering = ("model__name", "host__name")
        constraints = (models.UniqueConstraint(fields=["model", "host"], name="deployment_unique_model_host"),)

    def __str__(self) -> str:
        return f"{self.model.name} on {self.host.name}"
