"""Routes of the billing API, included at `api/v1/` (no trailing slashes)."""

from django.urls import URLPattern, URLResolver, path

from billing.api import views

_ORG = "orgs/<slug:org>"

urlpatterns: list[URLPattern | URLResolver] = [
    path("prices", views.PriceListView.as_view(), name="prices-list"),
    path("ops/fx-rates", views.OpsFxRateListView.as_view(), name="ops-fx-rates-list"),
    path("ops/tax-rates", views.OpsTaxRateListView.as_view(), name="ops-tax-rates-list"),
    path("ops/invoices", views.OpsInvoiceListView.as_view(), name="ops-invoices-list"),
    path(f"{_ORG}/billing/balance", views.OrgBillingBalanceView.as_view(), name="org-billing-balance"),
    path(f"{_ORG}/billing/usage", views.OrgBillingUsageView.as_view(), name="org-billing-usage"),
    path(f"{_ORG}/billing/budget", views.OrgBudgetView.as_view(), name="org-billing-budget"),
    path(f"{_ORG}/billing/budget/events", views.OrgBudgetEventListView.as_view(), name="org-billing-budget-events"),
    path(f"{_ORG}/invoices", views.OrgInvoiceListView.as_view(), name="org-invoices-list"),
    path(f"{_ORG}/invoices/<str:number>", views.OrgInvoiceDetailView.as_view(), name="org-invoice-detail"),
    path(f"{_ORG}/invoices/<str:number>/csv", views.OrgInvoiceCsvView.as_view(), name="org-invoice-csv"),
]
