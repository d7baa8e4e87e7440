"""Operators' admin of the FX and tax tables: add-only through the services (audited), rows read-only."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.http import HttpRequest

from billing import services
from billing.models import FxRate, TaxRate
from controlplane.core.admin import admin_actor
from controlplane.core.errors import DomainError


class FxRateAddForm(forms.ModelForm):  # type: ignore[type-arg]  # django-stubs: generic, not subscriptable at runtime
    class Meta:
        model = FxRate
        fields = ("currency", "per_usd", "effective_from", "source")

    def clean(self) -> dict[str, Any]:
        cleaned: dict[str, Any] = super().clean() or {}
        if all(cleaned.get(name) is not None for name in ("currency", "per_usd", "effective_from")):
            try:
                services.fx_rate_validate(
                    currency=cleaned["currency"], per_usd=cleaned["per_usd"], effective_from=cleaned["effective_from"]
                )
            except DomainError as exc:
                raise ValidationError(exc.message, code=exc.code) from exc
        return cleaned


class TaxRateAddForm(forms.ModelForm):  # type: ignore[type-arg]  # django-stubs: generic, not subscriptable at runtime
    class Meta:
        model = TaxRate
        fields = ("country", "tax_name", "rate_percent", "effective_from", "note")

    def clean(self) -> dict[str, Any]:
        cleaned: dict[str, Any] = super().clean() or {}
        if all(cleaned.get(name) is not None for name in ("country", "tax_name", "rate_percent", "effective_from")):
            try:
                services.tax_rate_validate(
                    country=cleaned["country"],
                    tax_name=cleaned["tax_name"],
                    rate_percent=cleaned["rate_percent"],
                    effective_from=cleaned["effective_from"],
                )
            except DomainError as exc:
                raise ValidationError(exc.message, code=exc.code) from exc
        return cleaned


class AddOnlyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]  # django-stubs: generic over each subclass's model
    """Effective-dated tables: a change is a new version; existing versions are never edited or deleted."""

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(FxRate)
class FxRateAdmin(AddOnlyAdmin):
    form = FxRateAddForm
    list_display = ("currency", "per_usd", "effective_from", "source", "created_at")
    list_filter = ("currency",)
    search_fields = ("currency", "source")
    date_hierarchy = "effective_from"

    def save_model(self, request: HttpRequest, obj: FxRate, form: forms.ModelForm[FxRate], change: bool) -> None:
        saved = services.fx_rate_add(
            actor=admin_actor(request),
            currency=form.cleaned_data["currency"],
            per_usd=form.cleaned_data["per_usd"],
            effective_from=form.cleaned_data["effective_from"],
            source=form.cleaned_data.get("source") or "",
        )
        obj.pk = saved.pk


@admin.register(TaxRate)
class TaxRateAdmin(AddOnlyAdmin):
    form = TaxRateAddForm
    list_display = ("country", "tax_name", "rate_percent", "effective_from", "created_at")
    list_filter = ("country",)
    search_fields = ("country", "tax_name", "note")
    date_hierarchy = "effective_from"

    def save_model(self, request: HttpRequest, obj: TaxRate, form: forms.ModelForm[TaxRate], change: bool) -> None:
        saved = services.tax_rate_add(
            actor=admin_actor(request),
            country=form.cleaned_data["country"],
            tax_name=form.cleaned_data["tax_name"],
            rate_percent=form.cleaned_data["rate_percent"],
            effective_from=form.cleaned_data["effective_from"],
            note=form.cleaned_data.get("note") or "",
        )
        obj.pk = saved.pk
