"""Test settings: PostgreSQL and Redis on localhost unless the environment names others."""

from __future__ import annotations

import os

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/controlplane")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/9")
# The test process is not an ASGI server: plain connections keep pytest-django's database set-up
# simple. The processes that end-to-end tests start use the base settings, pool included.
os.environ.setdefault("DB_POOL_MAX_SIZE", "0")

from controlplane.settings.base import *  # noqa: F403

EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
CACHES["default"]["KEY_PREFIX"] = "cp-test"  # noqa: F405
