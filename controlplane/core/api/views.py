"""Bases for views that are global on purpose: public catalog reads and operator-only routes.

Customer routes under `/api/v1/orgs/{org}/` derive from `tenants.api.base.OrgScopedAPIView`.
"""

from __future__ import annotations

from typing import ClassVar

from rest_framework import generics, permissions
from rest_framework.request import Request
from rest_framework.views import APIView


class GlobalReadAPIView(generics.GenericAPIView):  # type: ignore[type-arg]  # generic over each subclass's model
    """Explicitly global, read-only data (regions, catalog): any authenticated caller."""

    scope_kind: ClassVar[str] = "global"
    http_method_names: ClassVar[list[str]] = ["get", "head", "options"]  # type: ignore[misc]  # narrowed on purpose
    permission_classes: ClassVar[list[type[permissions.BasePermission]]] = [permissions.IsAuthenticated]  # type: ignore[misc]  # narrowed


class IsOperator(permissions.BasePermission):
    """Operators are staff users signed in with a session; API keys never act as operators."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        user = request.user
        return bool(user and user.is_authenticated and user.is_staff and request.auth is None)


class OperatorAPIView(generics.GenericAPIView):  # type: ignore[type-arg]  # generic over each subclass's model
    """Operator-only routes under `/api/v1/ops/`."""

    scope_kind: ClassVar[str] = "operator"
    permission_classes: ClassVar[list[type[permissions.BasePermission]]] = [permissions.IsAuthenticated, IsOperator]  # type: ignore[misc]  # narrowed
