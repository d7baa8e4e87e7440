"""Thin task adapters: load state by id, call one service."""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery.signals import worker_ready, worker_shutdown
from django.conf import settings

from workers import task_names
from workers.base import project_task, worker_region

logger = logging.getLogger("workers.tasks")
_heartbeat: Any = None


@project_task(name=task_names.REGION_PING, region_bound=True)
def region_ping(*, region: str, token: str) -> str:
    """Round trip through a region's queue: marks `ping:<token>` in the region's own Redis.

    Used by operators and tests to prove a region's worker is consuming. Safe to retry: it sets
    the same key to the same value.
    """
    client = redis.Redis.from_url(settings.REGION_REDIS_URLS[region])
    client.set(f"ping:{token}", region, ex=300)
    logger.info("region ping", extra={"region": region, "token": token})
    return token


def _start_heartbeat(**_: Any) -> None:
    global _heartbeat  # one heartbeat thread per worker process
    region = worker_region()
    if region is None:
        return
    from workers.heartbeat import HeartbeatThread

    _heartbeat = HeartbeatThread(region)
    _heartbeat.beat_once()
    _heartbeat.start()
    logger.info("regional worker ready", extra={"region": region})


def _stop_heartbeat(**_: Any) -> None:
    if _heartbeat is not None:
        _heartbeat.stop()


worker_ready.connect(_start_heartbeat, weak=False)
worker_shutdown.connect(_stop_heartbeat, weak=False)


@project_task(name=task_names.HOST_HEALTH_SWEEP)
def host_health_sweep() -> None:
    """Beat, every minute: log live and silent hosts per region (silent = active, no fresh heartbeat).

    Read-only, so safe to run any number of times.
    """
    from django.utils import timezone

    from controlplane.fleet.models import Host
    from controlplane.fleet.selectors import hosts_list, hosts_live

    now = timezone.now()
    live_ids = set(hosts_live(region_code=None, model_name=None, now=now).values_list("pk", flat=True))
    per_region: dict[str, list[int]] = {}
    for host in hosts_list(status=Host.Status.ACTIVE):
        counts = per_region.setdefault(host.region.code, [0, 0])
        counts[0 if host.pk in live_ids else 1] += 1
    for region, (live, silent) in sorted(per_region.items()):
        log = logger.warning if silent and not live else logger.info
        log("host health", extra={"region": region, "live_hosts": live, "silent_hosts": silent})


@project_task(name=task_names.INFERENCE_RUN, region_bound=True, acks_late=True)
def inference_run(*, region: str, request_id: str, attempt: int) -> str:
    """Runs one admitted request on this process's engine loop (see workers.inference for the
    retry policy: the reaper, not Celery, retries; a stale delivery claims nothing)."""
    from workers.inference import inference_run as run

    return run(region=region, request_id=request_id, attempt=attempt)


@project_task(name=task_names.REQUESTS_REAP)
def requests_reap() -> None:
    """Beat, every REAPER_INTERVAL_S: recovers expired leases, fails stranded requests, re-sends the
    outbox, purges content past retention. Safe to overlap: every step locks or claims its row."""
    from controlplane.inference.services import requests_reap as reap

    report = reap()
    if any(vars(report).values()):
        logger.info("reaper", extra=vars(report))


@project_task(name=task_names.INVOICES_CLOSE_DUE)
def invoices_close_due() -> None:
    """Beat, daily at 00:30 UTC: close and finalise last month's invoices (and any earlier month left open)
    for every organisation. Safe to repeat: a closed month is returned as it is (unique per month)."""
    from billing.invoicing import invoices_close_due as close

    report = close()
    created = [closed for closed in report.closed if closed.created]
    logger.info("invoices closed", extra={"periods": len(created), "refused": sorted(report.refused)})


@project_task(name=task_names.CREDIT_GRANTS_EXPIRE)
def credit_grants_expire() -> None:
    """Beat, every 10 minutes: record expired credit grants. Safe to repeat: each is recorded once."""
    from billing.grants import credit_grants_expire as expire

    expired = expire()
    if expired:
        logger.info("credit grants expired", extra={"grants": [grant.grant_id for grant in expired]})


@project_task(name=task_names.BUDGET_ALERTS_MAIL)
def budget_alerts_mail() -> None:
    """Beat, every minute: mail recorded budget alerts. Safe to overlap: events are claimed with SKIP LOCKED."""
    from billing.budgets import budget_alerts_mail as mail

    sent = mail()
    if sent:
        logger.info("budget alerts mailed", extra={"events": sent})


def _stop_loops(**_: Any) -> None:
    from workers.inference import loops_stop

    loops_stop()


worker_shutdown.connect(_stop_loops, weak=False)
