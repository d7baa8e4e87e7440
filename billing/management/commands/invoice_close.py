"""`manage.py invoice_close --month YYYY-MM`: close a calendar month (UTC) for every organisation, or one.

Earlier months an organisation has not closed are closed first, oldest first. Invoices are drafts unless
`--finalize` issues them (beat closes and finalises every day for the month before). Exits non-zero when
an organisation could not be invoiced (for example, its country has no tax rate); the others are closed.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from billing import invoicing
from billing.budgets import month_start
from controlplane.core import money
from controlplane.core.errors import DomainError
from controlplane.core.services import Actor
from tenants.models import Organization


class Command(BaseCommand):
    help = "Close a calendar month (UTC, by admission time) into invoices, per organisation."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--month", help="YYYY-MM (default: last month)")
        parser.add_argument("--org", help="only this organisation (slug)")
        parser.add_argument("--finalize", action="store_true", help="issue the invoices (default: drafts)")

    def handle(self, *args: Any, **options: Any) -> None:
        now = timezone.now()
        if options["month"]:
            month = invoicing.month_parse(options["month"])
        else:
            month = month_start(datetime.combine(month_start(now), time(0), UTC) - timedelta(days=1))
        actor = Actor.system("manage.py invoice_close")
        if options["org"]:
            organization = Organization.objects.filter(slug=options["org"]).first()
            if organization is None:
                raise CommandError(f"no organisation {options['org']!r}")
            report = invoicing.CloseReport()
            try:
                report.closed.extend(
                    invoicing.invoice_close_month(
                        actor=actor, organization=organization, month=month, finalize=options["finalize"], now=now
                    )
                )
            except DomainError as exc:
                report.refused[organization.slug] = exc
        else:
            report = invoicing.invoices_close_all(actor=actor, month=month, finalize=options["finalize"], now=now)
        slugs = dict(Organization.objects.values_list("pk", "slug"))
        for closed in report.closed:
            period = closed.period
            state = "closed" if closed.created else "already closed"
            slug = slugs[period.organization_id]
            if not closed.invoices:
                self.stdout.write(f"{slug} {period.period_start:%Y-%m}: {state}, no usage")
            for invoice in closed.invoices:
                self.stdout.write(
                    f"{slug} {period.period_start:%Y-%m}: {state}, invoice {invoice.number or f'draft {invoice.pk}'} "
                    f"{invoice.status}: {invoice.entry_count} requests, total "
                    f"{money.format_micros(invoice.total_micros, invoice.currency)} {invoice.currency}"
                )
        for slug, error in report.refused.items():
            self.stderr.write(f"{slug} {month:%Y-%m}: NOT invoiced ({error.code}): {error.message}")
        if report.refused:
            raise CommandError(f"{len(report.refused)} organisation(s) could not be invoiced for {month:%Y-%m}")
