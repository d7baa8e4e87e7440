"""Operator routes of the effective-dated FX and tax tables, and an organisation's credit balance."""

from __future__ import annotations

from typing import Any, ClassVar

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response

from billing import selectors, services
from billing.api.serializers import (
    BalanceOutputSerializer,
    FxRateAddInputSerializer,
    FxRateOutputSerializer,
    TaxRateAddInputSerializer,
    TaxRateOutputSerializer,
)
from billing.models import CreditGrant
from controlplane.core import money
from controlplane.core.api.pagination import CreatedCursorPagination
from controlplane.core.api.views import OperatorAPIView
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
