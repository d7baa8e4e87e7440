"""The admin changes fleet and rate tables only through the services, so each change is audited."""

from __future__ import annotations

import pytest
from django.test import Client

from billing.models import FxRate
from controlplane.core.models import AuditEvent
from controlplane.core.services import Actor
from controlplane.fleet import selectors, services
from controlplane.fleet.models import Host
from tenants.models import User


@pytest.fixture
def superuser(db: None) -> User:
    return User.objects.create_superuser("root@sovereign.test", "correct-horse-battery-staple")


@pytest.fixture
def admin_client(superuser: User) -> Client:
    client = Client()
    client.force_login(superuser)
    return client


@pytest.mark.django_db
def test_fx_rate_added_through_the_admin_is_audited_and_read_only_after(superuser: User, admin_client: Client) -> None:
    form = {
        "currency": "EUR",
        "per_usd": "0.9200",
        "effective_from_0": "2026-01-01",
        "effective_from_1": "00:00:00",
        "source": "ECB",
    }
    response = admin_client.post("/admin/billing/fxrate/add/", form)
    assert response.status_code == 302
    rate = FxRate.objects.get()
    [audit] = AuditEvent.objects.unscoped_all_orgs().filter(action="fx_rate.add")
    assert (audit.actor_id, audit.target_id) == (superuser.pk, str(rate.pk))

    earlier = admin_client.post("/admin/billing/fxrate/add/", {**form, "effective_from_0": "2025-06-01"})
    assert earlier.status_code == 200
    assert "must start later" in earlier.content.decode()
    assert FxRate.objects.count() == 1

    edit = admin_client.post(f"/admin/billing/fxrate/{rate.pk}/change/", {**form, "per_usd": "9"})
    assert edit.status_code == 403
    rate.refresh_from_db()
    assert str(rate.per_usd) == "0.92000000"


@pytest.mark.django_db
def test_host_drain_action_goes_through_the_service(synced: None, superuser: User, admin_client: Client) -> None:
    host = services.host_create(
        actor=Actor.system("test"),
        name="sin-t4-03",
        region=selectors.region_get(code="sin"),
        accelerator_class=selectors.accelerator_class_get(slug="nvidia-t4"),
    )
    response = admin_client.post("/admin/fleet/host/", {"action": "mark_draining", "_selected_action": [str(host.pk)]})
    assert response.status_code == 302
    host.refresh_from_db()
    assert host.status == Host.Status.DRAINING
    [audit] = AuditEvent.objects.unscoped_all_orgs().filter(action="host.drain")
    assert audit.actor_id == superuser.pk
    assert admin_client.get("/admin/fleet/host/").status_code == 200
