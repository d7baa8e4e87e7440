"""One worker process of the concurrency tests (tests/billing/test_concurrency.py).

It starts from nothing, like a web process on another machine: it sets Django up against the test
database, waits at a barrier until every worker is ready, then places or settles holds and reports what
happened to each request id. Nothing Django is imported at module level: the module is imported by a
freshly spawned interpreter before Django is configured.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from typing import Any


def run(job: dict[str, Any], barrier: Any, results: Any) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "controlplane.settings.test"
    os.environ["DATABASE_URL"] = job["database_url"]
    os.environ["REDIS_URL"] = job["redis_url"]
    import django

    django.setup()
    from django.db import connections

    from billing import locks, services
    from billing.budgets import BudgetExceeded
    from tenants.models import Organization

    if job.get("without_lock"):
        # The control: no organisation lock, and a pause between reading the grants and writing them, so
        # that the test shows what the lock prevents.
        read_grants = services._grants_in_burn_order

        def no_lock(*, organization_id: int) -> Organization:
            return Organization.objects.get(pk=organization_id)

        def slow_read(**kwargs: Any) -> Any:
            rows = read_grants(**kwargs)
            time.sleep(0.2)
            return rows

        locks.organization_lock = no_lock  # the control replaces the lock
        # on PostgreSQL placement is one statement that takes the lock itself (billing_hold_place): the
        # control runs the same steps in Python, where the lock can be taken away
        services._hold_place_in_database = services._hold_place_here
        services._grants_in_burn_order = slow_read  # and widens the race window
        from billing import budgets

        check_budget = budgets.budget_check

        def slow_budget_check(**kwargs: Any) -> None:
            # Every worker reads at the same moments (the next half second), then pauses before writing.
            time.sleep(0.5 - time.time() % 0.5)
            check_budget(**kwargs)
            time.sleep(0.2)

        budgets.budget_check = slow_budget_check  # the same for the budget's hard stop

    organization = Organization.objects.get(pk=job["organization_id"])
    at = datetime.fromisoformat(job["at"])
    outcomes: dict[str, Any] = {}
    barrier.wait(timeout=300)
    for request_id in job["request_ids"]:
        try:
            if job["action"] == "place":
                services.hold_place(
                    organization=organization,
                    request_id=request_id,
                    model_name=job["model_name"],
                    region=job["region"],
                    input_tokens=job["input_tokens"],
                    max_output_tokens=job["max_output_tokens"],
                    at=at,
                )
                outcomes[request_id] = "admitted"
            else:
                output_tokens = job.get("output_tokens_by_request", {}).get(request_id, job.get("output_tokens"))
                entry = services.hold_settle(
                    request_id=request_id,
                    input_tokens=job["input_tokens"],
                    output_tokens=output_tokens,
                    api_key_id=None,
                    at=at,
                )
                outcomes[request_id] = entry.pk
        except (services.InsufficientCredit, BudgetExceeded):
            outcomes[request_id] = "refused"
        except Exception as exc:  # reported to the test, which fails on any
            outcomes[request_id] = f"error: {type(exc).__name__}: {exc}"
    connections.close_all()
    results.put((os.getpid(), outcomes))
