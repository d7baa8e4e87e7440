"""Routes of the request log and of live quota use, mounted at `/api/v1/`; no trailing slashes."""

from __future__ import annotations

from django.urls import URLPattern, URLResolver, path

from controlplane.inference.api import views

_ORG = "orgs/<slug:org>"

urlpatterns: list[URLPattern | URLResolver] = [
    path(f"{_ORG}/requests", views.RequestListView.as_view(), name="request-list"),
    path(f"{_ORG}/requests/<str:request_id>", views.RequestDetailView.as_view(), name="request-detail"),
    path(f"{_ORG}/quota-usage", views.QuotaUsageView.as_view(), name="quota-usage"),
]
