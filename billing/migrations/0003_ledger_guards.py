"""Database guards of the ledger: entries and postings are append-only, and (PostgreSQL) each entry's
postings balance (debits = credits = the entry's amount), checked at commit by deferred constraint
triggers, so that no code path, however it writes, can leave an unbalanced or edited ledger."""

from typing import Any

from django.db import migrations

_PG_FORWARD = """
CREATE OR REPLACE FUNCTION billing_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'billing: % is append-only (% refused)', TG_TABLE_NAME, TG_OP USING ERRCODE = '23000';
END
$$;
CREATE TRIGGER billing_ledgerentry_append_only BEFORE UPDATE OR DELETE ON billing_ledgerentry
    FOR EACH ROW EXECUTE FUNCTION billing_append_only();
CREATE TRIGGER billing_ledgerposting_append_only BEFORE UPDATE OR DELETE ON billing_ledgerposting
    FOR EACH ROW EXECUTE FUNCTION billing_append_only();

CREATE OR REPLACE FUNCTION billing_entry_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    target bigint;
    amount bigint;
    debits numeric;
    credits numeric;
BEGIN
    IF TG_TABLE_NAME = 'billing_ledgerentry' THEN
        target := NEW.id;
    ELSE
        target := NEW.entry_id;
    END IF;
    SELECT e.amount_micros INTO amount FROM billing_ledgerentry e WHERE e.id = target;
    SELECT coalesce(sum(p.debit_micros), 0), coalesce(sum(p.credit_micros), 0) INTO debits, credits
        FROM billing_ledgerposting p WHERE p.entry_id = target;
    IF debits <> credits OR debits <> amount THEN
        RAISE EXCEPTION 'billing: ledger entry % is unbalanced (debits %, credits %, amount %)',
            target, debits, credits, amount USING ERRCODE = '23514';
    END IF;
    RETURN NULL;
END
$$;
CREATE CONSTRAINT TRIGGER billing_ledgerentry_balanced AFTER INSERT ON billing_ledgerentry
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION billing_entry_balanced();
CREATE CONSTRAINT TRIGGER billing_ledgerposting_balanced AFTER INSERT ON billing_ledgerposting
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION billing_entry_balanced();
"""

_PG_BACKWARD = """
DROP TRIGGER IF EXISTS billing_ledgerposting_balanced ON billing_ledgerposting;
DROP TRIGGER IF EXISTS billing_ledgerentry_balanced ON billing_ledgerentry;
DROP FUNCTION IF EXISTS billing_entry_balanced();
DROP TRIGGER IF EXISTS billing_ledgerposting_append_only ON billing_ledgerposting;
DROP TRIGGER IF EXISTS billing_ledgerentry_append_only ON billing_ledgerentry;
DROP FUNCTION IF EXISTS billing_append_only();
"""

# SQLite (the embedded default) has no deferred triggers: the service checks the balance; the
# append-only rule is enforced by the database here too.
_SQLITE_TABLES = ("billing_ledgerentry", "billing_ledgerposting")
_SQLITE_FORWARD = [
    f"CREATE TRIGGER {table}_no_{op.lower()} BEFORE {op} ON {table} "
    f"BEGIN SELECT RAISE(ABORT, 'billing: {table} is append-only ({op} refused)'); END;"
    for table in _SQLITE_TABLES
    for op in ("UPDATE", "DELETE")
]
_SQLITE_BACKWARD = [
    f"DROP TRIGGER IF EXISTS {table}_no_{op.lower()};" for table in _SQLITE_TABLES for op in ("UPDATE", "DELETE")
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
    dependencies = [("billing", "0002_price_book_credit_holds_ledger")]

    operations = [migrations.RunPython(forward, backward)]
