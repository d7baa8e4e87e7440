"""Operator routes of the effective-dated FX and tax tables and of invoices; an organisation's balance,
usage, budget and invoices; the public price list."""

from __future__ import annotations

import json
from typing import Any, ClassVar

from django.db.models import QuerySet
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from billing import budgets, invoicing, reports, selectors, services
from billing.api.serializers import (
    BalanceOutputSerializer,
    BudgetEventOutputSerializer,
    BudgetInputSerializer,
    BudgetOutputSerializer,
    FxRateAddInputSerializer,
    FxRateOutputSerializer,
    InvoiceDocumentOutputSerializer,
    InvoiceSummaryOutputSerializer,
    OpsInvoiceOutputSerializer,
    PriceOutputSerializer,
    TaxRateAddInputSerializer,
    TaxRateOutputSerializer,
    UsageOutputSerializer,
)
from billing.models import Budget, BudgetEvent, CreditGrant, Invoice, LedgerEntry
from controlplane.core import money
from controlplane.core.api.pagination import CreatedCursorPagination, IdCursorPagination
from controlplane.core.api.views import GlobalReadAPIView, OperatorAPIView
from controlplane.core.errors import ValidationFailed
from controlplane.core.regions import REGION_CODES
from controlplane.core.services import actor_of_request
from tenants.api.base import OrgScopedAPIView
from tenants.scopes import Scope


class OpsFxRateListView(OperatorAPIView):
    serializer_class = FxRateOutputSerializer
    pagination_class = CreatedCursorPagination

    @extend_schema(
        operation_id="ops_fx_rates_list",
        parameters=[OpenApiParameter("currency", str, OpenApiParameter.QUERY, required=False)],
        responses=FxRateOutputSerializer(many=True),
        tags=["ops"],
    )
    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(selectors.fx_rates_list(currency=request.query_params.get("currency")))
        return self.get_paginated_response(FxRateOutputSerializer(page, many=True).data)

    @extend_schema(
        operation_id="ops_fx_rates_create",
        request=FxRateAddInputSerializer,
        responses={201: FxRateOutputSerializer},
        tags=["ops"],
    )
    def post(self, request: Request) -> Response:
        payload = FxRateAddInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data: dict[str, Any] = payload.validated_data
        fx_rate = services.fx_rate_add(actor=actor_of_request(request), **data)
        return Response(FxRateOutputSerializer(fx_rate).data, status=status.HTTP_201_CREATED)


class OpsTaxRateListView(OperatorAPIView):
    serializer_class = TaxRateOutputSerializer
    pagination_class = CreatedCursorPagination

    @extend_schema(
        operation_id="ops_tax_rates_list",
        parameters=[OpenApiParameter("country", str, OpenApiParameter.QUERY, required=False)],
        responses=TaxRateOutputSerializer(many=True),
        tags=["ops"],
    )
    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(selectors.tax_rates_list(country=request.query_params.get("country")))
        return self.get_paginated_response(TaxRateOutputSerializer(page, many=True).data)

    @extend_schema(
        operation_id="ops_tax_rates_create",
        request=TaxRateAddInputSerializer,
        responses={201: TaxRateOutputSerializer},
        tags=["ops"],
    )
    def post(self, request: Request) -> Response:
        payload = TaxRateAddInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data: dict[str, Any] = payload.validated_data
        tax_rate = services.tax_rate_add(actor=actor_of_request(request), **data)
        return Response(TaxRateOutputSerializer(tax_rate).data, status=status.HTTP_201_CREATED)


class OrgBillingBalanceView(OrgScopedAPIView):
    required_scopes: ClassVar[dict[str, str]] = {"GET": Scope.BILLING_READ}
    serializer_class = BalanceOutputSerializer

    def scoped_queryset(self) -> QuerySet[CreditGrant]:
        grants: QuerySet[CreditGrant] = CreditGrant.objects.filter(organization=self.organization)
        return grants

    @extend_schema(operation_id="orgs_billing_balance_retrieve", responses=BalanceOutputSerializer, tags=["billing"])
    def get(self, request: Request, org: str) -> Response:
        balance = selectors.balance_get(organization=self.organization)
        body = {
            "currency": balance.currency,
            "billing_mode": balance.billing_mode,
            "granted": money.micros_to_units(balance.granted),
            "settled": money.micros_to_units(balance.settled),
            "held": money.micros_to_units(balance.held),
            "available": money.micros_to_units(balance.available),
        }
        return Response(BalanceOutputSerializer(body).data)


# --- Prices (global), usage, budget and invoices (organisation), invoices (operators) ------------------------


class PriceListView(GlobalReadAPIView):
    """The list prices in force now, in US dollars per million tokens, per model, region and token kind."""

    serializer_class = PriceOutputSerializer
    pagination_class = IdCursorPagination

    @extend_schema(
        operation_id="prices_list",
        parameters=[
            OpenApiParameter("region", str, OpenApiParameter.QUERY, required=False, enum=list(REGION_CODES)),
            OpenApiParameter("model", str, OpenApiParameter.QUERY, required=False),
        ],
        responses=PriceOutputSerializer(many=True),
        tags=["catalog"],
    )
    def get(self, request: Request) -> Response:
        region = request.query_params.get("region")
        if region is not None and region not in REGION_CODES:
            raise ValidationFailed(f"{region!r} is not a region code ({', '.join(REGION_CODES)}).")
        entries = reports.prices_in_force(region=region, model_name=request.query_params.get("model"))
        page = self.paginate_queryset(entries)
        return self.get_paginated_response(PriceOutputSerializer(page, many=True).data)


class OrgBillingUsageView(OrgScopedAPIView):
    """This month's use per region (settled and in flight) next to the organisation's regional limits."""

    required_scopes: ClassVar[dict[str, str]] = {"GET": Scope.BILLING_READ}
    serializer_class = UsageOutputSerializer

    def scoped_queryset(self) -> QuerySet[LedgerEntry]:
        entries: QuerySet[LedgerEntry] = LedgerEntry.objects.filter(organization=self.organization)
        return entries

    @extend_schema(operation_id="orgs_billing_usage_retrieve", responses=UsageOutputSerializer, tags=["billing"])
    def get(self, request: Request, org: str) -> Response:
        month, rows = reports.usage_by_region(organization=self.organization)
        body = {
            "month": month,
            "currency": self.organization.billing_currency,
            "regions": [
                {
                    **{name: getattr(row, name) for name in (
                        "region", "requests_per_minute", "tokens_per_minute", "concurrent_requests",
                        "monthly_tokens", "requests", "input_tokens", "output_tokens", "open_requests")},
                    "spend": money.micros_to_units(row.spend_micros),
                    "held": money.micros_to_units(row.held_micros),
                }
                for row in rows
            ],
        }  # fmt: skip
        return Response(UsageOutputSerializer(body).data)


def _budget_body(status_: budgets.BudgetStatus) -> dict[str, Any]:
    budget = status_.budget
    return {
        "currency": budget.currency,
        "amount": money.micros_to_units(budget.amount_micros),
        "alert_thresholds": budget.alert_thresholds,
        "hard_stop": budget.hard_stop,
        "month": f"{status_.month:%Y-%m}",
        "settled": money.micros_to_units(status_.settled_micros),
        "held": money.micros_to_units(status_.held_micros),
        "committed": money.micros_to_units(status_.settled_micros + status_.held_micros),
    }


class OrgBudgetView(OrgScopedAPIView):
    """The monthly budget of a postpaid organisation: alerts, and optionally a hard stop at admission."""

    required_scopes: ClassVar[dict[str, str]] = {
        "GET": Scope.BILLING_READ,
        "PUT": Scope.BILLING_WRITE,
        "DELETE": Scope.BILLING_WRITE,
    }
    serializer_class = BudgetOutputSerializer

    def scoped_queryset(self) -> QuerySet[Budget]:
        found: QuerySet[Budget] = Budget.objects.filter(organization=self.organization)
        return found

    @extend_schema(operation_id="orgs_billing_budget_retrieve", responses=BudgetOutputSerializer, tags=["billing"])
    def get(self, request: Request, org: str) -> Response:
        return Response(BudgetOutputSerializer(_budget_body(budgets.budget_get(organization=self.organization))).data)

    @extend_schema(
        operation_id="orgs_billing_budget_update",
        request=BudgetInputSerializer,
        responses=BudgetOutputSerializer,
        tags=["billing"],
    )
    def put(self, request: Request, org: str) -> Response:
        payload = BudgetInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data: dict[str, Any] = payload.validated_data
        budgets.budget_set(actor=self.actor, organization=self.organization, **data)
        return Response(BudgetOutputSerializer(_budget_body(budgets.budget_get(organization=self.organization))).data)

    @extend_schema(operation_id="orgs_billing_budget_destroy", responses={204: None}, tags=["billing"])
    def delete(self, request: Request, org: str) -> Response:
        budgets.budget_delete(actor=self.actor, organization=self.organization)
        return Response(status=status.HTTP_204_NO_CONTENT)


class OrgBudgetEventListView(OrgScopedAPIView):
    """Alert thresholds reached, newest first: each at most once a month."""

    required_scopes: ClassVar[dict[str, str]] = {"GET": Scope.BILLING_READ}
    serializer_class = BudgetEventOutputSerializer
    pagination_class = CreatedCursorPagination

    def scoped_queryset(self) -> QuerySet[BudgetEvent]:
        return budgets.budget_events_list(organization=self.organization)

    @extend_schema(
        operation_id="orgs_billing_budget_events_list",
        responses=BudgetEventOutputSerializer(many=True),
        tags=["billing"],
    )
    def get(self, request: Request, org: str) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(BudgetEventOutputSerializer(page, many=True).data)


class OrgInvoiceListView(OrgScopedAPIView):
    """The organisation's issued invoices, newest first (drafts stay with the operators until finalised)."""

    required_scopes: ClassVar[dict[str, str]] = {"GET": Scope.BILLING_READ}
    serializer_class = InvoiceSummaryOutputSerializer
    pagination_class = CreatedCursorPagination

    def scoped_queryset(self) -> QuerySet[Invoice]:
        return invoicing.invoices_list(organization=self.organization)

    @extend_schema(
        operation_id="orgs_invoices_list", responses=InvoiceSummaryOutputSerializer(many=True), tags=["billing"]
    )
    def get(self, request: Request, org: str) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(InvoiceSummaryOutputSerializer(page, many=True).data)


class OrgInvoiceDetailView(OrgScopedAPIView):
    """One invoice with its lines: the JSON export."""

    required_scopes: ClassVar[dict[str, str]] = {"GET": Scope.BILLING_READ}
    serializer_class = InvoiceDocumentOutputSerializer
    lookup_field = "number"

    def scoped_queryset(self) -> QuerySet[Invoice]:
        return invoicing.invoices_list(organization=self.organization)

    @extend_schema(
        operation_id="orgs_invoices_retrieve",
        parameters=[OpenApiParameter("number", str, OpenApiParameter.PATH, description="e.g. INV-202610-0000042")],
        responses=InvoiceDocumentOutputSerializer,
        tags=["billing"],
    )
    def get(self, request: Request, org: str, number: str) -> Response:
        invoice = invoicing.invoice_get(organization=self.organization, number=number)
        return Response(InvoiceDocumentOutputSerializer(invoicing.invoice_document(invoice=invoice)).data)


class CsvRenderer(BaseRenderer):
    """Passes a CSV body through; a client may ask for it with `Accept: text/csv`."""

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> bytes:
        return data.encode() if isinstance(data, str) else json.dumps(data).encode()


class OrgInvoiceCsvView(OrgScopedAPIView):
    """One invoice as CSV: its lines, then the subtotal, credits, tax and total rows."""

    required_scopes: ClassVar[dict[str, str]] = {"GET": Scope.BILLING_READ}
    # Errors stay JSON; the CSV renderer only lets a client send `Accept: text/csv`.
    renderer_classes: ClassVar[list[type[BaseRenderer]]] = [JSONRenderer, CsvRenderer]  # type: ignore[misc]  # narrowed
    lookup_field = "number"

    def scoped_queryset(self) -> QuerySet[Invoice]:
        return invoicing.invoices_list(organization=self.organization)

    @extend_schema(
        operation_id="orgs_invoices_csv_retrieve",
        parameters=[
            OpenApiParameter("number", str, OpenApiParameter.PATH, description="e.g. INV-202610-0000042"),
            OpenApiParameter("format", exclude=True),
        ],
        responses={(200, "text/csv"): OpenApiTypes.STR},
        tags=["billing"],
    )
    def get(self, request: Request, org: str, number: str) -> HttpResponse:
        invoice = invoicing.invoice_get(organization=self.organization, number=number)
        response = HttpResponse(invoicing.invoice_csv(invoice=invoice), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{invoice.number}.csv"'
        return response


class OpsInvoiceListView(OperatorAPIView):
    """Every organisation's invoices, drafts included, newest first."""

    serializer_class = OpsInvoiceOutputSerializer
    pagination_class = CreatedCursorPagination

    @extend_schema(
        operation_id="ops_invoices_list",
        parameters=[
            OpenApiParameter("org", str, OpenApiParameter.QUERY, required=False, description="organisation slug"),
            OpenApiParameter("status", str, OpenApiParameter.QUERY, required=False, enum=Invoice.Status.values),
            OpenApiParameter("month", str, OpenApiParameter.QUERY, required=False, description="YYYY-MM"),
        ],
        responses=OpsInvoiceOutputSerializer(many=True),
        tags=["ops"],
    )
    def get(self, request: Request) -> Response:
        invoices = Invoice.objects.unscoped_all_orgs().select_related("organization")
        params = request.query_params
        if params.get("org"):
            invoices = invoices.filter(organization__slug=params["org"])
        if params.get("status"):
            invoices = invoices.filter(status=params["status"])
        if params.get("month"):
            invoices = invoices.filter(period_start=invoicing.month_parse(params["month"]))
        page = self.paginate_queryset(invoices)
        return self.get_paginated_response(OpsInvoiceOutputSerializer(page, many=True).data)
