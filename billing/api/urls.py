"""Routes of the billing API, included at `api/v1/` (no trailing slashes)."""

from django.urls import URLPattern, URLResolver, path

from billing.api import views

urlpatterns: list[URLPattern | URLResolver] = [
    path("ops/fx-rates", views.OpsFxRateListView.as_view(), name="ops-fx-rates-list"),
    path("ops/tax-rates", views.OpsTaxRateListView.as_view(), name="ops-tax-rates-list"),
    path("orgs/<slug:org>/billing/balance", views.OrgBillingBalanceView.as_view(), name="org-billing-balance"),
]
