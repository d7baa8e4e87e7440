"""URL wiring: operations endpoints, the admin, the REST API and its schema."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from controlplane.core import ops

urlpatterns = [
    # The web console will be served here; until it exists the root leads to the API docs.
    path("", RedirectView.as_view(url="/api/docs/", permanent=False), name="root"),
    path("healthz", ops.healthz, name="healthz"),
    path("readyz", ops.readyz, name="readyz"),
    path("metrics", ops.metrics, name="metrics"),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/v1/", include("controlplane.fleet.api.urls")),
    path("api/v1/", include("tenants.api.urls")),
    path("api/v1/", include("billing.api.urls")),
    path("api/v1/", include("controlplane.inference.api.urls")),
    path("v1/", include("controlplane.inference.api.urls_v1")),
]

handler404 = "controlplane.core.ops.not_found"
handler500 = "controlplane.core.ops.server_error"
