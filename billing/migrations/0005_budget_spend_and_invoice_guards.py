"""Database triggers of budgets and invoices.

1. Committed postpaid spend per organisation, month (UTC, by admission) and currency is kept in
   `billing_budgetspend` by triggers: opening a postpaid hold adds its amount to `held`, closing it
   (captured or released) takes the amount off `held`, and a ledger entry of a postpaid hold adds its
   amount to `settled`, in whichever order settlement writes them. They run in the transactions that
   write the holds and entries, under the organisation's lock, so the budget check at admission reads
   one exact row, whatever code path writes them. On PostgreSQL they run once per statement over its
   transition table (a COPY of many entries adds each month's sum once); on SQLite once per row.
   Existing holds and entries are counted in once here.
2. Invoices: billing periods and invoice lines are append-only; an invoice's money, tax and coverage
   never change once written (only its status, number and dates move), and invoices are never deleted.
"""

from typing import Any

from django.db import migrations

_PG_FORWARD = """
CREATE OR REPLACE FUNCTION billing_budget_opened() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO billing_budgetspend
        (organization_id, month, currency, held_micros, settled_micros, created_at, updated_at)
    SELECT h.organization_id, date_trunc('month', h.admitted_at AT TIME ZONE 'UTC')::date, h.currency,
           sum(h.amount_micros), 0, now(), now()
      FROM opened h
     WHERE h.billing_mode = 'postpaid' AND h.status = 'open'
     GROUP BY 1, 2, 3
    ON CONFLICT (organization_id, month, currency) DO UPDATE
        SET held_micros = billing_budgetspend.held_micros + EXCLUDED.held_micros, updated_at = now();
    RETURN NULL;
END
$$;
CREATE TRIGGER billing_credithold_budget_opened AFTER INSERT ON billing_credithold
    REFERENCING NEW TABLE AS opened FOR EACH STATEMENT EXECUTE FUNCTION billing_budget_opened();

CREATE OR REPLACE FUNCTION billing_budget_closed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE billing_budgetspend s SET held_micros = s.held_micros - c.amount, updated_at = now()
      FROM (SELECT n.organization_id, date_trunc('month', n.admitted_at AT TIME ZONE 'UTC')::date AS month,
                   n.currency, sum(o.amount_micros) AS amount
              FROM before_rows o JOIN after_rows n ON n.id = o.id
             WHERE n.billing_mode = 'postpaid' AND o.status = 'open' AND n.status <> 'open'
             GROUP BY 1, 2, 3) c
     WHERE s.organization_id = c.organization_id AND s.month = c.month AND s.currency = c.currency;
    RETURN NULL;
END
$$;
CREATE TRIGGER billing_credithold_budget_closed AFTER UPDATE ON billing_credithold
    REFERENCING OLD TABLE AS before_rows NEW TABLE AS after_rows
    FOR EACH STATEMENT EXECUTE FUNCTION billing_budget_closed();

CREATE OR REPLACE FUNCTION billing_budget_settled() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO billing_budgetspend
        (organization_id, month, currency, held_micros, settled_micros, created_at, updated_at)
    SELECT e.organization_id, date_trunc('month', e.admitted_at AT TIME ZONE 'UTC')::date, e.currency,
           0, sum(e.amount_micros), now(), now()
      FROM settled e JOIN billing_credithold h ON h.id = e.hold_id
     WHERE h.billing_mode = 'postpaid'
     GROUP BY 1, 2, 3
    ON CONFLICT (organization_id, month, currency) DO UPDATE
        SET settled_micros = billing_budgetspend.settled_micros + EXCLUDED.settled_micros, updated_at = now();
    RETURN NULL;
END
$$;
CREATE TRIGGER billing_ledgerentry_budget_settled AFTER INSERT ON billing_ledgerentry
    REFERENCING NEW TABLE AS settled FOR EACH STATEMENT EXECUTE FUNCTION billing_budget_settled();

INSERT INTO billing_budgetspend (organization_id, month, currency, held_micros, settled_micros, created_at, updated_at)
SELECT h.organization_id, date_trunc('month', h.admitted_at AT TIME ZONE 'UTC')::date, h.currency,
       coalesce(sum(h.amount_micros) FILTER (WHERE h.status = 'open'), 0),
       coalesce(sum(e.amount_micros) FILTER (WHERE h.status = 'captured'), 0), now(), now()
  FROM billing_credithold h LEFT JOIN billing_ledgerentry e ON e.hold_id = h.id
 WHERE h.billing_mode = 'postpaid'
 GROUP BY 1, 2, 3;

CREATE OR REPLACE FUNCTION billing_invoice_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'billing: invoices are never deleted (void them)' USING ERRCODE = '23000';
    END IF;
    IF (NEW.organization_id, NEW.period_id, NEW.period_start, NEW.currency, NEW.customer_name,
        NEW.billing_country, NEW.tax_id, NEW.entry_count, NEW.ledger_micros, NEW.subtotal_micros,
        NEW.credits_micros, NEW.tax_rate_id, NEW.tax_name, NEW.tax_rate_percent, NEW.reverse_charge,
        NEW.tax_note, NEW.tax_micros, NEW.total_micros)
       IS DISTINCT FROM
       (OLD.organization_id, OLD.period_id, OLD.period_start, OLD.currency, OLD.customer_name,
        OLD.billing_country, OLD.tax_id, OLD.entry_count, OLD.ledger_micros, OLD.subtotal_micros,
        OLD.credits_micros, OLD.tax_rate_id, OLD.tax_name, OLD.tax_rate_percent, OLD.reverse_charge,
        OLD.tax_note, OLD.tax_micros, OLD.total_micros) THEN
        RAISE EXCEPTION 'billing: invoice % was written once; only its status may change', OLD.id
            USING ERRCODE = '23000';
    END IF;
    IF OLD.status <> 'draft' AND NEW.number IS DISTINCT FROM OLD.number THEN
        RAISE EXCEPTION 'billing: invoice % keeps its number', OLD.id USING ERRCODE = '23000';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER billing_invoice_guard BEFORE UPDATE OR DELETE ON billing_invoice
    FOR EACH ROW EXECUTE FUNCTION billing_invoice_guard();
CREATE TRIGGER billing_invoiceline_append_only BEFORE UPDATE OR DELETE ON billing_invoiceline
    FOR EACH ROW EXECUTE FUNCTION billing_append_only();
CREATE TRIGGER billing_billingperiod_append_only BEFORE UPDATE OR DELETE ON billing_billingperiod
    FOR EACH ROW EXECUTE FUNCTION billing_append_only();
"""

_PG_BACKWARD = """
DROP TRIGGER IF EXISTS billing_billingperiod_append_only ON billing_billingperiod;
DROP TRIGGER IF EXISTS billing_invoiceline_append_only ON billing_invoiceline;
DROP TRIGGER IF EXISTS billing_invoice_guard ON billing_invoice;
DROP FUNCTION IF EXISTS billing_invoice_guard();
DROP TRIGGER IF EXISTS billing_ledgerentry_budget_settled ON billing_ledgerentry;
DROP FUNCTION IF EXISTS billing_budget_settled();
DROP TRIGGER IF EXISTS billing_credithold_budget_closed ON billing_credithold;
DROP FUNCTION IF EXISTS billing_budget_closed();
DROP TRIGGER IF EXISTS billing_credithold_budget_opened ON billing_credithold;
DROP FUNCTION IF EXISTS billing_budget_opened();
DELETE FROM billing_budgetspend;
"""

# SQLite (the embedded default): the same rules. Django stores its datetimes there as UTC text, so the
# month is the text's first seven characters.
_SQLITE_MONTH = "strftime('%Y-%m-01', {column})"
_SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f', 'now')"
_SQLITE_FORWARD = [
    f"""CREATE TRIGGER billing_credithold_budget_open AFTER INSERT ON billing_credithold
    WHEN NEW.billing_mode = 'postpaid' AND NEW.status = 'open'
    BEGIN
        INSERT INTO billing_budgetspend
            (organization_id, month, currency, held_micros, settled_micros, created_at, updated_at)
        VALUES (NEW.organization_id, {_SQLITE_MONTH.format(column="NEW.admitted_at")}, NEW.currency,
                NEW.amount_micros, 0, {_SQLITE_NOW}, {_SQLITE_NOW})
        ON CONFLICT (organization_id, month, currency) DO UPDATE
            SET held_micros = held_micros + excluded.held_micros, updated_at = excluded.updated_at;
    END;""",  # noqa: S608  # SQL from constants only
    f"""CREATE TRIGGER billing_credithold_budget_close AFTER UPDATE OF status ON billing_credithold
    WHEN NEW.billing_mode = 'postpaid' AND OLD.status = 'open' AND NEW.status <> 'open'
    BEGIN
        UPDATE billing_budgetspend SET held_micros = held_micros - OLD.amount_micros, updated_at = {_SQLITE_NOW}
            WHERE organization_id = NEW.organization_id
              AND month = {_SQLITE_MONTH.format(column="NEW.admitted_at")} AND currency = NEW.currency;
    END;""",  # noqa: S608  # SQL from constants only
    f"""CREATE TRIGGER billing_ledgerentry_budget_settled AFTER INSERT ON billing_ledgerentry
    WHEN (SELECT h.billing_mode FROM billing_credithold h WHERE h.id = NEW.hold_id) = 'postpaid'
    BEGIN
        INSERT INTO billing_budgetspend
            (organization_id, month, currency, held_micros, settled_micros, created_at, updated_at)
        VALUES (NEW.organization_id, {_SQLITE_MONTH.format(column="NEW.admitted_at")}, NEW.currency,
                0, NEW.amount_micros, {_SQLITE_NOW}, {_SQLITE_NOW})
        ON CONFLICT (organization_id, month, currency) DO UPDATE
            SET settled_micros = settled_micros + excluded.settled_micros, updated_at = excluded.updated_at;
    END;""",  # noqa: S608  # SQL from constants only
    f"""INSERT INTO billing_budgetspend
        (organization_id, month, currency, held_micros, settled_micros, created_at, updated_at)
    SELECT h.organization_id, {_SQLITE_MONTH.format(column="h.admitted_at")}, h.currency,
           coalesce(sum(CASE WHEN h.status = 'open' THEN h.amount_micros END), 0),
           coalesce(sum(CASE WHEN h.status = 'captured' THEN e.amount_micros END), 0), {_SQLITE_NOW}, {_SQLITE_NOW}
      FROM billing_credithold h LEFT JOIN billing_ledgerentry e ON e.hold_id = h.id
     WHERE h.billing_mode = 'postpaid'
     GROUP BY 1, 2, 3;""",  # noqa: S608  # SQL from constants only
    """CREATE TRIGGER billing_invoice_no_delete BEFORE DELETE ON billing_invoice
    BEGIN SELECT RAISE(ABORT, 'billing: invoices are never deleted (void them)'); END;""",
    """CREATE TRIGGER billing_invoice_written_once BEFORE UPDATE ON billing_invoice
    WHEN NEW.organization_id IS NOT OLD.organization_id OR NEW.period_id IS NOT OLD.period_id
      OR NEW.currency IS NOT OLD.currency OR NEW.entry_count IS NOT OLD.entry_count
      OR NEW.ledger_micros IS NOT OLD.ledger_micros OR NEW.subtotal_micros IS NOT OLD.subtotal_micros
      OR NEW.credits_micros IS NOT OLD.credits_micros OR NEW.tax_rate_id IS NOT OLD.tax_rate_id
      OR NEW.tax_rate_percent IS NOT OLD.tax_rate_percent OR NEW.reverse_charge IS NOT OLD.reverse_charge
      OR NEW.tax_micros IS NOT OLD.tax_micros OR NEW.total_micros IS NOT OLD.total_micros
      OR (OLD.status <> 'draft' AND NEW.number IS NOT OLD.number)
    BEGIN SELECT RAISE(ABORT, 'billing: an invoice is written once; only its status may change'); END;""",
    *(
        f"CREATE TRIGGER {table}_no_{op.lower()} BEFORE {op} ON {table} "
        f"BEGIN SELECT RAISE(ABORT, 'billing: {table} is append-only ({op} refused)'); END;"
        for table in ("billing_invoiceline", "billing_billingperiod")
        for op in ("UPDATE", "DELETE")
    ),
]
_SQLITE_BACKWARD = [
    "DROP TRIGGER IF EXISTS billing_credithold_budget_open;",
    "DROP TRIGGER IF EXISTS billing_credithold_budget_close;",
    "DROP TRIGGER IF EXISTS billing_ledgerentry_budget_settled;",
    "DELETE FROM billing_budgetspend;",
    "DROP TRIGGER IF EXISTS billing_invoice_no_delete;",
    "DROP TRIGGER IF EXISTS billing_invoice_written_once;",
    *(
        f"DROP TRIGGER IF EXISTS {table}_no_{op.lower()};"
        for table in ("billing_invoiceline", "billing_billingperiod")
        for op in ("UPDATE", "DELETE")
    ),
]


def _run(schema_editor: Any, statements: list[str]) -> None:
    for statement in statements:
        schema_editor.execute(statement, params=None)


def forward(apps: Any, schema_editor: Any) -> None:
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        _run(schema_editor, [_PG_FORWARD])
    elif vendor == "sqlite":
        _run(schema_editor, _SQLITE_FORWARD)


def backward(apps: Any, schema_editor: Any) -> None:
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        _run(schema_editor, [_PG_BACKWARD])
    elif vendor == "sqlite":
        _run(schema_editor, _SQLITE_BACKWARD)


class Migration(migrations.Migration):
    dependencies = [("billing", "0004_budgets_invoices")]

    operations = [migrations.RunPython(forward, backward)]
