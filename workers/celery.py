"""The Celery app. Queues: `central` and one `region.<code>` per region; messages carry ids only."""

from __future__ import annotations

import os

from celery import Celery
from celery.schedules import crontab
from kombu import Queue

from controlplane.core.regions import CENTRAL_QUEUE, REGION_CODES, region_queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings.base")

app = Celery("workers")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = [Queue(CENTRAL_QUEUE), *(Queue(region_queue(code)) for code in REGION_CODES)]
app.conf.task_default_queue = CENTRAL_QUEUE
app.conf.task_serializer = "json"
app.conf.accept_content = ["json"]
app.conf.worker_hijack_root_logger = False
app.conf.beat_schedule = {
    "host-health-sweep": {"task": "workers.host_health_sweep", "schedule": 60.0, "options": {"queue": CENTRAL_QUEUE}},
    "requests-reap": {
        "task": "workers.requests_reap",
        "schedule": float(os.environ.get("REAPER_INTERVAL_S", "5")),
        "options": {"queue": CENTRAL_QUEUE, "expires": 30},
    },
    # Money (billing): close last month's invoices early each day (a no-op once closed), record expired
    # credit grants, mail budget alerts.
    "invoices-close-due": {
        "task": "workers.invoices_close_due",
        "schedule": crontab(minute=30, hour=0),
        "options": {"queue": CENTRAL_QUEUE, "expires": 3600},
    },
    "credit-grants-expire": {
        "task": "workers.credit_grants_expire",
        "schedule": 600.0,
        "options": {"queue": CENTRAL_QUEUE, "expires": 600},
    },
    "budget-alerts-mail": {
        "task": "workers.budget_alerts_mail",
        "schedule": 60.0,
        "options": {"queue": CENTRAL_QUEUE, "expires": 60},
    },
}
app.autodiscover_tasks(["workers"], related_name="tasks")
