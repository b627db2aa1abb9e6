/*
 * core/buf.c - the growable byte buffer.
 *
 * An sl_buf_t is the one place where sluice's hot paths are allowed to grow
 * memory: the relay keeps one buffer per pipeline, resets it between
 * messages and appends each envelope into it, so once the buffer has grown
 * to the largest message seen, encoding allocates nothing at all (STYLE.md
 * rule 7).
 *
 * Design notes:
 *   - A zeroed sl_buf_t is a valid empty buffer (data NULL, len 0, cap 0);
 *     no _init is needed. After any successful append, data is non-NULL and
 *     data[len] is '\0', so the contents can be handed to C string APIs.
 *   - Capacity doubles (starting at SL_BUF_MIN_CAP), so appending N bytes one
 *     at a time costs O(N) copies in total.
 *   - Failure is atomic: when growing fails, the buffer is unchanged and err
 *     says so. Sizes are checked for overflow before any arithmetic.
 *   - sl_buf_append_json_str() writes a JSON string literal per RFC 8259,
 *     section 7: '"' and '\\' escaped, control characters (U+0000..U+001F)
 *     as the short escapes \b \f \n \r \t or as \u00XX. Bytes >= 0x80 pass
 *     through unchanged: input comes from PostgreSQL, whose text is valid
 *     UTF-8 in a UTF-8 database, and re-validating it here would cost every
 *     message for a case the source already excludes.
 */
#include "core/core.h"

#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/*
 * The first allocation. Small enough not to matter for idle pipelines, large
 * enough that a typical envelope (a few hundred bytes) needs at most a couple
 * of doublings before the buffer settles.
 */
#define SL_BUF_MIN_CAP 256

int
sl_buf_reserve(sl_buf_t *b, size_t extra, sl_err_t *err)
{
    assert(b != NULL);
    /* One byte more than asked for, for the terminating NUL. */
    if (extra > SIZE_MAX - b->len - 1)
        return sl_err_nomem(err, "buffer (size overflow)");
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return SL_OK;

    size_t cap = b->cap < SL_BUF_MIN_CAP ? SL_BUF_MIN_CAP : b->cap;
    while (cap < need) {
        if (cap > SIZE_MAX / 2) {
            cap = need;
            break;
        }
        cap *= 2;
    }
    char *data = realloc(b->data, cap);
    if (data == NULL)
        return sl_err_nomem(err, "buffer");
    b->data = data;
    b->cap = cap;
    /* A buffer that had never been allocated becomes a valid empty string. */
    b->data[b->len] = '\0';
    return SL_OK;
}

int
sl_buf_append(sl_buf_t *b, const void *data, size_t n, sl_err_t *err)
{
    assert(b != NULL);
    assert(data != NULL || n == 0);
    int rc = sl_buf_reserve(b, n, err);
    if (rc != SL_OK)
        return rc;
    if (n > 0)
        memcpy(b->data + b->len, data, n);
    b->len += n;
    b->data[b->len] = '\0';
    return SL_OK;
}

int
sl_buf_append_str(sl_buf_t *b, const char *s, sl_err_t *err)
{
    assert(s != NULL);
    return sl_buf_append(b, s, strlen(s), err);
}

/*
 * The escape for each byte below 0x20, or 0 when it is written as \u00XX.
 * RFC 8259 gives short forms only for these five.
 */
static const char sl_buf_json_short[0x20] = {
    ['\b'] = 'b', ['\f'] = 'f', ['\n'] = 'n', ['\r'] = 'r', ['\t'] = 't',
};

int
sl_buf_append_json_str(sl_buf_t *b, const char *s, size_t n, sl_err_t *err)
{
    assert(b != NULL);
    assert(s != NULL || n == 0);

    /*
     * Measure first, so that the buffer grows at most once and a failed
     * growth leaves it untouched. The worst case is six output bytes per
     * input byte (\u00XX), which bounds the sum below.
     */
    if (n > (SIZE_MAX - 2) / 6)
        return sl_err_nomem(err, "buffer (size overflow)");
    size_t out = 2;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            out += 2;
        else if (c < 0x20)
            out += sl_buf_json_short[c] != 0 ? 2 : 6;
        else
            out += 1;
    }
    int rc = sl_buf_reserve(b, out, err);
    if (rc != SL_OK)
        return rc;

    static const char hex[] = "0123456789abcdef";
    char *p = b->data + b->len;
    *p++ = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            *p++ = '\\';
            *p++ = (char)c;
        } else if (c < 0x20) {
            *p++ = '\\';
            if (sl_buf_json_short[c] != 0) {
                *p++ = sl_buf_json_short[c];
            } else {
                *p++ = 'u';
                *p++ = '0';
                *p++ = '0';
                *p++ = hex[c >> 4];
                *p++ = hex[c & 0xf];
            }
        } else {
            *p++ = (char)c;
        }
    }
    *p++ = '"';
    assert((size_t)(p - (b->data + b->len)) == out);
    b->len += out;
    b->data[b->len] = '\0';
    return SL_OK;
}

void
sl_buf_reset(sl_buf_t *b)
{
    assert(b != NULL);
    b->len = 0;
    if (b->data != NULL)
        b->data[0] = '\0';
}

void
sl_buf_free(sl_buf_t *b)
{
    if (b == NULL)
        return;
    free(b->data);
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}
