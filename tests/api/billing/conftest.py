from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from controlplane.fleet import services as fleet_services
from tenants.models import User
from tests.api.fleet.people import Customer, customer_make, operator_make


@pytest.fixture
def operator(db: None) -> User:
    return operator_make()


@pytest.fixture
def customer(db: None) -> Customer:
    return customer_make()


@pytest.fixture
def operator_client(operator: User) -> APIClient:
    client = APIClient()
    client.force_login(operator)
    return client


@pytest.fixture
def customer_client(customer: Customer) -> APIClient:
    client = APIClient()
    client.force_login(customer.user)
    return client


@pytest.fixture
def key_client(customer: Customer) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {customer.api_key}")
    return client


@pytest.fixture
def anonymous_client() -> APIClient:
    return APIClient()


@pytest.fixture
def synced(db: None) -> None:
    fleet_services.regions_sync()
    fleet_services.accelerator_classes_sync()
    fleet_services.catalog_sync()
