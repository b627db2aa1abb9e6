/*
 * core/config.c - the JSON configuration loader and the table-driven validator.
 *
 * A configuration goes through three steps, each of which rejects bad input
 * with an error that names where the problem is (DESIGN.md, "Relay": a
 * missing variable is a start-up error naming it; secrets are never printed):
 *
 *   text ──blank comments──▶ JSON text ──cJSON──▶ tree ──interpolate──▶ root
 *                                                 └──copy, redact─────▶ display
 *
 *   sl_cfg_doc_parse()     comments, syntax, then ${...} in every string value
 *   sl_cfg_object_parse()  one JSON object into one C struct, driven by a
 *                          table of sl_cfg_key_t (name, type, default, range,
 *                          choices, secret flag)
 *
 * Design notes:
 *   - Comments. "//" to end of line and block comments are overwritten with
 *     spaces (newlines kept) in a private copy, instead of being removed
 *     as cJSON_Minify() does, so that every byte keeps its offset and a cJSON
 *     error position maps back to the line and column the user sees in the
 *     editor. The scanner tracks string literals (with their backslash
 *     escapes), so "http://x" inside a string survives, and so does a slash-star.
 *   - Syntax errors read "config.json:12:5: invalid JSON near \"...\"". The
 *     position comes from cJSON's parse end. cJSON reports a trailing comma
 *     in an object one character past the closing brace, so a "," followed
 *     by "}" or "]" just before the reported position is pointed at instead,
 *     with a hint. Columns count UTF-8 characters, not bytes. cJSON returns
 *     NULL both for bad syntax and for a failed allocation and does not say
 *     which; a failed allocation therefore shows up as a syntax error, the
 *     one place here where SL_ENOMEM cannot be told apart.
 *   - Interpolation applies to string values only, never to keys, and is not
 *     recursive: the result of a substitution is not scanned again, so a
 *     secret containing "${" or "$$" is taken literally. A '$' that is not
 *     followed by '{' or '$' is kept as it is ("price in $"). A reference
 *     ends at the first '}', so a default cannot contain '}'; a ${FILE:..}
 *     path is used as written (relative paths resolve against the working
 *     directory).
 *   - Redaction. doc->display is a second tree, duplicated before
 *     interpolation; in every string where something was substituted, each
 *     ${...} is replaced by "[redacted]" and the literal parts stay, so
 *     "postgresql://app:${ENV:PW}@h/db" displays as
 *     "postgresql://app:[redacted]@h/db". Error messages never echo a string
 *     value from the configuration, except the value of a non-secret key
 *     that is not among its choices (it is an enum word, not data).
 *     Environment variable names and ${FILE:..} paths are echoed: they are
 *     references, not values.
 *   - Resolved values may be secrets. Temporary buffers holding them and the
 *     strings of the resolved tree are wiped with explicit_bzero() before they
 *     are freed. This is best effort (realloc and libc buffers may leave
 *     copies); it only shortens the time a password sits in freed memory.
 *   - sl_cfg_object_parse() checks the whole object for unknown and duplicate
 *     keys before it fills anything, then fills fields in table order. On
 *     failure every field described by the table is released and zeroed, so
 *     the caller has nothing to clean up (failure is atomic, STYLE.md rule 5).
 *     Fields are overwritten without being freed first: pass a zeroed or
 *     released struct.
 *   - Recursion over the tree is bounded by cJSON's nesting limit
 *     (CJSON_NESTING_LIMIT, 1000 levels).
 *
 * Everything here runs on the calling thread at start-up or reload; nothing
 * is thread-safe (getenv() and cJSON's global error pointer are involved).
 */
#include "core/core.h"

#include <assert.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * Largest file ${FILE:..} reads. Secrets, tokens and certificates are a few
 * kilobytes; a file much larger than this is almost certainly the wrong path
 * (a log, a binary), and its contents would be held twice in memory.
 */
#define SL_CFG_FILE_MAX (1024 * 1024)

/*
 * Largest configuration file sl_cfg_doc_load() reads. Real configurations are
 * a few kilobytes; the cap turns a wrong path (/dev/zero, a dump) into a clear
 * error instead of an out-of-memory.
 */
#define SL_CFG_TEXT_MAX (16 * 1024 * 1024)

/*
 * Longest JSON path built for error messages. Paths only ever end up in an
 * sl_err_t message (SL_ERR_MSG_MAX bytes), so a longer path is truncated
 * rather than allocated.
 */
#define SL_CFG_PATH_MAX 512

/* Longest quoted excerpt of configuration text or value in an error message. */
#define SL_CFG_QUOTE_MAX 48

/* What a substituted part looks like in doc->display. */
#define SL_CFG_REDACTED "[redacted]"

/* Key names longer than this get no "did you mean" suggestion. */
#define SL_CFG_SUGGEST_LEN_MAX 64

/* ------------------------------------------------------------------------ */
/* Small helpers                                                             */
/* ------------------------------------------------------------------------ */

/*
 * Fills err with SL_EUSAGE and "path: message" ("message" alone when path
 * is empty). Returns SL_EUSAGE.
 */
static int cfg_fail(sl_err_t *err, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int
cfg_fail(sl_err_t *err, const char *path, const char *fmt, ...)
{
    sl_err_set(err, SL_EUSAGE, "%s", "");
    if (err == NULL)
        return SL_EUSAGE;
    size_t off = 0;
    if (path != NULL && path[0] != '\0') {
        int n = snprintf(err->msg, sizeof err->msg, "%s: ", path);
        off = n < 0 ? 0 : (size_t)n < sizeof err->msg ? (size_t)n : sizeof err->msg - 1;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg + off, sizeof err->msg - off, fmt, ap);
    va_end(ap);
    return SL_EUSAGE;
}

/* Writes "parent.name" (or "name" when parent is empty) into buf, truncating. */
static const char *
cfg_path_key(char *buf, size_t n, const char *parent, const char *name)
{
    if (parent == NULL || parent[0] == '\0')
        snprintf(buf, n, "%s", name);
    else
        snprintf(buf, n, "%s.%s", parent, name);
    return buf;
}

/* Writes "parent[i]" into buf, truncating. */
static const char *
cfg_path_index(char *buf, size_t n, const char *parent, size_t i)
{
    snprintf(buf, n, "%s[%zu]", parent != NULL ? parent : "", i);
    return buf;
}

/* The JSON type of item as a word for "got ..." in messages. */
static const char *
cfg_type_name(const cJSON *item)
{
    if (item == NULL)
        return "nothing";
    if (cJSON_IsBool(item))
        return "boolean";
    if (cJSON_IsNull(item))
        return "null";
    if (cJSON_IsNumber(item))
        return "number";
    if (cJSON_IsString(item))
        return "string";
    if (cJSON_IsArray(item))
        return "array";
    if (cJSON_IsObject(item))
        return "object";
    return "invalid value";
}

/* Best-effort wipe of every string value in a tree, before it is freed. */
static void
cfg_tree_wipe(cJSON *item)
{
    for (; item != NULL; item = item->next) {
        if (cJSON_IsString(item) && item->valuestring != NULL)
            explicit_bzero(item->valuestring, strlen(item->valuestring));
        cfg_tree_wipe(item->child);
    }
}

/* Wipes and frees a buffer that may hold a resolved secret. */
static void
cfg_buf_wipe_free(sl_buf_t *b)
{
    if (b->data != NULL)
        explicit_bzero(b->data, b->cap);
    sl_buf_free(b);
}

/*
 * Reads a whole file into *out (NUL-terminated, caller frees; *len excludes
 * the NUL). Returns 0, or an errno value (EFBIG when larger than max,
 * ENOMEM when allocation failed).
 */
static int
cfg_read_file(const char *file, size_t max, char **out, size_t *len)
{
    FILE *f = fopen(file, "rbe");
    if (f == NULL)
        return errno;
    sl_buf_t b = {0};
    int rc = 0;
    for (;;) {
        if (sl_buf_reserve(&b, 4096, NULL) != SL_OK) {
            rc = ENOMEM;
            break;
        }
        size_t room = b.cap - b.len - 1;
        size_t got = fread(b.data + b.len, 1, room, f);
        b.len += got;
        b.data[b.len] = '\0';
        if (b.len > max) {
            rc = EFBIG;
            break;
        }
        if (got < room) {
            if (ferror(f))
                rc = errno != 0 ? errno : EIO;
            break;
        }
    }
    fclose(f);
    if (rc != 0) {
        cfg_buf_wipe_free(&b);
        return rc;
    }
    /* The loop reserved at least once, so data is non-NULL even for an empty file. */
    assert(b.data != NULL);
    *out = b.data;
    *len = b.len;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Interpolation                                                             */
/* ------------------------------------------------------------------------ */

static bool
cfg_is_name_start(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
}

static bool
cfg_is_name_char(char c)
{
    return cfg_is_name_start(c) || (c >= '0' && c <= '9');
}

/*
 * Resolves ${FILE:file} into out (appending). `file` is NUL-terminated.
 */
static int
cfg_resolve_file(const char *file, const char *path, sl_buf_t *out, sl_err_t *err)
{
    char *data = NULL;
    size_t len = 0;
    int rc = cfg_read_file(file, SL_CFG_FILE_MAX, &data, &len);
    if (rc == ENOMEM)
        return sl_err_nomem(err, "file contents");
    if (rc == EFBIG) {
        cfg_fail(err, path, "cannot read ${FILE:%s}: file is larger than %d bytes", file,
                 SL_CFG_FILE_MAX);
        return sl_err_hint(err, "${FILE:..} is meant for secrets and certificates; check the path");
    }
    if (rc != 0)
        return cfg_fail(err, path, "cannot read ${FILE:%s}: %s", file, strerror(rc));
    if (strlen(data) != len) {
        explicit_bzero(data, len);
        free(data);
        return cfg_fail(err, path, "cannot use ${FILE:%s}: file contains a NUL byte", file);
    }
    /* One trailing newline ("\n" or "\r\n") is removed: editors add one. */
    if (len > 0 && data[len - 1] == '\n') {
        len--;
        if (len > 0 && data[len - 1] == '\r')
            len--;
    }
    rc = sl_buf_append(out, data, len, err);
    explicit_bzero(data, len);
    free(data);
    return rc;
}

/*
 * Resolves one reference, the text between "${" and "}" (ref, n bytes, not
 * NUL-terminated), appending the value to out.
 */
static int
cfg_resolve_ref(const char *ref, size_t n, const char *path, sl_buf_t *out, sl_err_t *err)
{
    const char *colon = memchr(ref, ':', n);
    size_t srclen = colon != NULL ? (size_t)(colon - ref) : n;
    const char *arg = colon != NULL ? colon + 1 : ref + n;
    size_t arglen = (size_t)(ref + n - arg);

    if (srclen == 3 && memcmp(ref, "ENV", 3) == 0) {
        size_t namelen = 0;
        while (namelen < arglen && cfg_is_name_char(arg[namelen]))
            namelen++;
        if (arglen == 0)
            return cfg_fail(err, path, "empty variable name in \"${ENV:}\"");
        char name[256];
        if (namelen == 0 || !cfg_is_name_start(arg[0])) {
            cfg_fail(err, path, "invalid variable name in \"${ENV:...}\"");
            return sl_err_hint(err, "names match [A-Za-z_][A-Za-z0-9_]*");
        }
        if (namelen >= sizeof name)
            return cfg_fail(err, path, "variable name longer than %zu characters in \"${ENV:...}\"",
                            sizeof name - 1);
        if (namelen < arglen && (arglen - namelen < 2 || memcmp(arg + namelen, ":-", 2) != 0)) {
            /* Only the name is shown: what follows it may be a default value. */
            cfg_fail(err, path, "expected \"}\" or \":-default}\" after \"${ENV:%.*s\"",
                     (int)namelen, arg);
            return sl_err_hint(err, "names match [A-Za-z_][A-Za-z0-9_]*; a default is written "
                                    "${ENV:NAME:-default}");
        }
        memcpy(name, arg, namelen);
        name[namelen] = '\0';
        const char *value = getenv(name);
        if (namelen < arglen) {
            /* ${ENV:NAME:-default}: the default applies when unset or empty. */
            if (value == NULL || value[0] == '\0')
                return sl_buf_append(out, arg + namelen + 2, arglen - namelen - 2, err);
            return sl_buf_append_str(out, value, err);
        }
        if (value == NULL) {
            cfg_fail(err, path, "environment variable %s is not set", name);
            return sl_err_hint(err, "export %s=... or use ${ENV:%s:-default}", name, name);
        }
        return sl_buf_append_str(out, value, err);
    }

    if (srclen == 4 && memcmp(ref, "FILE", 4) == 0) {
        if (arglen == 0)
            return cfg_fail(err, path, "empty file path in \"${FILE:}\"");
        char file[4096];
        if (arglen >= sizeof file)
            return cfg_fail(err, path, "file path in ${FILE:..} is longer than %zu bytes",
                            sizeof file - 1);
        memcpy(file, arg, arglen);
        file[arglen] = '\0';
        return cfg_resolve_file(file, path, out, err);
    }

    if (srclen == 0) {
        cfg_fail(err, path, "empty reference \"${%s}\"", colon != NULL ? ":..." : "");
        return sl_err_hint(err, "use ${ENV:NAME} or ${FILE:/path}; write $$ for a literal $");
    }
    /* Name the source when it looks like one (a word); never echo other text. */
    bool word = srclen <= 16;
    for (size_t i = 0; word && i < srclen; i++)
        word = cfg_is_name_char(ref[i]);
    if (word)
        cfg_fail(err, path, "unknown source \"%.*s\" in \"${%.*s:...}\"", (int)srclen, ref,
                 (int)srclen, ref);
    else
        cfg_fail(err, path, "unknown source in \"${...}\"");
    return sl_err_hint(err, "sources are ENV and FILE (upper case): ${ENV:NAME}, "
                            "${ENV:NAME:-default}, ${FILE:/path}; write $$ for a literal $");
}

/* Copies the substituted span res[from..] into secrets (when not NULL). */
static int
cfg_note_secret(sl_strlist_t *secrets, const sl_buf_t *res, size_t from, sl_err_t *err)
{
    if (secrets == NULL || res->len <= from)
        return SL_OK;
    char **v = realloc(secrets->v, (secrets->n + 1) * sizeof *v);
    if (v == NULL)
        return sl_err_nomem(err, "the list of substituted values");
    secrets->v = v;
    v[secrets->n] = strndup(res->data + from, res->len - from);
    if (v[secrets->n] == NULL)
        return sl_err_nomem(err, "the list of substituted values");
    secrets->n++;
    return SL_OK;
}

static int cfg_interpolate(const char *in, const char *path, char **out, char **display,
                           bool *substituted, sl_strlist_t *secrets, sl_err_t *err);

int
sl_cfg_interpolate(const char *in, const char *path, char **out, char **display, bool *substituted,
                   sl_err_t *err)
{
    return cfg_interpolate(in, path, out, display, substituted, NULL, err);
}

/* sl_cfg_interpolate, also noting every substituted value in secrets. */
static int
cfg_interpolate(const char *in, const char *path, char **out, char **display, bool *substituted,
                sl_strlist_t *secrets, sl_err_t *err)
{
    assert(in != NULL && out != NULL);
    if (path == NULL)
        path = "";
    sl_buf_t res = {0};
    sl_buf_t disp = {0};
    bool subst = false;
    int rc = SL_OK;

    /* Both buffers start non-NULL so that an empty result is "" rather than NULL. */
    if ((rc = sl_buf_reserve(&res, strlen(in), err)) != SL_OK)
        goto fail;
    if (display != NULL && (rc = sl_buf_reserve(&disp, strlen(in), err)) != SL_OK)
        goto fail;

    const char *p = in;
    while (*p != '\0') {
        const char *dollar = strchr(p, '$');
        size_t lit = dollar != NULL ? (size_t)(dollar - p) : strlen(p);
        /* A '$' followed by neither '{' nor '$' is literal text. */
        if (dollar != NULL && dollar[1] != '{' && dollar[1] != '$')
            lit++;
        if (lit > 0) {
            if ((rc = sl_buf_append(&res, p, lit, err)) != SL_OK)
                goto fail;
            if (display != NULL && (rc = sl_buf_append(&disp, p, lit, err)) != SL_OK)
                goto fail;
            p += lit;
            continue;
        }
        /* p points at "$$" or "${". */
        if (p[1] == '$') {
            if ((rc = sl_buf_append(&res, "$", 1, err)) != SL_OK)
                goto fail;
            if (display != NULL && (rc = sl_buf_append(&disp, "$", 1, err)) != SL_OK)
                goto fail;
            p += 2;
            continue;
        }
        const char *close = strchr(p + 2, '}');
        if (close == NULL) {
            rc = cfg_fail(err, path, "unterminated \"${\" at character %zu", (size_t)(p - in) + 1);
            sl_err_hint(err, "close the reference with \"}\", or write $$ for a literal $");
            goto fail;
        }
        size_t before = res.len;
        if ((rc = cfg_resolve_ref(p + 2, (size_t)(close - p - 2), path, &res, err)) != SL_OK)
            goto fail;
        if ((rc = cfg_note_secret(secrets, &res, before, err)) != SL_OK)
            goto fail;
        if (display != NULL && (rc = sl_buf_append_str(&disp, SL_CFG_REDACTED, err)) != SL_OK)
            goto fail;
        subst = true;
        p = close + 1;
    }

    assert(res.data != NULL && (display == NULL || disp.data != NULL));
    *out = res.data;
    if (display != NULL)
        *display = disp.data;
    if (substituted != NULL)
        *substituted = subst;
    return SL_OK;

fail:
    cfg_buf_wipe_free(&res);
    sl_buf_free(&disp);
    return rc;
}

/*
 * Interpolates every string value of item, its siblings and everything under
 * them, in place, and writes the redacted form into `shown`, the same
 * position in the display tree. `parent` is the path of their parent; in_array
 * tells whether the items are array elements (named by index) or members.
 */
static int
cfg_tree_interpolate(cJSON *item, cJSON *shown, const char *parent, bool in_array,
                     sl_strlist_t *secrets, sl_err_t *err)
{
    size_t index = 0;
    for (; item != NULL; item = item->next, shown = shown->next, index++) {
        assert(shown != NULL);
        char path[SL_CFG_PATH_MAX];
        if (in_array)
            cfg_path_index(path, sizeof path, parent, index);
        else if (item->string != NULL)
            cfg_path_key(path, sizeof path, parent, item->string);
        else
            snprintf(path, sizeof path, "%s", parent);

        if (cJSON_IsString(item) && item->valuestring != NULL) {
            char *res = NULL;
            char *disp = NULL;
            bool subst = false;
            int rc = cfg_interpolate(item->valuestring, path, &res, &disp, &subst, secrets, err);
            if (rc != SL_OK)
                return rc;
            assert(res != NULL && disp != NULL);
            if (subst) {
                bool ok = cJSON_SetValuestring(item, res) != NULL &&
                          cJSON_SetValuestring(shown, disp) != NULL;
                explicit_bzero(res, strlen(res));
                free(res);
                free(disp);
                if (!ok)
                    return sl_err_nomem(err, "configuration string");
            } else {
                /* Only "$$" escapes may have changed: the display keeps the same text. */
                bool ok = strcmp(res, item->valuestring) == 0 ||
                          (cJSON_SetValuestring(item, res) != NULL &&
                           cJSON_SetValuestring(shown, res) != NULL);
                free(res);
                free(disp);
                if (!ok)
                    return sl_err_nomem(err, "configuration string");
            }
        }
        if (item->child != NULL) {
            int rc = cfg_tree_interpolate(item->child, shown->child, path, cJSON_IsArray(item),
                                          secrets, err);
            if (rc != SL_OK)
                return rc;
        }
    }
    return SL_OK;
}

/* ------------------------------------------------------------------------ */
/* Documents                                                                 */
/* ------------------------------------------------------------------------ */

/* 1-based line and column (in UTF-8 characters) of byte offset off in text. */
static void
cfg_line_col(const char *text, size_t off, int *line, int *col)
{
    int l = 1, c = 1;
    size_t i = 0;
    /* A UTF-8 byte order mark is not a column. */
    if (strncmp(text, "\xEF\xBB\xBF", 3) == 0 && off >= 3)
        i = 3;
    for (; i < off && text[i] != '\0'; i++) {
        unsigned char ch = (unsigned char)text[i];
        if (ch == '\n') {
            l++;
            c = 1;
        } else if ((ch & 0xC0) != 0x80) {
            c++;
        }
    }
    *line = l;
    *col = c;
}

/*
 * Overwrites comments in text with spaces, keeping newlines, so that offsets
 * do not move. Returns SL_OK, or SL_EUSAGE for an unterminated block comment
 * (*bad set to the offset of its opening).
 */
static int
cfg_blank_comments(char *text, size_t *bad)
{
    bool in_string = false;
    for (size_t i = 0; text[i] != '\0'; i++) {
        char c = text[i];
        if (in_string) {
            if (c == '\\' && text[i + 1] != '\0')
                i++;
            else if (c == '"')
                in_string = false;
            continue;
        }
        if (c == '"') {
            in_string = true;
        } else if (c == '/' && text[i + 1] == '/') {
            while (text[i] != '\0' && text[i] != '\n')
                text[i++] = ' ';
            if (text[i] == '\0')
                break;
        } else if (c == '/' && text[i + 1] == '*') {
            size_t start = i;
            text[i++] = ' ';
            text[i++] = ' ';
            while (text[i] != '\0' && !(text[i] == '*' && text[i + 1] == '/')) {
                if (text[i] != '\n' && text[i] != '\r')
                    text[i] = ' ';
                i++;
            }
            if (text[i] == '\0') {
                *bad = start;
                return SL_EUSAGE;
            }
            text[i++] = ' ';
            text[i] = ' ';
        }
    }
    return SL_OK;
}

static bool
cfg_is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/*
 * Builds the "origin:line:col: invalid JSON near ..." error. `text` is the
 * original text (for the excerpt), `blanked` the text given to cJSON (for
 * the trailing comma check; same offsets), off the position cJSON reported.
 */
static int
cfg_syntax_error(const char *origin, const char *text, const char *blanked, size_t off,
                 sl_err_t *err)
{
    size_t len = strlen(blanked);
    if (off > len)
        off = len;

    /* Trailing comma: cJSON reports it past the closing brace; point at it. */
    bool trailing_comma = false;
    size_t k = off;
    if (k < len && (blanked[k] == '}' || blanked[k] == ']'))
        k++;
    while (k > 0 && cfg_is_space(blanked[k - 1]))
        k--;
    if (k > 0 && (blanked[k - 1] == '}' || blanked[k - 1] == ']')) {
        size_t close = k - 1;
        size_t j = close;
        while (j > 0 && cfg_is_space(blanked[j - 1]))
            j--;
        if (j > 0 && blanked[j - 1] == ',' && close <= off) {
            trailing_comma = true;
            off = close;
        }
    }

    int line, col;
    cfg_line_col(text, off, &line, &col);

    if (off >= len) {
        sl_err_set(err, SL_EUSAGE, "%s:%d:%d: invalid JSON near end of input", origin, line, col);
        return sl_err_hint(err, "a bracket, brace or string may be left open");
    }
    /* The excerpt stops at the end of the line and at a character boundary. */
    char excerpt[SL_CFG_QUOTE_MAX];
    size_t n = 0;
    while (off + n < len && text[off + n] != '\n' && text[off + n] != '\r' &&
           n < sizeof excerpt - 1)
        n++;
    while (n > 0 && off + n < len && ((unsigned char)text[off + n] & 0xC0) == 0x80)
        n--;
    memcpy(excerpt, text + off, n);
    excerpt[n] = '\0';
    char quoted[SL_CFG_QUOTE_MAX + 8];
    sl_err_set(err, SL_EUSAGE, "%s:%d:%d: invalid JSON near %s", origin, line, col,
               sl_log_quote(quoted, sizeof quoted, excerpt));
    if (trailing_comma)
        return sl_err_hint(err, "remove the trailing comma: JSON does not allow one");
    return sl_err_hint(err, "comments (// and /* */) are allowed; keys and strings need "
                            "double quotes");
}

static void
cfg_secrets_free(sl_strlist_t *secrets)
{
    for (size_t i = 0; i < secrets->n; i++)
        explicit_bzero(secrets->v[i], strlen(secrets->v[i]));
    sl_strlist_free(secrets);
}

int
sl_cfg_doc_parse(const char *text, const char *origin, sl_cfg_doc_t *doc, sl_err_t *err)
{
    assert(text != NULL && doc != NULL);
    if (origin == NULL)
        origin = "config";

    size_t len = strlen(text);
    char *blanked = malloc(len + 1);
    if (blanked == NULL)
        return sl_err_nomem(err, "configuration text");
    memcpy(blanked, text, len + 1);

    int rc;
    cJSON *root = NULL;
    cJSON *display = NULL;
    size_t bad = 0;
    if (cfg_blank_comments(blanked, &bad) != SL_OK) {
        int line, col;
        cfg_line_col(text, bad, &line, &col);
        rc = sl_err_set(err, SL_EUSAGE, "%s:%d:%d: unterminated comment", origin, line, col);
        sl_err_hint(err, "close it with */");
        goto fail;
    }
    size_t first = 0;
    if (strncmp(blanked, "\xEF\xBB\xBF", 3) == 0)
        first = 3;
    while (cfg_is_space(blanked[first]))
        first++;
    if (blanked[first] == '\0') {
        rc = sl_err_set(err, SL_EUSAGE, "%s: configuration is empty", origin);
        sl_err_hint(err, "write a JSON object, for example {}");
        goto fail;
    }

    const char *end = NULL;
    root = cJSON_ParseWithOpts(blanked, &end, true);
    if (root == NULL) {
        size_t off = end != NULL && end >= blanked ? (size_t)(end - blanked) : 0;
        rc = cfg_syntax_error(origin, text, blanked, off, err);
        goto fail;
    }
    display = cJSON_Duplicate(root, true);
    if (display == NULL) {
        rc = sl_err_nomem(err, "configuration display tree");
        goto fail;
    }
    /* The root itself may be a string; its path is "". */
    rc = cfg_tree_interpolate(root, display, "", false, &doc->secrets, err);
    if (rc != SL_OK) {
        if (rc == SL_EUSAGE)
            sl_err_prefix(err, "%s: ", origin);
        goto fail;
    }
    free(blanked);
    doc->root = root;
    doc->display = display;
    return SL_OK;

fail:
    cfg_tree_wipe(root);
    cJSON_Delete(root);
    cJSON_Delete(display);
    free(blanked);
    cfg_secrets_free(&doc->secrets);
    return rc;
}

int
sl_cfg_doc_load(const char *file, sl_cfg_doc_t *doc, sl_err_t *err)
{
    assert(file != NULL && doc != NULL);
    char *text = NULL;
    size_t len = 0;
    int rc = cfg_read_file(file, SL_CFG_TEXT_MAX, &text, &len);
    if (rc == ENOMEM)
        return sl_err_nomem(err, "configuration text");
    if (rc == EFBIG) {
        sl_err_set(err, SL_EUSAGE, "cannot read configuration file %s: larger than %d bytes", file,
                   SL_CFG_TEXT_MAX);
        return sl_err_hint(err, "check the path given with --config");
    }
    if (rc != 0)
        return sl_err_set(err, SL_EUSAGE, "cannot read configuration file %s: %s", file,
                          strerror(rc));
    assert(text != NULL);
    if (strlen(text) != len) {
        int line, col;
        cfg_line_col(text, strlen(text), &line, &col);
        free(text);
        return sl_err_set(err, SL_EUSAGE, "%s:%d:%d: configuration contains a NUL byte", file, line,
                          col);
    }
    rc = sl_cfg_doc_parse(text, file, doc, err);
    free(text);
    return rc;
}

void
sl_cfg_doc_free(sl_cfg_doc_t *doc)
{
    if (doc == NULL)
        return;
    cfg_tree_wipe(doc->root);
    cJSON_Delete(doc->root);
    cJSON_Delete(doc->display);
    cfg_secrets_free(&doc->secrets);
    doc->root = NULL;
    doc->display = NULL;
}

/* Replaces every occurrence of needle in buf (NUL-terminated, size n) with
 * SL_CFG_REDACTED, truncating if the result does not fit. */
static void
cfg_scrub_one(char *buf, size_t n, const char *needle)
{
    size_t nl = strlen(needle);
    size_t rl = strlen(SL_CFG_REDACTED);
    char *p = buf;
    while (nl > 0 && (p = strstr(p, needle)) != NULL) {
        size_t tail = strlen(p + nl);
        size_t at = (size_t)(p - buf);
        if (at + rl >= n) {
            *p = '\0';
            return;
        }
        size_t keep = at + rl + tail < n ? tail : n - 1 - at - rl;
        memmove(p + rl, p + nl, keep);
        memcpy(p, SL_CFG_REDACTED, rl);
        p[rl + keep] = '\0';
        p += rl;
    }
}

void
sl_cfg_doc_scrub(const sl_cfg_doc_t *doc, sl_err_t *err)
{
    if (doc == NULL || err == NULL)
        return;
    for (size_t i = 0; i < doc->secrets.n; i++) {
        cfg_scrub_one(err->msg, sizeof err->msg, doc->secrets.v[i]);
        cfg_scrub_one(err->hint, sizeof err->hint, doc->secrets.v[i]);
    }
}

/* ------------------------------------------------------------------------ */
/* Table-driven objects                                                      */
/* ------------------------------------------------------------------------ */

/* The field a key describes, as an lvalue of `type`. */
#define SL_CFG_FIELD(out, key, type) ((type *)(void *)((char *)(out) + (key)->offset))

void
sl_strlist_free(sl_strlist_t *l)
{
    if (l == NULL)
        return;
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

/* Frees the owned field of one key and zeroes it. */
static void
cfg_key_release(const sl_cfg_key_t *key, void *out)
{
    switch (key->type) {
    case SL_CFG_STRING: {
        char **s = SL_CFG_FIELD(out, key, char *);
        if (*s != NULL && key->secret)
            explicit_bzero(*s, strlen(*s));
        free(*s);
        *s = NULL;
        break;
    }
    case SL_CFG_STRLIST: sl_strlist_free(SL_CFG_FIELD(out, key, sl_strlist_t)); break;
    case SL_CFG_INT:
    case SL_CFG_BOOL:
    case SL_CFG_OBJECT:
    case SL_CFG_ARRAY: break;
    }
}

/* Zeroes the field of one key (owned fields must have been released). */
static void
cfg_key_zero(const sl_cfg_key_t *key, void *out)
{
    switch (key->type) {
    case SL_CFG_STRING: *SL_CFG_FIELD(out, key, char *) = NULL; break;
    case SL_CFG_INT: *SL_CFG_FIELD(out, key, int64_t) = 0; break;
    case SL_CFG_BOOL: *SL_CFG_FIELD(out, key, bool) = false; break;
    case SL_CFG_STRLIST: *SL_CFG_FIELD(out, key, sl_strlist_t) = (sl_strlist_t){0}; break;
    case SL_CFG_OBJECT:
    case SL_CFG_ARRAY: *SL_CFG_FIELD(out, key, const cJSON *) = NULL; break;
    }
}

void
sl_cfg_release(const sl_cfg_key_t *keys, size_t nkeys, void *out)
{
    if (out == NULL)
        return;
    for (size_t i = 0; i < nkeys; i++)
        cfg_key_release(&keys[i], out);
}

/* Levenshtein distance, case-insensitive; SIZE_MAX for names too long to compare. */
static size_t
cfg_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > SL_CFG_SUGGEST_LEN_MAX || lb > SL_CFG_SUGGEST_LEN_MAX)
        return SIZE_MAX;
    size_t row[SL_CFG_SUGGEST_LEN_MAX + 1];
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            char ca = a[i - 1], cb = b[j - 1];
            if (ca >= 'A' && ca <= 'Z')
                ca = (char)(ca - 'A' + 'a');
            if (cb >= 'A' && cb <= 'Z')
                cb = (char)(cb - 'A' + 'a');
            size_t best = diag + (ca == cb ? 0 : 1);
            if (up + 1 < best)
                best = up + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

/*
 * The closest of `names` (n entries, NULL-terminated when n is SIZE_MAX) to
 * `word`, when close enough to be a typo: at most 2 edits, and fewer edits
 * than the candidate has characters. NULL otherwise.
 */
static const char *
cfg_suggest(const char *word, const char *const *names, size_t stride, size_t n)
{
    const char *best = NULL;
    size_t best_d = SIZE_MAX;
    for (size_t i = 0; i < n; i++) {
        const char *cand = *(const char *const *)(const void *)((const char *)names + i * stride);
        if (cand == NULL)
            break;
        size_t d = cfg_distance(word, cand);
        if (d <= 2 && d < strlen(cand) && d < best_d) {
            best = cand;
            best_d = d;
        }
    }
    return best;
}

/* Appends s to buf (size n, NUL-terminated), truncating. */
static void
cfg_append(char *buf, size_t n, const char *s)
{
    size_t used = strlen(buf);
    if (used + 1 < n)
        snprintf(buf + used, n - used, "%s", s);
}

/* Writes the choices as "\"a\", \"b\", \"c\"" into buf. */
static const char *
cfg_choices_list(char *buf, size_t n, const char *const *choices)
{
    buf[0] = '\0';
    for (size_t i = 0; choices[i] != NULL; i++) {
        char quoted[SL_CFG_QUOTE_MAX];
        if (i > 0)
            cfg_append(buf, n, ", ");
        cfg_append(buf, n, sl_log_quote(quoted, sizeof quoted, choices[i]));
    }
    return buf;
}

/* Error for an unknown key at keypath, with a hint naming the closest valid key. */
static int
cfg_unknown_key(const char *name, const char *keypath, const sl_cfg_key_t *keys, size_t nkeys,
                sl_err_t *err)
{
    cfg_fail(err, keypath, "unknown key");
    if (nkeys == 0)
        return sl_err_hint(err, "this object takes no keys");
    const char *near = cfg_suggest(name, &keys[0].name, sizeof keys[0], nkeys);
    if (near != NULL)
        return sl_err_hint(err, "did you mean \"%s\"?", near);
    char list[SL_ERR_HINT_MAX - 16];
    list[0] = '\0';
    for (size_t i = 0; i < nkeys; i++) {
        char quoted[SL_CFG_QUOTE_MAX];
        if (i > 0)
            cfg_append(list, sizeof list, ", ");
        cfg_append(list, sizeof list, sl_log_quote(quoted, sizeof quoted, keys[i].name));
    }
    return sl_err_hint(err, "valid keys: %s", list);
}

/* Integral value of a JSON number, if it is one that fits int64_t. */
static bool
cfg_number_to_int(double d, int64_t *out)
{
    /* -2^63 is exact in a double; 2^63 is the first value that does not fit. */
    if (!isfinite(d) || d < -9223372036854775808.0 || d >= 9223372036854775808.0)
        return false;
    int64_t i = (int64_t)d;
    if ((double)i != d)
        return false;
    *out = i;
    return true;
}

/*
 * Checks item against key and stores it into out. `keypath` names the value
 * in errors. On failure nothing was stored for this key.
 */
static int
cfg_key_fill(const sl_cfg_key_t *key, const cJSON *item, const char *keypath, void *out,
             sl_err_t *err)
{
    switch (key->type) {
    case SL_CFG_STRING: {
        if (!cJSON_IsString(item) || item->valuestring == NULL)
            return cfg_fail(err, keypath, "expected a string, got %s", cfg_type_name(item));
        const char *v = item->valuestring;
        if (key->choices != NULL) {
            bool found = false;
            for (size_t i = 0; !found && key->choices[i] != NULL; i++)
                found = strcmp(v, key->choices[i]) == 0;
            if (!found) {
                char list[SL_ERR_MSG_MAX / 2];
                cfg_choices_list(list, sizeof list, key->choices);
                if (key->secret)
                    return cfg_fail(err, keypath, "expected one of %s", list);
                char quoted[SL_CFG_QUOTE_MAX];
                cfg_fail(err, keypath, "expected one of %s, got %s", list,
                         sl_log_quote(quoted, sizeof quoted, v));
                const char *near = cfg_suggest(v, key->choices, sizeof key->choices[0], SIZE_MAX);
                if (near != NULL)
                    sl_err_hint(err, "did you mean \"%s\"?", near);
                return SL_EUSAGE;
            }
        }
        char *copy = strdup(v);
        if (copy == NULL)
            return sl_err_nomem(err, "configuration string");
        *SL_CFG_FIELD(out, key, char *) = copy;
        return SL_OK;
    }
    case SL_CFG_INT: {
        if (!cJSON_IsNumber(item))
            return cfg_fail(err, keypath, "expected an integer, got %s", cfg_type_name(item));
        /* min == max == 0 means the table set no range. */
        bool ranged = key->min != 0 || key->max != 0;
        int64_t lo = ranged ? key->min : INT64_MIN;
        int64_t hi = ranged ? key->max : INT64_MAX;
        double d = item->valuedouble;
        int64_t v;
        if (!cfg_number_to_int(d, &v)) {
            if (key->secret)
                return cfg_fail(err, keypath, "expected an integer between %lld and %lld",
                                (long long)lo, (long long)hi);
            if (isfinite(d) && d == floor(d))
                return cfg_fail(err, keypath, "must be between %lld and %lld, got %g",
                                (long long)lo, (long long)hi, d);
            return cfg_fail(err, keypath, "expected an integer, got %g", d);
        }
        if (v < lo || v > hi) {
            if (key->secret)
                return cfg_fail(err, keypath, "must be between %lld and %lld", (long long)lo,
                                (long long)hi);
            return cfg_fail(err, keypath, "must be between %lld and %lld, got %lld", (long long)lo,
                            (long long)hi, (long long)v);
        }
        *SL_CFG_FIELD(out, key, int64_t) = v;
        return SL_OK;
    }
    case SL_CFG_BOOL:
        if (!cJSON_IsBool(item))
            return cfg_fail(err, keypath, "expected a boolean, got %s", cfg_type_name(item));
        *SL_CFG_FIELD(out, key, bool) = cJSON_IsTrue(item);
        return SL_OK;
    case SL_CFG_STRLIST: {
        if (!cJSON_IsArray(item))
            return cfg_fail(err, keypath, "expected an array of strings, got %s",
                            cfg_type_name(item));
        size_t n = (size_t)cJSON_GetArraySize(item);
        size_t i = 0;
        const cJSON *el;
        cJSON_ArrayForEach (el, item) {
            if (!cJSON_IsString(el) || el->valuestring == NULL) {
                char elpath[SL_CFG_PATH_MAX];
                cfg_path_index(elpath, sizeof elpath, keypath, i);
                return cfg_fail(err, elpath, "expected a string, got %s", cfg_type_name(el));
            }
            i++;
        }
        sl_strlist_t l = {0};
        if (n > 0) {
            l.v = calloc(n, sizeof l.v[0]);
            if (l.v == NULL)
                return sl_err_nomem(err, "string list");
        }
        for (el = item->child; el != NULL && l.n < n; el = el->next) {
            l.v[l.n] = strdup(el->valuestring);
            if (l.v[l.n] == NULL) {
                sl_strlist_free(&l);
                return sl_err_nomem(err, "string list");
            }
            l.n++;
        }
        *SL_CFG_FIELD(out, key, sl_strlist_t) = l;
        return SL_OK;
    }
    case SL_CFG_OBJECT:
        if (!cJSON_IsObject(item))
            return cfg_fail(err, keypath, "expected an object, got %s", cfg_type_name(item));
        *SL_CFG_FIELD(out, key, const cJSON *) = item;
        return SL_OK;
    case SL_CFG_ARRAY:
        if (!cJSON_IsArray(item))
            return cfg_fail(err, keypath, "expected an array, got %s", cfg_type_name(item));
        *SL_CFG_FIELD(out, key, const cJSON *) = item;
        return SL_OK;
    }
    assert(!"unknown sl_cfg_type_t");
    return cfg_fail(err, keypath, "internal error: unknown key type %d", (int)key->type);
}

/* The member of obj named exactly `name` (cJSON's own lookup is case-insensitive). */
static const cJSON *
cfg_member(const cJSON *obj, const char *name)
{
    if (obj == NULL)
        return NULL;
    for (const cJSON *m = obj->child; m != NULL; m = m->next)
        if (m->string != NULL && strcmp(m->string, name) == 0)
            return m;
    return NULL;
}

/* Fills one key from obj, its default, or zero. */
static int
cfg_key_parse(const cJSON *obj, const char *path, const sl_cfg_key_t *key, void *out, sl_err_t *err)
{
    char keypath[SL_CFG_PATH_MAX];
    cfg_path_key(keypath, sizeof keypath, path, key->name);

    const cJSON *item = cfg_member(obj, key->name);
    if (item != NULL) {
        int rc = cfg_key_fill(key, item, keypath, out, err);
        /* Every error tells how to fix it: fall back on what the key is for. */
        if (rc == SL_EUSAGE && err != NULL && err->hint[0] == '\0' && key->doc != NULL)
            sl_err_hint(err, "\"%s\" is %s; `sluice relay --help-config` lists every key",
                        key->name, key->doc);
        return rc;
    }
    if (key->required) {
        cfg_fail(err, path, "missing required key \"%s\"", key->name);
        if (key->doc != NULL)
            sl_err_hint(err, "add \"%s\": %s", key->name, key->doc);
        return SL_EUSAGE;
    }
    if (key->def == NULL) {
        cfg_key_zero(key, out);
        return SL_OK;
    }
    /* A default borrowed from a temporary tree would dangle. */
    assert(key->type != SL_CFG_OBJECT && key->type != SL_CFG_ARRAY);
    cJSON *def = cJSON_Parse(key->def);
    if (def == NULL) {
        /* A table bug, or out of memory: cJSON does not say which. */
        assert(!"sl_cfg_key_t default is not valid JSON");
        return sl_err_nomem(err, "configuration default");
    }
    int rc = cfg_key_fill(key, def, keypath, out, err);
    cJSON_Delete(def);
    if (rc == SL_EUSAGE)
        sl_err_prefix(err, "internal error: bad default: ");
    return rc;
}

/*
 * Checks that obj is an object (or absent) whose keys are all in the table,
 * each once. Runs before anything is filled.
 */
static int
cfg_object_check(const cJSON *obj, const char *path, const sl_cfg_key_t *keys, size_t nkeys,
                 sl_err_t *err)
{
    if (obj == NULL)
        return SL_OK;
    if (!cJSON_IsObject(obj))
        return cfg_fail(err, path, "expected an object, got %s", cfg_type_name(obj));
    for (const cJSON *m = obj->child; m != NULL; m = m->next) {
        assert(m->string != NULL);
        char keypath[SL_CFG_PATH_MAX];
        cfg_path_key(keypath, sizeof keypath, path, m->string);
        size_t i = 0;
        while (i < nkeys && strcmp(keys[i].name, m->string) != 0)
            i++;
        if (i == nkeys)
            return cfg_unknown_key(m->string, keypath, keys, nkeys, err);
        if (cfg_member(obj, m->string) != m) {
            cfg_fail(err, keypath, "duplicate key");
            return sl_err_hint(err, "each key may appear once in an object");
        }
    }
    return SL_OK;
}

int
sl_cfg_object_parse(const cJSON *obj, const char *path, const sl_cfg_key_t *keys, size_t nkeys,
                    void *out, sl_err_t *err)
{
    assert(keys != NULL || nkeys == 0);
    assert(out != NULL);
    if (path == NULL)
        path = "";
    int rc = cfg_object_check(obj, path, keys, nkeys, err);
    size_t filled = 0;
    while (rc == SL_OK && filled < nkeys) {
        assert(!(keys[filled].required && keys[filled].def != NULL));
        rc = cfg_key_parse(obj, path, &keys[filled], out, err);
        if (rc == SL_OK)
            filled++;
    }
    if (rc != SL_OK) {
        /* Atomic failure: release what was filled, then zero every described field. */
        sl_cfg_release(keys, filled, out);
        for (size_t i = 0; i < nkeys; i++)
            cfg_key_zero(&keys[i], out);
    }
    return rc;
}
