"""Operators' admin of the fleet. Every change goes through a service, so that it leaves an audit row."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.forms import ModelForm
from django.http import HttpRequest
from django.utils import timezone

from controlplane.core.admin import ReadOnlyAdmin, admin_actor
from controlplane.core.errors import DomainError
from controlplane.fleet import services
from controlplane.fleet.models import AcceleratorClass, CatalogModel, Deployment, Host, Region


def _region_status_action(status: str) -> Any:
    @admin.action(description=f"Mark selected regions {status}")
    def action(modeladmin: RegionAdmin, request: HttpRequest, queryset: QuerySet[Region]) -> None:
        for region in queryset:
            services.region_set_status(actor=admin_actor(request), region=region, status=status)
        modeladmin.message_user(request, f"{queryset.count()} region(s) marked {status}.")

    action.__name__ = f"mark_{status}"
    return action


@admin.register(Region)
class RegionAdmin(ReadOnlyAdmin):
    list_display = ("code", "name", "country", "zones", "status", "queue_name")
    list_filter = ("status", "country")
    search_fields = ("code", "name", "country")
    actions = (
        _region_status_action(Region.Status.ACTIVE),
        _region_status_action(Region.Status.MAINTENANCE),
        _region_status_action(Region.Status.OFFLINE),
    )


@admin.register(AcceleratorClass)
class AcceleratorClassAdmin(ReadOnlyAdmin):
    list_display = (
        "slug",
        "name",
        "family",
        "memory_gb",
        "on_chip_memory_mb",
        "bf16_tflops_dense",
        "int8_tops_dense",
        "tdp_watts",
        "usd_per_gpu_hour",
    )
    list_filter = ("family", "vendor")
    search_fields = ("slug", "name", "vendor")


@admin.register(CatalogModel)
class CatalogModelAdmin(ReadOnlyAdmin):
    list_display = (
        "name",
        "architecture",
        "parameters",
        "context_length",
        "quantization",
        "license",
        "is_deployable",
        "status",
    )
    list_filter = ("status", "architecture", "family", "license")
    search_fields = ("name", "display_name", "family")

    @admin.display(boolean=True, description="deployable")
    def is_deployable(self, obj: CatalogModel) -> bool:
        return obj.deployable


def _host_status_action(status: str, description: str) -> Any:
    @admin.action(description=description)
    def action(modeladmin: HostAdmin, request: HttpRequest, queryset: QuerySet[Host]) -> None:
        _hosts_apply(modeladmin, request, queryset, status)

    action.__name__ = f"mark_{status}"
    return action


def _hosts_apply(modeladmin: HostAdmin, request: HttpRequest, queryset: QuerySet[Host], status: str) -> None:
    actor = admin_actor(request)
    done = 0
    for host in queryset:
        try:
            if status == Host.Status.DRAINING:
                services.host_drain(actor=actor, host=host)
            else:
                services.host_set_status(actor=actor, host=host, status=status)
        except DomainError as exc:
            modeladmin.message_user(request, f"{host.name}: {exc.message}", level=messages.ERROR)
        else:
            done += 1
    modeladmin.message_user(request, f"{done} host(s) now {status}.")


_HOST_ADD_FIELDS = (
    "name",
    "region",
    "accelerator_class",
    "accelerator_count",
    "host_memory_gb",
    "max_concurrent_requests",
)


@admin.register(Host)
class HostAdmin(admin.ModelAdmin):  # type: ignore[type-arg]  # django-stubs: generic over the model, not subscriptable at runtime
    list_display = (
        "name",
        "region",
        "accelerator_class",
        "accelerator_count",
        "status",
        "heartbeat_age",
        "max_concurrent_requests",
    )
    list_filter = ("status", "region", "accelerator_class__family", "accelerator_class")
    search_fields = ("name", "region__code", "accelerator_class__slug")
    list_select_related = ("region", "accelerator_class")
    actions = (
        _host_status_action(Host.Status.DRAINING, "Drain selected hosts (no new work)"),
        _host_status_action(Host.Status.DOWN, "Mark selected hosts down"),
        _host_status_action(Host.Status.ACTIVE, "Mark selected hosts active"),
    )

    @admin.display(description="heartbeat age", ordering="-last_heartbeat_at")
    def heartbeat_age(self, obj: Host) -> str:
        if obj.last_heartbeat_at is None:
            return "never"
        age = timezone.now() - obj.last_heartbeat_at
        return str(max(age, timedelta(0))).split(".")[0]

    def get_fields(self, request: HttpRequest, obj: Host | None = None) -> tuple[str, ...]:
        if obj is None:
            return _HOST_ADD_FIELDS
        return (*_HOST_ADD_FIELDS, "status", "last_heartbeat_at")

    def get_readonly_fields(self, request: HttpRequest, obj: Host | None = None) -> list[str]:
        if obj is None:
            return []
        # Status changes go through the actions (drain, down, active); identity is fixed.
        return [
            "name",
            "region",
            "accelerator_class",
            "accelerator_count",
            "host_memory_gb",
            "status",
            "last_heartbeat_at",
        ]

    def save_model(self, request: HttpRequest, obj: Host, form: ModelForm[Host], change: bool) -> None:
        actor = admin_actor(request)
        if change:
            saved = services.host_update(
                actor=actor, host=obj, max_concurrent_requests=form.cleaned_data["max_concurrent_requests"]
            )
        else:
            saved = services.host_create(
                actor=actor,
                name=form.cleaned_data["name"],
                region=form.cleaned_data["region"],
                accelerator_class=form.cleaned_data["accelerator_class"],
                accelerator_count=form.cleaned_data["accelerator_count"],
                host_memory_gb=form.cleaned_data["host_memory_gb"],
                max_concurrent_requests=form.cleaned_data["max_concurrent_requests"],
            )
        obj.pk = saved.pk

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Hosts are drained or marked down, never deleted: requests and receipts name them.
        return False


def _deployment_status_action(status: str) -> Any:
    @admin.action(description=f"Mark selected deployments {status}")
    def action(modeladmin: DeploymentAdmin, request: HttpRequest, queryset: QuerySet[Deployment]) -> None:
        for deployment in queryset:
            services.deployment_set_status(actor=admin_actor(request), deployment=deployment, status=status)
        modeladmin.message_user(request, f"{queryset.count()} deployment(s) marked {status}.")

    action.__name__ = f"mark_{status}"
    return action


class DeploymentAdminForm(ModelForm):  # type: ignore[type-arg]  # django-stubs: generic, not subscriptable at runtime
    """Runs the service's checks as form validation, so that a refused deployment is a form error."""

    class Meta:
        model = Deployment
        fields = ("model", "host")

    def clean(self) -> dict[str, Any]:
        cleaned: dict[str, Any] = super().clean() or {}
        model, host = cleaned.get("model"), cleaned.get("host")
        if model is not None and host is not None:
            try:
                services.deployment_validate(model=model, host=host)
            except DomainError as exc:
                raise ValidationError(exc.message, code=exc.code) from exc
        return cleaned


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin):  # type: ignore[type-arg]  # django-stubs: generic over the model, not subscriptable at runtime
    list_display = ("model", "host", "region", "accelerator", "status", "created_at")
    list_filter = ("status", "model", "host__region")
    search_fields = ("model__name", "host__name")
    list_select_related = ("model", "host", "host__region", "host__accelerator_class")
    fields = ("model", "host", "status")
    actions = (
        _deployment_status_action(Deployment.Status.ACTIVE),
        _deployment_status_action(Deployment.Status.DISABLED),
    )

    @admin.display(description="region", ordering="host__region__code")
    def region(self, obj: Deployment) -> str:
        return obj.host.region.code

    @admin.display(description="accelerator", ordering="host__accelerator_class__slug")
    def accelerator(self, obj: Deployment) -> str:
        return obj.host.accelerator_class.slug

    def get_readonly_fields(self, request: HttpRequest, obj: Deployment | None = None) -> list[str]:
        return ["status"] if obj is None else ["model", "host", "status"]

    def get_form(self, request: HttpRequest, obj: Deployment | None = None, change: bool = False, **kwargs: Any) -> Any:
        kwargs.setdefault("form", DeploymentAdminForm)
        return super().get_form(request, obj, change, **kwargs)

    def save_model(self, request: HttpRequest, obj: Deployment, form: ModelForm[Deployment], change: bool) -> None:
        if change:
            return
        saved = services.deployment_create(
            actor=admin_actor(request), model=form.cleaned_data["model"], host=form.cleaned_data["host"]
        )
        obj.pk = saved.pk

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
