"""The organisation's request log under `/api/v1/orgs/{org}/requests` (the central index, and a
request's retained content read from its own region's store), and its live quota use per region."""

from __future__ import annotations

from typing import Any, ClassVar, cast

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from controlplane.core.api.pagination import CreatedCursorPagination
from controlplane.core.errors import ValidationFailed
from controlplane.core.regions import REGION_CODES
from controlplane.inference import admission, quota, selectors
from controlplane.inference.api import serializers as s
from controlplane.inference.models import InferenceRequest
from tenants.api.base import OrgScopedAPIView
from tenants.models import RegionalQuota
from tenants.scopes import Scope


def _filters(request: Request) -> dict[str, Any]:
    """The validated query filters; an empty parameter is no filter. Bad values are 400 `invalid_filter`."""
    fields = s.InferenceRequestFilterSerializer().fields
    given = {name: value for name, value in request.query_params.items() if name in fields and value != ""}
    serializer = s.InferenceRequestFilterSerializer(data=given)
    if not serializer.is_valid():
        raise ValidationFailed(
            "The filters are not valid; see details.", code="invalid_filter", details=serializer.errors
        )
    data = cast(dict[str, Any], serializer.validated_data)
    if "api_key" in data:
        data["api_key_id"] = data.pop("api_key")
    return data


class RequestListView(OrgScopedAPIView):
    required_scopes: ClassVar[dict[str, str]] = {"GET": Scope.USAGE_READ}
    serializer_class = s.InferenceRequestSerializer
    pagination_class = CreatedCursorPagination

    def scoped_queryset(self) -> QuerySet[InferenceRequest]:
        return selectors.request_list(organization=self.organization, **_filters(self.request))

    @extend_schema(
        operation_id="orgs_requests_list",
        parameters=[s.InferenceRequestFilterSerializer],
        responses=s.InferenceRequestSerializer(many=True),
        tags=["requests"],
    )
    def get(self, request: Request, org: str) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(s.InferenceRequestSerializer(page, many=True).data)


class RequestDetailView(OrgScopedAPIView):
    required_scopes: ClassVar[dict[str, str]] = {"GET": Scope.USAGE_READ}
    serializer_class = s.InferenceRequestDetailSerializer
    lookup_field = "request_id"

    def scoped_queryset(self) -> QuerySet[InferenceRequest]:
        return selectors.request_list(organization=self.organization)

    @extend_schema(
        operation_id="orgs_requests_retrieve", responses=s.InferenceRequestDetailSerializer, tags=["requests"]
    )
    def get(self, request: Request, org: str, request_id: str) -> Response:
        row = selectors.request_get(organization=self.organization, request_id=request_id)
        content = selectors.request_content_get(organization=self.organization, request=row)
        return Response(s.InferenceRequestDetailSerializer(row, context={"content": content}).data)


class QuotaUsageView(OrgScopedAPIView):
    """Every region's limits next to the organisation's use there now (the quota store's own counters,
    the ones admission checks): what `x-ratelimit-*` says of one region, for all of them at once."""

    required_scopes: ClassVar[dict[str, str]] = {"GET": Scope.USAGE_READ}
    serializer_class = s.QuotaUsageSerializer
    pagination_class = None  # always the eight regions

    def scoped_queryset(self) -> QuerySet[RegionalQuota]:
        rows: QuerySet[RegionalQuota] = RegionalQuota.objects.filter(organization=self.organization)
        return rows

    @extend_schema(operation_id="orgs_quota_usage_list", responses=s.QuotaUsageSerializer(many=True), tags=["quotas"])
    def get(self, request: Request, org: str) -> Response:
        allowed = admission.allowed_regions(admission.residency_policy(self.organization))
        client = admission.quota_client()
        rows = []
        for region in REGION_CODES:
            limits = admission.quota_limits(self.organization, region)
            used = quota.quota_usage(client=client, org_id=self.organization.pk, region=region)
            rows.append({
                "region": region, "allowed": region in allowed,
                "requests_per_minute": limits.requests_per_minute, "tokens_per_minute": limits.tokens_per_minute,
                "concurrent_requests": limits.concurrent_requests, "monthly_tokens": limits.monthly_tokens,
                "requests_last_minute": used.requests_last_minute, "tokens_last_minute": used.tokens_last_minute,
                "running_requests": used.concurrent_requests, "tokens_this_month": used.monthly_tokens,
                "window_reset_ms": used.window_reset_ms,
            })  # fmt: skip
        return Response(s.QuotaUsageSerializer(rows, many=True).data)
