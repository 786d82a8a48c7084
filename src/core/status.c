/* status.c — error messages kept in a caller-owned sd3_err, the log callback, the release assert. */
#include <stdarg.h>
#include <string.h>
#include "core/core.h"

const char *sd3_status_str(sd3_status s) {
    switch (s) {
    case SD3_OK: return "ok";
    case SD3_ERR_INVALID_ARG: return "invalid argument";
    case SD3_ERR_IO: return "i/o error";
    case SD3_ERR_FORMAT: return "malformed file";
    case SD3_ERR_NOT_FOUND: return "not found";
    case SD3_ERR_SHAPE: return "shape mismatch";
    case SD3_ERR_NOMEM: return "out of memory";
    case SD3_ERR_UNSUPPORTED: return "unsupported";
    case SD3_ERR_INTERNAL: return "internal error";
    }
    return "unknown status";
}

/* Record a status and its message; returns the status so callers can `return sd3_errf(...)`. */
sd3_status sd3_errf(sd3_err *e, sd3_status s, const char *fmt, ...) {
    if (!e) return s;
    e->status = s;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    return s;
}

/* Prepend context ("file.safetensors: ") to the message already recorded. */
void sd3_err_prefix(sd3_err *e, const char *fmt, ...) {
    if (!e) return;
    char pre[512], old[sizeof e->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pre, sizeof pre, fmt, ap);
    va_end(ap);
    memcpy(old, e->msg, sizeof old);
    size_t lp = strlen(pre), lo = strnlen(old, sizeof old - 1);
    if (lp > sizeof e->msg - 3) lp = sizeof e->msg - 3;
    memcpy(e->msg, pre, lp);
    memcpy(e->msg + lp, ": ", 2);
    size_t room = sizeof e->msg - lp - 3;
    if (lo > room) lo = room;
    memcpy(e->msg + lp + 2, old, lo);
    e->msg[lp + 2 + lo] = 0;
}

void sd3_err_clear(sd3_err *e) {
    if (!e) return;
    e->status = SD3_OK;
    e->msg[0] = 0;
}

void sd3_assert_fail(const char *cond, const char *file, int line) {
    fprintf(stderr, "sd3c: internal error: assertion `%s` failed at %s:%d\n", cond, file, line);
    fflush(stderr);
    abort();
}

/* ---- logging ---- */

static void log_stderr(sd3_log_level level, const char *msg, void *user) {
    (void)user;
    static const char *names[] = {"debug", "info", "warning", "error"};
    fprintf(stderr, "sd3c %s: %s\n", names[level], msg);
}

static sd3_log_fn g_log_fn = log_stderr;
static void *g_log_user = NULL;
static sd3_log_level g_log_min = SD3_LOG_WARN;

void sd3_set_log(sd3_log_fn fn, void *user, sd3_log_level min_level) {
    g_log_fn = fn ? fn : log_stderr;
    g_log_user = user;
    g_log_min = min_level;
}

void sd3_log(sd3_log_level level, const char *fmt, ...) {
    if (level < g_log_min || !g_log_fn) return;
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    g_log_fn(level, buf, g_log_user);
}
