/*
 * core/template.c - name templates and Kafka topic names.
 *
 * A name template maps an outbox message to a name, most often the Kafka
 * topic: "app.{topic}", "cdc_{topic}_{op}", or a constant "events". The
 * syntax is deliberately tiny:
 *
 *   text       copied as-is
 *   {topic}    the message's outbox topic
 *   {op}       the message's op ("event", "insert", ...)
 *   {{ and }}  a literal '{' and '}'
 *
 * Any other {name}, an unclosed '{' or a lone '}' is a configuration error
 * (SL_EUSAGE) that names the config path, the 1-based byte position in the
 * template, and lists the placeholders in the hint. Doubled braces are read
 * left to right, as in Python's str.format(): "{{{topic}}}" renders "{orders}".
 *
 * Compiling splits the template into parts: literal runs (with braces
 * already unescaped) and placeholders. It happens once, at start-up, in one
 * allocation; rendering then walks the parts and copies into the caller's
 * buffer, so it never allocates and never re-parses on the hot path.
 *
 * Compilation and rendering never check that the result is a valid Kafka
 * topic: a constant template can be checked once at start-up with
 * sl_kafka_topic_check(), a template with placeholders only per message.
 */
#include "core/core.h"

#include <assert.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * Kafka's own limit (Topic.MAX_NAME_LENGTH): a partition's log directory is
 * "<topic>-<partition>" and must fit a 255-byte file name.
 */
#define SL_KAFKA_TOPIC_MAX 249

/* Enough of a template or name to recognise it in an error message. */
#define SL_TEMPLATE_QUOTE_MAX 96

typedef enum sl_template_kind {
    SL_TEMPLATE_LITERAL, /* text[off .. off+len) */
    SL_TEMPLATE_TOPIC,   /* m->topic */
    SL_TEMPLATE_OP,      /* m->op */
} sl_template_kind_t;

/* The placeholders, in the order the hint lists them. */
static const struct {
    const char *name;
    sl_template_kind_t kind;
} sl_template_placeholders[] = {
    {"topic", SL_TEMPLATE_TOPIC},
    {"op", SL_TEMPLATE_OP},
};

#define SL_TEMPLATE_HINT "placeholders are {topic} and {op}; write {{ and }} for literal braces"

typedef struct sl_template_part {
    sl_template_kind_t kind;
    size_t off; /* SL_TEMPLATE_LITERAL: first byte in sl_template.text */
    size_t len; /* SL_TEMPLATE_LITERAL: number of bytes */
} sl_template_part_t;

struct sl_template {
    bool constant;              /* no placeholder: every message renders the same */
    size_t nparts;              /* entries in parts */
    char *text;                 /* literal bytes, braces unescaped; in the same allocation */
    sl_template_part_t parts[]; /* in rendering order */
};

/* Fills err for a template error at byte `pos` (0-based) of tpl. */
static int
template_fail(const char *tpl, const char *path, size_t pos, const char *what, sl_err_t *err)
{
    char quoted[SL_TEMPLATE_QUOTE_MAX];
    sl_err_set(err, SL_EUSAGE, "%s: %s at position %zu of template %s",
               path != NULL ? path : "template", what, pos + 1,
               sl_log_quote(quoted, sizeof quoted, tpl));
    return sl_err_hint(err, SL_TEMPLATE_HINT);
}

/*
 * Parses tpl. With t NULL, only validates and counts: *nparts and *nlit
 * receive the number of parts and of literal bytes. With t allocated for
 * those counts, fills t->parts and t->text as well.
 */
static int
template_scan(const char *tpl, const char *path, sl_template_t *t, size_t *nparts, size_t *nlit,
              sl_err_t *err)
{
    size_t np = 0;
    size_t nl = 0;
    bool in_literal = false; /* the last part is a literal still being extended */

    for (size_t i = 0; tpl[i] != '\0';) {
        char c = tpl[i];
        size_t step = 1;

        if ((c == '{' || c == '}') && tpl[i + 1] == c) {
            step = 2; /* a doubled brace: one literal brace */
        } else if (c == '}') {
            return template_fail(tpl, path, i, "unmatched '}'", err);
        } else if (c == '{') {
            size_t j = i + 1;
            while (tpl[j] != '\0' && tpl[j] != '}' && tpl[j] != '{')
                j++;
            if (tpl[j] != '}')
                return template_fail(tpl, path, i, "unclosed '{'", err);

            const char *name = tpl + i + 1;
            size_t len = j - i - 1;
            size_t k = 0;
            size_t nplaceholders =
                sizeof sl_template_placeholders / sizeof sl_template_placeholders[0];
            while (k < nplaceholders && !(strlen(sl_template_placeholders[k].name) == len &&
                                          memcmp(sl_template_placeholders[k].name, name, len) == 0))
                k++;
            if (k == nplaceholders) {
                char what[SL_TEMPLATE_QUOTE_MAX];
                char quoted[SL_TEMPLATE_QUOTE_MAX - 32];
                char placeholder[SL_TEMPLATE_QUOTE_MAX];
                snprintf(placeholder, sizeof placeholder, "{%.*s}",
                         (int)(len < sizeof placeholder ? len : sizeof placeholder), name);
                snprintf(what, sizeof what, "unknown placeholder %s",
                         sl_log_quote(quoted, sizeof quoted, placeholder));
                return template_fail(tpl, path, i, what, err);
            }
            if (t != NULL) {
                t->parts[np].kind = sl_template_placeholders[k].kind;
                t->parts[np].off = 0;
                t->parts[np].len = 0;
            }
            np++;
            in_literal = false;
            i = j + 1;
            continue;
        }

        /* A literal byte (or the brace of a doubled pair). */
        if (!in_literal) {
            if (t != NULL) {
                t->parts[np].kind = SL_TEMPLATE_LITERAL;
                t->parts[np].off = nl;
                t->parts[np].len = 0;
            }
            np++;
            in_literal = true;
        }
        if (t != NULL) {
            t->text[nl] = c;
            t->parts[np - 1].len++;
        }
        nl++;
        i += step;
    }
    *nparts = np;
    *nlit = nl;
    return SL_OK;
}

int
sl_template_new(const char *tpl, const char *path, sl_template_t **out, sl_err_t *err)
{
    assert(out != NULL);
    *out = NULL;
    if (tpl == NULL || tpl[0] == '\0') {
        sl_err_set(err, SL_EUSAGE, "%s: template is empty", path != NULL ? path : "template");
        return sl_err_hint(err,
                           "give a name such as \"events\" or \"app.{topic}\"; " SL_TEMPLATE_HINT);
    }

    size_t nparts;
    size_t nlit;
    int rc = template_scan(tpl, path, NULL, &nparts, &nlit, err);
    if (rc != SL_OK)
        return rc;

    /* nparts and nlit are bounded by strlen(tpl), so the sum cannot overflow. */
    size_t size = sizeof(sl_template_t) + nparts * sizeof(sl_template_part_t) + nlit + 1;
    sl_template_t *t = malloc(size);
    if (t == NULL)
        return sl_err_nomem(err, "name template");
    t->nparts = nparts;
    t->text = (char *)(t->parts + nparts);
    t->text[nlit] = '\0';

    size_t np2;
    size_t nl2;
    rc = template_scan(tpl, path, t, &np2, &nl2, err);
    assert(rc == SL_OK && np2 == nparts && nl2 == nlit);
    (void)rc;

    t->constant = true;
    for (size_t i = 0; i < nparts; i++)
        if (t->parts[i].kind != SL_TEMPLATE_LITERAL)
            t->constant = false;
    *out = t;
    return SL_OK;
}

void
sl_template_free(sl_template_t *t)
{
    free(t);
}

bool
sl_template_is_constant(const sl_template_t *t)
{
    assert(t != NULL);
    return t->constant;
}

/*
 * m may be NULL when the template is constant. On -1, buf holds an empty
 * string (when n > 0) rather than a truncated name that could be mistaken
 * for a real one.
 */
int
sl_template_render(const sl_template_t *t, const sl_msg_t *m, char *buf, size_t n)
{
    assert(t != NULL);
    assert(buf != NULL || n == 0);
    if (n == 0)
        return -1;

    size_t o = 0; /* bytes written; o < n holds throughout, leaving room for the NUL */
    for (size_t i = 0; i < t->nparts; i++) {
        const sl_template_part_t *part = &t->parts[i];
        const char *s = NULL;
        size_t len = 0;
        switch (part->kind) {
        case SL_TEMPLATE_LITERAL:
            s = t->text + part->off;
            len = part->len;
            break;
        case SL_TEMPLATE_TOPIC:
            assert(m != NULL && m->topic != NULL);
            s = m->topic;
            len = strlen(s);
            break;
        case SL_TEMPLATE_OP:
            assert(m != NULL && m->op != NULL);
            s = m->op;
            len = strlen(s);
            break;
        }
        if (len >= n - o || o + len > INT_MAX) {
            buf[0] = '\0';
            return -1;
        }
        memcpy(buf + o, s, len);
        o += len;
    }
    buf[o] = '\0';
    return (int)o;
}

/* True for the bytes Kafka allows in a topic name: [A-Za-z0-9._-]. */
static bool
is_topic_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
}

/*
 * Returns SL_OK or SL_EUSAGE. The code suits the start-up check of a
 * constant topic; a caller checking a topic rendered for one message should
 * treat the failure as a bad message, not as a configuration error.
 */
int
sl_kafka_topic_check(const char *name, const char *what, sl_err_t *err)
{
    const char *hint = "Kafka topic names are 1 to 249 characters from "
                       "A-Z a-z 0-9 '.' '_' '-', and not \".\" or \"..\"";
    if (what == NULL)
        what = "topic";
    if (name == NULL || name[0] == '\0') {
        sl_err_set(err, SL_EUSAGE, "%s: topic name is empty", what);
        return sl_err_hint(err, "%s", hint);
    }

    char quoted[SL_TEMPLATE_QUOTE_MAX];
    size_t len = strlen(name);
    if (len > SL_KAFKA_TOPIC_MAX) {
        sl_err_set(err, SL_EUSAGE, "%s: topic name %s is %zu characters long, the maximum is %d",
                   what, sl_log_quote(quoted, sizeof quoted, name), len, SL_KAFKA_TOPIC_MAX);
        return sl_err_hint(err, "%s", hint);
    }
    if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0) {
        sl_err_set(err, SL_EUSAGE, "%s: topic name %s is reserved", what,
                   sl_log_quote(quoted, sizeof quoted, name));
        return sl_err_hint(err, "%s", hint);
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)name[i];
        if (is_topic_char(c))
            continue;
        char shown[16];
        if (c >= 0x20 && c < 0x7f)
            snprintf(shown, sizeof shown, "'%c'", c);
        else
            snprintf(shown, sizeof shown, "byte 0x%02x", c);
        sl_err_set(err, SL_EUSAGE, "%s: topic name %s has invalid character %s at position %zu",
                   what, sl_log_quote(quoted, sizeof quoted, name), shown, i + 1);
        return sl_err_hint(err, "%s", hint);
    }
    return SL_OK;
}
