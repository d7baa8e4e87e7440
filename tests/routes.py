"""Walk the URL configuration: every route with its view class, for the isolation and architecture suites."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.urls import URLPattern, URLResolver, get_resolver


@dataclass(frozen=True)
class Route:
    pattern: str  # the full route, e.g. "api/v1/orgs/<slug:org>/api-keys/<str:key_id>"
    name: str | None
    callback: Any

    @property
    def view_class(self) -> type | None:
        return getattr(self.callback, "cls", None) or getattr(self.callback, "view_class", None)


def all_routes() -> list[Route]:
    routes: list[Route] = []

    def walk(patterns: list[Any], prefix: str) -> None:
        for entry in patterns:
            if isinstance(entry, URLResolver):
                walk(entry.url_patterns, prefix + str(entry.pattern))
            elif isinstance(entry, URLPattern):
                routes.append(Route(prefix + str(entry.pattern), entry.name, entry.callback))

    walk(get_resolver().url_patterns, "")
    return routes


def api_routes() -> list[Route]:
    return [route for route in all_routes() if route.pattern.startswith("api/v1/")]
