"""Migrate the central store and every region's store, with one progress line per store."""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Apply migrations to the central database and to each regional database."

    def handle(self, *args: Any, **options: Any) -> None:
        aliases = list(settings.DATABASES)
        for index, alias in enumerate(aliases, start=1):
            started = time.perf_counter()
            call_command("migrate", database=alias, interactive=False, verbosity=0)
            self.stdout.write(f"[{index}/{len(aliases)}] migrated {alias} in {time.perf_counter() - started:.1f}s")
