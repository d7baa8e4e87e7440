/* status.c: status messages, the per-thread error detail and the log callback. */
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>

/* ---------------------------------------------------------------------------------------
 * Status messages and error details
 * ------------------------------------------------------------------------------------- */

static _Thread_local char last_error[512];

const char *sov_status_message(sov_status status) {
    switch (status) {
    case SOV_OK: return "ok";
    case SOV_ERR_IO: return "cannot read the file";
    case SOV_ERR_FORMAT: return "malformed GGUF file";
    case SOV_ERR_UNSUPPORTED: return "unsupported model or tensor type";
    case SOV_ERR_NOMEM: return "out of memory";
    case SOV_ERR_INVALID_ARGUMENT: return "invalid argument";
    case SOV_ERR_CONTEXT_FULL: return "context length exceeded";
    case SOV_ERR_NUMERIC: return "non-finite numbers";
    case SOV_ERR_NOT_FOUND: return "not found";
    }
    return "unknown status";
}

const char *sov_last_error(void) { return last_error; }

sov_status sov_fail(sov_status status, const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, args);
    va_end(args);
    sov_log(SOV_LOG_DEBUG, "%s: %s", sov_status_message(status), last_error);
    return status;
}

/* ---------------------------------------------------------------------------------------
 * Logging
 * ------------------------------------------------------------------------------------- */

static sov_log_fn log_callback;
static void *log_user_data;

void sov_log_set_callback(sov_log_fn callback, void *user_data) {
    log_callback = callback;
    log_user_data = user_data;
}

void sov_log(sov_log_level level, const char *fmt, ...) {
    if (!log_callback) return;
    char message[768];
    va_list args;
    va_start(args, fmt);
    vsnprintf(message, sizeof message, fmt, args);
    va_end(args);
    log_callback(level, message, log_user_data);
}
