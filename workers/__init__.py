"""Celery app and the tasks that run on regional hosts and centrally."""

from workers.celery import app

__all__ = ["app"]
