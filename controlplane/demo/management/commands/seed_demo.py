"""`manage.py seed_demo`: load the demo data set (idempotent) and print how to get in."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from controlplane.demo.seed import DEVELOPER_EMAIL, OPERATOR_EMAIL, OWNER_EMAIL, demo_api_key_file, seed_demo


class Command(BaseCommand):
    help = "Seed regions, accelerators, catalog, FX/tax, a demo fleet, an operator and the acme organisation."

    def handle(self, *args: Any, **options: Any) -> None:
        summary = seed_demo()
        key_note = "new, saved to" if summary.api_key_created else "reused from"
        lines = [
            f"URL:            {summary.url}/ (API docs at /api/docs/)",
            f"Admin:          {summary.url}/admin/",
            f"Operator login: {OPERATOR_EMAIL} / {summary.password}",
            f"Customer login: {OWNER_EMAIL} / {summary.password} (owner of acme)",
            f"                {DEVELOPER_EMAIL} / {summary.password} (developer)",
            f"API key:        {summary.api_key}",
            f"                ({key_note} {demo_api_key_file()})",
            f"Fleet:          {summary.hosts} hosts, {summary.deployments} deployments",
        ]
        for line in lines:
            self.stdout.write(line)
