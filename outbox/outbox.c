/*
 * outbox/outbox.c - catalog installation and read-path helpers of the outbox.
 * The read-path SQL itself lives in outbox.h next to its explanation.
 */
#include "outbox/outbox.h"

#include <stdlib.h>
#include <string.h>

int
sl_outbox_topic_glob_check(const char *glob, const char *path, sl_err_t *err)
{
    size_t len = strlen(glob);
    bool ok = len > 0 && len <= 200;
    for (size_t i = 0; ok && i < len; i++) {
        char c = glob[i];
        ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
             c == '.' || c == '_' || c == '-' || c == '*';
    }
    if (ok)
        return SL_OK;
    sl_err_set(err, SL_EUSAGE, "%s: invalid topic pattern \"%s\"", path, glob);
    return sl_err_hint(err, "topics are 1 to 200 characters from A-Z a-z 0-9 . _ - ; "
                            "'*' matches any run of characters");
}

/* Appends one element to a text[] literal being built in b. */
static int
append_elem(sl_buf_t *b, const char *s, bool like, sl_err_t *err)
{
    if (sl_buf_append_str(b, b->len > 1 ? ",\"" : "\"", err) != SL_OK)
        return SL_ENOMEM;
    for (const char *p = s; *p != '\0'; p++) {
        const char *piece;
        char one[2] = {*p, '\0'};
        if (like && *p == '*')
            piece = "%";
        else if (like && *p == '_')
            piece = "\\\\_"; /* LIKE escape, itself escaped for the array literal */
        else
            piece = one;
        if (sl_buf_append_str(b, piece, err) != SL_OK)
            return SL_ENOMEM;
    }
    return sl_buf_append_str(b, "\"", err);
}

int
sl_outbox_topic_filter(const char *const *topics, size_t n, char **exact, char **like,
                       sl_err_t *err)
{
    *exact = NULL;
    *like = NULL;
    if (n == 0)
        return SL_OK;
    sl_buf_t e = {0}, l = {0};
    int rc = sl_buf_append_str(&e, "{", err);
    if (rc == SL_OK)
        rc = sl_buf_append_str(&l, "{", err);
    for (size_t i = 0; rc == SL_OK && i < n; i++) {
        bool glob = strchr(topics[i], '*') != NULL;
        rc = append_elem(glob ? &l : &e, topics[i], glob, err);
    }
    if (rc == SL_OK)
        rc = sl_buf_append_str(&e, "}", err);
    if (rc == SL_OK)
        rc = sl_buf_append_str(&l, "}", err);
    if (rc != SL_OK) {
        sl_buf_free(&e);
        sl_buf_free(&l);
        return rc;
    }
    *exact = e.data;
    *like = l.data;
    return SL_OK;
}
