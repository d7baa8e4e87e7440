"""Fleet API: global reads (regions, accelerators, catalog) and operator routes (hosts, deployments)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response

from controlplane.core.api.pagination import (
    CodeCursorPagination,
    IdCursorPagination,
    NameCursorPagination,
    SlugCursorPagination,
)
from controlplane.core.api.views import GlobalReadAPIView, OperatorAPIView
from controlplane.core.services import actor_of_request
from controlplane.fleet import selectors, services
from controlplane.fleet.api.serializers import (
    AcceleratorClassOutputSerializer,
    CatalogModelOutputSerializer,
    DeploymentCreateInputSerializer,
    DeploymentOutputSerializer,
    HostCreateInputSerializer,
    HostOutputSerializer,
    HostUpdateInputSerializer,
    RegionOutputSerializer,
)
from controlplane.fleet.models import Host


def _path(name: str, description: str, kind: type = str) -> OpenApiParameter:
    return OpenApiParameter(name, kind, OpenApiParameter.PATH, description=description)


def _query(name: str, description: str) -> OpenApiParameter:
    return OpenApiParameter(name, str, OpenApiParameter.QUERY, required=False, description=description)


# --- Global reads ----------------------------------------------------------------------------------


class RegionListView(GlobalReadAPIView):
    serializer_class = RegionOutputSerializer
    pagination_class = CodeCursorPagination

    @extend_schema(operation_id="regions_list", responses=RegionOutputSerializer(many=True), tags=["catalog"])
    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(selectors.regions_list())
        return self.get_paginated_response(RegionOutputSerializer(page, many=True).data)


class RegionDetailView(GlobalReadAPIView):
    serializer_class = RegionOutputSerializer

    @extend_schema(
        operation_id="regions_retrieve",
        parameters=[_path("code", "region code, e.g. dxb")],
        responses=RegionOutputSerializer,
        tags=["catalog"],
    )
    def get(self, request: Request, code: str) -> Response:
        return Response(RegionOutputSerializer(selectors.region_get(code=code)).data)


class AcceleratorListView(GlobalReadAPIView):
    serializer_class = AcceleratorClassOutputSerializer
    pagination_class = SlugCursorPagination

    @extend_schema(
        operation_id="accelerators_list",
        responses=AcceleratorClassOutputSerializer(many=True),
        tags=["catalog"],
    )
    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(selectors.accelerator_classes_list())
        return self.get_paginated_response(AcceleratorClassOutputSerializer(page, many=True).data)


class AcceleratorDetailView(GlobalReadAPIView):
    serializer_class = AcceleratorClassOutputSerializer

    @extend_schema(
        operation_id="accelerators_retrieve",
        parameters=[_path("slug", "accelerator class slug, e.g. nvidia-h100-sxm")],
        responses=AcceleratorClassOutputSerializer,
        tags=["catalog"],
    )
    def get(self, request: Request, slug: str) -> Response:
        return Response(AcceleratorClassOutputSerializer(selectors.accelerator_class_get(slug=slug)).data)


class CatalogModelListView(GlobalReadAPIView):
    serializer_class = CatalogModelOutputSerializer
    pagination_class = NameCursorPagination

    @extend_schema(
        operation_id="catalog_models_list",
        responses=CatalogModelOutputSerializer(many=True),
        tags=["catalog"],
    )
    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(selectors.catalog_list())
        return self.get_paginated_response(CatalogModelOutputSerializer(page, many=True).data)


class CatalogModelDetailView(GlobalReadAPIView):
    serializer_class = CatalogModelOutputSerializer

    @extend_schema(
        operation_id="catalog_models_retrieve",
        parameters=[_path("name", "model name as clients send it, e.g. SmolLM2-135M-Instruct")],
        responses=CatalogModelOutputSerializer,
        tags=["catalog"],
    )
    def get(self, request: Request, name: str) -> Response:
        return Response(CatalogModelOutputSerializer(selectors.catalog_get(name=name)).data)


# --- Operator routes -------------------------------------------------------------------------------


class OpsHostListView(OperatorAPIView):
    serializer_class = HostOutputSerializer
    pagination_class = IdCursorPagination

    @extend_schema(
        operation_id="ops_hosts_list",
        parameters=[_query("region", "region code"), _query("status", "active, draining or down")],
        responses=HostOutputSerializer(many=True),
        tags=["ops"],
    )
    def get(self, request: Request) -> Response:
        hosts = selectors.hosts_list(
            region_code=request.query_params.get("region"), status=request.query_params.get("status")
        )
        page = self.paginate_queryset(hosts)
        return self.get_paginated_response(HostOutputSerializer(page, many=True).data)

    @extend_schema(
        operation_id="ops_hosts_create",
        request=HostCreateInputSerializer,
        responses={201: HostOutputSerializer},
        tags=["ops"],
    )
    def post(self, request: Request) -> Response:
        payload = HostCreateInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data: dict[str, Any] = payload.validated_data
        host = services.host_create(actor=actor_of_request(request), **data)
        return Response(HostOutputSerializer(host).data, status=status.HTTP_201_CREATED)


class OpsHostDetailView(OperatorAPIView):
    serializer_class = HostOutputSerializer

    @extend_schema(
        operation_id="ops_hosts_retrieve",
        parameters=[_path("host_id", "host id", int)],
        responses=HostOutputSerializer,
        tags=["ops"],
    )
    def get(self, request: Request, host_id: int) -> Response:
        return Response(HostOutputSerializer(selectors.host_get(host_id=host_id)).data)

    @extend_schema(
        operation_id="ops_hosts_partial_update",
        parameters=[_path("host_id", "host id", int)],
        request=HostUpdateInputSerializer,
        responses=HostOutputSerializer,
        tags=["ops"],
    )
    def patch(self, request: Request, host_id: int) -> Response:
        payload = HostUpdateInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data: dict[str, Any] = payload.validated_data
        host = services.host_update(actor=actor_of_request(request), host=selectors.host_get(host_id=host_id), **data)
        return Response(HostOutputSerializer(host).data)


class OpsHostDrainView(OperatorAPIView):
    serializer_class = HostOutputSerializer

    @extend_schema(
        operation_id="ops_hosts_drain",
        parameters=[_path("host_id", "host id", int)],
        request=None,
        responses=HostOutputSerializer,
        tags=["ops"],
    )
    def post(self, request: Request, host_id: int) -> Response:
        host: Host = services.host_drain(actor=actor_of_request(request), host=selectors.host_get(host_id=host_id))
        return Response(HostOutputSerializer(host).data)


class OpsDeploymentListView(OperatorAPIView):
    serializer_class = DeploymentOutputSerializer
    pagination_class = IdCursorPagination

    @extend_schema(
        operation_id="ops_deployments_list",
        parameters=[_query("model", "catalog model name")],
        responses=DeploymentOutputSerializer(many=True),
        tags=["ops"],
    )
    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(selectors.deployments_list(model_name=request.query_params.get("model")))
        return self.get_paginated_response(DeploymentOutputSerializer(page, many=True).data)

    @extend_schema(
        operation_id="ops_deployments_create",
        request=DeploymentCreateInputSerializer,
        responses={201: DeploymentOutputSerializer},
        tags=["ops"],
    )
    def post(self, request: Request) -> Response:
        payload = DeploymentCreateInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data: dict[str, Any] = payload.validated_data
        deployment = services.deployment_create(actor=actor_of_request(request), model=data["model"], host=data["host"])
        return Response(DeploymentOutputSerializer(deployment).data, status=status.HTTP_201_CREATED)
