"""Make every process reload the rows that the request path caches (after a change made outside the
services, for example with SQL)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from controlplane.core import hotcache


class Command(BaseCommand):
    help = (
        "Replace the global generation token of the request-path cache: every web and worker process reloads "
        "keys, policies, quotas, the catalog, the fleet and prices at its next request. Saves made through the "
        "services and the admin panel do this by themselves; run it after editing those tables with SQL."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        hotcache.invalidate_everywhere()
        self.stdout.write("request-path caches invalidated in every process")
