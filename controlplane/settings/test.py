"""Test settings: PostgreSQL and Redis on localhost unless the environment names others."""

from __future__ import annotations

import os

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/controlplane")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/9")

from controlplane.settings.base import *  # noqa: F403

EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
CACHES["default"]["KEY_PREFIX"] = "cp-test"  # noqa: F405
