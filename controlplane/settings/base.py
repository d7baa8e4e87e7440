"""All settings, read from the environment through `Env`; production differs only by variables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dj_database_url

from controlplane.core.regions import REGION_CODES, region_db_alias
from controlplane.settings.env import ConfigError, Env

env = Env()

BASE_DIR = Path(__file__).resolve().parents[2]
DATA_DIR = Path(env.string("DATA_DIR", str(BASE_DIR / "var")))
RECEIPT_KEY_DIR = Path(env.string("RECEIPT_KEY_DIR", str(DATA_DIR / "keys")))

DEBUG = env.boolean("DEBUG", False)
SECRET_KEY = env.string("SECRET_KEY", "insecure-development-secret-key-set-SECRET_KEY-in-production")
API_KEY_PEPPER = env.string("API_KEY_PEPPER", "insecure-development-pepper-set-API_KEY_PEPPER-in-production")
ALLOWED_HOSTS = env.strings("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env.strings("CSRF_TRUSTED_ORIGINS", ["http://localhost:8000", "http://127.0.0.1:8000"])
PUBLIC_URL = env.string("PUBLIC_URL", "http://127.0.0.1:8000")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "controlplane.core",
    "controlplane.fleet",
    "controlplane.inference",
    "tenants",
    "billing",
    "controlplane.demo",
]

MIDDLEWARE = [
    "controlplane.core.middleware.RequestIdMiddleware",
    "controlplane.core.middleware.BodySizeLimitMiddleware",
    # Django's own, run without thread hops under ASGI (see the module)
    "controlplane.core.middleware.SecurityMiddleware",
    "controlplane.core.middleware.StaticFilesMiddleware",
    "controlplane.core.middleware.SessionMiddleware",
    "controlplane.core.middleware.CommonMiddleware",
    "controlplane.core.middleware.CsrfViewMiddleware",
    "controlplane.core.middleware.AuthenticationMiddleware",
    "controlplane.core.middleware.MessageMiddleware",
    "controlplane.core.middleware.XFrameOptionsMiddleware",
    "controlplane.core.middleware.MetricsMiddleware",
]

ROOT_URLCONF = "controlplane.urls"
ASGI_APPLICATION = "controlplane.asgi.application"
WSGI_APPLICATION = "controlplane.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


# --- Databases: one central store and one store per region (DESIGN section 3) -----------------

# Connections per process and PostgreSQL database (0: no pool, one connection per thread).
DB_POOL_MAX_SIZE = env.integer("DB_POOL_MAX_SIZE", 8, minimum=0)


def _database(url: str) -> dict[str, Any]:
    try:
        config: dict[str, Any] = dict(dj_database_url.parse(url, conn_max_age=60, conn_health_checks=True))
    except ValueError as exc:
        raise ConfigError(f"cannot parse database URL: {exc}") from exc
    if config["ENGINE"] == "django.db.backends.postgresql":
        config["ENGINE"] = "controlplane.core.postgresql"  # Django's, with a cheaper check of pooled connections
    if config["ENGINE"] == "controlplane.core.postgresql" and DB_POOL_MAX_SIZE > 0:
        # A pool per process and database: under ASGI each request may run on a new thread, and
        # persistent per-thread connections would pile up until the server refuses clients.
        config["CONN_MAX_AGE"] = 0
        config.setdefault("OPTIONS", {})["pool"] = {
            # none kept open when idle: a process that touched every region's store once (the
            # reaper) does not hold nine connections for ever
            "min_size": 0,
            "max_size": DB_POOL_MAX_SIZE,
            "max_idle": 60,
            "timeout": 10,
        }
    if config["ENGINE"] == "django.db.backends.sqlite3":
        Path(config["NAME"]).parent.mkdir(parents=True, exist_ok=True)
        config["CONN_MAX_AGE"] = 0
        config["OPTIONS"] = {"timeout": 20, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL;"}
    return config


def _regional_database_url(code: str, central_url: str | None) -> str:
    explicit = env.optional_string(f"REGION_{code.upper()}_DATABASE_URL")
    if explicit is not None:
        return explicit
    if central_url is not None and central_url.startswith(("postgres://", "postgresql://")):
        # One server, one database per region: <central name>_<code>.
        base, _, name = central_url.rpartition("/")
        name, _, query = name.partition("?")
        return f"{base}/{name}_{code}" + (f"?{query}" if query else "")
    return f"sqlite:///{DATA_DIR / 'db' / f'region_{code}.sqlite3'}"


_central_url = env.optional_string("DATABASE_URL")
DATABASES: dict[str, dict[str, Any]] = {
    "default": _database(_central_url or f"sqlite:///{DATA_DIR / 'db' / 'central.sqlite3'}"),
}
for _code in REGION_CODES:
    DATABASES[region_db_alias(_code)] = _database(_regional_database_url(_code, _central_url))
DATABASE_ROUTERS = ["controlplane.core.routers.ResidencyRouter"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


# --- Redis: central (broker, cache, quotas) and one logical store per region ---------------------

REDIS_URL = env.string("REDIS_URL", "redis://127.0.0.1:6379/0")


def _regional_redis_url(code: str, index: int) -> str:
    explicit = env.optional_string(f"REGION_{code.upper()}_REDIS_URL")
    if explicit is not None:
        return explicit
    base = REDIS_URL.split("?")[0].rstrip("/")
    head, _, last = base.rpartition("/")
    host_part = head if last.isdigit() else base
    return f"{host_part}/{index}"


REGION_REDIS_URLS: dict[str, str] = {
    code: _regional_redis_url(code, index) for index, code in enumerate(REGION_CODES, start=1)
}
REGION = env.optional_string("REGION")
RUN_REGIONS = env.strings("RUN_REGIONS", ["sin", "dxb", "fra"])
for _run_region in [*RUN_REGIONS, *([REGION] if REGION else [])]:
    if _run_region not in REGION_CODES:
        raise ConfigError(f"unknown region code {_run_region!r}; known: {', '.join(REGION_CODES)}")

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "cp",
        "TIMEOUT": 300,
    }
}

CELERY_BROKER_URL = env.string("CELERY_BROKER_URL", REDIS_URL)
CELERY_RESULT_BACKEND: str | None = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "central"
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
HOST_HEARTBEAT_INTERVAL_S = env.integer("HOST_HEARTBEAT_INTERVAL_S", 15, minimum=1)

# --- Inference requests (DESIGN section 4) --------------------------------------------------------
# A running request's database lease; the worker renews it every third of this, the reaper takes
# back requests whose lease ran out (a killed worker), long before the broker's visibility timeout.
REQUEST_LEASE_S = env.integer("REQUEST_LEASE_S", 15, minimum=3)
# A request not finished this long after admission fails and its hold is released.
REQUEST_DEADLINE_S = env.integer("REQUEST_DEADLINE_S", 600, minimum=10)
REQUEST_MAX_ATTEMPTS = env.integer("REQUEST_MAX_ATTEMPTS", 3, minimum=1)
# PostgreSQL: the writes a request makes before its settlement (regional content, admission's central
# write, a non-streamed claim) commit without waiting for the disk; the settlement's commit, which the
# answer waits for, does, and with it every earlier commit of the same server (docs/architecture.md,
# "Durability on the request path"). False: every commit waits for the disk.
INFERENCE_ASYNC_COMMIT = env.boolean("INFERENCE_ASYNC_COMMIT", True)
# Queued requests per region beyond which admission answers 503 region_busy instead of queueing forever.
REGION_QUEUE_CAP = env.integer("REGION_QUEUE_CAP", 256, minimum=1)
# Batch slots of one regional worker process: its Celery thread count and its engine batch size.
WORKER_MAX_BATCH = env.integer("WORKER_MAX_BATCH", 8, minimum=1)
WORKER_THREADS = env.integer("WORKER_THREADS", 2, minimum=1)
# The context a worker's engine serves (KV cache per batch slot); admission counts against
# min(this, the model's trained context).
INFERENCE_CONTEXT_TOKENS = env.integer("INFERENCE_CONTEXT_TOKENS", 2048, minimum=64)
# Threads per web process that run the synchronous ORM work of /v1 requests (admission); each holds
# one connection per database it touches.
WEB_DB_THREADS = env.integer("WEB_DB_THREADS", 8, minimum=1)
IDEMPOTENCY_TTL_S = env.integer("IDEMPOTENCY_TTL_S", 86400, minimum=60)
# Token streams in the regional Redis expire this long after their last event.
STREAM_TTL_S = env.integer("STREAM_TTL_S", 900, minimum=60)
REAPER_INTERVAL_S = env.integer("REAPER_INTERVAL_S", 5, minimum=1)
HOST_HEARTBEAT_STALE_S = env.integer("HOST_HEARTBEAT_STALE_S", 60, minimum=5)
# Where the invoicing entity is established: business customers with a valid tax id elsewhere are
# reverse-charged (billing.tax).
BILLING_SELLER_COUNTRY = env.string("BILLING_SELLER_COUNTRY", "AE")


# --- Authentication ----------------------------------------------------------------------------

AUTH_USER_MODEL = "tenants.User"
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_FAILURE_LIMIT = env.integer("LOGIN_FAILURE_LIMIT", 5, minimum=1)
LOGIN_FAILURE_WINDOW_S = env.integer("LOGIN_FAILURE_WINDOW_S", 900, minimum=1)
API_KEY_ROTATION_OVERLAP_S = env.integer("API_KEY_ROTATION_OVERLAP_S", 86400, minimum=0)
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_SECURE = env.boolean("SECURE_COOKIES", False)
CSRF_COOKIE_SECURE = env.boolean("SECURE_COOKIES", False)

EMAIL_BACKEND = env.string("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = env.string("DEFAULT_FROM_EMAIL", "no-reply@sovereign-cloud.invalid")
PASSWORD_RESET_TIMEOUT = env.integer("PASSWORD_RESET_TIMEOUT", 3600, minimum=60)

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
DATA_UPLOAD_MAX_MEMORY_SIZE = env.integer("MAX_BODY_BYTES", 1_048_576, minimum=1024)
MAX_BODY_BYTES = DATA_UPLOAD_MAX_MEMORY_SIZE


# --- REST API ----------------------------------------------------------------------------------

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "tenants.authentication.ApiKeyAuthentication",
        "tenants.authentication.CsrfSessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["controlplane.core.api.parsers.StrictJSONParser"],
    "DEFAULT_PAGINATION_CLASS": "controlplane.core.api.pagination.CreatedCursorPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "controlplane.core.api.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Sovereign inference cloud: control-plane API",
    "DESCRIPTION": "Organisations, members, API keys, residency policies, quotas, regions, catalog and fleet.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI's assets are served from our own static files, not a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "ENUM_NAME_OVERRIDES": {
        "RegionStatusEnum": "controlplane.fleet.models.Region.Status",
        "HostStatusEnum": "controlplane.fleet.models.Host.Status",
        "CatalogModelStatusEnum": "controlplane.fleet.models.CatalogModel.Status",
        "DeploymentStatusEnum": "controlplane.fleet.models.Deployment.Status",
        "OrganizationStatusEnum": "tenants.models.Organization.Status",
        "InvitationStatusEnum": "tenants.models.Invitation.Status",
        "InvoiceStatusEnum": "billing.models.Invoice.Status",
        "BillingCurrencyEnum": "tenants.models.BILLING_CURRENCIES",
        "RegionCodeEnum": "controlplane.core.regions.REGION_CODES",
    },
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "controlplane.core.api.schema.add_error_responses",
    ],
}


# --- Logging: structured JSON with the request id, never content ---------------------------------

LOG_LEVEL = env.string("LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "controlplane.core.logging.RequestIdFilter"}},
    "formatters": {"json": {"()": "controlplane.core.logging.JsonFormatter"}},
    "handlers": {
        "stderr": {"class": "logging.StreamHandler", "formatter": "json", "filters": ["request_id"]},
    },
    "root": {"handlers": ["stderr"], "level": LOG_LEVEL},
    "loggers": {
        "django.server": {"level": "WARNING"},
        "django.db.backends": {"level": "WARNING"},
        # Celery's line per task received and per task succeeded: on a regional queue, one line per
        # inference request, the first written on the request's path (about 0.1 ms here); the request
        # index and the web's access log say the same. Failures are still logged (ERROR).
        "celery.worker.strategy": {"level": "WARNING"},
        "celery.app.trace": {"level": "WARNING"},
    },
}
