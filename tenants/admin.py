"""The operators' admin for tenants: reads across organisations, writes only through the services."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.models import Group
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse

from controlplane.core.admin import ReadOnlyAdmin, admin_actor
from controlplane.core.errors import Conflict
from controlplane.core.scoping import org_scope
from tenants import services
from tenants.models import (
    ApiKey,
    Invitation,
    Membership,
    Organization,
    QuotaPlan,
    RegionalQuota,
    ResidencyPolicy,
    User,
)


class OrgOwnedAdmin(ReadOnlyAdmin):
    """Operators see every organisation's rows: the scoped default manager would refuse."""

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        manager = self.model._default_manager
        queryset: QuerySet[Any] = manager.unscoped_all_orgs()
        return queryset.select_related("organization")


@admin.register(User)
class UserAdmin(admin.ModelAdmin):  # type: ignore[type-arg]  # generic over the model
    list_display = ("email", "full_name", "is_active", "is_staff", "email_verified", "date_joined", "last_login")
    search_fields = ("email", "full_name")
    list_filter = ("is_active", "is_staff", "email_verified")
    fields = ("email", "full_name", "is_active", "is_staff", "email_verified", "date_joined", "last_login")
    readonly_fields = ("email", "date_joined", "last_login")

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Accounts come from sign-up or `createsuperuser`, which validate the password.
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class OrganizationForm(forms.ModelForm):  # type: ignore[type-arg]  # generic over the model
    class Meta:
        model = Organization
        fields = ("name", "billing_mode", "billing_currency", "billing_country", "tax_id", "quota_plan")


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):  # type: ignore[type-arg]  # generic over the model
    form = OrganizationForm
    list_display = (
        "slug", "name", "status", "billing_mode", "billing_currency", "billing_country", "quota_plan", "created_at",
    )  # fmt: skip
    search_fields = ("slug", "name", "tax_id")
    list_filter = ("status", "billing_mode", "billing_currency", "billing_country", "quota_plan")
    readonly_fields = ("slug", "status", "created_at", "updated_at")
    actions = ("suspend_organizations", "reinstate_organizations")

    def has_add_permission(self, request: HttpRequest) -> bool:
        # An organisation needs an owner, a policy and quotas: `organization_create` makes them together.
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: Organization, form: Any, change: bool) -> None:
        services.organization_update(
            actor=admin_actor(request),
            organization=obj,
            name=obj.name,
            billing_country=obj.billing_country,
            billing_currency=obj.billing_currency,
            tax_id=obj.tax_id,
            billing_mode=obj.billing_mode,
        )
        if "quota_plan" in form.changed_data:
            services.organization_quota_plan_set(actor=admin_actor(request), organization=obj, plan=obj.quota_plan)

    @admin.action(description="Suspend the selected organisations")
    def suspend_organizations(self, request: HttpRequest, queryset: QuerySet[Organization]) -> None:
        self._change_status(request, queryset, services.organization_suspend, "suspended")

    @admin.action(description="Reinstate the selected organisations")
    def reinstate_organizations(self, request: HttpRequest, queryset: QuerySet[Organization]) -> None:
        self._change_status(request, queryset, services.organization_reinstate, "reinstated")

    def _change_status(self, request: HttpRequest, queryset: QuerySet[Organization], service: Any, verb: str) -> None:
        done = 0
        for organization in queryset.order_by("pk"):
            try:
                service(actor=admin_actor(request), organization=organization, reason="admin action")
            except Conflict as exc:
                self.message_user(request, f"{organization.slug}: {exc.message}", level=messages.WARNING)
            else:
                done += 1
        self.message_user(request, f"{done} organisation(s) {verb}.")


@admin.register(Membership)
class MembershipAdmin(OrgOwnedAdmin):
    list_display = ("public_id", "organization", "user", "role", "created_at")
    search_fields = ("public_id", "organization__slug", "user__email")
    list_filter = ("role",)


@admin.register(Invitation)
class InvitationAdmin(OrgOwnedAdmin):
    list_display = ("public_id", "organization", "email", "role", "status", "expires_at", "created_at")
    search_fields = ("public_id", "organization__slug", "email")
    list_filter = ("status", "role")
    exclude = ("token_hash",)


@admin.register(ApiKey)
class ApiKeyAdmin(OrgOwnedAdmin):
    list_display = ("key_id", "name", "organization", "created_by", "expires_at", "revoked_at", "last_used_at")
    search_fields = ("key_id", "name", "organization__slug", "created_by__email")
    list_filter = ("revoked_at", "expires_at")
    # The HMAC is never displayed: it would help an offline guess of the key.
    exclude = ("secret_hmac",)
    actions = ("revoke_keys",)

    @admin.action(description="Revoke the selected API keys")
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        keys = list(queryset.select_related("organization").order_by("pk"))
        for key in keys:
            services.api_key_revoke(actor=admin_actor(request), organization=key.organization, api_key=key)
        self.message_user(request, f"{len(keys)} key(s) revoked.")


@admin.register(ResidencyPolicy)
class ResidencyPolicyAdmin(OrgOwnedAdmin):
    list_display = ("organization", "allowed_countries", "allowed_zones", "accelerator_family", "retention_days")
    search_fields = ("organization__slug",)
    list_filter = ("accelerator_family",)


class RegionalQuotaForm(forms.ModelForm):  # type: ignore[type-arg]  # generic over the model
    class Meta:
        model = RegionalQuota
        fields = ("requests_per_minute", "tokens_per_minute", "concurrent_requests", "monthly_tokens")


@admin.register(RegionalQuota)
class RegionalQuotaAdmin(OrgOwnedAdmin):
    form = RegionalQuotaForm
    list_display = (
        "organization",
        "region",
        "requests_per_minute",
        "tokens_per_minute",
        "concurrent_requests",
        "monthly_tokens",
    )
    search_fields = ("organization__slug",)
    list_filter = ("region",)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.is_staff)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return ["organization", "region", "created_at", "updated_at"]

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        # The form's constraint checks query through the scoped manager: scope them to the row's
        # organisation, which is the only one this page touches.
        quota = self.get_object(request, object_id) if object_id else None
        if quota is None:
            return super().changeform_view(request, object_id, form_url, extra_context)
        with org_scope(quota.organization_id):
            return super().changeform_view(request, object_id, form_url, extra_context)

    def save_model(self, request: HttpRequest, obj: RegionalQuota, form: Any, change: bool) -> None:
        # an empty field returns that limit to the organisation's plan
        services.regional_quota_set(
            actor=admin_actor(request),
            organization=obj.organization,
            region=obj.region,
            requests_per_minute=obj.requests_per_minute,
            tokens_per_minute=obj.tokens_per_minute,
            concurrent_requests=obj.concurrent_requests,
            monthly_tokens=obj.monthly_tokens,
        )


class QuotaPlanForm(forms.ModelForm):  # type: ignore[type-arg]  # generic over the model
    class Meta:
        model = QuotaPlan
        fields = (
            "slug", "name", "description", "requests_per_minute", "tokens_per_minute", "concurrent_requests",
            "monthly_tokens", "is_default",
        )  # fmt: skip

    def clean_is_default(self) -> bool:
        value = bool(self.cleaned_data["is_default"])
        if self.instance.pk is not None and self.instance.is_default and not value:
            raise forms.ValidationError("This is the default plan: mark another plan as the default instead.")
        return value


@admin.register(QuotaPlan)
class QuotaPlanAdmin(admin.ModelAdmin):  # type: ignore[type-arg]  # generic over the model
    """Tiers of default limits. Saves go through the service, which audits them and keeps exactly one
    default; a plan is never deleted (organisations and audit events name it)."""

    form = QuotaPlanForm
    list_display = (
        "slug", "name", "requests_per_minute", "tokens_per_minute", "concurrent_requests", "monthly_tokens",
        "is_default", "updated_at",
    )  # fmt: skip
    search_fields = ("slug", "name")
    list_filter = ("is_default",)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return ["slug", "created_at", "updated_at"] if obj is not None else ["created_at", "updated_at"]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: QuotaPlan, form: Any, change: bool) -> None:
        saved = services.quota_plan_save(
            actor=admin_actor(request),
            slug=obj.slug,
            name=obj.name,
            description=obj.description,
            requests_per_minute=obj.requests_per_minute,
            tokens_per_minute=obj.tokens_per_minute,
            concurrent_requests=obj.concurrent_requests,
            monthly_tokens=obj.monthly_tokens,
            is_default=obj.is_default,
        )
        obj.pk = saved.pk


# Access is by organisation roles and the staff flag; Django's groups are not used, so not offered.
admin.site.unregister(Group)
