"""Operator routes: staff sessions only (never API keys, never customers); every change leaves an audit row."""

from __future__ import annotations

from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from controlplane.core.models import AuditEvent
from controlplane.core.services import Actor
from controlplane.fleet import selectors, services
from controlplane.fleet.models import Host
from tenants.models import User
from tests.factories import make_customer


def _host(name: str = "sin-t4-09", region: str = "sin", slug: str = "nvidia-t4") -> Host:
    return services.host_create(
        actor=Actor.system("test"),
        name=name,
        region=selectors.region_get(code=region),
        accelerator_class=selectors.accelerator_class_get(slug=slug),
    )


def _audits(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.unscoped_all_orgs().filter(action=action))


def _routes(host_id: int) -> list[tuple[str, str, dict[str, Any] | None]]:
    return [
        ("get", "/api/v1/ops/hosts", None),
        ("get", f"/api/v1/ops/hosts/{host_id}", None),
        ("patch", f"/api/v1/ops/hosts/{host_id}", {"max_concurrent_requests": 4}),
        ("post", f"/api/v1/ops/hosts/{host_id}/drain", None),
        ("get", "/api/v1/ops/deployments", None),
        ("get", "/api/v1/ops/fx-rates", None),
        ("get", "/api/v1/ops/tax-rates", None),
    ]


def _call(client: APIClient, method: str, path: str, body: dict[str, Any] | None) -> int:
    status: int = getattr(client, method)(path, body, format="json").status_code
    return status


@pytest.mark.django_db
def test_ops_routes_refuse_anonymous_customers_and_api_keys_but_serve_staff(
    synced: None,
    anonymous_client: APIClient,
    customer_client: APIClient,
    customer_key_client: APIClient,
    operator_client: APIClient,
) -> None:
    host = _host()
    for method, path, body in _routes(host.pk):
        assert _call(anonymous_client, method, path, body) == 401, path
        assert _call(customer_client, method, path, body) == 403, path
        assert _call(customer_key_client, method, path, body) == 403, path
        assert _call(operator_client, method, path, body) == 200, path


@pytest.mark.django_db
def test_a_staff_users_api_key_is_not_an_operator(synced: None, operator: User) -> None:
    staff_customer = make_customer(slug="staff-org", owner=operator)
    by_key = APIClient()
    by_key.credentials(HTTP_AUTHORIZATION=f"Bearer {staff_customer.api_key}")
    assert by_key.get("/api/v1/ops/hosts").status_code == 403
    by_session = APIClient()
    by_session.force_login(operator)
    assert by_session.get("/api/v1/ops/hosts").status_code == 200


@pytest.mark.django_db
def test_host_create_is_audited_and_names_are_unique(synced: None, operator: User, operator_client: APIClient) -> None:
    body = {"name": "fra-l4-07", "region": "fra", "accelerator_class": "nvidia-l4", "accelerator_count": 2}
    response = operator_client.post("/api/v1/ops/hosts", body, format="json")
    assert response.status_code == 201
    created = response.json()
    assert created["region"] == "fra"
    assert created["accelerator_class"] == "nvidia-l4"
    assert created["status"] == "active"
    audit = _audits("host.create")
    assert [(a.actor_id, a.target_id) for a in audit] == [(operator.pk, str(created["id"]))]

    again = operator_client.post("/api/v1/ops/hosts", body, format="json")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "host_exists"


@pytest.mark.django_db
def test_host_create_validates_references_and_refuses_unknown_fields(synced: None, operator_client: APIClient) -> None:
    good = {"name": "gru-t4-05", "region": "gru", "accelerator_class": "nvidia-t4"}
    bad_region = operator_client.post("/api/v1/ops/hosts", {**good, "region": "xyz"}, format="json")
    assert bad_region.status_code == 400
    assert "region" in bad_region.json()["error"]["details"]
    unknown = operator_client.post("/api/v1/ops/hosts", {**good, "colour": "red"}, format="json")
    assert unknown.status_code == 400
    assert "colour" in unknown.json()["error"]["details"]
    assert operator_client.post("/api/v1/ops/hosts", good, format="json").status_code == 201


@pytest.mark.django_db
def test_drain_is_audited_and_removes_the_host_from_live_hosts(
    synced: None, operator: User, operator_client: APIClient
) -> None:
    drained, kept = _host("sin-t4-08"), _host("sin-h100-08", slug="nvidia-h100-sxm")
    services.host_heartbeat(host_ids=[drained.pk, kept.pk])
    response = operator_client.post(f"/api/v1/ops/hosts/{drained.pk}/drain")
    assert response.status_code == 200
    assert response.json()["status"] == "draining"
    [audit] = _audits("host.drain")
    assert (audit.actor_id, audit.target_id, audit.changes) == (
        operator.pk,
        str(drained.pk),
        {"status": ["active", "draining"]},
    )
    live = set(selectors.hosts_live(region_code="sin", model_name=None, now=timezone.now()))
    assert drained not in live
    assert kept in live


@pytest.mark.django_db
def test_patch_host_changes_status_with_an_audit_row(synced: None, operator_client: APIClient) -> None:
    host = _host()
    response = operator_client.patch(f"/api/v1/ops/hosts/{host.pk}", {"status": "down"}, format="json")
    assert response.status_code == 200
    assert response.json()["status"] == "down"
    assert [a.changes for a in _audits("host.update")] == [{"status": ["active", "down"]}]
    drain_down = operator_client.post(f"/api/v1/ops/hosts/{host.pk}/drain")
    assert drain_down.status_code == 409
    empty = operator_client.patch(f"/api/v1/ops/hosts/{host.pk}", {}, format="json")
    assert empty.status_code == 400
    missing = operator_client.get("/api/v1/ops/hosts/999999")
    assert missing.status_code == 404
    assert operator_client.get(f"/api/v1/ops/hosts/{host.pk}").status_code == 200


@pytest.mark.django_db
def test_deployments_only_for_models_with_artifacts(synced: None, operator_client: APIClient) -> None:
    host = _host()
    ok = operator_client.post(
        "/api/v1/ops/deployments", {"model": "SmolLM2-135M-Instruct", "host": host.pk}, format="json"
    )
    assert ok.status_code == 201
    assert ok.json()["region"] == "sin"
    assert len(_audits("deployment.create")) == 1
    qwen = operator_client.post(
        "/api/v1/ops/deployments", {"model": "Qwen2.5-0.5B-Instruct", "host": host.pk}, format="json"
    )
    assert qwen.status_code == 400
    assert qwen.json()["error"]["code"] == "model_not_deployable"
    twice = operator_client.post(
        "/api/v1/ops/deployments", {"model": "SmolLM2-135M-Instruct", "host": host.pk}, format="json"
    )
    assert twice.status_code == 409
    listed = operator_client.get("/api/v1/ops/deployments", {"model": "SmolLM2-135M-Instruct"}).json()
    assert [d["host_name"] for d in listed["results"]] == [host.name]
