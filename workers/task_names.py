"""Task names, in one place; domain code enqueues by name, never by importing a task function."""

HOST_HEALTH_SWEEP = "workers.host_health_sweep"
REGION_PING = "workers.region_ping"
INFERENCE_RUN = "workers.inference_run"
REQUESTS_REAP = "workers.requests_reap"
INVOICES_CLOSE_DUE = "workers.invoices_close_due"
CREDIT_GRANTS_EXPIRE = "workers.credit_grants_expire"
BUDGET_ALERTS_MAIL = "workers.budget_alerts_mail"
