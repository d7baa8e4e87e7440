"""The one list of `resource:action` scopes, and the roles that expand to them."""

from __future__ import annotations

from enum import StrEnum

from tenants.models import Role


class Scope(StrEnum):
    ORG_READ = "org:read"
    ORG_WRITE = "org:write"
    MEMBERS_READ = "members:read"
    MEMBERS_WRITE = "members:write"
    KEYS_READ = "keys:read"
    KEYS_WRITE = "keys:write"
    RESIDENCY_READ = "residency:read"
    RESIDENCY_WRITE = "residency:write"
    QUOTAS_READ = "quotas:read"
    AUDIT_READ = "audit:read"
    BILLING_READ = "billing:read"
    BILLING_WRITE = "billing:write"
    USAGE_READ = "usage:read"
    INFERENCE_WRITE = "inference:write"


ALL_SCOPES: frozenset[str] = frozenset(scope.value for scope in Scope)

_READ = frozenset(
    {
        Scope.ORG_READ,
        Scope.MEMBERS_READ,
        Scope.KEYS_READ,
        Scope.RESIDENCY_READ,
        Scope.QUOTAS_READ,
        Scope.USAGE_READ,
    }
)

ROLE_SCOPES: dict[str, frozenset[str]] = {
    Role.OWNER: ALL_SCOPES,
    Role.ADMIN: ALL_SCOPES - {Scope.BILLING_WRITE},
    Role.DEVELOPER: frozenset(_READ | {Scope.KEYS_WRITE, Scope.INFERENCE_WRITE}),
    Role.BILLING: frozenset(_READ | {Scope.BILLING_READ, Scope.BILLING_WRITE, Scope.AUDIT_READ}),
    Role.VIEWER: frozenset(_READ),
}


def role_scopes(role: str) -> frozenset[str]:
    try:
        return ROLE_SCOPES[role]
    except KeyError as exc:
        raise ValueError(f"unknown role {role!r}") from exc
