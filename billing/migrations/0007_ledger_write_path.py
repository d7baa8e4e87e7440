"""The ledger's write path, lighter (PostgreSQL): fewer indexes, set-based reference checks, same guarantees.

Measured on `bench/billing.py`: a settlement made about twelve foreign-key lookups (one SPI query each) and a
COPY of 100,000 entries with their holds and postings about 1.5 million, most of the time of either.

1. Indexes nothing reads: the holds' price, FX-rate and organisation indexes (the last is the prefix of
   `hold_org_status`), the entries' price, FX-rate and organisation indexes (`ledger_org_admitted`), the
   `created_at` indexes of holds, entries and postings, and the text-pattern (`LIKE`) twins of the unique
   request ids (now plain unique constraints). A settlement changes a hold's status, an indexed column, so
   every index of the hold was also one insertion per settlement.
2. No foreign keys on holds, entries and postings; their references are checked per statement instead, with
   one set-based query (PostgreSQL's keys run one lookup per row and key):
   - a hold's organisation, prices and FX rate must exist when it is written (a statement trigger) and may
     never change (a row trigger whose condition is tested in C: no call unless they change);
   - an entry must carry its hold's organisation, prices and FX rate and have its hold, and its postings
     must carry its organisation, draw only on grants of that organisation and belong to an entry that
     exists: all verified by the deferred ledger check at commit, with the balance;
   - a referenced row cannot be deleted: an organisation or a price or FX rate with holds, a grant with
     postings, a hold with an entry (entries and postings are append-only already). Deleting a price or
     rate scans the holds (their indexes are gone); the application never does it.
   The foreign keys also locked the referenced row against a concurrent delete; these checks do not: a row
   deleted while a transaction writes a hold that references it, neither seeing the other, would leave the
   hold dangling. Organisations, prices, rates and grants are never deleted by the application.
3. Fewer trigger calls per settlement: one statement trigger on entries instead of two (the record of what
   to check and the budget's settled spend), and the budget's held amount maintained by a row trigger whose
   condition skips prepaid holds without a call. One ledger check per settlement instead of two: the postings of entries that the same transaction's last
   entry statement recorded (and that are still unchecked) are covered by that record's check, which runs at
   commit over all of those entries' postings. The record is remembered in a transaction-local setting,
   undone with a rolled-back savepoint and cleared whenever a check runs.
4. `billing_round_half_even` is no longer STRICT (a null still gives null, through its CASE), so that the planner
   can inline it, and `billing_hold_settle` rounds through a variable (a plain argument may be used several
   times by the inlined body): no separate SQL function call, parsed and planned again, per settlement.
"""

import importlib
from typing import Any

import django.db.models.deletion
from django.db import migrations, models

_BEFORE = importlib.import_module("billing.migrations.0006_settlement_in_one_statement")

_TOUCHED = """
-- Entries: one statement trigger instead of two (0005's budget counter and 0006's record of what to check).
CREATE OR REPLACE FUNCTION billing_ledgerentry_written() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
BEGIN
    SELECT array_agg(t.id) INTO ids FROM touched t;
    IF ids IS NULL THEN
        RETURN NULL;
    END IF;
    INSERT INTO billing_ledger_unchecked (entry_ids) VALUES (ids);
    -- remembered for small statements only (a settlement writes one entry); local to the transaction
    PERFORM set_config('billing.ledger_recorded', CASE WHEN cardinality(ids) <= 64 THEN ids::text ELSE '' END, true);
    -- the month's settled spend of postpaid organisations (what 0005's billing_budget_settled did)
    INSERT INTO billing_budgetspend
        (organization_id, month, currency, held_micros, settled_micros, created_at, updated_at)
    SELECT e.organization_id, date_trunc('month', e.admitted_at AT TIME ZONE 'UTC')::date, e.currency,
           0, sum(e.amount_micros), now(), now()
      FROM touched e JOIN billing_credithold h ON h.id = e.hold_id
     WHERE h.billing_mode = 'postpaid'
     GROUP BY 1, 2, 3
    ON CONFLICT (organization_id, month, currency) DO UPDATE
        SET settled_micros = billing_budgetspend.settled_micros + EXCLUDED.settled_micros, updated_at = now();
    RETURN NULL;
END
$$;
DROP TRIGGER billing_ledgerentry_touched ON billing_ledgerentry;
DROP TRIGGER billing_ledgerentry_budget_settled ON billing_ledgerentry;
CREATE TRIGGER billing_ledgerentry_written AFTER INSERT ON billing_ledgerentry
    REFERENCING NEW TABLE AS touched FOR EACH STATEMENT EXECUTE FUNCTION billing_ledgerentry_written();

-- Postings: recorded for the check unless the entries they belong to were just recorded.
CREATE OR REPLACE FUNCTION billing_ledger_touched() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
    recorded text;
BEGIN
    SELECT array_agg(DISTINCT t.entry_id) INTO ids FROM touched t;
    -- postings of entries recorded by this transaction's last entry statement and not checked since: that
    -- record's check runs at commit over all of their postings, these included
    recorded := current_setting('billing.ledger_recorded', true);
    IF ids IS NULL OR (coalesce(recorded, '') <> '' AND ids <@ recorded::bigint[]) THEN
        RETURN NULL;
    END IF;
    INSERT INTO billing_ledger_unchecked (entry_ids) VALUES (ids);
    RETURN NULL;
END
$$;

-- Holds: the budget's held amount falls when a postpaid hold closes. A row trigger whose condition is
-- tested in C: a prepaid settlement calls nothing (0005's statement trigger ran for every update).
CREATE OR REPLACE FUNCTION billing_budget_hold_closed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE billing_budgetspend s SET held_micros = s.held_micros - OLD.amount_micros, updated_at = now()
     WHERE s.organization_id = NEW.organization_id
       AND s.month = date_trunc('month', NEW.admitted_at AT TIME ZONE 'UTC')::date AND s.currency = NEW.currency;
    RETURN NULL;
END
$$;
DROP TRIGGER billing_credithold_budget_closed ON billing_credithold;
CREATE TRIGGER billing_credithold_budget_closed AFTER UPDATE ON billing_credithold FOR EACH ROW
    WHEN (NEW.billing_mode = 'postpaid' AND OLD.status = 'open' AND NEW.status <> 'open')
    EXECUTE FUNCTION billing_budget_hold_closed();
"""

_TOUCHED_BACKWARD = """
DROP TRIGGER IF EXISTS billing_credithold_budget_closed ON billing_credithold;
DROP FUNCTION IF EXISTS billing_budget_hold_closed();
CREATE TRIGGER billing_credithold_budget_closed AFTER UPDATE ON billing_credithold
    REFERENCING OLD TABLE AS before_rows NEW TABLE AS after_rows
    FOR EACH STATEMENT EXECUTE FUNCTION billing_budget_closed();
DROP TRIGGER IF EXISTS billing_ledgerentry_written ON billing_ledgerentry;
DROP FUNCTION IF EXISTS billing_ledgerentry_written();
CREATE TRIGGER billing_ledgerentry_budget_settled AFTER INSERT ON billing_ledgerentry
    REFERENCING NEW TABLE AS settled FOR EACH STATEMENT EXECUTE FUNCTION billing_budget_settled();
CREATE TRIGGER billing_ledgerentry_touched AFTER INSERT ON billing_ledgerentry
    REFERENCING NEW TABLE AS touched FOR EACH STATEMENT EXECUTE FUNCTION billing_ledger_touched();
"""

_CHECK = """
CREATE OR REPLACE FUNCTION billing_ledger_check() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
    failed boolean;
BEGIN
    -- any check clears the record of unchecked entries: postings written after it need a check of their own
    PERFORM set_config('billing.ledger_recorded', '', true);
    -- per entry id: whether the entry and its hold exist, its postings' sums, its postings of another
    -- organisation or drawing on another organisation's (or no) grant, and whether the organisation, prices
    -- and FX rate are its hold's
    IF cardinality(NEW.entry_ids) = 1 THEN
        -- one entry (a settlement): lookups by key, whose plan is made once and stays good as tables grow
        SELECT e.id, false AS missing, h.id IS NULL AS orphan, e.amount_micros, p.debits, p.credits, p.strangers,
               (e.organization_id, e.input_price_id, e.output_price_id, e.fx_rate_id)
                   IS DISTINCT FROM (h.organization_id, h.input_price_id, h.output_price_id, h.fx_rate_id) AS astray
          INTO bad
          FROM billing_ledgerentry e
          LEFT JOIN billing_credithold h ON h.id = e.hold_id
         CROSS JOIN LATERAL (
               SELECT coalesce(sum(q.debit_micros), 0) AS debits, coalesce(sum(q.credit_micros), 0) AS credits,
                      count(*) FILTER (WHERE q.organization_id IS DISTINCT FROM e.organization_id
                                          OR (q.grant_id IS NOT NULL AND NOT EXISTS (
                                                  SELECT 1 FROM billing_creditgrant g
                                                   WHERE g.id = q.grant_id AND g.organization_id = e.organization_id))
                                      ) AS strangers
                 FROM billing_ledgerposting q WHERE q.entry_id = e.id) p
         WHERE e.id = NEW.entry_ids[1];
        IF NOT FOUND THEN
            RAISE EXCEPTION 'billing: postings of ledger entry %, which does not exist', NEW.entry_ids[1]
                USING ERRCODE = '23503';
        END IF;
        failed := bad.orphan OR bad.debits <> bad.credits OR bad.debits <> bad.amount_micros OR bad.strangers > 0
                  OR bad.astray;
    ELSE
        -- many (a COPY): driven by the ids, through the primary keys and the postings' entry index, so that
        -- its cost follows the number of entries checked, not the size of the tables (`= ANY (array)` would
        -- test every row against the whole array)
        SELECT t.id, e.id IS NULL AS missing, h.id IS NULL AS orphan, e.amount_micros, p.debits, p.credits,
               p.strangers, (e.organization_id, e.input_price_id, e.output_price_id, e.fx_rate_id)
                   IS DISTINCT FROM (h.organization_id, h.input_price_id, h.output_price_id, h.fx_rate_id) AS astray
          INTO bad
          FROM unnest(NEW.entry_ids) AS t(id)
          LEFT JOIN billing_ledgerentry e ON e.id = t.id
          LEFT JOIN billing_credithold h ON h.id = e.hold_id
         CROSS JOIN LATERAL (
               SELECT coalesce(sum(q.debit_micros), 0) AS debits, coalesce(sum(q.credit_micros), 0) AS credits,
                      count(*) FILTER (WHERE q.organization_id IS DISTINCT FROM e.organization_id
                                          OR (q.grant_id IS NOT NULL AND NOT EXISTS (
                                                  SELECT 1 FROM billing_creditgrant g
                                                   WHERE g.id = q.grant_id AND g.organization_id = e.organization_id))
                                      ) AS strangers
                 FROM billing_ledgerposting q WHERE q.entry_id = t.id) p
         WHERE e.id IS NULL OR h.id IS NULL OR p.debits <> p.credits OR p.debits <> e.amount_micros
            OR p.strangers > 0
            OR (e.organization_id, e.input_price_id, e.output_price_id, e.fx_rate_id)
               IS DISTINCT FROM (h.organization_id, h.input_price_id, h.output_price_id, h.fx_rate_id)
         LIMIT 1;
        failed := FOUND;
    END IF;
    IF failed THEN
        IF bad.missing THEN
            RAISE EXCEPTION 'billing: postings of ledger entry %, which does not exist', bad.id USING ERRCODE = '23503';
        ELSIF bad.orphan THEN
            RAISE EXCEPTION 'billing: ledger entry % has no hold', bad.id USING ERRCODE = '23503';
        ELSIF bad.astray THEN
            RAISE EXCEPTION 'billing: ledger entry % does not carry its hold''s organisation, prices and FX rate', bad.id
                USING ERRCODE = '23503';
        ELSIF bad.strangers > 0 THEN
            RAISE EXCEPTION 'billing: ledger entry % has postings of another organisation or its grants', bad.id
                USING ERRCODE = '23503';
        END IF;
        RAISE EXCEPTION 'billing: ledger entry % is unbalanced (debits %, credits %, amount %)',
            bad.id, bad.debits, bad.credits, bad.amount_micros USING ERRCODE = '23514';
    END IF;
    DELETE FROM billing_ledger_unchecked WHERE id = NEW.id;
    RETURN NULL;
END
$$;
"""

_HOLD_REFERENCES = """
CREATE OR REPLACE FUNCTION billing_credithold_references() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    SELECT h.id, h.organization_id, h.input_price_id, h.output_price_id, h.fx_rate_id INTO bad
      FROM written h
     WHERE NOT EXISTS (SELECT 1 FROM tenants_organization o WHERE o.id = h.organization_id)
        OR NOT EXISTS (SELECT 1 FROM billing_pricebookentry p WHERE p.id = h.input_price_id)
        OR NOT EXISTS (SELECT 1 FROM billing_pricebookentry p WHERE p.id = h.output_price_id)
        OR (h.fx_rate_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM billing_fxrate r WHERE r.id = h.fx_rate_id))
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'billing: hold % refers to an organisation, price or FX rate that does not exist '
                        '(organisation %, prices % and %, rate %)',
            bad.id, bad.organization_id, bad.input_price_id, bad.output_price_id, bad.fx_rate_id
            USING ERRCODE = '23503';
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER billing_credithold_references AFTER INSERT ON billing_credithold
    REFERENCING NEW TABLE AS written FOR EACH STATEMENT EXECUTE FUNCTION billing_credithold_references();

CREATE OR REPLACE FUNCTION billing_credithold_references_fixed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'billing: hold % keeps its organisation, prices and FX rate', OLD.id USING ERRCODE = '23503';
END
$$;
CREATE TRIGGER billing_credithold_references_fixed BEFORE UPDATE ON billing_credithold FOR EACH ROW
    WHEN ((OLD.organization_id, OLD.input_price_id, OLD.output_price_id, OLD.fx_rate_id)
          IS DISTINCT FROM (NEW.organization_id, NEW.input_price_id, NEW.output_price_id, NEW.fx_rate_id))
    EXECUTE FUNCTION billing_credithold_references_fixed();

-- TG_ARGV: pairs of (table, column) that may refer to the row being deleted
CREATE OR REPLACE FUNCTION billing_referenced_keep() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    referenced boolean;
BEGIN
    FOR i IN 0 .. TG_NARGS - 1 BY 2 LOOP
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I WHERE %I = $1)', TG_ARGV[i], TG_ARGV[i + 1])
           INTO referenced USING OLD.id;
        IF referenced THEN
            RAISE EXCEPTION 'billing: % % is still referenced by %.%', TG_TABLE_NAME, OLD.id, TG_ARGV[i], TG_ARGV[i + 1]
                USING ERRCODE = '23503';
        END IF;
    END LOOP;
    RETURN OLD;
END
$$;
CREATE TRIGGER billing_referenced_keep BEFORE DELETE ON tenants_organization FOR EACH ROW
    EXECUTE FUNCTION billing_referenced_keep('billing_credithold', 'organization_id');
CREATE TRIGGER billing_referenced_keep BEFORE DELETE ON billing_pricebookentry FOR EACH ROW
    EXECUTE FUNCTION billing_referenced_keep('billing_credithold', 'input_price_id', 'billing_credithold', 'output_price_id');
CREATE TRIGGER billing_referenced_keep BEFORE DELETE ON billing_fxrate FOR EACH ROW
    EXECUTE FUNCTION billing_referenced_keep('billing_credithold', 'fx_rate_id');
CREATE TRIGGER billing_referenced_keep BEFORE DELETE ON billing_creditgrant FOR EACH ROW
    EXECUTE FUNCTION billing_referenced_keep('billing_ledgerposting', 'grant_id');
CREATE TRIGGER billing_referenced_keep BEFORE DELETE ON billing_credithold FOR EACH ROW
    EXECUTE FUNCTION billing_referenced_keep('billing_ledgerentry', 'hold_id');
"""

_HOLD_REFERENCES_BACKWARD = """
DROP TRIGGER IF EXISTS billing_referenced_keep ON billing_credithold;
DROP TRIGGER IF EXISTS billing_referenced_keep ON billing_creditgrant;
DROP TRIGGER IF EXISTS billing_referenced_keep ON billing_fxrate;
DROP TRIGGER IF EXISTS billing_referenced_keep ON billing_pricebookentry;
DROP TRIGGER IF EXISTS billing_referenced_keep ON tenants_organization;
DROP FUNCTION IF EXISTS billing_referenced_keep();
DROP TRIGGER IF EXISTS billing_credithold_references_fixed ON billing_credithold;
DROP FUNCTION IF EXISTS billing_credithold_references_fixed();
DROP TRIGGER IF EXISTS billing_credithold_references ON billing_credithold;
DROP FUNCTION IF EXISTS billing_credithold_references();
"""

_ROUNDED_BEFORE = "    amount := billing_round_half_even(usd_micros * hold.fx_per_usd);\n"
_ROUNDED_AFTER = "    exact := usd_micros * hold.fx_per_usd;\n    amount := billing_round_half_even(exact);\n"


def _settle_function(source: str) -> str:
    """0006's `billing_hold_settle`, rounding through a variable (a plain argument lets the planner inline it)."""
    start = source.index("CREATE OR REPLACE FUNCTION billing_hold_settle(")
    end = source.index("$$;", source.index("outcome := 'settled';", start)) + len("$$;")
    function = source[start:end]
    if function.count(_ROUNDED_BEFORE) != 1:
        raise RuntimeError("billing_hold_settle of migration 0006 has changed")
    function = function.replace(_ROUNDED_BEFORE, _ROUNDED_AFTER)
    return function.replace("    usd_micros numeric;\n", "    usd_micros numeric;\n    exact numeric;\n", 1)


def _function(source: str, name: str) -> str:
    start = source.index(f"CREATE OR REPLACE FUNCTION {name}(")
    return source[start : source.index("$$;", source.index("BEGIN", start)) + len("$$;")]


def forward(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            "ALTER FUNCTION billing_round_half_even(numeric) CALLED ON NULL INPUT;\n"
            + _TOUCHED
            + _CHECK
            + _HOLD_REFERENCES
            + _settle_function(_BEFORE._PG_FORWARD),
            params=None,
        )


def backward(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        source = _BEFORE._PG_FORWARD
        schema_editor.execute(
            _HOLD_REFERENCES_BACKWARD
            + _TOUCHED_BACKWARD
            + "ALTER FUNCTION billing_round_half_even(numeric) STRICT;\n"
            + "\n".join(_function(source, name) for name in ("billing_ledger_touched", "billing_ledger_check"))
            + "\n"
            + source[source.index("CREATE OR REPLACE FUNCTION billing_hold_settle(") :],
            params=None,
        )


class OnPostgreSQL(migrations.operations.base.Operation):
    """A schema operation applied to PostgreSQL only; the migration state changes everywhere.

    SQLite (the embedded default) rebuilds a table to alter a field, which drops the table's triggers and
    fails on triggers of other tables that name it; it keeps its foreign keys and indexes instead."""

    def __init__(self, operation: migrations.operations.base.Operation) -> None:
        self.operation = operation

    def state_forwards(self, app_label: str, state: Any) -> None:
        self.operation.state_forwards(app_label, state)

    def database_forwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        if schema_editor.connection.vendor == "postgresql":
            self.operation.database_forwards(app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        if schema_editor.connection.vendor == "postgresql":
            self.operation.database_backwards(app_label, schema_editor, from_state, to_state)

    def describe(self) -> str:
        return f"{self.operation.describe()} (PostgreSQL only)"


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0006_settlement_in_one_statement"),
        ("tenants", "0003_quota_plans"),
    ]

    operations = [
        OnPostgreSQL(
            migrations.AlterField(
                model_name="credithold",
                name="created_at",
                field=models.DateTimeField(auto_now_add=True),
            )
        ),
        OnPostgreSQL(
            migrations.AlterField(
                model_name="credithold",
                name="fx_rate",
                field=models.ForeignKey(
                    blank=True,
                    db_constraint=False,
                    db_index=False,
                    help_text="empty: USD, rate 1",
                    null=True,
                    on_delete=django.db.models.deletion.PROTECT,
                    related_name="+",
                    to="billing.fxrate",
                ),
            )
        ),
        OnPostgreSQL(
            migrations.AlterField(
                model_name="credithold",
                name="input_price",
                field=models.ForeignKey(
                    db_constraint=False,
                    db_index=False,
                    on_delete=django.db.models.deletion.PROTECT,
                    related_name="+",
                    to="billing.pricebookentry",
                ),
            )
        ),
        OnPostgreSQL(
            migrations.AlterField(
                model_name="credithold",
                name="organization",
                field=models.ForeignKey(
                    db_constraint=False,
                    db_index=False,
                    on_delete=django.db.models.deletion.CASCADE,
                    related_name="+",
                    to="tenants.organization",
                ),
            )
        ),
        OnPostgreSQL(
            migrations.AlterField(
                model_name="credithold",
                name="output_price",
                field=models.ForeignKey(
                    db_constraint=False,
                    db_index=False,
                    on_delete=django.db.models.deletion.PROTECT,
                    related_name="+",
                    to="billing.pricebookentry",
                ),
            )
        ),
        OnPostgreSQL(
            migrations.AlterField(
                model_name="credithold",
                name="request_id",
                field=models.CharField(max_length=64),
            )
        ),
        OnPostgreSQL(
            migrations.AlterField(
                model_name="ledgerentry",
                name="created_at",
                field=models.DateTimeField(auto_now_add=True),
            )
        ),
        OnPostgreSQL(
            migrations.AlterField(
                model_name="ledgerentry",
                name="fx_rate",
                field=models.ForeignKey(
                    blank=True,
                    db_constraint=False,
                    db_index=False,
                    null=True,
                    on_delete=django.db.models.deletion.PROTECT,
                    related_name="+",
                    to="billing.fxrate",
                ),
            )
        ),
        OnPostgreSQL(
            migrations.AlterField(
                model_name="ledgerentry",
                name="hold",
                field=models.OneToOneField(
                    db_constraint=False,
                    on_delete=django.db.models.deletion.PROTECT,
                    related_name="ledger_entry",
                    to="billing.credithold",
                ),
            )
        ),
        OnPostgreSQL(
            migrations.AlterField(
                model_name="ledgerentry",
                name="input_price",
                field=models.ForeignKey(
                    db_constraint=False,
                    db_index=False,
                    on_delete=django.db.models.deletion.PROTECT,
                    related_name="+",
                    to="billing.pricebookentry",
                ),
            )
        ),
        OnPostgreSQL(
            migrations.AlterField(
                model_name="ledgerentry",
                name="organization",
                field=models.ForeignKey(
                    db_constraint=False,
                    db_index=False,
                    on_delete=django.db.models.deletion.CASCADE,
                    related_name="+",
                    to="tenants.organization",
                ),
            )
        ),
        OnPostgreSQL(
            migrations.AlterField(
                model_name="ledgerentry",
                name="output_price",
                field=models.ForeignKey(
                    db_constraint=False,
                    db_index=False,
                    on_delete=django.db.models.deletion.PROTECT,
                    related_name="+",
                    to="billing.pricebookentry",
                ),
            )
        ),
        OnPostgreSQL(
            migrations.AlterField(
                model_name="ledgerentry",
                name="request_id",
                field=models.CharField(max_length=64),
            )
        ),
        OnPostgreSQL(
            migrations.AlterField(
                model_name="ledgerposting",
                name="created_at",
                field=models.DateTimeField(auto_now_add=True),
            )
        ),
        OnPostgreSQL(
            migrations.AlterField(
                model_name="ledgerposting",
                name="entry",
                field=models.ForeignKey(
                    db_constraint=False,
                    on_delete=django.db.models.deletion.PROTECT,
                    related_name="postings",
                    to="billing.ledgerentry",
                ),
            )
        ),
        OnPostgreSQL(
            migrations.AlterField(
                model_name="ledgerposting",
                name="grant",
                field=models.ForeignKey(
                    blank=True,
                    db_constraint=False,
                    null=True,
                    on_delete=django.db.models.deletion.PROTECT,
                    related_name="+",
                    to="billing.creditgrant",
                ),
            )
        ),
        OnPostgreSQL(
            migrations.AlterField(
                model_name="ledgerposting",
                name="organization",
                field=models.ForeignKey(
                    db_constraint=False,
                    on_delete=django.db.models.deletion.CASCADE,
                    related_name="+",
                    to="tenants.organization",
                ),
            )
        ),
        OnPostgreSQL(
            migrations.AddConstraint(
                model_name="credithold",
                constraint=models.UniqueConstraint(fields=("request_id",), name="hold_request_unique"),
            )
        ),
        OnPostgreSQL(
            migrations.AddConstraint(
                model_name="ledgerentry",
                constraint=models.UniqueConstraint(fields=("request_id",), name="ledger_request_unique"),
            )
        ),
        migrations.RunPython(forward, backward),
    ]
