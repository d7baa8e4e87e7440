"""Fixtures shared by the API tests: an operator, a customer member and clients for each."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from controlplane.fleet import services as fleet_services
from tenants.models import User
from tests.factories import Customer, make_customer, make_operator


@pytest.fixture
def synced(db: None) -> None:
    fleet_services.regions_sync()
    fleet_services.accelerator_classes_sync()
    fleet_services.catalog_sync()


@pytest.fixture
def operator(db: None) -> User:
    return make_operator(email="ops@sovereign.test")


@pytest.fixture
def customer(db: None) -> Customer:
    return make_customer(email="dev@customer.test", slug="customer")


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
def customer_key_client(customer: Customer) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {customer.api_key}")
    return client


@pytest.fixture
def anonymous_client() -> APIClient:
    return APIClient()
