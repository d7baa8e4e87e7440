"""Tenant models. Everything an organisation owns uses the scoped manager (STYLE: tenant scoping)."""

from __future__ import annotations

import secrets
from typing import Any, ClassVar

from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.db import models
from django.utils import timezone

from controlplane.core.models import CentralModel, DataHome, OrgOwnedModel
from controlplane.core.regions import REGION_CODES

BILLING_CURRENCIES = ("USD", "SGD", "IDR", "AED", "SAR", "EUR", "BRL", "CNY")


# URLs name memberships and invitations by these random ids, never by sequential primary keys,
# so that an id reveals nothing about how many rows exist and cannot be guessed.
def membership_public_id() -> str:
    return "mem_" + secrets.token_hex(10)


def invitation_public_id() -> str:
    return "inv_" + secrets.token_hex(10)


class UserManager(BaseUserManager["User"]):
    def create_user(self, email: str, password: str | None = None, **extra: Any) -> User:
        if not email:
            raise ValueError("an email address is required")
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_superuser(self, email: str, password: str | None = None, **extra: Any) -> User:
        extra.setdefault("is_staff", True)
        extra.setdefault("is_superuser", True)
        extra.setdefault("email_verified", True)
        return self.create_user(email, password, **extra)


class User(AbstractBaseUser, PermissionsMixin):
    """A person. Operators are staff; customers reach organisations through memberships."""

    data_home: ClassVar[DataHome] = DataHome.CENTRAL
    email = models.EmailField(unique=True)
    full_name = models.CharField(max_length=150, blank=True)
    is_active = models.BooleanField(default=True)
    is_staff = models.BooleanField(default=False, help_text="operators: may use the admin panel and /api/v1/ops/")
    email_verified = models.BooleanField(default=False)
    date_joined = models.DateTimeField(default=timezone.now)

    objects: ClassVar[UserManager] = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: ClassVar[list[str]] = []

    class Meta:
        ordering = ("email",)

    def __str__(self) -> str:
        return self.email


class Organization(CentralModel):
    """The tenant. Its slug is immutable and appears in every customer URL."""

    class Status(models.TextChoices):
        ACTIVE = "active", "active"
        SUSPENDED = "suspended", "suspended"

    class BillingMode(models.TextChoices):
        PREPAID = "prepaid", "prepaid"
        POSTPAID = "postpaid", "postpaid"

    slug = models.SlugField(max_length=50, unique=True)
    name = models.CharField(max_length=120)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE, db_index=True)
    billing_mode = models.CharField(max_length=16, choices=BillingMode.choices, default=BillingMode.PREPAID)
    billing_currency = models.CharField(max_length=3, choices=[(c, c) for c in BILLING_CURRENCIES], default="USD")
    billing_country = models.CharField(max_length=2, help_text="ISO 3166-1 alpha-2")
    tax_id = models.CharField(max_length=40, blank=True)
    quota_plan = models.ForeignKey(
        "tenants.QuotaPlan",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="organizations",
        help_text="empty: the default plan",
    )

    class Meta:
        ordering = ("slug",)

    def __str__(self) -> str:
        return self.slug


class Role(models.TextChoices):
    OWNER = "owner", "owner"
    ADMIN = "admin", "admin"
    DEVELOPER = "developer", "developer"
    BILLING = "billing", "billing"
    VIEWER = "viewer", "viewer"


class Membership(OrgOwnedModel):
    public_id = models.CharField(max_length=32, unique=True, default=membership_public_id, editable=False)
    user = models.ForeignKey("tenants.User", on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices)

    class Meta:
        ordering = ("-created_at", "-id")
        constraints = (models.UniqueConstraint(fields=["organization", "user"], name="membership_unique_user"),)

    def __str__(self) -> str:
        return f"{self.user_id}@{self.organization_id}:{self.role}"


class Invitation(OrgOwnedModel):
    class Status(models.TextChoices):
        PENDING = "pending", "pending"
        ACCEPTED = "accepted", "accepted"
        REVOKED = "revoked", "revoked"

    public_id = models.CharField(max_length=32, unique=True, default=invitation_public_id, editable=False)
    email = models.EmailField()
    role = models.CharField(max_length=16, choices=Role.choices)
    token_hash = models.CharField(max_length=64, unique=True)
    invited_by = models.ForeignKey("tenants.User", null=True, on_delete=models.SET_NULL, related_name="+")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at", "-id")

    def __str__(self) -> str:
        return f"invitation {self.email} ({self.status})"


class ApiKey(OrgOwnedModel):
    """Stored as a public key id plus HMAC-SHA256(pepper, key); the secret is shown once."""

    key_id = models.CharField(max_length=16, unique=True)
    secret_hmac = models.CharField(max_length=64)
    name = models.CharField(max_length=80)
    created_by = models.ForeignKey("tenants.User", on_delete=models.PROTECT, related_name="api_keys")
    scopes = models.JSONField(default=list)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    rotated_from = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ("-created_at", "-id")
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.key_id})"


class ResidencyPolicy(OrgOwnedModel):
    """Where an organisation's content may be processed and stored; empty lists allow nothing."""

    allowed_countries = models.JSONField(default=list, blank=True, help_text="ISO alpha-2 codes")
    allowed_zones = models.JSONField(default=list, blank=True, help_text="e.g. GCC, EU")
    accelerator_family = models.CharField(max_length=20, blank=True, help_text="optional pin: npu, nvidia, amd")
    retention_days = models.PositiveIntegerField(default=30, help_text="content retention; 0 keeps nothing")

    class Meta:
        verbose_name_plural = "residency policies"
        constraints = (models.UniqueConstraint(fields=["organization"], name="residency_one_per_org"),)

    def __str__(self) -> str:
        return f"residency of {self.organization_id}"


QUOTA_FIELDS: tuple[str, ...] = ("requests_per_minute", "tokens_per_minute", "concurrent_requests", "monthly_tokens")
"""The four limits admission enforces per organisation and region (controlplane.inference.quota)."""


class QuotaPlan(CentralModel):
    """A tier of default limits, the same in every region. An organisation is on one plan (the default
    plan when it names none); its RegionalQuota rows override single limits in single regions."""

    slug = models.SlugField(max_length=40, unique=True)
    name = models.CharField(max_length=80)
    description = models.CharField(max_length=300, blank=True)
    requests_per_minute = models.PositiveIntegerField()
    tokens_per_minute = models.PositiveIntegerField()
    concurrent_requests = models.PositiveIntegerField()
    monthly_tokens = models.PositiveBigIntegerField()
    is_default = models.BooleanField(default=False, help_text="the plan of organisations that name none")

    class Meta:
        ordering = ("requests_per_minute", "slug")
        constraints = (
            models.UniqueConstraint(
                fields=["is_default"], condition=models.Q(is_default=True), name="quota_plan_one_default"
            ),
        )

    def __str__(self) -> str:
        return self.slug


class RegionalQuota(OrgOwnedModel):
    """One organisation's overrides of its plan in one region: an empty limit is the plan's."""

    region = models.CharField(max_length=8, choices=[(c, c) for c in REGION_CODES])
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_minute = models.PositiveIntegerField(null=True, blank=True)
    concurrent_requests = models.PositiveIntegerField(null=True, blank=True)
    monthly_tokens = models.PositiveBigIntegerField(null=True, blank=True)

    class Meta:
        ordering = ("region",)
        constraints = (models.UniqueConstraint(fields=["organization", "region"], name="quota_unique_region"),)

    def __str__(self) -> str:
        return f"quota {self.organization_id}/{self.region}"

    @property
    def overridden(self) -> tuple[str, ...]:
        return tuple(f for f in QUOTA_FIELDS if getattr(self, f) is not None)
