/*
 * core/log.c - structured logging.
 *
 * One event, one line on stderr, key=value pairs:
 *   ts=2026-11-21T08:30:00.123Z level=warn event=pg.reconnect pipeline="orders" delay_ms=400
 * The event name is a stable dotted identifier meant for grepping and alerts;
 * everything else is a key. Free text goes through sl_log_quote() so a line
 * always parses. Lines are written with a single write(2), so concurrent
 * writers (librdkafka's threads never log through here, but child processes
 * may share stderr) do not interleave within a line.
 *
 * Secrets never reach this file: callers log names and redacted displays only.
 */
#include "core/core.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

/* A log line longer than this is truncated; large enough for any error with hint. */
#define SL_LOG_LINE_MAX 4096

static sl_log_level_t sl_log_min = SL_LOG_INFO;

static const char *const sl_log_names[] = {
    [SL_LOG_DEBUG] = "debug",
    [SL_LOG_INFO] = "info",
    [SL_LOG_WARN] = "warn",
    [SL_LOG_ERROR] = "error",
};

void
sl_log_set_level(sl_log_level_t level)
{
    sl_log_min = level;
}

bool
sl_log_is_enabled(sl_log_level_t level)
{
    return level >= sl_log_min;
}

int
sl_log_level_parse(const char *name, sl_log_level_t *out, sl_err_t *err)
{
    for (size_t i = 0; i < sizeof sl_log_names / sizeof sl_log_names[0]; i++) {
        if (strcasecmp(name, sl_log_names[i]) == 0) {
            *out = (sl_log_level_t)i;
            return SL_OK;
        }
    }
    sl_err_set(err, SL_EUSAGE, "unknown log level \"%s\"", name);
    return sl_err_hint(err, "use one of debug, info, warn, error");
}

const char *
sl_log_quote(char *buf, size_t n, const char *s)
{
    size_t o = 0;
    if (n < 8) {
        if (n > 0)
            buf[0] = '\0';
        return buf;
    }
    if (s == NULL)
        s = "";
    buf[o++] = '"';
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
        char esc[8];
        size_t len;
        switch (*p) {
        case '"':
            memcpy(esc, "\\\"", 2);
            len = 2;
            break;
        case '\\':
            memcpy(esc, "\\\\", 2);
            len = 2;
            break;
        case '\n':
            memcpy(esc, "\\n", 2);
            len = 2;
            break;
        case '\r':
            memcpy(esc, "\\r", 2);
            len = 2;
            break;
        case '\t':
            memcpy(esc, "\\t", 2);
            len = 2;
            break;
        default:
            if (*p < 0x20) {
                len = (size_t)snprintf(esc, sizeof esc, "\\x%02x", *p);
            } else {
                esc[0] = (char)*p;
                len = 1;
            }
        }
        /* Keep room for the closing quote, "..." and the NUL. */
        if (o + len + 5 > n) {
            memcpy(buf + o, "...", 3);
            o += 3;
            break;
        }
        memcpy(buf + o, esc, len);
        o += len;
    }
    buf[o++] = '"';
    buf[o] = '\0';
    return buf;
}

void
sl_log(sl_log_level_t level, const char *event, const char *fmt, ...)
{
    if (level < sl_log_min)
        return;
    char line[SL_LOG_LINE_MAX];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s event=%s",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000000, sl_log_names[level], event);
    if (n < 0)
        return;
    size_t off = (size_t)n < sizeof line ? (size_t)n : sizeof line - 1;
    if (fmt != NULL && fmt[0] != '\0' && off + 1 < sizeof line) {
        line[off++] = ' ';
        va_list ap;
        va_start(ap, fmt);
        int m = vsnprintf(line + off, sizeof line - off, fmt, ap);
        va_end(ap);
        if (m > 0)
            off += (size_t)m < sizeof line - off ? (size_t)m : sizeof line - off - 1;
    }
    if (off >= sizeof line - 1)
        off = sizeof line - 2;
    line[off++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, off);
    (void)w; /* Nowhere left to report a failed log write. */
}
