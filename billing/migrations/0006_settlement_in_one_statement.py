"""Settlement in one statement, and the ledger's balance check once per statement (PostgreSQL).

1. `billing_hold_settle(...)` settles a request in one call (one round trip, and in autocommit one
   transaction): it locks the organisation's row, finds the hold, returns the existing entry when the hold
   is captured, refuses a released one, prices the tokens at the hold's recorded prices and FX rate
   (exact `numeric`, half-even to whole micros by `billing_round_half_even`), frees the hold's
   allocations and draws the amount from them in their order, then from grants with credit left in burn
   order, the rest to accounts receivable; it writes the entry, its postings and the hold's capture. It is
   the same algorithm as the Python settlement that SQLite runs (`billing.services`), and a test runs the
   two side by side. Domain outcomes (not found, released, settled before) are returned, not raised, so
   that a caller's transaction stays usable. A column added to holds, entries or postings later must be
   written here too (a later migration replaces the function); the side-by-side test fails until it is.
2. The balance check (debits = credits = the entry's amount, at commit) no longer runs two queries per
   inserted row: a statement-level trigger on entries and on postings records the ids of the entries that
   statement touched in `billing_ledger_unchecked` (one row per statement), and a deferred constraint
   trigger on that table checks them at commit with one set-based query and removes the row. A COPY of
   100,000 entries is checked by two queries instead of 600,000. `SET CONSTRAINTS ALL IMMEDIATE` runs it
   at once, as before. The table is empty outside a transaction that is writing the ledger.
"""

from typing import Any

from django.db import migrations

_PG_FORWARD = """
CREATE OR REPLACE FUNCTION billing_round_half_even(x numeric) RETURNS bigint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    -- a fractional part of exactly one half goes to the even neighbour; anything else to the nearest
    SELECT (CASE WHEN x - floor(x) = 0.5 THEN floor(x) + abs(mod(floor(x), 2)) ELSE round(x) END)::bigint
$$;

CREATE UNLOGGED TABLE billing_ledger_unchecked (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    entry_ids bigint[] NOT NULL
);

CREATE OR REPLACE FUNCTION billing_ledger_touched() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'billing_ledgerentry' THEN
        INSERT INTO billing_ledger_unchecked (entry_ids) SELECT array_agg(t.id) FROM touched t HAVING count(*) > 0;
    ELSE
        INSERT INTO billing_ledger_unchecked (entry_ids)
        SELECT array_agg(DISTINCT t.entry_id) FROM touched t HAVING count(*) > 0;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER billing_ledgerentry_touched AFTER INSERT ON billing_ledgerentry
    REFERENCING NEW TABLE AS touched FOR EACH STATEMENT EXECUTE FUNCTION billing_ledger_touched();
CREATE TRIGGER billing_ledgerposting_touched AFTER INSERT ON billing_ledgerposting
    REFERENCING NEW TABLE AS touched FOR EACH STATEMENT EXECUTE FUNCTION billing_ledger_touched();

CREATE OR REPLACE FUNCTION billing_ledger_check() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    IF cardinality(NEW.entry_ids) = 1 THEN
        -- one entry (a settlement): plain lookups, whose plans stay cached
        SELECT e.id, e.amount_micros, p.debits, p.credits INTO bad
          FROM billing_ledgerentry e,
               LATERAL (SELECT coalesce(sum(q.debit_micros), 0) AS debits, coalesce(sum(q.credit_micros), 0) AS credits
                          FROM billing_ledgerposting q WHERE q.entry_id = e.id) p
         WHERE e.id = NEW.entry_ids[1] AND (p.debits <> p.credits OR p.debits <> e.amount_micros);
    ELSE
        -- many (a COPY): one grouped pass
        SELECT e.id, e.amount_micros, coalesce(p.debits, 0) AS debits, coalesce(p.credits, 0) AS credits INTO bad
          FROM billing_ledgerentry e
          LEFT JOIN (SELECT q.entry_id, sum(q.debit_micros) AS debits, sum(q.credit_micros) AS credits
                       FROM billing_ledgerposting q WHERE q.entry_id = ANY (NEW.entry_ids) GROUP BY q.entry_id) p
            ON p.entry_id = e.id
         WHERE e.id = ANY (NEW.entry_ids)
           AND (coalesce(p.debits, 0) <> coalesce(p.credits, 0) OR coalesce(p.debits, 0) <> e.amount_micros)
         LIMIT 1;
    END IF;
    IF FOUND THEN
        RAISE EXCEPTION 'billing: ledger entry % is unbalanced (debits %, credits %, amount %)',
            bad.id, bad.debits, bad.credits, bad.amount_micros USING ERRCODE = '23514';
    END IF;
    -- postings of an entry that does not exist are refused by their foreign key
    DELETE FROM billing_ledger_unchecked WHERE id = NEW.id;
    RETURN NULL;
END
$$;
CREATE CONSTRAINT TRIGGER billing_ledger_balanced AFTER INSERT ON billing_ledger_unchecked
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION billing_ledger_check();

DROP TRIGGER billing_ledgerposting_balanced ON billing_ledgerposting;
DROP TRIGGER billing_ledgerentry_balanced ON billing_ledgerentry;
DROP FUNCTION billing_entry_balanced();

CREATE OR REPLACE FUNCTION billing_hold_settle(
    p_request_id text, p_organization_id bigint, p_input_tokens bigint, p_output_tokens bigint,
    p_api_key_id bigint, p_settled_at timestamptz, OUT outcome text, OUT entry billing_ledgerentry
) LANGUAGE plpgsql AS $$
DECLARE
    org_id bigint := p_organization_id;
    hold billing_credithold;
    allocation record;
    spare record;
    usd_micros numeric;
    amount bigint;
    left_micros bigint;
    take bigint;
    slot integer;
    grant_ids bigint[] := '{}';
    takes bigint[] := '{}';
    accounts text[];
    debits bigint[];
    credits bigint[];
    stamp timestamptz := now();
BEGIN
    IF org_id IS NULL THEN
        SELECT h.organization_id INTO org_id FROM billing_credithold h WHERE h.request_id = p_request_id;
        IF NOT FOUND THEN
            outcome := 'hold_not_found';
            RETURN;
        END IF;
    END IF;
    -- the organisation's row lock, as billing.locks takes it: holds, settlements and releases queue here
    PERFORM 1 FROM tenants_organization o WHERE o.id = org_id FOR UPDATE;
    IF NOT FOUND THEN
        outcome := 'organization_not_found';
        RETURN;
    END IF;
    SELECT * INTO hold FROM billing_credithold h WHERE h.request_id = p_request_id AND h.organization_id = org_id;
    IF NOT FOUND THEN
        outcome := 'hold_not_found';
        RETURN;
    END IF;
    IF hold.status = 'captured' THEN
        -- settled before: the hold is captured in the same transaction as its entry
        SELECT * INTO entry FROM billing_ledgerentry e WHERE e.request_id = p_request_id;
        outcome := 'settled_before';
        RETURN;
    END IF;
    IF hold.status <> 'open' THEN
        outcome := 'hold_released';
        RETURN;
    END IF;

    usd_micros := p_input_tokens * hold.input_usd_per_million + p_output_tokens * hold.output_usd_per_million;
    amount := billing_round_half_even(usd_micros * hold.fx_per_usd);
    left_micros := amount;
    IF hold.billing_mode = 'prepaid' THEN
        -- free the hold's reservations and draw the amount from them, in their order
        FOR allocation IN
            SELECT a.grant_id, a.amount_micros FROM billing_holdallocation a WHERE a.hold_id = hold.id ORDER BY a.id
        LOOP
            take := least(allocation.amount_micros, left_micros);
            UPDATE billing_creditgrant
               SET held_micros = held_micros - allocation.amount_micros, consumed_micros = consumed_micros + take,
                   updated_at = stamp
             WHERE id = allocation.grant_id;
            IF take > 0 THEN
                grant_ids := grant_ids || allocation.grant_id;
                takes := takes || take;
                left_micros := left_micros - take;
            END IF;
        END LOOP;
        -- more than the hold: grants with credit left at admission, in burn order; the rest is receivable
        IF left_micros > 0 THEN
            FOR spare IN
                SELECT g.id, g.amount_micros - g.consumed_micros - g.held_micros AS remaining
                  FROM billing_creditgrant g
                 WHERE g.organization_id = org_id AND (g.expires_at IS NULL OR g.expires_at > hold.admitted_at)
                   AND g.currency = hold.currency AND g.consumed_micros < g.amount_micros - g.held_micros
                 ORDER BY g.priority, g.expires_at ASC NULLS LAST, g.id
            LOOP
                EXIT WHEN left_micros = 0;
                take := least(spare.remaining, left_micros);
                UPDATE billing_creditgrant SET consumed_micros = consumed_micros + take, updated_at = stamp
                 WHERE id = spare.id;
                slot := array_position(grant_ids, spare.id);
                IF slot IS NULL THEN
                    grant_ids := grant_ids || spare.id;
                    takes := takes || take;
                ELSE
                    takes[slot] := takes[slot] + take;
                END IF;
                left_micros := left_micros - take;
            END LOOP;
        END IF;
    END IF;

    INSERT INTO billing_ledgerentry
        (created_at, updated_at, organization_id, request_id, hold_id, api_key_id, model_name, region,
         input_tokens, output_tokens, input_price_id, output_price_id, input_usd_per_million,
         output_usd_per_million, fx_rate_id, fx_per_usd, currency, usd_amount, amount_micros, admitted_at,
         settled_at)
    VALUES (stamp, stamp, org_id, p_request_id, hold.id, p_api_key_id, hold.model_name, hold.region,
            p_input_tokens, p_output_tokens, hold.input_price_id, hold.output_price_id, hold.input_usd_per_million,
            hold.output_usd_per_million, hold.fx_rate_id, hold.fx_per_usd, hold.currency, usd_micros * 0.000001,
            amount, hold.admitted_at, p_settled_at)
    RETURNING * INTO entry;

    -- the postings, in this order: the grants drawn, accounts receivable, revenue
    accounts := array_fill('customer_credit'::text, ARRAY[cardinality(grant_ids)]);
    debits := takes;
    credits := array_fill(0::bigint, ARRAY[cardinality(grant_ids)]);
    IF left_micros > 0 THEN
        accounts := accounts || 'accounts_receivable'::text;
        grant_ids := grant_ids || NULL::bigint;
        debits := debits || left_micros;
        credits := credits || 0::bigint;
    END IF;
    IF amount > 0 THEN
        accounts := accounts || 'revenue'::text;
        grant_ids := grant_ids || NULL::bigint;
        debits := debits || 0::bigint;
        credits := credits || amount;
    END IF;
    IF cardinality(accounts) > 0 THEN
        INSERT INTO billing_ledgerposting
            (created_at, updated_at, organization_id, entry_id, account, grant_id, debit_micros, credit_micros)
        SELECT stamp, stamp, org_id, entry.id, p.account, p.grant_id, p.debit, p.credit
          FROM unnest(accounts, grant_ids, debits, credits) AS p(account, grant_id, debit, credit);
    END IF;

    UPDATE billing_credithold SET status = 'captured', closed_at = p_settled_at, updated_at = stamp
     WHERE id = hold.id;
    outcome := 'settled';
END
$$;
"""

_PG_BACKWARD = """
DROP FUNCTION IF EXISTS billing_hold_settle(text, bigint, bigint, bigint, bigint, timestamptz);
DROP TRIGGER IF EXISTS billing_ledgerposting_touched ON billing_ledgerposting;
DROP TRIGGER IF EXISTS billing_ledgerentry_touched ON billing_ledgerentry;
DROP FUNCTION IF EXISTS billing_ledger_touched();
DROP TABLE IF EXISTS billing_ledger_unchecked;
DROP FUNCTION IF EXISTS billing_ledger_check();
DROP FUNCTION IF EXISTS billing_round_half_even(numeric);

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


def forward(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(_PG_FORWARD, params=None)


def backward(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(_PG_BACKWARD, params=None)


class Migration(migrations.Migration):
    dependencies = [("billing", "0005_budget_spend_and_invoice_guards")]

    operations = [migrations.RunPython(forward, backward)]
