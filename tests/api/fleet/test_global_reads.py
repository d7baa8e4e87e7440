"""Regions, catalog and accelerators: readable by any authenticated caller (session or API key), not anonymously."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from controlplane.core.regions import REGION_CODES

LIST_ROUTES = ("/api/v1/regions", "/api/v1/catalog/models", "/api/v1/accelerators")
DETAIL_ROUTES = (
    "/api/v1/regions/dxb",
    "/api/v1/catalog/models/SmolLM2-135M-Instruct",
    "/api/v1/catalog/models/Qwen2.5-0.5B-Instruct",
    "/api/v1/accelerators/hanguang-800",
)


@pytest.mark.django_db
@pytest.mark.parametrize("path", LIST_ROUTES + DETAIL_ROUTES)
def test_anonymous_gets_401_and_authenticated_callers_200(
    synced: None, path: str, anonymous_client: APIClient, customer_client: APIClient, customer_key_client: APIClient
) -> None:
    assert anonymous_client.get(path).status_code == 401
    assert customer_client.get(path).status_code == 200
    assert customer_key_client.get(path).status_code == 200


@pytest.mark.django_db
def test_lists_paginate_with_cursors(synced: None, customer_key_client: APIClient) -> None:
    first = customer_key_client.get("/api/v1/regions", {"page_size": 5}).json()
    assert [r["code"] for r in first["results"]] == sorted(REGION_CODES)[:5]
    second = customer_key_client.get(first["next"]).json()
    assert [r["code"] for r in second["results"]] == sorted(REGION_CODES)[5:]
    assert second["next"] is None


@pytest.mark.django_db
def test_region_and_model_payloads(synced: None, customer_key_client: APIClient) -> None:
    region = customer_key_client.get("/api/v1/regions/ruh").json()
    assert region == {"code": "ruh", "name": "Riyadh", "country": "SA", "zones": ["GCC", "MENA"], "status": "active"}
    model = customer_key_client.get("/api/v1/catalog/models/Qwen2.5-0.5B-Instruct").json()
    assert model["deployable"] is False
    assert model["parameters"] == 494_032_768
    smol = customer_key_client.get("/api/v1/catalog/models/SmolLM2-135M-Instruct").json()
    assert smol["deployable"] is True
    accelerator = customer_key_client.get("/api/v1/accelerators/nvidia-h100-sxm").json()
    assert accelerator["usd_per_gpu_hour"] == "6.880000"
    hanguang = customer_key_client.get("/api/v1/accelerators/hanguang-800").json()
    assert hanguang["memory_gb"] is None
    assert hanguang["usd_per_gpu_hour"] is None


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("missing", "present"),
    [
        ("/api/v1/regions/xyz", "/api/v1/regions/sin"),
        ("/api/v1/catalog/models/Qwen2.5-999B-Instruct", "/api/v1/catalog/models/Qwen2.5-72B-Instruct"),
        ("/api/v1/accelerators/nvidia-b200", "/api/v1/accelerators/nvidia-t4"),
    ],
)
def test_unknown_objects_are_404(synced: None, customer_key_client: APIClient, missing: str, present: str) -> None:
    response = customer_key_client.get(missing)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert customer_key_client.get(present).status_code == 200


@pytest.mark.django_db
def test_global_reads_refuse_writes(synced: None, customer_key_client: APIClient) -> None:
    assert customer_key_client.post("/api/v1/regions", {"code": "new"}, format="json").status_code == 405
    assert customer_key_client.get("/api/v1/regions").status_code == 200
