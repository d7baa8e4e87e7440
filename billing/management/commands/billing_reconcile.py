"""`manage.py billing_reconcile`: recompute every invoice and balance from the ledger, print the differences.

The queries are `billing.reconcile`'s own SQL, independent of the invoicing and settlement code. One row
per organisation and currency: each check's difference (stored minus recomputed, in the currency) and,
in brackets, how many rows disagree. Exits non-zero when any difference is not zero.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from billing.reconcile import CHECKS, Difference, reconcile
from controlplane.core import money


def _cell(difference: Difference) -> str:
    amount = f"{money.micros_to_units(difference.micros):f}".rstrip("0").rstrip(".") or "0"
    return amount if difference.mismatches == 0 else f"{amount} [{difference.mismatches}]"


class Command(BaseCommand):
    help = "Recompute every invoice and balance from the ledger and print the difference per organisation."

    def handle(self, *args: Any, **options: Any) -> None:
        report = reconcile()
        header = ("organisation", "currency", *CHECKS)
        rows = [
            (slug, currency, *(_cell(checks[name]) for name in CHECKS))
            for (slug, currency), checks in sorted(report.rows.items())
        ]
        widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            self.stdout.write("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))
        dirty = [key for key, checks in report.rows.items() if any(d.micros or d.mismatches for d in checks.values())]
        if dirty:
            names = ", ".join(f"{slug}/{currency}" for slug, currency in sorted(dirty))
            raise CommandError(f"reconciliation found differences: {names}")
        self.stdout.write(f"reconciled: {len(rows)} organisation-currency pairs, every difference 0")
