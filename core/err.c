/*
 * core/err.c - the error object.
 *
 * sl_err_t is filled in place on the caller's stack: no allocation, so it
 * works even when the failure being reported is an allocation failure.
 * Context is added on the way up with sl_err_prefix(), so the message that
 * reaches the user reads outermost first:
 *   pipeline "orders": sink kafka: message 42 is too large (...)
 */
#include "core/core.h"

#include <stdio.h>
#include <string.h>

void
sl_err_clear(sl_err_t *err)
{
    if (err == NULL)
        return;
    err->code = SL_OK;
    err->native = 0;
    err->sqlstate[0] = '\0';
    err->msg[0] = '\0';
    err->hint[0] = '\0';
}

int
sl_err_set(sl_err_t *err, int code, const char *fmt, ...)
{
    if (err == NULL)
        return code;
    err->code = code;
    err->native = 0;
    err->sqlstate[0] = '\0';
    err->hint[0] = '\0';
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    return code;
}

int
sl_err_hint(sl_err_t *err, const char *fmt, ...)
{
    if (err == NULL)
        return SL_ERR;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->hint, sizeof err->hint, fmt, ap);
    va_end(ap);
    return err->code;
}

int
sl_err_prefix(sl_err_t *err, const char *fmt, ...)
{
    if (err == NULL)
        return SL_ERR;
    char prefix[SL_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    if (n < 0)
        return err->code;
    /* Shift the old message right, then copy the prefix in front (truncating). */
    size_t plen = (size_t)n < sizeof err->msg - 1 ? (size_t)n : sizeof err->msg - 1;
    size_t olen = strnlen(err->msg, sizeof err->msg - 1);
    if (plen + olen > sizeof err->msg - 1)
        olen = sizeof err->msg - 1 - plen;
    memmove(err->msg + plen, err->msg, olen);
    memcpy(err->msg, prefix, plen);
    err->msg[plen + olen] = '\0';
    return err->code;
}

int
sl_err_nomem(sl_err_t *err, const char *what)
{
    return sl_err_set(err, SL_ENOMEM, "out of memory allocating %s", what);
}
