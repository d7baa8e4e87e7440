"""Operators' admin of billing: FX and tax tables and the price book through the services (audited, with
each price's audit trail shown), credit grants and budgets through their services, invoices finalised,
paid and voided through theirs (with CSV and JSON exports); holds, the ledger, spend and periods read-only."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from billing import budgets, invoicing, selectors, services
from billing.models import (
    BillingPeriod,
    Budget,
    BudgetEvent,
    BudgetSpend,
    CreditGrant,
    CreditHold,
    FxRate,
    HoldAllocation,
    Invoice,
    InvoiceLine,
    LedgerEntry,
    LedgerPosting,
    PriceBookEntry,
    TaxRate,
)
from controlplane.core import money
from controlplane.core.admin import ReadOnlyAdmin, admin_actor
from controlplane.core.errors import DomainError
from controlplane.core.models import AuditEvent
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
        return ("model_name", "region", "token_kind", "audit_trail") if obj is not None else ()

    @admin.display(description="audit trail")
    def audit_trail(self, obj: PriceBookEntry) -> str:
        events = AuditEvent.objects.unscoped_all_orgs().filter(target_type="PriceBookEntry", target_id=str(obj.pk))
        return _rows_table(
            ("when", "who", "action", "changes"),
            [
                (f"{event.created_at:%Y-%m-%d %H:%M:%S}", event.actor_label, event.action, json.dumps(event.changes))
                for event in events.order_by("created_at", "pk")
            ],
        )

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
    list_display = (
        "id",
        "organization",
        "amount",
        "consumed",
        "held",
        "expires_at",
        "expired_at",
        "priority",
        "reason",
    )
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


# --- Budgets: set and removed through their service (audited); spend and alerts read-only ------------------


class BudgetForm(forms.ModelForm):  # type: ignore[type-arg]  # django-stubs: generic, not subscriptable at runtime
    amount = forms.DecimalField(max_digits=20, decimal_places=6, help_text="per calendar month, billing currency")
    organization = forms.ModelChoiceField(queryset=Organization.objects.order_by("slug"))

    class Meta:
        model = Budget
        fields = ("alert_thresholds", "hard_stop")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk is not None:
            self.fields.pop("organization", None)
            self.fields["amount"].initial = money.micros_to_units(self.instance.amount_micros)

    def _post_clean(self) -> None:
        # The model's own validation would query the tenant-scoped manager (its unique constraint); the
        # service validates and writes instead (`clean` above, `BudgetAdmin.save_model`).
        return

    def budget_organization(self) -> Organization | None:
        if self.instance.pk is not None:
            organization: Organization = self.instance.organization
            return organization
        chosen: Organization | None = self.cleaned_data.get("organization")
        return chosen

    def clean(self) -> dict[str, Any]:
        cleaned: dict[str, Any] = super().clean() or {}
        organization = self.budget_organization()
        if organization is not None and all(cleaned.get(name) is not None for name in ("amount", "alert_thresholds")):
            try:
                budgets.budget_validate(
                    organization=organization,
                    amount=cleaned["amount"],
                    alert_thresholds=cleaned["alert_thresholds"],
                )
            except DomainError as exc:
                raise _as_validation_error(exc) from exc
        return cleaned


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin):  # type: ignore[type-arg]  # django-stubs: generic over the model
    form = BudgetForm
    list_display = ("organization", "amount", "alert_thresholds", "hard_stop", "updated_at")
    list_filter = ("hard_stop", "currency")
    search_fields = ("organization__slug",)
    list_select_related = ("organization",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Budget]:
        found: QuerySet[Budget] = Budget.objects.unscoped_all_orgs().select_related("organization")
        return found

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        return ("organization",) if obj is not None else ()

    @admin.display(description="amount")
    def amount(self, obj: Budget) -> str:
        return _format_micros(obj.amount_micros, obj.currency)

    def save_model(self, request: HttpRequest, obj: Budget, form: forms.ModelForm[Budget], change: bool) -> None:
        data = form.cleaned_data
        organization = form.budget_organization()  # type: ignore[attr-defined]  # our BudgetForm
        saved = budgets.budget_set(
            actor=admin_actor(request),
            organization=organization,
            amount=data["amount"],
            alert_thresholds=data["alert_thresholds"],
            hard_stop=data["hard_stop"],
        )
        obj.pk = saved.pk

    def delete_model(self, request: HttpRequest, obj: Budget) -> None:
        budgets.budget_delete(actor=admin_actor(request), organization=obj.organization)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # One at a time, through the service (the bulk action would skip the audit record).
        return obj is not None and super().has_delete_permission(request, obj)


@admin.register(BudgetEvent)
class BudgetEventAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "organization", "month", "threshold_percent", "committed", "mailed_at")
    list_filter = ("threshold_percent", "currency")
    search_fields = ("organization__slug", "request_id")
    list_select_related = ("organization",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[BudgetEvent]:
        events: QuerySet[BudgetEvent] = BudgetEvent.objects.unscoped_all_orgs().select_related("organization")
        return events

    @admin.display(description="committed")
    def committed(self, obj: BudgetEvent) -> str:
        return _format_micros(obj.committed_micros, obj.currency)


@admin.register(BudgetSpend)
class BudgetSpendAdmin(ReadOnlyAdmin):
    list_display = ("organization", "month", "currency", "settled", "held")
    list_filter = ("currency", "month")
    search_fields = ("organization__slug",)
    list_select_related = ("organization",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[BudgetSpend]:
        spend: QuerySet[BudgetSpend] = BudgetSpend.objects.unscoped_all_orgs().select_related("organization")
        return spend

    @admin.display(description="settled")
    def settled(self, obj: BudgetSpend) -> str:
        return _format_micros(obj.settled_micros, obj.currency)

    @admin.display(description="held")
    def held(self, obj: BudgetSpend) -> str:
        return _format_micros(obj.held_micros, obj.currency)


# --- Invoices: written by the month close; operators finalise, record payments and void -------------------


class InvoiceActionForm(helpers.ActionForm):
    note = forms.CharField(required=False, label="payment reference or reason", max_length=300)


def _invoice_action(
    modeladmin: InvoiceAdmin, request: HttpRequest, queryset: QuerySet[Invoice], *, verb: str, run: Any
) -> None:
    done = 0
    for invoice in queryset.order_by("pk"):
        try:
            run(invoice)
            done += 1
        except DomainError as exc:
            modeladmin.message_user(request, f"{invoice}: {exc.message}", level=messages.ERROR)
    if done:
        modeladmin.message_user(request, f"{done} invoice(s) {verb}.", level=messages.SUCCESS)


@admin.action(description="Finalise the selected drafts")
def finalize_invoices(modeladmin: InvoiceAdmin, request: HttpRequest, queryset: QuerySet[Invoice]) -> None:
    actor = admin_actor(request)
    _invoice_action(modeladmin, request, queryset, verb="finalised",
                    run=lambda invoice: invoicing.invoice_finalize(actor=actor, invoice=invoice))  # fmt: skip


@admin.action(description="Mark the selected invoices paid (reference in the box)")
def mark_invoices_paid(modeladmin: InvoiceAdmin, request: HttpRequest, queryset: QuerySet[Invoice]) -> None:
    actor, note = admin_actor(request), request.POST.get("note", "")
    _invoice_action(
        modeladmin, request, queryset, verb="marked paid",
        run=lambda invoice: invoicing.invoice_mark_paid(actor=actor, invoice=invoice, reference=note),
    )  # fmt: skip


@admin.action(description="Void the selected invoices (reason in the box)")
def void_invoices(modeladmin: InvoiceAdmin, request: HttpRequest, queryset: QuerySet[Invoice]) -> None:
    actor, note = admin_actor(request), request.POST.get("note", "")
    _invoice_action(modeladmin, request, queryset, verb="voided",
                    run=lambda invoice: invoicing.invoice_void(actor=actor, invoice=invoice, reason=note))  # fmt: skip


@admin.register(Invoice)
class InvoiceAdmin(ReadOnlyAdmin):
    action_form = InvoiceActionForm
    actions = (finalize_invoices, mark_invoices_paid, void_invoices)
    list_display = ("__str__", "organization", "period_start", "status", "total", "entry_count", "reverse_charge")
    list_filter = ("status", "currency", "period_start", "reverse_charge")
    search_fields = ("number", "organization__slug", "customer_name")
    list_select_related = ("organization",)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [*super().get_readonly_fields(request, obj), "lines", "exports"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Invoice]:
        invoices: QuerySet[Invoice] = Invoice.objects.unscoped_all_orgs().select_related("organization")
        return invoices

    def get_urls(self) -> list[URLPattern]:
        own = [
            path("<int:pk>/csv/", self.admin_site.admin_view(self.export_csv), name="billing_invoice_csv"),
            path("<int:pk>/json/", self.admin_site.admin_view(self.export_json), name="billing_invoice_json"),
        ]
        return own + super().get_urls()

    def _get(self, pk: int) -> Invoice:
        invoice: Invoice | None = Invoice.objects.unscoped_all_orgs().filter(pk=pk).first()
        if invoice is None:
            raise Http404("no such invoice")
        return invoice

    def export_csv(self, request: HttpRequest, pk: int) -> HttpResponse:
        invoice = self._get(pk)
        response = HttpResponse(invoicing.invoice_csv(invoice=invoice), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{invoice.number or f"draft-{invoice.pk}"}.csv"'
        return response

    def export_json(self, request: HttpRequest, pk: int) -> JsonResponse:
        return JsonResponse(invoicing.invoice_document(invoice=self._get(pk)))

    @admin.display(description="total")
    def total(self, obj: Invoice) -> str:
        return f"{money.format_micros(obj.total_micros, obj.currency)} {obj.currency}"

    @admin.display(description="lines")
    def lines(self, obj: Invoice) -> str:
        rows = InvoiceLine.objects.unscoped_all_orgs().filter(invoice=obj)
        return _rows_table(
            ("usage month", "model", "region", "kind", "tokens", "requests", "amount"),
            [
                (f"{row.usage_month:%Y-%m}", row.model_name, row.region, row.token_kind, row.tokens, row.entry_count,
                 money.format_micros(row.amount_micros, obj.currency))
                for row in rows
            ],
        )  # fmt: skip

    @admin.display(description="exports")
    def exports(self, obj: Invoice) -> str:
        return format_html(
            '<a href="{}">CSV</a> · <a href="{}">JSON</a>',
            reverse("admin:billing_invoice_csv", args=[obj.pk]),
            reverse("admin:billing_invoice_json", args=[obj.pk]),
        )


@admin.register(BillingPeriod)
class BillingPeriodAdmin(ReadOnlyAdmin):
    list_display = ("organization", "period_start", "entry_id_max", "closed_by", "created_at")
    list_filter = ("period_start",)
    search_fields = ("organization__slug",)
    list_select_related = ("organization",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[BillingPeriod]:
        periods: QuerySet[BillingPeriod] = BillingPeriod.objects.unscoped_all_orgs().select_related("organization")
        return periods
