"""Writes of the shared kernel: the audit record that every audited service writes in its transaction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.http import HttpRequest

from controlplane.core.logging import current_request_id
from controlplane.core.models import AuditEvent


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts: a user (session), an API key on behalf of its creator, or the system."""

    user_id: int | None
    label: str
    ip_address: str | None = None

    @classmethod
    def system(cls, label: str = "system") -> Actor:
        return cls(user_id=None, label=label)


def actor_of_request(request: HttpRequest, *, channel: str = "") -> Actor:
    """The signed-in person behind an admin or operator request (never an API key).

    `channel` ("admin") prefixes the audit label, so that the log tells panel actions from API ones.
    """
    user = request.user
    label = str(getattr(user, "email", "") or user.pk)
    return Actor(
        user_id=user.pk,
        label=f"{channel}:{label}" if channel else label,
        ip_address=request.META.get("REMOTE_ADDR") or None,
    )


def audit_record(
    *,
    actor: Actor,
    action: str,
    target_type: str,
    target_id: str | int,
    organization_id: int | None = None,
    changes: dict[str, Any] | None = None,
) -> AuditEvent:
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("audit_record must run inside the transaction of the change it records")
    event: AuditEvent = AuditEvent.objects.unscoped_all_orgs().create(
        actor_id=actor.user_id,
        actor_label=actor.label[:200],
        organization_id=organization_id,
        action=action,
        target_type=target_type,
        target_id=str(target_id),
        changes=changes or {},
        ip_address=actor.ip_address,
        request_id=current_request_id.get(),
    )
    return event
