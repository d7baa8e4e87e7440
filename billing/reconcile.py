"""Independent reconciliation (I4): every invoice and balance recomputed from the ledger in SQL of its own.

Nothing here calls the invoicing, settlement or budget code: the queries below recompute, from the raw
ledger rows, each entry's amount (tokens x recorded price x recorded FX rate, half-even to micros), each
entry's double entry, each invoice line (its coverage, exact sum and half-even rounding to the minor
unit), each invoice's subtotal, credits, tax and total, every grant's consumed and held amounts, and the
budgets' committed spend, and compare them with what is stored. Half-even rounding is a function of this
session (`pg_temp`), written here. PostgreSQL only: SQLite has no exact decimal arithmetic.

A check's difference is stored minus recomputed, in micros, per organisation and currency; `mismatches`
counts the rows that disagree (differences of opposite sign cannot hide each other).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from django.db import connection, transaction

from controlplane.core import money

CHECKS = ("entries", "postings", "invoice_lines", "invoices", "coverage", "grants", "budget_spend")

# Half-even to a multiple of `step`: a tie (a fractional part of exactly one half) goes to the even multiple,
# which is twice the rounding of half the quotient; anything else rounds to the nearest.
_HALF_EVEN = """
CREATE OR REPLACE FUNCTION pg_temp.half_even(x numeric, step numeric) RETURNS numeric
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN x / step - floor(x / step) = 0.5 THEN 2 * round(x / step / 2) ELSE round(x / step) END * step
$$;
"""

# The minor unit of each currency, in micros (ISO 4217 digits from the money module's table).
_STEPS = (
    "(VALUES "
    + ", ".join(f"('{currency}', {money.micros_per_minor_unit(currency)})" for currency in sorted(money.MINOR_UNITS))
    + ") AS steps(currency, step)"
)

_UTC = "AT TIME ZONE 'UTC'"

# Each ledger entry with the invoice whose period covers it (entries of unclosed months have none).
_COVERED = f"""
SELECT i.id AS invoice_id, e.*
  FROM billing_invoice i
  JOIN billing_billingperiod p ON p.id = i.period_id
  LEFT JOIN billing_billingperiod prev ON prev.id = p.previous_id
  JOIN billing_ledgerentry e
    ON e.organization_id = i.organization_id AND e.currency = i.currency
   AND e.admitted_at < (p.period_end::timestamp {_UTC}) AND e.id <= p.entry_id_max
   AND (prev.id IS NULL OR e.admitted_at >= (prev.period_end::timestamp {_UTC}) OR e.id > prev.entry_id_max)
"""  # noqa: S608  # SQL from constants only

_ENTRIES = """
SELECT organization_id, currency, sum(amount_micros - recomputed),
       count(*) FILTER (WHERE amount_micros <> recomputed OR usd_amount * 1000000 <> usd_micros)
  FROM (SELECT organization_id, currency, amount_micros, usd_amount, usd_micros,
               pg_temp.half_even(usd_micros * fx_per_usd, 1) AS recomputed
          FROM (SELECT organization_id, currency, amount_micros, usd_amount, fx_per_usd,
                       input_tokens * input_usd_per_million + output_tokens * output_usd_per_million AS usd_micros
                  FROM billing_ledgerentry OFFSET 0) exact
        OFFSET 0) entries
 GROUP BY 1, 2
"""

_POSTINGS = """
SELECT e.organization_id, e.currency, sum(coalesce(p.debits, 0) - e.amount_micros),
       count(*) FILTER (WHERE coalesce(p.debits, 0) <> e.amount_micros OR coalesce(p.credits, 0) <> e.amount_micros)
  FROM billing_ledgerentry e
  LEFT JOIN (SELECT entry_id, sum(debit_micros) AS debits, sum(credit_micros) AS credits
               FROM billing_ledgerposting GROUP BY entry_id) p ON p.entry_id = e.id
 GROUP BY 1, 2
"""

# Lines recomputed from the covered entries: the input part of an entry is exact, its output part is
# the rest of its amount; each line's exact sum rounded half-even to the minor unit, once. Kept in a table of
# this session for the lines and the invoices checks.
_RECOMPUTED_LINES = f"""
WITH parts AS (
    SELECT invoice_id, date_trunc('month', admitted_at {_UTC})::date AS usage_month, model_name, region,
           'input' AS token_kind, input_tokens AS tokens, input_tokens * input_usd_per_million * fx_per_usd AS exact
      FROM covered
    UNION ALL
    SELECT invoice_id, date_trunc('month', admitted_at {_UTC})::date, model_name, region, 'output', output_tokens,
           amount_micros - input_tokens * input_usd_per_million * fx_per_usd
      FROM covered
)
SELECT parts.invoice_id, usage_month, model_name, region, token_kind, sum(tokens) AS tokens, count(*) AS entries,
       pg_temp.half_even(sum(exact), steps.step) AS amount
  FROM parts
  JOIN billing_invoice i ON i.id = parts.invoice_id
  JOIN {_STEPS} ON steps.currency = i.currency
 GROUP BY parts.invoice_id, usage_month, model_name, region, token_kind, steps.step
"""  # noqa: S608  # SQL from constants only

_LINES = """
SELECT i.organization_id, i.currency,
       sum(coalesce(l.amount_micros, 0) - coalesce(r.amount, 0)),
       count(*) FILTER (WHERE l.id IS NULL OR r.invoice_id IS NULL OR l.amount_micros <> r.amount
                        OR l.tokens <> r.tokens OR l.entry_count <> r.entries)
  FROM billing_invoiceline l
  FULL OUTER JOIN recomputed_lines r
    ON r.invoice_id = l.invoice_id AND r.usage_month = l.usage_month AND r.model_name = l.model_name
   AND r.region = l.region AND r.token_kind = l.token_kind
  JOIN billing_invoice i ON i.id = coalesce(l.invoice_id, r.invoice_id)
 GROUP BY 1, 2
"""

# Invoice totals recomputed from the ledger: subtotal = the recomputed lines; credits = the grants'
# postings of the covered entries (all of the subtotal when grants paid everything, else rounded once and
# capped at the subtotal); tax on the rest at the invoice's rate, which must be its tax rate row's (0 when
# reverse-charged); total = subtotal - credits + tax.
_INVOICES = f"""
WITH per_invoice AS (
    SELECT covered.invoice_id, count(*) AS entries, sum(covered.amount_micros) AS ledger,
           coalesce(sum(grants.paid), 0) AS credit
      FROM covered
      LEFT JOIN (SELECT entry_id, sum(debit_micros) AS paid FROM billing_ledgerposting
                  WHERE account = 'customer_credit' GROUP BY entry_id) grants ON grants.entry_id = covered.id
     GROUP BY covered.invoice_id
),
subtotals AS (
    SELECT invoice_id, sum(amount) AS subtotal FROM recomputed_lines GROUP BY invoice_id
),
recomputed AS (
    SELECT i.id, coalesce(pi.entries, 0) AS entries, coalesce(pi.ledger, 0) AS ledger,
           coalesce(s.subtotal, 0) AS subtotal,
           CASE WHEN coalesce(pi.credit, 0) = 0 THEN 0
                WHEN pi.credit = pi.ledger THEN coalesce(s.subtotal, 0)
                ELSE least(coalesce(s.subtotal, 0), pg_temp.half_even(pi.credit, steps.step)) END AS credits,
           CASE WHEN i.reverse_charge THEN 0 ELSE t.rate_percent END AS percent,
           steps.step
      FROM billing_invoice i
      JOIN {_STEPS} ON steps.currency = i.currency
      LEFT JOIN per_invoice pi ON pi.invoice_id = i.id
      LEFT JOIN subtotals s ON s.invoice_id = i.id
      LEFT JOIN billing_taxrate t ON t.id = i.tax_rate_id
),
totals AS (
    SELECT r.*, pg_temp.half_even((r.subtotal - r.credits) * r.percent / 100, r.step) AS tax FROM recomputed r
)
SELECT i.organization_id, i.currency,
       sum(i.total_micros - (t.subtotal - t.credits + coalesce(t.tax, 0))),
       count(*) FILTER (WHERE i.entry_count <> t.entries OR i.ledger_micros <> t.ledger
                        OR i.subtotal_micros <> t.subtotal OR i.credits_micros <> t.credits
                        OR t.percent IS NULL OR i.tax_rate_percent <> t.percent OR i.tax_micros <> t.tax
                        OR i.total_micros <> t.subtotal - t.credits + t.tax)
  FROM billing_invoice i JOIN totals t ON t.id = i.id
 GROUP BY 1, 2
"""  # noqa: S608  # SQL from constants only

# Coverage: the periods of an organisation together cover its entries admitted before the end of its last
# closed month, up to that close's watermark, each exactly once.
_COVERAGE = f"""
WITH last AS (
    SELECT DISTINCT ON (organization_id) organization_id, period_end, entry_id_max
      FROM billing_billingperiod ORDER BY organization_id, period_start DESC
),
due AS (
    SELECT e.organization_id, e.currency, count(*) AS entries, sum(e.amount_micros) AS amount
      FROM billing_ledgerentry e JOIN last ON last.organization_id = e.organization_id
     WHERE e.admitted_at < (last.period_end::timestamp {_UTC}) AND e.id <= last.entry_id_max
     GROUP BY 1, 2
),
invoiced AS (
    SELECT organization_id, currency, count(*) AS entries, count(DISTINCT id) AS distinct_entries,
           sum(amount_micros) AS amount
      FROM covered GROUP BY 1, 2
)
SELECT coalesce(d.organization_id, v.organization_id), coalesce(d.currency, v.currency),
       coalesce(v.amount, 0) - coalesce(d.amount, 0),
       abs(coalesce(v.entries, 0) - coalesce(d.entries, 0)) + coalesce(v.entries - v.distinct_entries, 0)
  FROM due d FULL OUTER JOIN invoiced v ON v.organization_id = d.organization_id AND v.currency = d.currency
"""  # noqa: S608  # SQL from constants only

_GRANTS = """
WITH consumed AS (
    SELECT grant_id, sum(debit_micros - credit_micros) AS amount
      FROM billing_ledgerposting WHERE grant_id IS NOT NULL GROUP BY grant_id
),
held AS (
    SELECT a.grant_id, sum(a.amount_micros) AS amount
      FROM billing_holdallocation a JOIN billing_credithold h ON h.id = a.hold_id
     WHERE h.status = 'open' GROUP BY a.grant_id
)
SELECT g.organization_id, g.currency,
       sum((g.consumed_micros + g.held_micros) - (coalesce(c.amount, 0) + coalesce(h.amount, 0))),
       count(*) FILTER (WHERE g.consumed_micros <> coalesce(c.amount, 0) OR g.held_micros <> coalesce(h.amount, 0)
                        OR coalesce(c.amount, 0) + coalesce(h.amount, 0) > g.amount_micros)
  FROM billing_creditgrant g
  LEFT JOIN consumed c ON c.grant_id = g.id
  LEFT JOIN held h ON h.grant_id = g.id
 GROUP BY 1, 2
"""

_BUDGET_SPEND = f"""
WITH recomputed AS (
    SELECT h.organization_id, date_trunc('month', h.admitted_at {_UTC})::date AS month, h.currency,
           coalesce(sum(h.amount_micros) FILTER (WHERE h.status = 'open'), 0) AS held,
           coalesce(sum(e.amount_micros), 0) AS settled
      FROM billing_credithold h LEFT JOIN billing_ledgerentry e ON e.hold_id = h.id
     WHERE h.billing_mode = 'postpaid'
     GROUP BY 1, 2, 3
)
SELECT coalesce(s.organization_id, r.organization_id), coalesce(s.currency, r.currency),
       sum(coalesce(s.held_micros + s.settled_micros, 0) - coalesce(r.held + r.settled, 0)),
       count(*) FILTER (WHERE coalesce(s.held_micros, 0) <> coalesce(r.held, 0)
                        OR coalesce(s.settled_micros, 0) <> coalesce(r.settled, 0))
  FROM billing_budgetspend s
  FULL OUTER JOIN recomputed r
    ON r.organization_id = s.organization_id AND r.month = s.month AND r.currency = s.currency
 GROUP BY 1, 2
"""  # noqa: S608  # SQL from constants only

_QUERIES = {
    "entries": _ENTRIES,
    "postings": _POSTINGS,
    "invoice_lines": _LINES,
    "invoices": _INVOICES,
    "coverage": _COVERAGE,
    "grants": _GRANTS,
    "budget_spend": _BUDGET_SPEND,
}


@dataclass(frozen=True, slots=True)
class Difference:
    micros: int
    mismatches: int


@dataclass
class ReconcileReport:
    # (organisation slug, currency) -> check -> difference
    rows: dict[tuple[str, str], dict[str, Difference]] = field(default_factory=lambda: defaultdict(dict))

    @property
    def clean(self) -> bool:
        return all(d.micros == 0 and d.mismatches == 0 for checks in self.rows.values() for d in checks.values())


class ReconcileUnsupported(RuntimeError):
    """Reconciliation needs PostgreSQL's exact numeric arithmetic."""


def reconcile() -> ReconcileReport:
    """Run every check over every organisation and currency (read-only)."""
    if connection.vendor != "postgresql":
        raise ReconcileUnsupported(f"billing reconciliation runs on PostgreSQL, not {connection.vendor}")
    report = ReconcileReport()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_HALF_EVEN)
        cursor.execute("SET LOCAL work_mem = '64MB'")  # its groupings of a month of entries stay in memory
        # Which invoice covers each entry, worked out once for the three checks that need it.
        cursor.execute("DROP TABLE IF EXISTS pg_temp.covered")
        cursor.execute(f"CREATE TEMPORARY TABLE covered AS {_COVERED}")  # SQL from constants only
        cursor.execute("ANALYZE pg_temp.covered")
        cursor.execute("DROP TABLE IF EXISTS pg_temp.recomputed_lines")
        cursor.execute(f"CREATE TEMPORARY TABLE recomputed_lines AS {_RECOMPUTED_LINES}")
        cursor.execute("SELECT id, slug FROM tenants_organization")
        slugs = dict(cursor.fetchall())
        for name in CHECKS:
            cursor.execute(_QUERIES[name])
            for organization_id, currency, micros, mismatches in cursor.fetchall():
                report.rows[(slugs[organization_id], currency)][name] = Difference(
                    micros=int(micros or 0), mismatches=int(mismatches or 0)
                )
        cursor.execute("DROP TABLE pg_temp.recomputed_lines")
        cursor.execute("DROP TABLE pg_temp.covered")
    for checks in report.rows.values():
        for name in CHECKS:
            checks.setdefault(name, Difference(micros=0, mismatches=0))
    return report
