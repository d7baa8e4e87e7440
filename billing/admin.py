"""Operators' admin of billing: FX and tax tables and the price book through the services (audited),
credit grants added through their service, holds and the ledger read-only."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from billing import selectors, services
from billing.models import (
    CreditGrant,
    CreditHold,
    FxRate,
    HoldAllocation,
    LedgerEntry,
    LedgerPosting,
    PriceBookEntry,
    TaxRate,
)
from controlplane.core import money
from controlplane.core.admin import ReadOnlyAdmin, admin_actor
from controlplane.core.errors import DomainError
from tenants.models import Organization


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


# --- The price book: versions added through the service; a scheduled, unused version may be corrected ----


def _as_validation_error(exc: DomainError) -> ValidationError:
    return ValidationError(exc.message, code=exc.code)


class PriceBookEntryForm(forms.ModelForm):  # type: ignore[type-arg]  # django-stubs: generic, not subscriptable at runtime
    class Meta:
        model = PriceBookEntry
        fields = ("model_name", "region", "token_kind", "usd_per_million", "effective_from", "note")

    def clean(self) -> dict[str, Any]:
        cleaned: dict[str, Any] = super().clean() or {}
        if any(cleaned.get(name) is None for name in ("usd_per_million", "effective_from")):
            return cleaned
        try:
            if self.instance.pk is None:
                if all(cleaned.get(name) for name in ("model_name", "region", "token_kind")):
                    services.price_entry_validate(
                        model_name=cleaned["model_name"],
                        region=cleaned["region"],
                        token_kind=cleaned["token_kind"],
                        usd_per_million=cleaned["usd_per_million"],
                        effective_from=cleaned["effective_from"],
                    )
            else:
                stored = PriceBookEntry.objects.get(pk=self.instance.pk)
                services.price_entry_update_validate(
                    entry=stored, usd_per_million=cleaned["usd_per_million"], effective_from=cleaned["effective_from"]
                )
        except DomainError as exc:
            raise _as_validation_error(exc) from exc
        return cleaned


def _price_is_scheduled(entry: PriceBookEntry) -> bool:
    return entry.effective_from > timezone.now() and not selectors.price_entry_is_referenced(entry=entry)


@admin.register(PriceBookEntry)
class PriceBookEntryAdmin(admin.ModelAdmin):  # type: ignore[type-arg]  # django-stubs: generic over the model
    form = PriceBookEntryForm
    list_display = ("model_name", "region", "token_kind", "usd_per_million", "effective_from", "note")
    list_filter = ("region", "token_kind", "model_name")
    search_fields = ("model_name", "note")
    date_hierarchy = "effective_from"

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Versions in force, past, or already used for pricing are history: view only.
        if obj is not None and not _price_is_scheduled(obj):
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        # A correction keeps what the price is for; only the number, the start and the note change.
        return ("model_name", "region", "token_kind") if obj is not None else ()

    def save_model(
        self, request: HttpRequest, obj: PriceBookEntry, form: forms.ModelForm[PriceBookEntry], change: bool
    ) -> None:
        data = form.cleaned_data
        if change:
            saved = services.price_entry_update(
                actor=admin_actor(request),
                entry=PriceBookEntry.objects.get(pk=obj.pk),
                usd_per_million=data["usd_per_million"],
                effective_from=data["effective_from"],
                note=data.get("note") or "",
            )
        else:
            saved = services.price_entry_add(
                actor=admin_actor(request),
                model_name=data["model_name"],
                region=data["region"],
                token_kind=data["token_kind"],
                usd_per_million=data["usd_per_million"],
                effective_from=data["effective_from"],
                note=data.get("note") or "",
            )
        obj.pk = saved.pk


# --- Credit grants: added through the service (audited), never edited --------------------------------


class CreditGrantAddForm(forms.ModelForm):  # type: ignore[type-arg]  # django-stubs: generic, not subscriptable at runtime
    amount = forms.DecimalField(max_digits=20, decimal_places=6, help_text="in the currency's units, e.g. 25.00")
    organization = forms.ModelChoiceField(queryset=Organization.objects.order_by("slug"))

    class Meta:
        model = CreditGrant
        fields = ("organization", "currency", "expires_at", "priority", "reason")

    def clean(self) -> dict[str, Any]:
        cleaned: dict[str, Any] = super().clean() or {}
        if all(cleaned.get(name) is not None for name in ("organization", "amount", "currency", "priority", "reason")):
            try:
                services.credit_grant_validate(
                    organization=cleaned["organization"],
                    amount=cleaned["amount"],
                    currency=cleaned["currency"],
                    expires_at=cleaned.get("expires_at"),
                    priority=cleaned["priority"],
                    reason=cleaned["reason"],
                )
            except DomainError as exc:
                raise _as_validation_error(exc) from exc
        return cleaned


def _format_micros(micros: int | None, currency: str) -> str:
    if micros is None:
        return "-"
    return f"{money.micros_to_units(micros).normalize():f} {currency}"


@admin.register(CreditGrant)
class CreditGrantAdmin(admin.ModelAdmin):  # type: ignore[type-arg]  # django-stubs: generic over the model
    form = CreditGrantAddForm
    list_display = ("id", "organization", "amount", "consumed", "held", "expires_at", "priority", "reason")
    list_filter = ("currency",)
    search_fields = ("organization__slug", "reason", "granted_by")
    list_select_related = ("organization",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[CreditGrant]:
        # Operators see every organisation's grants; the scoped default manager would refuse.
        grants: QuerySet[CreditGrant] = CreditGrant.objects.unscoped_all_orgs().select_related("organization")
        return grants

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [f.name for f in CreditGrant._meta.fields] if obj is not None else []

    @admin.display(description="amount")
    def amount(self, obj: CreditGrant) -> str:
        return _format_micros(obj.amount_micros, obj.currency)

    @admin.display(description="consumed")
    def consumed(self, obj: CreditGrant) -> str:
        return _format_micros(obj.consumed_micros, obj.currency)

    @admin.display(description="held")
    def held(self, obj: CreditGrant) -> str:
        return _format_micros(obj.held_micros, obj.currency)

    def save_model(
        self, request: HttpRequest, obj: CreditGrant, form: forms.ModelForm[CreditGrant], change: bool
    ) -> None:
        data = form.cleaned_data
        saved = services.credit_grant_create(
            actor=admin_actor(request),
            organization=data["organization"],
            amount=data["amount"],
            currency=data["currency"],
            expires_at=data.get("expires_at"),
            priority=data["priority"],
            reason=data["reason"],
        )
        obj.pk = saved.pk


# --- Holds and the ledger: read-only evidence ----------------------------------------------------------


def _rows_table(headers: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    """A small read-only HTML table (the related rows of a hold or entry; inlines would build edit forms)."""
    head = format_html_join("", "<th>{}</th>", ((header,) for header in headers))
    body = format_html_join(
        "", "<tr>{}</tr>", ((format_html_join("", "<td>{}</td>", ((c,) for c in row)),) for row in rows)
    )
    return format_html("<table><thead><tr>{}</tr></thead><tbody>{}</tbody></table>", head, body)


@admin.register(CreditHold)
class CreditHoldAdmin(ReadOnlyAdmin):
    list_display = ("request_id", "organization", "status", "amount", "model_name", "region", "admitted_at")
    list_filter = ("status", "billing_mode", "region")
    search_fields = ("request_id", "organization__slug", "model_name")
    date_hierarchy = "admitted_at"
    list_select_related = ("organization",)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [*super().get_readonly_fields(request, obj), "allocations"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[CreditHold]:
        holds: QuerySet[CreditHold] = CreditHold.objects.unscoped_all_orgs().select_related("organization")
        return holds

    @admin.display(description="amount")
    def amount(self, obj: CreditHold) -> str:
        return _format_micros(obj.amount_micros, obj.currency)

    @admin.display(description="reserved on grants (micros)")
    def allocations(self, obj: CreditHold) -> str:
        rows = HoldAllocation.objects.unscoped_all_orgs().filter(hold=obj).order_by("pk")
        return _rows_table(("grant", "micros"), [(row.grant_id, row.amount_micros) for row in rows])


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdmin):
    list_display = ("request_id", "organization", "amount", "model_name", "region", "tokens", "admitted_at")
    list_filter = ("currency", "region")
    search_fields = ("request_id", "organization__slug", "model_name")
    date_hierarchy = "admitted_at"
    list_select_related = ("organization",)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [*super().get_readonly_fields(request, obj), "postings"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[LedgerEntry]:
        entries: QuerySet[LedgerEntry] = LedgerEntry.objects.unscoped_all_orgs().select_related("organization")
        return entries

    @admin.display(description="amount")
    def amount(self, obj: LedgerEntry) -> str:
        return _format_micros(obj.amount_micros, obj.currency)

    @admin.display(description="postings (micros)")
    def postings(self, obj: LedgerEntry) -> str:
        rows = LedgerPosting.objects.unscoped_all_orgs().filter(entry=obj).order_by("pk")
        return _rows_table(
            ("account", "grant", "debit", "credit"),
            [(row.account, row.grant_id or "", row.debit_micros, row.credit_micros) for row in rows],
        )

    @admin.display(description="tokens in/out")
    def tokens(self, obj: LedgerEntry) -> str:
        return f"{obj.input_tokens}/{obj.output_tokens}"
