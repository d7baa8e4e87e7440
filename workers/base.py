"""The project's task decorator: keyword-only primitive arguments, scope from `org_id`, region guard."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from django.conf import settings
from django.db import close_old_connections

from controlplane.core.scoping import org_scope
from workers.celery import app

P = ParamSpec("P")
R = TypeVar("R")


class WrongRegion(RuntimeError):
    """A task for one region reached a worker of another; it is refused, never run."""


def worker_region() -> str | None:
    region: str | None = settings.REGION
    return region


def project_task(*, name: str, region_bound: bool = False, **options: Any) -> Callable[[Callable[..., R]], Any]:
    """Register a task by its constant name, results ignored.

    `region_bound` tasks take a `region` argument that must equal this worker's `REGION`; a task
    with an `org_id` argument runs inside that organisation's scope.
    """

    def decorate(func: Callable[..., R]) -> Any:
        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> R:
            if args:
                raise TypeError(f"task {name} takes keyword arguments only")
            if region_bound:
                region = kwargs.get("region")
                if region is None or region != worker_region():
                    raise WrongRegion(f"task {name} for region {region!r} refused by a worker of {worker_region()!r}")
            org_id = kwargs.get("org_id")
            # a task is a unit of work like a web request: connections go back to the pool after it
            close_old_connections()
            try:
                if org_id is not None:
                    with org_scope(int(org_id)):
                        return func(**kwargs)
                return func(**kwargs)
            finally:
                close_old_connections()

        return app.task(name=name, ignore_result=True, **options)(run)

    return decorate
