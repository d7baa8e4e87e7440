"""The demo data set: regions, accelerators, catalog, FX/tax, a heterogeneous fleet, an operator and
one customer organisation with an API key. Every step is idempotent; writes go through the services."""

from __future__ import annotations

import os
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from billing.models import CreditGrant
from billing.services import credit_grant_create, fx_tax_seed, price_book_seed
from controlplane.core.scoping import org_scope
from controlplane.core.services import Actor, audit_record
from controlplane.fleet import selectors as fleet_selectors
from controlplane.fleet import services as fleet_services
from controlplane.fleet.models import Deployment, Host
from controlplane.settings.env import Env
from tenants import services as tenant_services
from tenants.keys import key_matches, key_parse
from tenants.models import ApiKey, Membership, Organization, ResidencyPolicy, Role, User

DEFAULT_DEMO_PASSWORD = "demo-password-2026"  # noqa: S105  # the documented demo password; DEMO_PASSWORD overrides it
OPERATOR_EMAIL = "operator@sovereign.example"
OWNER_EMAIL = "owner@acme.example"
DEVELOPER_EMAIL = "dev@acme.example"
ORG_SLUG = "acme"
DEMO_KEY_NAME = "demo"

# Two to four hosts per region, each of a different accelerator class, so that placement has choices.
DEMO_FLEET: dict[str, tuple[str, ...]] = {
    "sin": ("nvidia-h100-sxm", "nvidia-t4", "hanguang-800"),
    "cgk": ("nvidia-l4", "nvidia-a10"),
    "dxb": ("amd-mi300x", "nvidia-a100-80gb", "nvidia-l4"),
    "ruh": ("nvidia-h200-sxm", "nvidia-a100-80gb", "nvidia-t4"),
    "fra": ("nvidia-h200-sxm", "nvidia-a10", "nvidia-t4"),
    "iad": ("nvidia-h100-sxm", "amd-mi300x", "nvidia-a100-80gb", "nvidia-l4"),
    "gru": ("nvidia-a10", "nvidia-t4"),
    "hgh": ("hanguang-800", "nvidia-a10", "nvidia-t4"),
}
_SHORT_NAMES = {
    "hanguang-800": "hanguang800",
    "nvidia-t4": "t4",
    "nvidia-a10": "a10",
    "nvidia-l4": "l4",
    "nvidia-a100-80gb": "a100",
    "nvidia-h100-sxm": "h100",
    "nvidia-h200-sxm": "h200",
    "amd-mi300x": "mi300x",
}
# Data-centre parts come as eight per server; the PCIe inference cards and the NPU one per host.
_ACCELERATORS_PER_HOST = {"nvidia-a100-80gb": 8, "nvidia-h100-sxm": 8, "nvidia-h200-sxm": 8, "amd-mi300x": 8}


@dataclass(frozen=True, slots=True)
class DemoSummary:
    url: str
    password: str
    api_key: str
    api_key_created: bool
    hosts: int
    deployments: int


def demo_password() -> str:
    return Env().string("DEMO_PASSWORD", DEFAULT_DEMO_PASSWORD)


def demo_api_key_file() -> Path:
    return Path(Env().string("DEMO_API_KEY_FILE", str(Path(settings.DATA_DIR) / "demo_api_key.txt")))


def demo_host_name(region_code: str, accelerator_slug: str) -> str:
    return f"{region_code}-{_SHORT_NAMES[accelerator_slug]}-01"


def seed_fleet(*, actor: Actor) -> tuple[int, int]:
    """Regions, accelerator classes, catalog, hosts and deployments; returns (hosts, deployments)."""
    fleet_services.regions_sync(actor=actor)
    fleet_services.accelerator_classes_sync(actor=actor)
    fleet_services.catalog_sync(actor=actor)
    for region_code, slugs in DEMO_FLEET.items():
        region = fleet_selectors.region_get(code=region_code)
        for slug in slugs:
            name = demo_host_name(region_code, slug)
            if Host.objects.filter(name=name).exists():
                continue
            fleet_services.host_create(
                actor=actor,
                name=name,
                region=region,
                accelerator_class=fleet_selectors.accelerator_class_get(slug=slug),
                accelerator_count=_ACCELERATORS_PER_HOST.get(slug, 1),
            )
    hosts = list(Host.objects.filter(name__in=_demo_host_names()).select_related("accelerator_class"))
    for model in fleet_selectors.catalog_list(deployable_only=True):
        for host in hosts:
            if not fleet_selectors.model_fits_host(model=model, host=host):
                continue
            if Deployment.objects.filter(model=model, host=host).exists():
                continue
            fleet_services.deployment_create(actor=actor, model=model, host=host)
    return len(hosts), Deployment.objects.filter(host__in=hosts).count()


def _demo_host_names() -> list[str]:
    return [demo_host_name(code, slug) for code, slugs in DEMO_FLEET.items() for slug in slugs]


def _operator_ensure(*, actor: Actor, password: str) -> User:
    existing = User.objects.filter(email=OPERATOR_EMAIL).first()
    if existing is not None:
        return existing
    # tenants.services.user_create makes staff but not superusers; the operator needs every admin
    # permission, so it is created the way `createsuperuser` does, with the audit row written here.
    with transaction.atomic():
        operator = User.objects.create_superuser(OPERATOR_EMAIL, password, full_name="Demo operator")
        audit_record(
            actor=actor,
            action="user.create",
            target_type="user",
            target_id=operator.pk,
            changes={"email": operator.email, "is_staff": True, "is_superuser": True},
        )
    return operator


def _user_ensure(*, email: str, password: str, full_name: str) -> User:
    existing = User.objects.filter(email=email).first()
    if existing is not None:
        return existing
    return tenant_services.user_create(email=email, password=password, full_name=full_name, email_verified=True)


def seed_tenants(*, actor: Actor, password: str) -> tuple[Organization, User]:
    """The operator, the customer organisation `acme` (AE, AED) with its owner, a developer and a
    GCC residency policy; returns (organisation, owner)."""
    _operator_ensure(actor=actor, password=password)
    owner = _user_ensure(email=OWNER_EMAIL, password=password, full_name="Acme owner")
    developer = _user_ensure(email=DEVELOPER_EMAIL, password=password, full_name="Acme developer")
    organization = Organization.objects.filter(slug=ORG_SLUG).first()
    if organization is None:
        organization = tenant_services.organization_create(
            actor=actor,
            owner=owner,
            slug=ORG_SLUG,
            name="Acme Trading LLC",
            billing_country="AE",
            billing_currency="AED",
        )
    with org_scope(organization.pk):
        is_member = Membership.objects.filter(user=developer).exists()
        policy = ResidencyPolicy.objects.filter(organization=organization).first()
    if not is_member:
        tenant_services.membership_create(actor=actor, organization=organization, user=developer, role=Role.DEVELOPER)
    wanted = {
        "allowed_countries": ["AE", "SA"],
        "allowed_zones": ["GCC"],
        "accelerator_family": "",
        "retention_days": 30,
    }
    current = (
        None
        if policy is None
        else {
            "allowed_countries": sorted(policy.allowed_countries),
            "allowed_zones": sorted(policy.allowed_zones),
            "accelerator_family": policy.accelerator_family,
            "retention_days": policy.retention_days,
        }
    )
    if current != wanted:
        tenant_services.residency_policy_update(
            actor=actor,
            organization=organization,
            allowed_countries=["AE", "SA"],
            allowed_zones=["GCC"],
            accelerator_family="",
            retention_days=30,
        )
    return organization, owner


def _key_still_valid(*, organization: Organization, raw: str) -> bool:
    parsed = key_parse(raw)
    if parsed is None:
        return False
    with org_scope(organization.pk):
        key = ApiKey.objects.filter(name=DEMO_KEY_NAME, key_id=parsed.key_id, revoked_at__isnull=True).first()
    if key is None or not key_matches(parsed.full, key.secret_hmac):
        return False
    return key.expires_at is None or key.expires_at > timezone.now()


def _key_file_write(path: Path, secret: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="ascii") as handle:
        handle.write(secret + "\n")
    # An existing file keeps its old mode through O_CREAT; the key is a secret either way.
    path.chmod(0o600)


def seed_api_key(*, actor: Actor, organization: Organization, owner: User, key_file: Path) -> tuple[str, bool]:
    """Reuse the key in `key_file` while it still verifies; otherwise revoke stale demo keys (their
    secrets are lost) and create one. Returns (key, created)."""
    raw = key_file.read_text(encoding="ascii").strip() if key_file.exists() else ""
    if raw and _key_still_valid(organization=organization, raw=raw):
        return raw, False
    with org_scope(organization.pk):
        stale = list(ApiKey.objects.filter(name=DEMO_KEY_NAME, revoked_at__isnull=True))
    for key in stale:
        tenant_services.api_key_revoke(actor=actor, organization=organization, api_key=key)
    _, secret = tenant_services.api_key_create(
        actor=actor, organization=organization, created_by=owner, name=DEMO_KEY_NAME
    )
    _key_file_write(key_file, secret)
    return secret, True


DEMO_CREDIT = Decimal("500")  # AED, a prepaid starting balance for the demo organisation


def seed_credit(*, actor: Actor, organization: Organization) -> None:
    with org_scope(organization.pk):
        granted = CreditGrant.objects.filter(organization=organization).exists()
    if not granted:
        credit_grant_create(
            actor=actor, organization=organization, amount=DEMO_CREDIT, currency=organization.billing_currency,
            expires_at=None, priority=100, reason="demo starting credit",
        )  # fmt: skip


def seed_demo() -> DemoSummary:
    actor = Actor.system("seed_demo")
    password = demo_password()
    hosts, deployments = seed_fleet(actor=actor)
    fx_tax_seed(actor=actor)
    price_book_seed(actor=actor)
    tenant_services.quota_plans_seed(actor=actor)
    organization, owner = seed_tenants(actor=actor, password=password)
    seed_credit(actor=actor, organization=organization)
    api_key, created = seed_api_key(actor=actor, organization=organization, owner=owner, key_file=demo_api_key_file())
    return DemoSummary(
        url=settings.PUBLIC_URL,
        password=password,
        api_key=api_key,
        api_key_created=created,
        hosts=hosts,
        deployments=deployments,
    )
