"""DRF authentication: Bearer API keys for automation, CSRF-checked sessions for the console."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone
from django.utils.functional import LazyObject
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from tenants.keys import key_matches, key_parse
from tenants.models import ApiKey, User

_LAST_USED_RESOLUTION = timedelta(minutes=1)


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer sovk_...`. The request's `auth` is the ApiKey; `user` its creator."""

    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[User, ApiKey] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        scheme, _, raw = header.partition(" ")
        if scheme.lower() != "bearer":
            return None
        raw = raw.strip()
        parsed = key_parse(raw)
        if parsed is None:
            raise exceptions.AuthenticationFailed("The API key is malformed.", code="key_malformed")
        key = ApiKey.objects.unscoped_all_orgs().select_related("created_by").filter(key_id=parsed.key_id).first()
        if key is None or not key_matches(parsed.full, key.secret_hmac):
            raise exceptions.AuthenticationFailed("The API key is not valid.", code="key_invalid")
        now = timezone.now()
        if key.revoked_at is not None:
            raise exceptions.AuthenticationFailed("The API key has been revoked.", code="key_revoked")
        if key.expires_at is not None and key.expires_at <= now:
            raise exceptions.AuthenticationFailed("The API key has expired.", code="key_expired")
        if not key.created_by.is_active:
            raise exceptions.AuthenticationFailed("The API key's owner is no longer active.", code="key_owner_inactive")
        if key.last_used_at is None or now - key.last_used_at > _LAST_USED_RESOLUTION:
            ApiKey.objects.unscoped_all_orgs().filter(pk=key.pk).update(last_used_at=now)
        return key.created_by, key

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


class CsrfSessionAuthentication(authentication.SessionAuthentication):
    """Session authentication with CSRF enforced on unsafe methods (DRF's default behaviour)."""

    def authenticate(self, request: Request) -> tuple[Any, None] | None:
        result = super().authenticate(request)
        if result is None:
            return None
        user = result[0]
        # Django's middleware hands over a lazy proxy of the user; unwrap it so that code which
        # looks at `type(user)` (the database router's allow_relation) sees the real model.
        if isinstance(user, LazyObject):
            user = user._wrapped
        return user, None

