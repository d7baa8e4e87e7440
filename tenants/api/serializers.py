"""Input serializers (strict: unknown fields are refused) and output serializers of the tenants API.

Input serializers only check shapes and types; the services own the business rules.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from controlplane.core.api.serializers import StrictInputSerializer
from controlplane.core.models import AuditEvent
from controlplane.core.regions import REGION_CODES
from tenants.models import (
    BILLING_CURRENCIES,
    QUOTA_FIELDS,
    ApiKey,
    Invitation,
    Membership,
    Organization,
    QuotaPlan,
    ResidencyPolicy,
    Role,
    User,
)
from tenants.scopes import ALL_SCOPES
from tenants.services import MAX_ROTATION_OVERLAP_S

_SCOPE_CHOICES = sorted(ALL_SCOPES)


# --- input -----------------------------------------------------------------------------------


class SignupSerializer(StrictInputSerializer):
    email = serializers.EmailField(max_length=254)
    password = serializers.CharField(max_length=256, trim_whitespace=False)
    full_name = serializers.CharField(max_length=150, required=False, allow_blank=True, default="")


class TokenSerializer(StrictInputSerializer):
    token = serializers.CharField(max_length=512)


class LoginSerializer(StrictInputSerializer):
    email = serializers.CharField(max_length=254)
    password = serializers.CharField(max_length=256, trim_whitespace=False)


class PasswordResetSerializer(StrictInputSerializer):
    email = serializers.CharField(max_length=254)


class PasswordResetConfirmSerializer(StrictInputSerializer):
    uid = serializers.CharField(max_length=64)
    token = serializers.CharField(max_length=128)
    new_password = serializers.CharField(max_length=256, trim_whitespace=False)


class OrganizationCreateSerializer(StrictInputSerializer):
    slug = serializers.CharField(max_length=50)
    name = serializers.CharField(max_length=120)
    billing_country = serializers.CharField(min_length=2, max_length=2)
    billing_currency = serializers.ChoiceField(choices=BILLING_CURRENCIES, required=False, default="USD")
    tax_id = serializers.CharField(max_length=40, required=False, allow_blank=True, default="")


class OrganizationUpdateSerializer(StrictInputSerializer):
    name = serializers.CharField(max_length=120, required=False)
    billing_country = serializers.CharField(min_length=2, max_length=2, required=False)
    billing_currency = serializers.ChoiceField(choices=BILLING_CURRENCIES, required=False)
    tax_id = serializers.CharField(max_length=40, required=False, allow_blank=True)


class MembershipUpdateSerializer(StrictInputSerializer):
    role = serializers.ChoiceField(choices=Role.choices)


class InvitationCreateSerializer(StrictInputSerializer):
    email = serializers.EmailField(max_length=254)
    role = serializers.ChoiceField(choices=Role.choices)


class ApiKeyCreateSerializer(StrictInputSerializer):
    name = serializers.CharField(max_length=80)
    scopes = serializers.ListField(
        child=serializers.ChoiceField(choices=_SCOPE_CHOICES),
        required=False,
        help_text="Defaults to every scope the creator holds; must be a subset of them.",
    )
    expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)


class ApiKeyRotateSerializer(StrictInputSerializer):
    overlap_s = serializers.IntegerField(
        min_value=0,
        max_value=MAX_ROTATION_OVERLAP_S,
        required=False,
        allow_null=True,
        default=None,
        help_text="How long the old key keeps working, in seconds (default: the server's setting).",
    )


class ResidencyPolicyUpdateSerializer(StrictInputSerializer):
    allowed_countries = serializers.ListField(child=serializers.CharField(max_length=8), max_length=250)
    allowed_zones = serializers.ListField(child=serializers.CharField(max_length=32), max_length=50)
    accelerator_family = serializers.CharField(max_length=20, allow_blank=True)
    retention_days = serializers.IntegerField(min_value=0)


class RegionalQuotaSetSerializer(StrictInputSerializer):
    """Overrides of the organisation's plan in one region: a number sets the limit, null returns it to
    the plan's, an absent field stays as it is (at least one is required)."""

    requests_per_minute = serializers.IntegerField(min_value=0, max_value=2**31 - 1, required=False, allow_null=True)
    tokens_per_minute = serializers.IntegerField(min_value=0, max_value=2**31 - 1, required=False, allow_null=True)
    concurrent_requests = serializers.IntegerField(min_value=0, max_value=2**31 - 1, required=False, allow_null=True)
    monthly_tokens = serializers.IntegerField(min_value=0, max_value=2**63 - 1, required=False, allow_null=True)


class QuotaPlanInputSerializer(StrictInputSerializer):
    name = serializers.CharField(max_length=80)
    description = serializers.CharField(max_length=300, required=False, allow_blank=True, default="")
    requests_per_minute = serializers.IntegerField(min_value=0, max_value=2**31 - 1)
    tokens_per_minute = serializers.IntegerField(min_value=0, max_value=2**31 - 1)
    concurrent_requests = serializers.IntegerField(min_value=0, max_value=2**31 - 1)
    monthly_tokens = serializers.IntegerField(min_value=0, max_value=2**63 - 1)
    is_default = serializers.BooleanField(required=False, default=False)


class QuotaPlanCreateSerializer(QuotaPlanInputSerializer):
    slug = serializers.SlugField(max_length=40)


class OrganizationQuotaPlanSetSerializer(StrictInputSerializer):
    plan = serializers.SlugField(max_length=40, allow_null=True, help_text="a plan's slug; null: the default plan")


class OrganizationStatusChangeSerializer(StrictInputSerializer):
    reason = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")


# --- output ----------------------------------------------------------------------------------


class UserSerializer(serializers.ModelSerializer[User]):
    class Meta:
        model = User
        fields = ("email", "full_name", "email_verified", "is_staff", "date_joined")
        read_only_fields = fields


class OrganizationSerializer(serializers.ModelSerializer[Organization]):
    class Meta:
        model = Organization
        fields = (
            "slug",
            "name",
            "status",
            "billing_mode",
            "billing_currency",
            "billing_country",
            "tax_id",
            "created_at",
        )
        read_only_fields = fields


class MyMembershipSerializer(serializers.ModelSerializer[Membership]):
    id = serializers.CharField(source="public_id", read_only=True)
    organization = OrganizationSerializer(read_only=True)

    class Meta:
        model = Membership
        fields = ("id", "organization", "role", "created_at")
        read_only_fields = fields


class MeSerializer(serializers.Serializer[dict[str, Any]]):
    user = UserSerializer(read_only=True)
    memberships = MyMembershipSerializer(many=True, read_only=True)


class CsrfTokenSerializer(serializers.Serializer[dict[str, Any]]):
    csrf_token = serializers.CharField(read_only=True)


class MemberUserSerializer(serializers.ModelSerializer[User]):
    class Meta:
        model = User
        fields = ("email", "full_name")
        read_only_fields = fields


class MembershipSerializer(serializers.ModelSerializer[Membership]):
    id = serializers.CharField(source="public_id", read_only=True)
    user = MemberUserSerializer(read_only=True)

    class Meta:
        model = Membership
        fields = ("id", "user", "role", "created_at")
        read_only_fields = fields


class InvitationSerializer(serializers.ModelSerializer[Invitation]):
    id = serializers.CharField(source="public_id", read_only=True)
    invited_by = serializers.EmailField(source="invited_by.email", read_only=True, allow_null=True, default=None)

    class Meta:
        model = Invitation
        fields: tuple[str, ...] = (
            "id",
            "email",
            "role",
            "status",
            "invited_by",
            "expires_at",
            "accepted_at",
            "created_at",
        )
        read_only_fields: tuple[str, ...] = fields


class InvitationCreatedSerializer(InvitationSerializer):
    token = serializers.CharField(read_only=True, help_text="Shown once; also mailed to the invitee.")

    class Meta(InvitationSerializer.Meta):
        fields = (*InvitationSerializer.Meta.fields, "token")
        read_only_fields = fields


class ApiKeySerializer(serializers.ModelSerializer[ApiKey]):
    scopes = serializers.SerializerMethodField()
    created_by = serializers.EmailField(source="created_by.email", read_only=True)
    rotated_from = serializers.CharField(source="rotated_from.key_id", read_only=True, allow_null=True, default=None)

    class Meta:
        model = ApiKey
        fields: tuple[str, ...] = (
            "key_id",
            "name",
            "scopes",
            "created_by",
            "created_at",
            "expires_at",
            "last_used_at",
            "revoked_at",
            "rotated_from",
        )
        read_only_fields: tuple[str, ...] = fields

    @extend_schema_field(serializers.ListField(child=serializers.ChoiceField(choices=_SCOPE_CHOICES)))
    def get_scopes(self, obj: ApiKey) -> list[str]:
        return sorted(obj.scopes)


class ApiKeyCreatedSerializer(ApiKeySerializer):
    secret = serializers.CharField(read_only=True, help_text="The full key. Shown once; store it now.")

    class Meta(ApiKeySerializer.Meta):
        fields = (*ApiKeySerializer.Meta.fields, "secret")
        read_only_fields = fields


class ResidencyPolicySerializer(serializers.ModelSerializer[ResidencyPolicy]):
    allowed_countries = serializers.ListField(child=serializers.CharField(), read_only=True)
    allowed_zones = serializers.ListField(child=serializers.CharField(), read_only=True)

    class Meta:
        model = ResidencyPolicy
        fields = ("allowed_countries", "allowed_zones", "accelerator_family", "retention_days", "updated_at")
        read_only_fields = fields


class RegionalQuotaSerializer(serializers.Serializer):  # type: ignore[type-arg]  # drf-stubs: generic over the instance
    """The limits in force in one region: the plan's, except those the organisation overrides there."""

    region = serializers.ChoiceField(choices=REGION_CODES, read_only=True)
    plan = serializers.CharField(read_only=True, help_text="the organisation's quota plan")
    requests_per_minute = serializers.IntegerField(read_only=True)
    tokens_per_minute = serializers.IntegerField(read_only=True)
    concurrent_requests = serializers.IntegerField(read_only=True)
    monthly_tokens = serializers.IntegerField(read_only=True)
    overridden = serializers.ListField(
        child=serializers.ChoiceField(choices=QUOTA_FIELDS),
        read_only=True,
        help_text="limits set for this organisation in this region; the others are the plan's",
    )
    updated_at = serializers.DateTimeField(read_only=True, allow_null=True)


class QuotaPlanSerializer(serializers.ModelSerializer[QuotaPlan]):
    class Meta:
        model = QuotaPlan
        fields = (
            "slug",
            "name",
            "description",
            "requests_per_minute",
            "tokens_per_minute",
            "concurrent_requests",
            "monthly_tokens",
            "is_default",
            "updated_at",
        )
        read_only_fields = fields


class OrganizationQuotaPlanSerializer(serializers.Serializer):  # type: ignore[type-arg]  # drf-stubs: generic over the instance
    organization = serializers.CharField(source="slug", read_only=True)
    plan = serializers.CharField(read_only=True, help_text="the plan in force (the default when none is named)")
    plan_named = serializers.BooleanField(read_only=True, help_text="false: the organisation follows the default plan")


class AuditEventSerializer(serializers.ModelSerializer[AuditEvent]):
    changes = serializers.DictField(read_only=True)

    class Meta:
        model = AuditEvent
        fields = (
            "created_at",
            "actor_label",
            "action",
            "target_type",
            "target_id",
            "changes",
            "ip_address",
            "request_id",
        )
        read_only_fields = fields
