"""Reads of inference requests for their organisation: the request log from the central index, and a
request's retained content from its own region's store (never copied to the central store)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import Q, QuerySet
from django.utils import timezone

from controlplane.core.errors import NotFound
from controlplane.core.regions import region_db_alias
from controlplane.core.scoping import org_scope
from controlplane.inference.models import InferenceRequest, RequestContent
from tenants.models import Organization


def request_list(
    *,
    organization: Organization,
    status: str | None = None,
    model: str | None = None,
    region: str | None = None,
    kind: str | None = None,
    api_key_id: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
) -> QuerySet[InferenceRequest]:
    """The organisation's requests, newest first. `api_key_id` is the key's public id; the creation
    window is half-open: `created_after <= created_at < created_before`."""
    with org_scope(organization.pk):
        requests: QuerySet[InferenceRequest] = InferenceRequest.objects.filter(organization=organization)
    if status:
        requests = requests.filter(status=status)
    if model:
        requests = requests.filter(model_name=model)
    if region:
        requests = requests.filter(region=region)
    if kind:
        requests = requests.filter(kind=kind)
    if api_key_id:
        requests = requests.filter(api_key__key_id=api_key_id)
    if created_after is not None:
        requests = requests.filter(created_at__gte=created_after)
    if created_before is not None:
        requests = requests.filter(created_at__lt=created_before)
    return requests.select_related("api_key")


def request_get(*, organization: Organization, request_id: str) -> InferenceRequest:
    """One of the organisation's requests; another organisation's is as missing as an unknown id."""
    with org_scope(organization.pk):
        found: InferenceRequest | None = (
            InferenceRequest.objects.filter(organization=organization, request_id=request_id)
            .select_related("api_key")
            .first()
        )
    if found is None:
        raise NotFound("Not found.")
    return found


@dataclass(frozen=True, slots=True)
class RetainedContent:
    """What the region still holds of a request: the body the client sent and the response it got
    (None while the request runs, or when it ended without one)."""

    request: Any
    response: Any
    receipt_salt: str


def request_content_get(
    *, organization: Organization, request: InferenceRequest, now: datetime | None = None
) -> RetainedContent | None:
    """The request's content, read from its region's store, while the organisation's retention keeps it.

    None when the request was admitted with retention 0 (its body lives only until the worker has
    run it), after the retention has expired, or once the content has been purged.
    """
    if request.organization_id != organization.pk or request.retention_days == 0:
        return None
    now = now or timezone.now()
    stored: RequestContent | None = (
        RequestContent.objects.using(region_db_alias(request.region))
        .filter(request_id=request.request_id, organization_id=organization.pk, expires_at__gt=now)
        .filter(Q(body__isnull=False) | Q(completion__isnull=False))
        .only("body", "completion", "salt")
        .first()
    )
    if stored is None:
        return None
    body = stored.body if isinstance(stored.body, dict) else {}
    completion = stored.completion if isinstance(stored.completion, dict) else {}
    return RetainedContent(request=body.get("request"), response=completion.get("response"), receipt_salt=stored.salt)
