/*
 * core/json.c - small checks and scanners for bytes that come from outside
 * PostgreSQL (Kafka records read by the reverse relay).
 *
 *   sl_utf8_valid     strict UTF-8 (no overlongs, no surrogates, nothing
 *                     above U+10FFFF) without NUL bytes: exactly what a
 *                     PostgreSQL text or jsonb value can hold.
 *   sl_json_member    finds the value of one member of a top-level JSON
 *                     object and returns its byte span, so that value can be
 *                     passed on as the very text it was: re-printing it from
 *                     a cJSON tree would round integers above 2^53.
 *   sl_buf_append_base64   RFC 4648 base64 with padding.
 *
 * sl_json_member expects JSON that a parser already accepted (the reverse
 * relay checks every record with cJSON first); on anything malformed it
 * returns -1 rather than guessing.
 */
#include "core/core.h"

#include <string.h>

bool
sl_utf8_valid(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        unsigned char c = p[i];
        if (c == 0)
            return false;
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        unsigned int cp;
        if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
            cp = c & 0x1Fu;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            cp = c & 0x0Fu;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            cp = c & 0x07u;
        } else {
            return false; /* continuation byte, overlong lead (C0, C1) or F5..FF */
        }
        if (n - i < len)
            return false;
        for (size_t k = 1; k < len; k++) {
            if ((p[i + k] & 0xC0u) != 0x80u)
                return false;
            cp = (cp << 6) | (p[i + k] & 0x3Fu);
        }
        if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += len;
    }
    return true;
}

static size_t
json_ws(const char *s, size_t n, size_t i)
{
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
        i++;
    return i;
}

/* Index just past the string that starts at s[i] == '"', or n+1 if unterminated. */
static size_t
json_skip_string(const char *s, size_t n, size_t i)
{
    for (i++; i < n; i++) {
        if (s[i] == '\\')
            i++;
        else if (s[i] == '"')
            return i + 1;
    }
    return n + 1;
}

/* Index just past the value that starts at s[i], or n+1 when malformed. */
static size_t
json_skip_value(const char *s, size_t n, size_t i)
{
    if (i >= n)
        return n + 1;
    if (s[i] == '"')
        return json_skip_string(s, n, i);
    if (s[i] == '{' || s[i] == '[') {
        /* Brackets nest; strings may contain any of them. */
        size_t depth = 0;
        for (; i < n; i++) {
            char c = s[i];
            if (c == '"') {
                i = json_skip_string(s, n, i) - 1;
                if (i >= n)
                    return n + 1;
            } else if (c == '{' || c == '[') {
                depth++;
            } else if (c == '}' || c == ']') {
                if (--depth == 0)
                    return i + 1;
            }
        }
        return n + 1;
    }
    /* A number or a literal: up to the next delimiter. */
    size_t start = i;
    while (i < n && s[i] != ',' && s[i] != '}' && s[i] != ']' && s[i] != ' ' && s[i] != '\t' &&
           s[i] != '\n' && s[i] != '\r')
        i++;
    return i > start ? i : n + 1;
}

int
sl_json_member(const char *s, size_t n, const char *name, size_t *off, size_t *len)
{
    size_t nlen = strlen(name);
    size_t i = json_ws(s, n, 0);
    if (i >= n || s[i] != '{')
        return -1;
    i = json_ws(s, n, i + 1);
    if (i < n && s[i] == '}')
        return 0;
    while (i < n) {
        if (s[i] != '"')
            return -1;
        size_t kend = json_skip_string(s, n, i);
        if (kend > n)
            return -1;
        /* Keys are compared as written: an escaped spelling never matches. */
        bool match = kend - i - 2 == nlen && memcmp(s + i + 1, name, nlen) == 0;
        i = json_ws(s, n, kend);
        if (i >= n || s[i] != ':')
            return -1;
        i = json_ws(s, n, i + 1);
        size_t vend = json_skip_value(s, n, i);
        if (vend > n)
            return -1;
        if (match) {
            *off = i;
            *len = vend - i;
            return 1;
        }
        i = json_ws(s, n, vend);
        if (i < n && s[i] == '}')
            return 0;
        if (i >= n || s[i] != ',')
            return -1;
        i = json_ws(s, n, i + 1);
    }
    return -1;
}

int
sl_buf_append_base64(sl_buf_t *b, const void *data, size_t n, sl_err_t *err)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    if (n > (SIZE_MAX / 4) * 3 - 3)
        return sl_err_nomem(err, "buffer (size overflow)");
    int rc = sl_buf_reserve(b, (n + 2) / 3 * 4, err);
    if (rc != SL_OK)
        return rc;
    const unsigned char *p = data;
    char *o = b->data + b->len;
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        unsigned int v = (unsigned int)p[i] << 16 | (unsigned int)p[i + 1] << 8 | p[i + 2];
        *o++ = tbl[v >> 18];
        *o++ = tbl[(v >> 12) & 63];
        *o++ = tbl[(v >> 6) & 63];
        *o++ = tbl[v & 63];
    }
    if (i < n) {
        unsigned int v = (unsigned int)p[i] << 16 | (i + 1 < n ? (unsigned int)p[i + 1] << 8 : 0);
        *o++ = tbl[v >> 18];
        *o++ = tbl[(v >> 12) & 63];
        *o++ = i + 1 < n ? tbl[(v >> 6) & 63] : '=';
        *o++ = '=';
    }
    *o = '\0';
    b->len = (size_t)(o - b->data);
    return SL_OK;
}
