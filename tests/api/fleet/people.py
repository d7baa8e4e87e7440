"""People for the fleet and billing API tests: an operator, a customer member and their API keys."""

from __future__ import annotations

from dataclasses import dataclass

from controlplane.core.services import Actor
from tenants import services as tenant_services
from tenants.models import Organization, User

PASSWORD = "correct-horse-battery-staple"


@dataclass(frozen=True)
class Customer:
    user: User
    organization: Organization
    api_key: str


def operator_make(email: str = "ops@sovereign.test") -> User:
    return tenant_services.user_create(email=email, password=PASSWORD, is_staff=True, email_verified=True)


def customer_make(*, email: str = "dev@customer.test", slug: str = "customer", owner: User | None = None) -> Customer:
    user = owner or tenant_services.user_create(email=email, password=PASSWORD, email_verified=True)
    organization = tenant_services.organization_create(
        actor=Actor.system("test"), owner=user, slug=slug, name="Customer", billing_country="AE"
    )
    _, secret = tenant_services.api_key_create(
        actor=Actor.system("test"), organization=organization, created_by=user, name="ci"
    )
    return Customer(user=user, organization=organization, api_key=secret)
