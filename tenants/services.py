"""Writes of the tenants app: users, organisations, members, invitations, API keys, policies, quotas.

Every top-level service runs in one transaction, writes its audit rows inside it, and sends mail
only once the transaction has committed.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from datetime import datetime, timedelta
from enum import Enum
from typing import Any, Literal

from django.conf import settings
from django.contrib.auth import authenticate
from django.contrib.auth.password_validation import validate_password
from django.contrib.auth.tokens import default_token_generator
from django.core import signing
from django.core.cache import cache
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.mail import send_mail
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.encoding import force_bytes, force_str
from django.utils.http import urlsafe_base64_decode, urlsafe_base64_encode

from controlplane.core.errors import Conflict, NotFound, PermissionDenied, RateLimited, ValidationFailed
from controlplane.core.regions import COUNTRIES, REGION_CODES, ZONES
from controlplane.core.scoping import org_scope
from controlplane.core.services import Actor, audit_record
from tenants.keys import key_generate, key_hmac
from tenants.models import (
    BILLING_CURRENCIES,
    QUOTA_FIELDS,
    ApiKey,
    Invitation,
    Membership,
    Organization,
    QuotaPlan,
    RegionalQuota,
    ResidencyPolicy,
    Role,
    User,
)
from tenants.plans import SEEDED_PLANS
from tenants.scopes import ALL_SCOPES, role_scopes

ACCELERATOR_FAMILIES: tuple[str, ...] = ("", "npu", "nvidia", "amd")
MAX_ROTATION_OVERLAP_S = 7 * 24 * 3600
MAX_RETENTION_DAYS = 3650
QUOTA_LIMIT_MAX = {  # the columns' ranges
    "requests_per_minute": 2**31 - 1,
    "tokens_per_minute": 2**31 - 1,
    "concurrent_requests": 2**31 - 1,
    "monthly_tokens": 2**63 - 1,
}
_PLAN_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{1,39}$")
INVITATION_TTL = timedelta(days=7)
EMAIL_VERIFICATION_MAX_AGE_S = 3 * 24 * 3600
_EMAIL_VERIFICATION_SALT = "tenants.email-verification"
_COUNTRY_CODE = re.compile(r"^[A-Z]{2}$")
_SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{1,48}[a-z0-9])$")


# --- helpers ---------------------------------------------------------------------------------


def _normalize_email(email: str) -> str:
    normalized = User.objects.normalize_email(email.strip()).lower()
    try:
        validate_email(normalized)
    except DjangoValidationError as exc:
        raise ValidationFailed("The email address is not valid.", details={"email": exc.messages}) from exc
    return normalized


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _mail_on_commit(*, subject: str, body: str, to: str) -> None:
    transaction.on_commit(lambda: send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [to], fail_silently=False))


def _validate_role(role: str) -> str:
    if role not in Role.values:
        raise ValidationFailed(f"Unknown role {role!r}.", details={"role": [f"one of {', '.join(Role.values)}"]})
    return role


def _validate_country(country: str, *, field: str) -> str:
    if not _COUNTRY_CODE.match(country):
        raise ValidationFailed(
            "Countries are ISO 3166-1 alpha-2 codes in upper case.",
            details={field: [f"{country!r} is not valid"]},
        )
    return country


def _validate_currency(currency: str) -> str:
    if currency not in BILLING_CURRENCIES:
        raise ValidationFailed(
            "Unsupported billing currency.",
            details={"billing_currency": [f"one of {', '.join(BILLING_CURRENCIES)}"]},
        )
    return currency


def _actor_scopes(*, actor: Actor) -> frozenset[str]:
    """Scopes the acting person holds in the active organisation (call inside `org_scope`).

    The system and operators (staff acting through the admin or `/ops/`) are not limited by a role.
    """
    if actor.user_id is None:
        return ALL_SCOPES
    membership = Membership.objects.filter(user_id=actor.user_id).first()
    if membership is not None:
        return role_scopes(membership.role)
    if User.objects.filter(pk=actor.user_id, is_staff=True, is_active=True).exists():
        return ALL_SCOPES
    raise PermissionDenied("You are not a member of this organisation.", code="not_a_member")


def _assert_may_grant(*, actor_scopes: frozenset[str], role: str) -> None:
    # Nobody hands out (or takes away) a role carrying scopes they do not hold themselves.
    if not role_scopes(role) <= actor_scopes:
        raise PermissionDenied(f"You may not manage the role {role!r}.", code="role_not_grantable")


def _lock_owners(*, organization: Organization) -> list[Membership]:
    # Always locked in primary-key order, so that concurrent demotions serialise without deadlock.
    return list(
        Membership.objects.select_for_update().filter(organization=organization, role=Role.OWNER).order_by("pk")
    )


def _lock_membership_and_owners(*, organization: Organization, membership: Membership) -> tuple[Membership, bool]:
    """Lock the organisation's owners, then the membership; say whether it is the last owner."""
    owners = _lock_owners(organization=organization)
    locked = Membership.objects.select_for_update().select_related("user").filter(pk=membership.pk).first()
    if locked is None:
        raise NotFound("Not found.")
    is_last_owner = locked.role == Role.OWNER and not any(owner.pk != locked.pk for owner in owners)
    return locked, is_last_owner


def _last_owner_conflict() -> Conflict:
    return Conflict("An organisation must keep at least one owner.", code="last_owner")


def _organization_snapshot(organization: Organization) -> dict[str, Any]:
    return {
        "name": organization.name,
        "status": organization.status,
        "billing_mode": organization.billing_mode,
        "billing_currency": organization.billing_currency,
        "billing_country": organization.billing_country,
        "tax_id": organization.tax_id,
    }


def _policy_snapshot(policy: ResidencyPolicy) -> dict[str, Any]:
    return {
        "allowed_countries": list(policy.allowed_countries),
        "allowed_zones": list(policy.allowed_zones),
        "accelerator_family": policy.accelerator_family,
        "retention_days": policy.retention_days,
    }


def _quota_snapshot(quota: RegionalQuota) -> dict[str, Any]:
    return {
        "requests_per_minute": quota.requests_per_minute,
        "tokens_per_minute": quota.tokens_per_minute,
        "concurrent_requests": quota.concurrent_requests,
        "monthly_tokens": quota.monthly_tokens,
    }


# --- users and sessions ----------------------------------------------------------------------


def user_create(
    *,
    email: str,
    password: str,
    full_name: str = "",
    is_staff: bool = False,
    email_verified: bool = False,
) -> User:
    normalized = _normalize_email(email)
    candidate = User(email=normalized, full_name=full_name)
    try:
        validate_password(password, user=candidate)
    except DjangoValidationError as exc:
        raise ValidationFailed("The password is too weak.", details={"password": exc.messages}) from exc
    with transaction.atomic():
        if User.objects.filter(email=normalized).exists():
            raise Conflict("An account with this email address exists.", code="email_taken")
        try:
            with transaction.atomic():
                user = User.objects.create_user(
                    normalized,
                    password,
                    full_name=full_name,
                    is_staff=is_staff,
                    email_verified=email_verified,
                )
        except IntegrityError as exc:
            raise Conflict("An account with this email address exists.", code="email_taken") from exc
        audit_record(
            actor=Actor(user_id=user.pk, label=user.email),
            action="user.create",
            target_type="user",
            target_id=user.pk,
            changes={"email": user.email, "is_staff": is_staff},
        )
    return user


def email_verification_token_make(*, user: User) -> str:
    return signing.dumps({"uid": user.pk, "email": user.email}, salt=_EMAIL_VERIFICATION_SALT)


def user_signup(*, email: str, password: str, full_name: str = "") -> User:
    """Create a console account and mail it a link that proves the address."""
    with transaction.atomic():
        user = user_create(email=email, password=password, full_name=full_name)
        token = email_verification_token_make(user=user)
        _mail_on_commit(
            subject="Verify your email address",
            body=f"Confirm your address: {settings.PUBLIC_URL}/verify-email?token={token}\n",
            to=user.email,
        )
    return user


def user_verify_email(*, token: str) -> User:
    try:
        payload = signing.loads(token, salt=_EMAIL_VERIFICATION_SALT, max_age=EMAIL_VERIFICATION_MAX_AGE_S)
    except signing.BadSignature as exc:  # SignatureExpired is a subclass
        raise ValidationFailed("The verification link is invalid or has expired.", code="invalid_token") from exc
    with transaction.atomic():
        user = User.objects.select_for_update().filter(pk=payload.get("uid"), email=payload.get("email")).first()
        if user is None:
            raise ValidationFailed("The verification link is invalid or has expired.", code="invalid_token")
        if not user.email_verified:
            user.email_verified = True
            user.save(update_fields=["email_verified"])
            audit_record(
                actor=Actor(user_id=user.pk, label=user.email),
                action="user.verify_email",
                target_type="user",
                target_id=user.pk,
            )
    return user


def _login_failure_keys(*, email: str, ip_address: str | None) -> list[str]:
    keys = ["login-failures:email:" + hashlib.sha256(email.encode("utf-8")).hexdigest()]
    if ip_address:
        keys.append(f"login-failures:ip:{ip_address}")
    return keys


def _login_retry_after(keys: list[str]) -> int | None:
    window = settings.LOGIN_FAILURE_WINDOW_S
    now = time.time()
    values = cache.get_many([f"{key}:count" for key in keys] + [f"{key}:start" for key in keys])
    waits = []
    for key in keys:
        count = values.get(f"{key}:count") or 0
        if count >= settings.LOGIN_FAILURE_LIMIT:
            start = values.get(f"{key}:start", now)
            waits.append(max(1, int(window - (now - start)) + 1))
    return max(waits) if waits else None


def _login_failure_count(keys: list[str]) -> None:
    window = settings.LOGIN_FAILURE_WINDOW_S
    for key in keys:
        # A fixed window that opens at the first failure; `add` never moves an open window.
        cache.add(f"{key}:start", time.time(), timeout=window)
        cache.add(f"{key}:count", 0, timeout=window)
        try:
            cache.incr(f"{key}:count")
        except ValueError:
            # The window closed between `add` and `incr`: this failure opens a new one.
            cache.set(f"{key}:count", 1, timeout=window)


def user_authenticate(*, email: str, password: str, ip_address: str | None) -> User:
    """Check a console login, refusing further tries after too many failures per email or per IP."""
    normalized = User.objects.normalize_email(email.strip()).lower()
    keys = _login_failure_keys(email=normalized, ip_address=ip_address)
    retry_after = _login_retry_after(keys)
    if retry_after is not None:
        raise RateLimited("Too many failed logins; try again later.", retry_after_s=retry_after, code="login_throttled")
    user = authenticate(None, username=normalized, password=password)
    if not isinstance(user, User):
        _login_failure_count(keys)
        raise ValidationFailed("The email address or password is wrong.", code="invalid_credentials")
    # A success clears the account's counter, never the IP's: one good login must not reset a spray.
    cache.delete_many([f"{keys[0]}:count", f"{keys[0]}:start"])
    return user


def password_reset_request(*, email: str) -> None:
    """Mail a reset link when the account exists; the caller learns nothing either way."""
    normalized = User.objects.normalize_email(email.strip()).lower()
    with transaction.atomic():
        user = User.objects.filter(email=normalized, is_active=True).first()
        if user is None:
            return
        uid = urlsafe_base64_encode(force_bytes(user.pk))
        token = default_token_generator.make_token(user)
        _mail_on_commit(
            subject="Reset your password",
            body=f"Choose a new password: {settings.PUBLIC_URL}/reset-password?uid={uid}&token={token}\n",
            to=user.email,
        )
        audit_record(
            actor=Actor.system("password-reset"),
            action="user.password_reset_request",
            target_type="user",
            target_id=user.pk,
        )


def password_reset_confirm(*, uid: str, token: str, new_password: str) -> User:
    invalid = ValidationFailed("The reset link is invalid or has expired.", code="invalid_token")
    try:
        user_pk = int(force_str(urlsafe_base64_decode(uid)))
    except (ValueError, TypeError, OverflowError) as exc:
        raise invalid from exc
    with transaction.atomic():
        user = User.objects.select_for_update().filter(pk=user_pk, is_active=True).first()
        if user is None or not default_token_generator.check_token(user, token):
            raise invalid
        try:
            validate_password(new_password, user=user)
        except DjangoValidationError as exc:
            raise ValidationFailed("The password is too weak.", details={"new_password": exc.messages}) from exc
        # A new password changes the session hash, so every other session of this user ends.
        user.set_password(new_password)
        user.save(update_fields=["password"])
        audit_record(
            actor=Actor(user_id=user.pk, label=user.email),
            action="user.password_reset",
            target_type="user",
            target_id=user.pk,
        )
    return user


# --- organisations ---------------------------------------------------------------------------


def organization_create(
    *,
    actor: Actor,
    owner: User,
    slug: str,
    name: str,
    billing_country: str,
    billing_currency: str = "USD",
    billing_mode: str = "prepaid",
    tax_id: str = "",
) -> Organization:
    if not _SLUG.match(slug):
        raise ValidationFailed(
            "The slug must be 3 to 50 lower-case letters, digits or hyphens.", details={"slug": ["not valid"]}
        )
    if not name.strip():
        raise ValidationFailed("The name is required.", details={"name": ["required"]})
    _validate_country(billing_country, field="billing_country")
    _validate_currency(billing_currency)
    if billing_mode not in Organization.BillingMode.values:
        raise ValidationFailed("Unknown billing mode.", details={"billing_mode": ["prepaid or postpaid"]})
    if not owner.is_active:
        raise ValidationFailed("The owner's account is not active.", code="user_inactive")
    with transaction.atomic():
        if Organization.objects.filter(slug=slug).exists():
            raise Conflict("This slug is taken.", code="slug_taken")
        try:
            with transaction.atomic():
                organization = Organization.objects.create(
                    slug=slug,
                    name=name.strip(),
                    billing_country=billing_country,
                    billing_currency=billing_currency,
                    billing_mode=billing_mode,
                    tax_id=tax_id,
                )
        except IntegrityError as exc:
            raise Conflict("This slug is taken.", code="slug_taken") from exc
        with org_scope(organization.pk):
            membership = Membership.objects.create(organization=organization, user=owner, role=Role.OWNER)
            # Default residency: the billing country when it hosts a region, otherwise nothing until
            # the customer chooses; content never goes anywhere by default.
            policy = ResidencyPolicy.objects.create(
                organization=organization,
                allowed_countries=[billing_country] if billing_country in COUNTRIES else [],
            )
            RegionalQuota.objects.bulk_create(
                [RegionalQuota(organization=organization, region=code) for code in REGION_CODES]
            )
        audit_record(
            actor=actor,
            action="organization.create",
            target_type="organization",
            target_id=organization.slug,
            organization_id=organization.pk,
            changes={"slug": slug, **_organization_snapshot(organization)},
        )
        audit_record(
            actor=actor,
            action="membership.create",
            target_type="membership",
            target_id=membership.public_id,
            organization_id=organization.pk,
            changes={"user": owner.email, "role": Role.OWNER},
        )
        audit_record(
            actor=actor,
            action="residency_policy.create",
            target_type="residency_policy",
            target_id=organization.slug,
            organization_id=organization.pk,
            changes={"after": _policy_snapshot(policy)},
        )
    return organization


def organization_update(
    *,
    actor: Actor,
    organization: Organization,
    name: str | None = None,
    billing_country: str | None = None,
    billing_currency: str | None = None,
    tax_id: str | None = None,
    billing_mode: str | None = None,
) -> Organization:
    """Change an organisation's editable fields; the slug never changes."""
    updates: dict[str, str] = {}
    if name is not None:
        if not name.strip():
            raise ValidationFailed("The name is required.", details={"name": ["required"]})
        updates["name"] = name.strip()
    if billing_country is not None:
        updates["billing_country"] = _validate_country(billing_country, field="billing_country")
    if billing_currency is not None:
        updates["billing_currency"] = _validate_currency(billing_currency)
    if tax_id is not None:
        updates["tax_id"] = tax_id
    if billing_mode is not None:
        if billing_mode not in Organization.BillingMode.values:
            raise ValidationFailed("Unknown billing mode.", details={"billing_mode": ["prepaid or postpaid"]})
        updates["billing_mode"] = billing_mode
    with transaction.atomic():
        locked = Organization.objects.select_for_update().get(pk=organization.pk)
        before = _organization_snapshot(locked)
        for field, value in updates.items():
            setattr(locked, field, value)
        locked.save(update_fields=[*updates, "updated_at"])
        after = _organization_snapshot(locked)
        changed = {
            field: {"before": before[field], "after": after[field]}
            for field in updates
            if before[field] != after[field]
        }
        if changed:
            audit_record(
                actor=actor,
                action="organization.update",
                target_type="organization",
                target_id=locked.slug,
                organization_id=locked.pk,
                changes=changed,
            )
    return locked


def _organization_set_status(
    *, actor: Actor, organization: Organization, status: str, action: str, reason: str
) -> Organization:
    with transaction.atomic():
        locked = Organization.objects.select_for_update().get(pk=organization.pk)
        if locked.status == status:
            raise Conflict(f"The organisation is already {status}.", code=f"already_{status}")
        before = locked.status
        locked.status = status
        locked.save(update_fields=["status", "updated_at"])
        audit_record(
            actor=actor,
            action=action,
            target_type="organization",
            target_id=locked.slug,
            organization_id=locked.pk,
            changes={"status": {"before": before, "after": status}, "reason": reason},
        )
    return locked


def organization_suspend(*, actor: Actor, organization: Organization, reason: str = "") -> Organization:
    """Operators: stop every write of the organisation; its members can still read."""
    return _organization_set_status(
        actor=actor,
        organization=organization,
        status=Organization.Status.SUSPENDED,
        action="organization.suspend",
        reason=reason,
    )


def organization_reinstate(*, actor: Actor, organization: Organization, reason: str = "") -> Organization:
    return _organization_set_status(
        actor=actor,
        organization=organization,
        status=Organization.Status.ACTIVE,
        action="organization.reinstate",
        reason=reason,
    )


# --- memberships -----------------------------------------------------------------------------


def membership_create(*, actor: Actor, organization: Organization, user: User, role: str) -> Membership:
    _validate_role(role)
    with transaction.atomic(), org_scope(organization.pk):
        _assert_may_grant(actor_scopes=_actor_scopes(actor=actor), role=role)
        return _membership_add(actor=actor, organization=organization, user=user, role=role)


def _membership_add(*, actor: Actor, organization: Organization, user: User, role: str) -> Membership:
    if Membership.objects.filter(user=user).exists():
        raise Conflict("This person is already a member.", code="already_member")
    try:
        with transaction.atomic():
            membership: Membership = Membership.objects.create(organization=organization, user=user, role=role)
    except IntegrityError as exc:
        raise Conflict("This person is already a member.", code="already_member") from exc
    audit_record(
        actor=actor,
        action="membership.create",
        target_type="membership",
        target_id=membership.public_id,
        organization_id=organization.pk,
        changes={"user": user.email, "role": role},
    )
    return membership


def membership_update_role(
    *, actor: Actor, organization: Organization, membership: Membership, role: str
) -> Membership:
    _validate_role(role)
    with transaction.atomic(), org_scope(organization.pk):
        actor_scopes = _actor_scopes(actor=actor)
        locked, is_last_owner = _lock_membership_and_owners(organization=organization, membership=membership)
        _assert_may_grant(actor_scopes=actor_scopes, role=locked.role)
        _assert_may_grant(actor_scopes=actor_scopes, role=role)
        if locked.role == role:
            return locked
        if is_last_owner:
            raise _last_owner_conflict()
        before = locked.role
        locked.role = role
        locked.save(update_fields=["role", "updated_at"])
        audit_record(
            actor=actor,
            action="membership.update_role",
            target_type="membership",
            target_id=locked.public_id,
            organization_id=organization.pk,
            changes={"user": locked.user.email, "role": {"before": before, "after": role}},
        )
    return locked


def membership_remove(*, actor: Actor, organization: Organization, membership: Membership) -> None:
    """Remove a member and revoke every API key they created in the organisation."""
    with transaction.atomic(), org_scope(organization.pk):
        actor_scopes = _actor_scopes(actor=actor)
        locked, is_last_owner = _lock_membership_and_owners(organization=organization, membership=membership)
        _assert_may_grant(actor_scopes=actor_scopes, role=locked.role)
        if is_last_owner:
            raise _last_owner_conflict()
        now = timezone.now()
        keys = list(
            ApiKey.objects.select_for_update()
            .filter(created_by_id=locked.user_id, revoked_at__isnull=True)
            .order_by("pk")
        )
        for key in keys:
            key.revoked_at = now
            key.save(update_fields=["revoked_at", "updated_at"])
            audit_record(
                actor=actor,
                action="api_key.revoke",
                target_type="api_key",
                target_id=key.key_id,
                organization_id=organization.pk,
                changes={"reason": "member_removed", "member": locked.user.email},
            )
        audit_record(
            actor=actor,
            action="membership.remove",
            target_type="membership",
            target_id=locked.public_id,
            organization_id=organization.pk,
            changes={
                "user": locked.user.email,
                "role": locked.role,
                "revoked_keys": [k.key_id for k in keys],
            },
        )
        locked.delete()


# --- invitations -----------------------------------------------------------------------------


def invitation_create(*, actor: Actor, organization: Organization, email: str, role: str) -> tuple[Invitation, str]:
    """Invite an address; the token is returned and mailed once, and stored only as its SHA-256."""
    normalized = _normalize_email(email)
    _validate_role(role)
    with transaction.atomic(), org_scope(organization.pk):
        _assert_may_grant(actor_scopes=_actor_scopes(actor=actor), role=role)
        if Membership.objects.filter(user__email=normalized).exists():
            raise Conflict("This person is already a member.", code="already_member")
        if Invitation.objects.filter(
            email=normalized, status=Invitation.Status.PENDING, expires_at__gt=timezone.now()
        ).exists():
            raise Conflict("An invitation to this address is pending.", code="invitation_pending")
        token = secrets.token_urlsafe(32)
        invitation = Invitation.objects.create(
            organization=organization,
            email=normalized,
            role=role,
            token_hash=_token_hash(token),
            invited_by_id=actor.user_id,
            expires_at=timezone.now() + INVITATION_TTL,
        )
        audit_record(
            actor=actor,
            action="invitation.create",
            target_type="invitation",
            target_id=invitation.public_id,
            organization_id=organization.pk,
            changes={"email": normalized, "role": role},
        )
        _mail_on_commit(
            subject=f"You are invited to {organization.name}",
            body=(
                f"You have been invited to join {organization.name} as {role}.\n"
                f"Accept: {settings.PUBLIC_URL}/invitations/accept?token={token}\n"
            ),
            to=normalized,
        )
    return invitation, token


def invitation_revoke(*, actor: Actor, organization: Organization, invitation: Invitation) -> Invitation:
    with transaction.atomic(), org_scope(organization.pk):
        locked: Invitation = Invitation.objects.select_for_update().get(pk=invitation.pk)
        if locked.status != Invitation.Status.PENDING:
            raise Conflict("Only a pending invitation can be revoked.", code="invitation_not_pending")
        locked.status = Invitation.Status.REVOKED
        locked.save(update_fields=["status", "updated_at"])
        audit_record(
            actor=actor,
            action="invitation.revoke",
            target_type="invitation",
            target_id=locked.public_id,
            organization_id=organization.pk,
            changes={"email": locked.email},
        )
    return locked


def invitation_accept(*, user: User, token: str) -> Membership:
    with transaction.atomic():
        # The token names its organisation, so this one lookup crosses organisations by design.
        invitation = (
            Invitation.objects.unscoped_all_orgs()
            .select_for_update()
            .select_related("organization")
            .filter(token_hash=_token_hash(token))
            .first()
        )
        if invitation is None:
            raise NotFound("No such invitation.", code="invitation_not_found")
        if invitation.status != Invitation.Status.PENDING:
            raise Conflict("This invitation is no longer pending.", code="invitation_not_pending")
        if invitation.expires_at <= timezone.now():
            raise Conflict("This invitation has expired.", code="invitation_expired")
        if invitation.email != user.email:
            raise PermissionDenied("This invitation is for another email address.", code="invitation_email_mismatch")
        organization = invitation.organization
        if organization.status != Organization.Status.ACTIVE:
            raise PermissionDenied("The organisation is suspended.", code="organization_suspended")
        actor = Actor(user_id=user.pk, label=user.email)
        with org_scope(organization.pk):
            membership = _membership_add(actor=actor, organization=organization, user=user, role=invitation.role)
            invitation.status = Invitation.Status.ACCEPTED
            invitation.accepted_at = timezone.now()
            invitation.save(update_fields=["status", "accepted_at", "updated_at"])
            audit_record(
                actor=actor,
                action="invitation.accept",
                target_type="invitation",
                target_id=invitation.public_id,
                organization_id=organization.pk,
                changes={"email": user.email, "role": invitation.role},
            )
    return membership


# --- API keys --------------------------------------------------------------------------------


def api_key_create(
    *,
    actor: Actor,
    organization: Organization,
    created_by: User,
    name: str,
    scopes: list[str] | None = None,
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """Create a key carrying a subset of its creator's scopes; the full key is returned once."""
    name = name.strip()
    if not name or len(name) > 80:
        raise ValidationFailed("The name must be 1 to 80 characters.", details={"name": ["1 to 80 characters"]})
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationFailed("The expiry must be in the future.", details={"expires_at": ["in the past"]})
    with transaction.atomic(), org_scope(organization.pk):
        membership = Membership.objects.filter(user=created_by).first()
        if membership is None:
            raise PermissionDenied("The key's creator is not a member.", code="not_a_member")
        held = role_scopes(membership.role)
        if scopes is None:
            granted = sorted(held)
        else:
            unknown = sorted(set(scopes) - ALL_SCOPES)
            if unknown:
                raise ValidationFailed("Unknown scopes.", details={"scopes": unknown})
            if not scopes:
                raise ValidationFailed("A key needs at least one scope.", details={"scopes": ["empty"]})
            missing = sorted(set(scopes) - held)
            if missing:
                raise PermissionDenied(
                    "A key cannot carry scopes its creator does not hold.",
                    code="scope_not_held",
                    details={"scopes": missing},
                )
            granted = sorted(set(scopes))
        key, secret = _api_key_insert(
            organization=organization, created_by=created_by, name=name, scopes=granted, expires_at=expires_at
        )
        audit_record(
            actor=actor,
            action="api_key.create",
            target_type="api_key",
            target_id=key.key_id,
            organization_id=organization.pk,
            changes={
                "name": name,
                "scopes": granted,
                "created_by": created_by.email,
                "expires_at": expires_at.isoformat() if expires_at else None,
            },
        )
    return key, secret


def _api_key_insert(
    *,
    organization: Organization,
    created_by: User,
    name: str,
    scopes: list[str],
    expires_at: datetime | None,
    rotated_from: ApiKey | None = None,
) -> tuple[ApiKey, str]:
    key_id, secret = key_generate()
    key: ApiKey = ApiKey.objects.create(
        organization=organization,
        key_id=key_id,
        secret_hmac=key_hmac(secret),
        name=name,
        created_by=created_by,
        scopes=scopes,
        expires_at=expires_at,
        rotated_from=rotated_from,
    )
    return key, secret


def api_key_revoke(*, actor: Actor, organization: Organization, api_key: ApiKey) -> ApiKey:
    """Revoke a key at once; revoking a revoked key changes nothing."""
    with transaction.atomic(), org_scope(organization.pk):
        locked: ApiKey = ApiKey.objects.select_for_update().get(pk=api_key.pk)
        if locked.revoked_at is not None:
            return locked
        locked.revoked_at = timezone.now()
        locked.save(update_fields=["revoked_at", "updated_at"])
        audit_record(
            actor=actor,
            action="api_key.revoke",
            target_type="api_key",
            target_id=locked.key_id,
            organization_id=organization.pk,
            changes={"name": locked.name},
        )
    return locked


def api_key_rotate(
    *, actor: Actor, organization: Organization, api_key: ApiKey, overlap_s: int | None = None
) -> tuple[ApiKey, str]:
    """Issue a successor with the same name, scopes and expiry; the old key lives `overlap_s` more."""
    overlap = min(settings.API_KEY_ROTATION_OVERLAP_S, MAX_ROTATION_OVERLAP_S) if overlap_s is None else overlap_s
    if not 0 <= overlap <= MAX_ROTATION_OVERLAP_S:
        raise ValidationFailed(
            "The overlap must be between 0 and 7 days.",
            details={"overlap_s": [f"0 to {MAX_ROTATION_OVERLAP_S}"]},
        )
    with transaction.atomic(), org_scope(organization.pk):
        old = ApiKey.objects.select_for_update().select_related("created_by").get(pk=api_key.pk)
        now = timezone.now()
        if old.revoked_at is not None:
            raise Conflict("A revoked key cannot be rotated.", code="key_revoked")
        if old.expires_at is not None and old.expires_at <= now:
            raise Conflict("An expired key cannot be rotated.", code="key_expired")
        if not Membership.objects.filter(user_id=old.created_by_id).exists():
            raise Conflict("The key's creator is no longer a member.", code="not_a_member")
        new, secret = _api_key_insert(
            organization=organization,
            created_by=old.created_by,
            name=old.name,
            scopes=list(old.scopes),
            expires_at=old.expires_at,
            rotated_from=old,
        )
        old_expiry = old.expires_at
        overlap_end = now + timedelta(seconds=overlap)
        # Rotation only shortens the old key's life, never lengthens it.
        old.expires_at = overlap_end if old_expiry is None else min(old_expiry, overlap_end)
        old.save(update_fields=["expires_at", "updated_at"])
        audit_record(
            actor=actor,
            action="api_key.rotate",
            target_type="api_key",
            target_id=old.key_id,
            organization_id=organization.pk,
            changes={
                "new_key_id": new.key_id,
                "old_expires_at": {
                    "before": old_expiry.isoformat() if old_expiry else None,
                    "after": old.expires_at.isoformat(),
                },
            },
        )
    return new, secret


# --- residency and quotas --------------------------------------------------------------------


def residency_policy_update(
    *,
    actor: Actor,
    organization: Organization,
    allowed_countries: list[str],
    allowed_zones: list[str],
    accelerator_family: str,
    retention_days: int,
) -> ResidencyPolicy:
    errors: dict[str, list[str]] = {}
    bad_countries = [c for c in allowed_countries if not isinstance(c, str) or not _COUNTRY_CODE.match(c)]
    if bad_countries:
        errors["allowed_countries"] = [f"{c!r} is not an upper-case ISO 3166-1 alpha-2 code" for c in bad_countries]
    bad_zones = [z for z in allowed_zones if z not in ZONES]
    if bad_zones:
        errors["allowed_zones"] = [f"{z!r} is not a zone; known: {', '.join(ZONES)}" for z in bad_zones]
    if accelerator_family not in ACCELERATOR_FAMILIES:
        errors["accelerator_family"] = ["one of '', 'npu', 'nvidia', 'amd'"]
    if isinstance(retention_days, bool) or not 0 <= retention_days <= MAX_RETENTION_DAYS:
        errors["retention_days"] = [f"0 to {MAX_RETENTION_DAYS}"]
    if errors:
        raise ValidationFailed("The residency policy is not valid.", details=errors)
    with transaction.atomic(), org_scope(organization.pk):
        policy: ResidencyPolicy
        policy, _ = ResidencyPolicy.objects.select_for_update().get_or_create(organization=organization)
        before = _policy_snapshot(policy)
        policy.allowed_countries = sorted(set(allowed_countries))
        policy.allowed_zones = sorted(set(allowed_zones))
        policy.accelerator_family = accelerator_family
        policy.retention_days = retention_days
        policy.save()
        audit_record(
            actor=actor,
            action="residency_policy.update",
            target_type="residency_policy",
            target_id=organization.slug,
            organization_id=organization.pk,
            changes={"before": before, "after": _policy_snapshot(policy)},
        )
    return policy


class _Keep(Enum):
    KEEP = "keep"


KEEP: Literal[_Keep.KEEP] = _Keep.KEEP
"""A limit argument left as it is."""

QuotaValue = int | None | Literal[_Keep.KEEP]


def _limits_checked(values: dict[str, Any], *, allow_none: bool) -> dict[str, list[str]]:
    bad: dict[str, list[str]] = {}
    for field, value in values.items():
        if value is None and allow_none:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            bad[field] = ["a whole number of at least 0" + (", or null for the plan's value" if allow_none else "")]
        elif value > QUOTA_LIMIT_MAX[field]:
            bad[field] = [f"at most {QUOTA_LIMIT_MAX[field]}"]
    return bad


def regional_quota_set(
    *,
    actor: Actor,
    organization: Organization,
    region: str,
    requests_per_minute: QuotaValue = KEEP,
    tokens_per_minute: QuotaValue = KEEP,
    concurrent_requests: QuotaValue = KEEP,
    monthly_tokens: QuotaValue = KEEP,
) -> RegionalQuota:
    """Operators: override an organisation's plan in one region. A value sets the limit there, None
    returns it to the plan's, and a limit not passed stays as it is."""
    if region not in REGION_CODES:
        raise ValidationFailed(f"Unknown region {region!r}.", details={"region": [f"one of {', '.join(REGION_CODES)}"]})
    given = {
        field: value
        for field, value in {
            "requests_per_minute": requests_per_minute,
            "tokens_per_minute": tokens_per_minute,
            "concurrent_requests": concurrent_requests,
            "monthly_tokens": monthly_tokens,
        }.items()
        if value is not KEEP
    }
    if not given:
        raise ValidationFailed(
            "Give at least one limit.", details={"non_field_errors": [f"any of {', '.join(QUOTA_FIELDS)}"]}
        )
    bad = _limits_checked(given, allow_none=True)
    if bad:
        raise ValidationFailed("The quota is not valid.", details=bad)
    with transaction.atomic(), org_scope(organization.pk):
        quota: RegionalQuota
        quota, _ = RegionalQuota.objects.select_for_update().get_or_create(organization=organization, region=region)
        before = _quota_snapshot(quota)
        for field, value in given.items():
            setattr(quota, field, value)
        quota.save()
        audit_record(
            actor=actor,
            action="regional_quota.set",
            target_type="regional_quota",
            target_id=region,
            organization_id=organization.pk,
            changes={"before": before, "after": _quota_snapshot(quota)},
        )
    return quota


def _plan_snapshot(plan: QuotaPlan) -> dict[str, Any]:
    return {
        "name": plan.name,
        "description": plan.description,
        "is_default": plan.is_default,
        **{field: getattr(plan, field) for field in QUOTA_FIELDS},
    }


def quota_plan_save(
    *,
    actor: Actor,
    slug: str,
    name: str,
    description: str = "",
    requests_per_minute: int,
    tokens_per_minute: int,
    concurrent_requests: int,
    monthly_tokens: int,
    is_default: bool = False,
) -> QuotaPlan:
    """Operators: create a plan, or change every field of an existing one. Organisations on the plan
    (and, for the default plan, every organisation that names none) get the new limits on their next
    request. Marking a plan the default unmarks the previous one; the default cannot be unmarked
    except by marking another."""
    values = {
        "requests_per_minute": requests_per_minute,
        "tokens_per_minute": tokens_per_minute,
        "concurrent_requests": concurrent_requests,
        "monthly_tokens": monthly_tokens,
    }
    bad = _limits_checked(values, allow_none=False)
    if not isinstance(slug, str) or not _PLAN_SLUG.match(slug):
        bad["slug"] = ["lower-case letters, digits and hyphens, 2 to 40 characters"]
    if not isinstance(name, str) or not name.strip():
        bad["name"] = ["must not be blank"]
    if bad:
        raise ValidationFailed("The quota plan is not valid.", details=bad)
    with transaction.atomic():
        plan = QuotaPlan.objects.select_for_update().filter(slug=slug).first()
        before = _plan_snapshot(plan) if plan is not None else None
        if plan is not None and plan.is_default and not is_default:
            raise Conflict(
                "This is the default plan: mark another plan as the default instead.", code="default_plan_required"
            )
        if is_default:
            QuotaPlan.objects.select_for_update().filter(is_default=True).exclude(slug=slug).update(is_default=False)
        if plan is None:
            plan = QuotaPlan(slug=slug)
        plan.name = name.strip()
        plan.description = description.strip()
        plan.is_default = is_default
        for field, value in values.items():
            setattr(plan, field, value)
        plan.save()
        audit_record(
            actor=actor,
            action="quota_plan.create" if before is None else "quota_plan.update",
            target_type="quota_plan",
            target_id=slug,
            changes={"before": before, "after": _plan_snapshot(plan)},
        )
    return plan


def quota_plans_seed(*, actor: Actor) -> list[QuotaPlan]:
    """Create the built-in plans that are missing (by slug); existing plans are left as they are. The
    standard plan becomes the default only when no plan is the default. Returns the plans created."""
    created = []
    with transaction.atomic():
        has_default = QuotaPlan.objects.select_for_update().filter(is_default=True).exists()
        for seed in SEEDED_PLANS:
            if QuotaPlan.objects.filter(slug=seed["slug"]).exists():
                continue
            values = {**seed, "is_default": bool(seed["is_default"]) and not has_default}
            created.append(quota_plan_save(actor=actor, **values))
    return created


def organization_quota_plan_set(*, actor: Actor, organization: Organization, plan: QuotaPlan | None) -> Organization:
    """Operators: move an organisation to a plan (None: the default plan). Its regional overrides stay."""
    with transaction.atomic():
        locked = Organization.objects.select_for_update().get(pk=organization.pk)
        before = locked.quota_plan.slug if locked.quota_plan is not None else None
        locked.quota_plan = plan
        locked.save(update_fields=["quota_plan", "updated_at"])
        audit_record(
            actor=actor,
            action="organization.quota_plan_set",
            target_type="organization",
            target_id=locked.slug,
            organization_id=locked.pk,
            changes={"before": {"quota_plan": before}, "after": {"quota_plan": plan.slug if plan else None}},
        )
    return locked
