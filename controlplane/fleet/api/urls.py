"""Routes of the fleet API, included at `api/v1/` (no trailing slashes)."""

from django.urls import URLPattern, URLResolver, path

from controlplane.fleet.api import views

urlpatterns: list[URLPattern | URLResolver] = [
    path("regions", views.RegionListView.as_view(), name="regions-list"),
    path("regions/<str:code>", views.RegionDetailView.as_view(), name="regions-detail"),
    path("accelerators", views.AcceleratorListView.as_view(), name="accelerators-list"),
    path("accelerators/<str:slug>", views.AcceleratorDetailView.as_view(), name="accelerators-detail"),
    path("catalog/models", views.CatalogModelListView.as_view(), name="catalog-models-list"),
    path("catalog/models/<str:name>", views.CatalogModelDetailView.as_view(), name="catalog-models-detail"),
    path("ops/hosts", views.OpsHostListView.as_view(), name="ops-hosts-list"),
    path("ops/hosts/<int:host_id>", views.OpsHostDetailView.as_view(), name="ops-hosts-detail"),
    path("ops/hosts/<int:host_id>/drain", views.OpsHostDrainView.as_view(), name="ops-hosts-drain"),
    path("ops/deployments", views.OpsDeploymentListView.as_view(), name="ops-deployments-list"),
]
