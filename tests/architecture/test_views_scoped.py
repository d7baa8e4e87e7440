"""Every API view derives from one of the scoped bases; organisation routes only from the org base."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.views import APIView

from controlplane.core.api.views import GlobalReadAPIView, OperatorAPIView
from tenants.api.base import OrgScopedAPIView
from tests.routes import all_routes, api_routes

BASES = {"org": OrgScopedAPIView, "global": GlobalReadAPIView, "operator": OperatorAPIView}
# Routes that are not about any organisation's objects: account and session endpoints, the caller's
# own organisations. They must declare it with `scope_kind`.
UNSCOPED_KINDS = {"public", "user"}
NON_API_VIEWS = {"root", "healthz", "readyz", "metrics", "schema", "api-docs"}
# The OpenAI-compatible inference API: every route authenticates an API key and reads only that
# key's organisation, except the published receipt key set and the JSON 404 for unknown paths.
V1_VIEWS = {
    "v1-models": "api_key",
    "v1-model-detail": "api_key",
    "v1-chat-completions": "api_key",
    "v1-completions": "api_key",
    "v1-embeddings": "api_key",
    "v1-receipt": "api_key",
    "v1-receipt-keys": "public",
    "v1-not-found": "public",
}


def test_every_api_view_uses_a_scoped_or_explicitly_global_base() -> None:
    routes = api_routes()
    assert len(routes) >= 20
    for route in routes:
        view = route.view_class
        assert view is not None, route
        assert issubclass(view, APIView), route
        kind = getattr(view, "scope_kind", None)
        assert kind in {*BASES, *UNSCOPED_KINDS}, f"{route.pattern}: {view.__name__} declares no scope_kind"
        if kind in BASES:
            assert issubclass(view, BASES[kind]), f"{route.pattern}: scope_kind {kind} without its base"
        if "<slug:org>" in route.pattern or "<str:org>" in route.pattern or "<org>" in route.pattern:
            assert kind in {"org", "operator"}, f"{route.pattern} names an organisation but is {kind}"
        if route.pattern.startswith("api/v1/ops/"):
            assert kind == "operator", route.pattern
        if route.pattern.startswith("api/v1/orgs/<"):
            assert kind == "org", route.pattern


def test_non_api_routes_are_known() -> None:
    for route in all_routes():
        if route.pattern.startswith(("api/v1/", "admin/", "v1/")):
            continue
        assert route.name in NON_API_VIEWS, f"unexpected route outside the API and admin: {route.pattern}"


def test_the_org_base_refuses_overrides() -> None:
    for name in ("get_queryset", "get_object", "get_permissions"):
        with pytest.raises(TypeError, match=name):
            type("Sneaky", (OrgScopedAPIView,), {name: lambda self: None})
    # Positive control: implementing the hook is accepted.
    type("Fine", (OrgScopedAPIView,), {"scoped_queryset": lambda self: None})


def test_every_inference_route_is_classified() -> None:
    v1 = [route for route in all_routes() if route.pattern.startswith("v1/")]
    assert {route.name for route in v1} == set(V1_VIEWS), "a /v1 route was added or removed: classify it"


@pytest.mark.django_db
def test_every_api_key_inference_route_refuses_a_request_without_a_key(client: Any) -> None:
    paths = {
        "v1-models": ("get", "/v1/models"),
        "v1-model-detail": ("get", "/v1/models/any"),
        "v1-chat-completions": ("post", "/v1/chat/completions"),
        "v1-completions": ("post", "/v1/completions"),
        "v1-embeddings": ("post", "/v1/embeddings"),
        "v1-receipt": ("get", "/v1/receipts/req_x"),
    }
    assert set(paths) == {name for name, kind in V1_VIEWS.items() if kind == "api_key"}
    for method, path in paths.values():
        if method == "post":
            response = client.post(path, data="{}", content_type="application/json")
        else:
            response = client.get(path)
        assert response.status_code == 401, path
        assert response.json()["error"]["code"] == "missing_api_key"
    # positive control: the public key set answers without a key
    assert client.get("/v1/receipts/keys").status_code == 200
