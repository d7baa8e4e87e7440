"""Hold placement in one statement (PostgreSQL): `billing_hold_place`, as 0006 did for settlement.

`services.hold_place` ran about eight statements through the ORM (prices and FX rate from the process's
cache, then the organisation's lock, the budget, the hold, the grants in burn order, each grant drawn on, the
allocations), each a round trip and a few hundred microseconds of ORM work; on the admission path of every
inference request. The function does the same steps in the same order, in one call:

1. the prices and the FX rate in force at admission (the latest version effective then; USD without a rate
   is 1), read from the tables rather than a process's cache;
2. the organisation's row lock, as `billing.locks` takes it; its billing mode and currency read under it;
3. a hold already written for the request id: the same hold again when it is the same request
   (organisation, model, region), `request_id_reused` otherwise;
4. the amount: the most the request can cost, in micros of the billing currency, rounded up;
5. postpaid: the monthly budget (hard stop refuses, alert thresholds reached are recorded once);
   prepaid: the grants with credit left, in burn order, drawn on in that order, or a refusal that says
   what is required and what is available;
6. the hold, the grants' held amounts and the allocations.

A refusal is an `outcome` with its `detail`, and nothing is written before it is known (the budget's alert
rows are written only for a hold that is placed). The Python steps stay as `services._hold_place_here`
(SQLite, and the test that runs both on PostgreSQL and compares what they write).
"""

from typing import Any

from django.db import migrations

_PG_FORWARD = """
CREATE OR REPLACE FUNCTION billing_hold_place(
    p_organization_id bigint, p_request_id text, p_model_name text, p_region text, p_input_tokens bigint,
    p_max_output_tokens bigint, p_admitted_at timestamptz,
    OUT outcome text, OUT hold billing_credithold, OUT detail jsonb
) LANGUAGE plpgsql AS $$
DECLARE
    org record;
    input_entry record;
    output_entry record;
    rate record;
    existing record;
    budget record;
    spare record;
    rate_id bigint;
    per_usd numeric := 1;
    v_currency text;
    v_amount bigint;
    v_month date;
    committed bigint;
    fired integer;
    after_micros bigint;
    left_micros bigint;
    v_take bigint;
    available bigint := 0;
    grant_ids bigint[] := '{}';
    takes bigint[] := '{}';
    stamp timestamptz := now();
BEGIN
    SELECT e.id, e.usd_per_million INTO input_entry FROM billing_pricebookentry e
     WHERE e.model_name = p_model_name AND e.region = p_region AND e.token_kind = 'input'
       AND e.effective_from <= p_admitted_at
     ORDER BY e.effective_from DESC LIMIT 1;
    IF FOUND THEN
        SELECT e.id, e.usd_per_million INTO output_entry FROM billing_pricebookentry e
         WHERE e.model_name = p_model_name AND e.region = p_region AND e.token_kind = 'output'
           AND e.effective_from <= p_admitted_at
         ORDER BY e.effective_from DESC LIMIT 1;
    END IF;
    IF NOT FOUND THEN
        outcome := 'price_unavailable';
        detail := jsonb_build_object('model', p_model_name, 'region', p_region);
        RETURN;
    END IF;

    SELECT o.id, o.billing_mode, o.billing_currency INTO org FROM tenants_organization o
     WHERE o.id = p_organization_id FOR UPDATE;
    IF NOT FOUND THEN
        outcome := 'organization_not_found';
        RETURN;
    END IF;
    SELECT h.id, h.organization_id, h.model_name, h.region INTO existing
      FROM billing_credithold h WHERE h.request_id = p_request_id;
    IF FOUND THEN
        IF existing.organization_id <> org.id OR existing.model_name <> p_model_name
           OR existing.region <> p_region THEN
            outcome := 'request_id_reused';
        ELSE
            outcome := 'held_before';
            SELECT * INTO hold FROM billing_credithold h WHERE h.id = existing.id;
        END IF;
        RETURN;
    END IF;

    v_currency := upper(org.billing_currency);
    SELECT r.id, r.per_usd INTO rate FROM billing_fxrate r
     WHERE r.currency = v_currency AND r.effective_from <= p_admitted_at
     ORDER BY r.effective_from DESC LIMIT 1;
    IF FOUND THEN
        rate_id := rate.id;
        per_usd := rate.per_usd;
    ELSIF v_currency <> 'USD' THEN
        outcome := 'fx_unavailable';
        detail := jsonb_build_object('currency', org.billing_currency);
        RETURN;
    END IF;
    v_amount := ceil((p_input_tokens * input_entry.usd_per_million
                    + p_max_output_tokens * output_entry.usd_per_million) * per_usd)::bigint;

    IF org.billing_mode = 'postpaid' THEN
        SELECT b.amount_micros, b.hard_stop, b.alert_thresholds INTO budget FROM billing_budget b
         WHERE b.organization_id = org.id AND b.currency = org.billing_currency;
        IF FOUND THEN
            v_month := date_trunc('month', p_admitted_at AT TIME ZONE 'UTC')::date;
            SELECT s.held_micros + s.settled_micros INTO committed FROM billing_budgetspend s
             WHERE s.organization_id = org.id AND s.month = v_month AND s.currency = org.billing_currency;
            committed := coalesce(committed, 0);
            SELECT max(e.threshold_percent) INTO fired FROM billing_budgetevent e
             WHERE e.organization_id = org.id AND e.month = v_month;
            fired := coalesce(fired, 0);
            after_micros := committed + v_amount;
            IF budget.hard_stop AND after_micros > budget.amount_micros THEN
                outcome := 'budget_exceeded';
                detail := jsonb_build_object('currency', org.billing_currency, 'budget_micros', budget.amount_micros,
                                             'committed_micros', committed, 'required_micros', v_amount);
                RETURN;
            END IF;
            INSERT INTO billing_budgetevent
                (created_at, updated_at, organization_id, month, threshold_percent, currency, budget_micros,
                 committed_micros, request_id, mailed_at)
            SELECT stamp, stamp, org.id, v_month, t.percent, org.billing_currency, budget.amount_micros,
                   after_micros, p_request_id, NULL
              FROM (SELECT (value #>> '{}')::integer AS percent
                      FROM jsonb_array_elements(budget.alert_thresholds)) t
             WHERE t.percent > fired AND after_micros * 100 >= t.percent::bigint * budget.amount_micros
             ORDER BY t.percent
            ON CONFLICT DO NOTHING;
        END IF;
    ELSIF org.billing_mode = 'prepaid' THEN
        -- read under the organisation's lock: grant rows change only while it is held
        left_micros := v_amount;
        FOR spare IN
            SELECT g.id, g.amount_micros - g.consumed_micros - g.held_micros AS remaining
              FROM billing_creditgrant g
             WHERE g.organization_id = org.id AND (g.expires_at IS NULL OR g.expires_at > p_admitted_at)
               AND g.currency = org.billing_currency AND g.consumed_micros < g.amount_micros - g.held_micros
             ORDER BY g.priority, g.expires_at ASC NULLS LAST, g.id
        LOOP
            EXIT WHEN left_micros = 0;
            available := available + spare.remaining;
            v_take := least(spare.remaining, left_micros);
            grant_ids := grant_ids || spare.id;
            takes := takes || v_take;
            left_micros := left_micros - v_take;
        END LOOP;
        IF left_micros > 0 THEN
            -- every grant with credit left was read: `available` is all of it
            outcome := 'insufficient_credit';
            detail := jsonb_build_object('currency', org.billing_currency, 'required_micros', v_amount,
                                         'available_micros', available);
            RETURN;
        END IF;
    END IF;

    INSERT INTO billing_credithold
        (created_at, updated_at, organization_id, request_id, billing_mode, currency, amount_micros, model_name,
         region, input_tokens, max_output_tokens, input_price_id, output_price_id, input_usd_per_million,
         output_usd_per_million, fx_rate_id, fx_per_usd, admitted_at, status, closed_at, release_reason)
    VALUES (stamp, stamp, org.id, p_request_id, org.billing_mode, org.billing_currency, v_amount, p_model_name,
            p_region, p_input_tokens, p_max_output_tokens, input_entry.id, output_entry.id,
            input_entry.usd_per_million, output_entry.usd_per_million, rate_id, per_usd, p_admitted_at, 'open',
            NULL, '')
    RETURNING * INTO hold;
    IF cardinality(grant_ids) > 0 THEN
        UPDATE billing_creditgrant g SET held_micros = g.held_micros + d.take, updated_at = stamp
          FROM unnest(grant_ids, takes) AS d(id, take) WHERE g.id = d.id;
        INSERT INTO billing_holdallocation (created_at, updated_at, organization_id, hold_id, grant_id, amount_micros)
        SELECT stamp, stamp, org.id, hold.id, d.id, d.take FROM unnest(grant_ids, takes) AS d(id, take);
    END IF;
    outcome := 'placed';
END
$$;
"""

_PG_BACKWARD = """
DROP FUNCTION IF EXISTS billing_hold_place(bigint, text, text, text, bigint, bigint, timestamptz);
"""


def forward(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(_PG_FORWARD, params=None)


def backward(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(_PG_BACKWARD, params=None)


class Migration(migrations.Migration):
    dependencies = [("billing", "0007_ledger_write_path")]

    operations = [migrations.RunPython(forward, backward)]
