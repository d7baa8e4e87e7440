"""Operator routes of the effective-dated FX and tax tables: list the versions, add a version."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response

from billing import selectors, services
from billing.api.serializers import (
    FxRateAddInputSerializer,
    FxRateOutputSerializer,
    TaxRateAddInputSerializer,
    TaxRateOutputSerializer,
)
from controlplane.core.api.pagination import CreatedCursorPagination
from controlplane.core.api.views import OperatorAPIView
from controlplane.core.services import actor_of_request


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
