"""Routes of the tenants API, mounted at `/api/v1/`; no trailing slashes."""

from __future__ import annotations

from django.urls import URLPattern, URLResolver, path

from tenants.api import views

_ORG = "orgs/<slug:org>"

urlpatterns: list[URLPattern | URLResolver] = [
    path("auth/csrf", views.CsrfView.as_view(), name="auth-csrf"),
    path("auth/signup", views.SignupView.as_view(), name="auth-signup"),
    path("auth/verify-email", views.VerifyEmailView.as_view(), name="auth-verify-email"),
    path("auth/login", views.LoginView.as_view(), name="auth-login"),
    path("auth/logout", views.LogoutView.as_view(), name="auth-logout"),
    path("auth/password-reset", views.PasswordResetView.as_view(), name="auth-password-reset"),
    path(
        "auth/password-reset/confirm",
        views.PasswordResetConfirmView.as_view(),
        name="auth-password-reset-confirm",
    ),
    path("auth/me", views.MeView.as_view(), name="auth-me"),
    path("invitations/accept", views.InvitationAcceptView.as_view(), name="invitation-accept"),
    path("orgs", views.MyOrganizationsView.as_view(), name="org-list"),
    path(_ORG, views.OrganizationDetailView.as_view(), name="org-detail"),
    path(f"{_ORG}/members", views.MembershipListView.as_view(), name="member-list"),
    path(f"{_ORG}/members/<str:member_id>", views.MembershipDetailView.as_view(), name="member-detail"),
    path(f"{_ORG}/invitations", views.InvitationListView.as_view(), name="invitation-list"),
    path(f"{_ORG}/invitations/<str:invitation_id>", views.InvitationDetailView.as_view(), name="invitation-detail"),
    path(f"{_ORG}/api-keys", views.ApiKeyListView.as_view(), name="api-key-list"),
    path(f"{_ORG}/api-keys/<str:key_id>", views.ApiKeyDetailView.as_view(), name="api-key-detail"),
    path(f"{_ORG}/api-keys/<str:key_id>/rotate", views.ApiKeyRotateView.as_view(), name="api-key-rotate"),
    path(f"{_ORG}/residency-policy", views.ResidencyPolicyView.as_view(), name="residency-policy"),
    path(f"{_ORG}/quotas", views.RegionalQuotaListView.as_view(), name="quota-list"),
    path(f"{_ORG}/quotas/<str:region>", views.RegionalQuotaDetailView.as_view(), name="quota-detail"),
    path(f"{_ORG}/audit-events", views.AuditEventListView.as_view(), name="audit-event-list"),
    path("ops/orgs", views.OpsOrganizationListView.as_view(), name="ops-org-list"),
    path("ops/orgs/<slug:org>/suspend", views.OpsOrganizationSuspendView.as_view(), name="ops-org-suspend"),
    path("ops/orgs/<slug:org>/reinstate", views.OpsOrganizationReinstateView.as_view(), name="ops-org-reinstate"),
    path("ops/orgs/<slug:org>/quotas/<str:region>", views.OpsRegionalQuotaView.as_view(), name="ops-org-quota"),
    path("ops/orgs/<slug:org>/quota-plan", views.OpsOrganizationQuotaPlanView.as_view(), name="ops-org-quota-plan"),
    path("ops/quota-plans", views.OpsQuotaPlanListView.as_view(), name="ops-quota-plan-list"),
    path("ops/quota-plans/<slug:plan>", views.OpsQuotaPlanDetailView.as_view(), name="ops-quota-plan-detail"),
]
