"""`manage.py seed_demo` is idempotent, seeds a heterogeneous fleet in every region, and prints a working key."""

from __future__ import annotations

import re
import stat
from io import StringIO
from pathlib import Path

import pytest
from django.apps import apps
from django.core.management import call_command
from rest_framework.test import APIClient

from controlplane.core.models import AuditEvent
from controlplane.core.regions import REGION_CODES
from controlplane.core.scoping import org_scope
from controlplane.fleet.models import CatalogModel, Deployment, Host, Region
from tenants.models import ApiKey, Membership, Organization, ResidencyPolicy, User

KEY_LINE = re.compile(r"^API key:\s+(\S+)$", re.MULTILINE)


def _seed() -> str:
    out = StringIO()
    call_command("seed_demo", stdout=out)
    return out.getvalue()


def _counts() -> dict[str, int]:
    counts: dict[str, int] = {}
    for model in apps.get_models():
        if model._meta.app_label not in {"fleet", "billing", "tenants", "core"}:
            continue
        manager = model._default_manager
        queryset = manager.unscoped_all_orgs() if hasattr(manager, "unscoped_all_orgs") else manager.all()
        counts[model._meta.label] = queryset.count()
    return counts


def _printed_key(output: str) -> str:
    match = KEY_LINE.search(output)
    assert match is not None, output
    return match.group(1)


@pytest.fixture
def key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "keys" / "demo_api_key.txt"
    monkeypatch.setenv("DEMO_API_KEY_FILE", str(path))
    return path


@pytest.mark.django_db
def test_seed_twice_changes_nothing_and_reuses_the_key(key_file: Path) -> None:
    first_output = _seed()
    first_counts = _counts()
    assert first_counts["core.AuditEvent"] > 0
    second_output = _seed()
    assert _counts() == first_counts
    assert _printed_key(second_output) == _printed_key(first_output)
    assert key_file.read_text().strip() == _printed_key(first_output)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


@pytest.mark.django_db
def test_every_region_has_a_heterogeneous_fleet_serving_smollm2(key_file: Path) -> None:
    _seed()
    assert sorted(Region.objects.values_list("code", flat=True)) == sorted(REGION_CODES)
    assert {r.code: r.queue_name for r in Region.objects.all()} == {code: f"region.{code}" for code in REGION_CODES}
    for region in Region.objects.all():
        hosts = list(Host.objects.filter(region=region))
        assert len(hosts) >= 2, region.code
        assert len({h.accelerator_class_id for h in hosts}) >= 2, region.code
    assert Host.objects.filter(accelerator_class__family="npu").exists()
    smol = CatalogModel.objects.get(name="SmolLM2-135M-Instruct")
    assert Deployment.objects.filter(model=smol).count() == Host.objects.count()
    assert not Deployment.objects.exclude(model=smol).exists()
    assert Host.objects.get(name="sin-h100-01").accelerator_class.slug == "nvidia-h100-sxm"


@pytest.mark.django_db
def test_people_organisation_and_policy(key_file: Path) -> None:
    _seed()
    operator = User.objects.get(email="operator@sovereign.example")
    assert operator.is_staff
    assert operator.is_superuser
    assert operator.check_password("demo-password-2026")
    acme = Organization.objects.get(slug="acme")
    assert (acme.billing_country, acme.billing_currency) == ("AE", "AED")
    with org_scope(acme.pk):
        roles = dict(Membership.objects.values_list("user__email", "role"))
        policy = ResidencyPolicy.objects.get()
        assert ApiKey.objects.filter(name="demo", revoked_at__isnull=True).count() == 1
    assert roles == {"owner@acme.example": "owner", "dev@acme.example": "developer"}
    assert (sorted(policy.allowed_countries), policy.allowed_zones) == (["AE", "SA"], ["GCC"])
    assert AuditEvent.objects.unscoped_all_orgs().filter(actor_label="seed_demo").exists()


@pytest.mark.django_db
def test_the_printed_key_reads_regions_and_the_catalog(key_file: Path) -> None:
    key = _printed_key(_seed())
    anonymous = APIClient()
    assert anonymous.get("/api/v1/regions").status_code == 401
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    regions = client.get("/api/v1/regions")
    assert regions.status_code == 200
    assert sorted(r["code"] for r in regions.json()["results"]) == sorted(REGION_CODES)
    models = client.get("/api/v1/catalog/models")
    assert models.status_code == 200
    names = {m["name"] for m in models.json()["results"]}
    assert "SmolLM2-135M-Instruct" in names
    assert len(names) == CatalogModel.objects.count() == 8


@pytest.mark.django_db
def test_a_lost_key_file_gets_a_new_key_and_the_old_one_stops_working(key_file: Path) -> None:
    old = _printed_key(_seed())
    key_file.unlink()
    new = _printed_key(_seed())
    assert new != old
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {old}")
    assert client.get("/api/v1/regions").status_code == 401
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {new}")
    assert client.get("/api/v1/regions").status_code == 200
