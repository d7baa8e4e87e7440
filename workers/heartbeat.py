"""Host heartbeats sent by each regional worker for the hosts it serves (DESIGN section 2).

A thread in the worker process stamps `last_heartbeat_at` every HOST_HEARTBEAT_INTERVAL_S; a host
whose worker is gone stops being stamped and, after HOST_HEARTBEAT_STALE_S, gets no work.
"""

from __future__ import annotations

import logging
import threading

from django.conf import settings
from django.db import close_old_connections

from controlplane.fleet.models import Host
from controlplane.fleet.services import host_heartbeat
from controlplane.settings.env import Env

logger = logging.getLogger("workers.heartbeat")


def served_host_ids(region: str) -> list[int]:
    """`HOST_IDS` (comma-separated ids or names) or, by default, the region's non-down hosts."""
    wanted = Env().strings("HOST_IDS", [])
    hosts = Host.objects.filter(region__code=region).exclude(status=Host.Status.DOWN)
    if wanted:
        ids = [int(item) for item in wanted if item.isdigit()]
        names = [item for item in wanted if not item.isdigit()]
        chosen = [host for host in hosts if host.pk in ids or host.name in names]
        return [host.pk for host in chosen]
    return list(hosts.values_list("pk", flat=True))


class HeartbeatThread(threading.Thread):
    def __init__(self, region: str) -> None:
        super().__init__(name=f"heartbeat-{region}", daemon=True)
        self.region = region
        self.stopping = threading.Event()

    def beat_once(self) -> int:
        close_old_connections()
        host_ids = served_host_ids(self.region)
        host_heartbeat(host_ids=host_ids)
        return len(host_ids)

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                count = self.beat_once()
                logger.debug("heartbeat", extra={"region": self.region, "hosts": count})
            except Exception:
                # A database hiccup must not kill the worker; the next beat retries.
                logger.exception("heartbeat failed", extra={"region": self.region})
            self.stopping.wait(settings.HOST_HEARTBEAT_INTERVAL_S)

    def stop(self) -> None:
        self.stopping.set()
