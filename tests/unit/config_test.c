/*
 * tests/unit/config_test.c - the configuration loader (core/config.c).
 *
 * Every case is a row in a table and runs as its own cmocka test, so a
 * failure names the row. Each row makes one assertion: the outcome of the
 * call is rendered as one string ("ok: ..." or "error: <msg> | hint: <hint>",
 * with the state of the target struct where it matters) and compared with
 * the expected string. Tables:
 *
 *   interp_rows   sl_cfg_interpolate(): every form, defaults, $$, FILE, errors
 *   display_rows  the redacted display string and the `substituted` flag
 *   doc_rows      sl_cfg_doc_parse(): comments, syntax errors with line:col,
 *                 interpolation anywhere in the tree, redacted display tree
 *   load_rows     sl_cfg_doc_load() on fixtures in tests/unit/data
 *   object_rows   sl_cfg_object_parse(): unknown keys with hints, types,
 *                 ranges, choices, defaults, string lists, nested paths, and
 *                 the zeroed state left by a failure (run under ASan, which
 *                 also proves that a failure releases what was filled)
 *   oom_rows      sl_cfg_doc_parse() with cJSON's allocator failing at each
 *                 allocation in turn: every failure is reported, the doc is
 *                 left empty, and ASan sees no leak
 *
 * "@TMP@" in a row stands for a private temporary directory created by the
 * group setup (it holds the ${FILE:..} fixtures) and "@DATA@" for
 * SL_TEST_DATA_DIR. The environment variables the rows use all start with
 * SLT_ and are set (or unset) by the group setup.
 */
#include "core/core.h"

#include <cjson/cJSON.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

/* ------------------------------------------------------------------------ */
/* Fixtures                                                                  */
/* ------------------------------------------------------------------------ */

static char tmp_dir[256];

typedef struct test_file {
    const char *name;
    const char *data;
    size_t len;
} test_file_t;

static const test_file_t test_files[] = {
    {"pw.txt", "s3cret\n", 7},  {"two_newlines.txt", "two\n\n", 5},
    {"crlf.txt", "win\r\n", 5}, {"no_newline.txt", "raw", 3},
    {"empty.txt", "", 0},       {"nul.txt", "a\0b", 3},
};

/* Larger than the 1 MiB ${FILE:..} cap; created sparse. */
#define BIG_FILE "big.txt"
#define BIG_FILE_SIZE (1024 * 1024 + 1)

static int
write_file(const char *path, const char *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (f == NULL)
        return -1;
    size_t w = fwrite(data, 1, len, f);
    return fclose(f) == 0 && w == len ? 0 : -1;
}

static int
group_setup(void **state)
{
    const char *base = getenv("TMPDIR");
    snprintf(tmp_dir, sizeof tmp_dir, "%s/sl_config_test.XXXXXX",
             base != NULL && base[0] != '\0' ? base : "/tmp");
    if (mkdtemp(tmp_dir) == NULL)
        return -1;
    char path[512];
    for (size_t i = 0; i < sizeof test_files / sizeof test_files[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", tmp_dir, test_files[i].name);
        if (write_file(path, test_files[i].data, test_files[i].len) != 0)
            return -1;
    }
    snprintf(path, sizeof path, "%s/%s", tmp_dir, BIG_FILE);
    if (write_file(path, "", 0) != 0 || truncate(path, BIG_FILE_SIZE) != 0)
        return -1;

    setenv("SLT_PW", "s3cret", 1);
    setenv("SLT_HOST", "db.example", 1);
    setenv("SLT_EMPTY", "", 1);
    setenv("SLT_TRICKY", "a${ENV:SLT_PW}$$b", 1); /* substituted values are not re-scanned */
    setenv("_SLT_9", "underscore", 1);
    unsetenv("SLT_UNSET");
    return 0;
}

static int
group_teardown(void **state)
{
    char path[512];
    for (size_t i = 0; i < sizeof test_files / sizeof test_files[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", tmp_dir, test_files[i].name);
        unlink(path);
    }
    snprintf(path, sizeof path, "%s/%s", tmp_dir, BIG_FILE);
    unlink(path);
    rmdir(tmp_dir);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Rendering helpers                                                         */
/* ------------------------------------------------------------------------ */

#define RESULT_MAX 4096

/* Replaces every "@TMP@" and "@DATA@" in s. Returns a malloc'd string. */
static char *
expand(const char *s)
{
    if (s == NULL)
        return NULL;
    size_t cap = strlen(s) * 4 + 1024;
    char *out = malloc(cap);
    assert_non_null(out);
    size_t o = 0;
    while (*s != '\0') {
        const char *rep = NULL;
        size_t skip = 0;
        if (strncmp(s, "@TMP@", 5) == 0) {
            rep = tmp_dir;
            skip = 5;
        } else if (strncmp(s, "@DATA@", 6) == 0) {
            rep = SL_TEST_DATA_DIR;
            skip = 6;
        }
        if (rep != NULL) {
            size_t n = strlen(rep);
            assert_true(o + n < cap);
            memcpy(out + o, rep, n);
            o += n;
            s += skip;
        } else {
            assert_true(o + 1 < cap);
            out[o++] = *s++;
        }
    }
    out[o] = '\0';
    return out;
}

/* Appends printf-style text to buf (RESULT_MAX bytes). */
static void cat(char *buf, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
cat(char *buf, const char *fmt, ...)
{
    size_t used = strlen(buf);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + used, RESULT_MAX - used, fmt, ap);
    va_end(ap);
}

/* "error: <msg>" plus " | hint: <hint>" when there is one. */
static void
cat_err(char *buf, int rc, const sl_err_t *err)
{
    cat(buf, "error%s: %s", rc == SL_EUSAGE ? "" : " (not SL_EUSAGE)", err->msg);
    if (err->hint[0] != '\0')
        cat(buf, " | hint: %s", err->hint);
}

/* Compares the rendered result with the row's expectation (after expansion). */
static void
check(const char *got, const char *want)
{
    char *w = expand(want);
    assert_string_equal(got, w);
    free(w);
}

/* ------------------------------------------------------------------------ */
/* sl_cfg_interpolate                                                        */
/* ------------------------------------------------------------------------ */

typedef struct interp_row {
    const char *name;
    const char *in;
    const char *path;
    const char *want; /* "ok: <result>" or "error: ..." */
} interp_row_t;

static const interp_row_t interp_rows[] = {
    {"plain text passes through", "hello", "a", "ok: hello"},
    {"empty string", "", "a", "ok: "},
    {"env var", "${ENV:SLT_HOST}", "a", "ok: db.example"},
    {"env var inside text", "host=${ENV:SLT_HOST}:5432", "a", "ok: host=db.example:5432"},
    {"two references", "${ENV:SLT_HOST}/${ENV:SLT_PW}", "a", "ok: db.example/s3cret"},
    {"name may start with underscore", "${ENV:_SLT_9}", "a", "ok: underscore"},
    {"set but empty var is empty", "[${ENV:SLT_EMPTY}]", "a", "ok: []"},
    {"default unused when set", "${ENV:SLT_HOST:-fallback}", "a", "ok: db.example"},
    {"default when unset", "${ENV:SLT_UNSET:-fallback}", "a", "ok: fallback"},
    {"default when empty", "${ENV:SLT_EMPTY:-fallback}", "a", "ok: fallback"},
    {"empty default", "<${ENV:SLT_UNSET:-}>", "a", "ok: <>"},
    {"default may contain colon and dollar", "${ENV:SLT_UNSET:-a:b$c}", "a", "ok: a:b$c"},
    {"substituted value is not re-scanned", "${ENV:SLT_TRICKY}", "a", "ok: a${ENV:SLT_PW}$$b"},
    {"double dollar is a literal dollar", "cost: $$5", "a", "ok: cost: $5"},
    {"double dollar before a brace", "$${ENV:SLT_PW}", "a", "ok: ${ENV:SLT_PW}"},
    {"four dollars", "$$$$", "a", "ok: $$"},
    {"lone dollar stays", "price in $ and $x", "a", "ok: price in $ and $x"},
    {"trailing dollar stays", "5$", "a", "ok: 5$"},
    {"file, one trailing newline removed", "${FILE:@TMP@/pw.txt}", "a", "ok: s3cret"},
    {"file, only one newline removed", "[${FILE:@TMP@/two_newlines.txt}]", "a", "ok: [two\n]"},
    {"file, crlf removed", "[${FILE:@TMP@/crlf.txt}]", "a", "ok: [win]"},
    {"file without newline", "${FILE:@TMP@/no_newline.txt}", "a", "ok: raw"},
    {"empty file", "[${FILE:@TMP@/empty.txt}]", "a", "ok: []"},
    {"missing file", "${FILE:@TMP@/nope.txt}", "pipelines[0].sink.password",
     "error: pipelines[0].sink.password: cannot read ${FILE:@TMP@/nope.txt}: "
     "No such file or directory"},
    {"file is a directory", "${FILE:@TMP@}", "a",
     "error: a: cannot read ${FILE:@TMP@}: Is a directory"},
    {"file too large", "${FILE:@TMP@/big.txt}", "a",
     "error: a: cannot read ${FILE:@TMP@/big.txt}: file is larger than 1048576 bytes"
     " | hint: ${FILE:..} is meant for secrets and certificates; check the path"},
    {"file with a NUL byte", "${FILE:@TMP@/nul.txt}", "a",
     "error: a: cannot use ${FILE:@TMP@/nul.txt}: file contains a NUL byte"},
    {"empty file path", "${FILE:}", "a", "error: a: empty file path in \"${FILE:}\""},
    {"missing env var", "postgresql://app:${ENV:SLT_UNSET}@h/db", "source.url",
     "error: source.url: environment variable SLT_UNSET is not set"
     " | hint: export SLT_UNSET=... or use ${ENV:SLT_UNSET:-default}"},
    {"missing env var, empty path", "${ENV:SLT_UNSET}", "",
     "error: environment variable SLT_UNSET is not set"
     " | hint: export SLT_UNSET=... or use ${ENV:SLT_UNSET:-default}"},
    {"unterminated reference", "abc${ENV:SLT_PW", "a",
     "error: a: unterminated \"${\" at character 4"
     " | hint: close the reference with \"}\", or write $$ for a literal $"},
    {"unterminated at end", "abc${", "a",
     "error: a: unterminated \"${\" at character 4"
     " | hint: close the reference with \"}\", or write $$ for a literal $"},
    {"unknown source", "${FOO:x}", "a",
     "error: a: unknown source \"FOO\" in \"${FOO:...}\" | hint: sources are ENV and FILE "
     "(upper case): ${ENV:NAME}, ${ENV:NAME:-default}, ${FILE:/path}; write $$ for a literal $"},
    {"source is case-sensitive", "${env:SLT_PW}", "a",
     "error: a: unknown source \"env\" in \"${env:...}\" | hint: sources are ENV and FILE "
     "(upper case): ${ENV:NAME}, ${ENV:NAME:-default}, ${FILE:/path}; write $$ for a literal $"},
    {"source that is not a word is not echoed", "${p4ss w0rd}", "a",
     "error: a: unknown source in \"${...}\" | hint: sources are ENV and FILE "
     "(upper case): ${ENV:NAME}, ${ENV:NAME:-default}, ${FILE:/path}; write $$ for a literal $"},
    {"empty reference", "${}", "a",
     "error: a: empty reference \"${}\""
     " | hint: use ${ENV:NAME} or ${FILE:/path}; write $$ for a literal $"},
    {"empty name", "${ENV:}", "a", "error: a: empty variable name in \"${ENV:}\""},
    {"ENV without colon", "${ENV}", "a", "error: a: empty variable name in \"${ENV:}\""},
    {"name starting with a digit", "${ENV:9LIVES}", "a",
     "error: a: invalid variable name in \"${ENV:...}\""
     " | hint: names match [A-Za-z_][A-Za-z0-9_]*"},
    {"name with a dash", "${ENV:MY-VAR}", "a",
     "error: a: expected \"}\" or \":-default}\" after \"${ENV:MY\""
     " | hint: names match [A-Za-z_][A-Za-z0-9_]*; a default is written ${ENV:NAME:-default}"},
    {"default without dash is not echoed", "${ENV:SLT_UNSET:hunter2}", "a",
     "error: a: expected \"}\" or \":-default}\" after \"${ENV:SLT_UNSET\""
     " | hint: names match [A-Za-z_][A-Za-z0-9_]*; a default is written ${ENV:NAME:-default}"},
};

#define N_INTERP (sizeof interp_rows / sizeof interp_rows[0])

static void
run_interp(void **state)
{
    const interp_row_t *row = *state;
    char *in = expand(row->in);
    char *out = NULL, *display = NULL;
    bool subst = false;
    sl_err_t err;
    sl_err_clear(&err);
    int rc = sl_cfg_interpolate(in, row->path, &out, &display, &subst, &err);
    char got[RESULT_MAX] = "";
    if (rc == SL_OK)
        cat(got, "ok: %s", out);
    else
        cat_err(got, rc, &err);
    free(out);
    free(display);
    free(in);
    check(got, row->want);
}

/* ------------------------------------------------------------------------ */
/* Display (redaction)                                                       */
/* ------------------------------------------------------------------------ */

typedef struct display_row {
    const char *name;
    const char *in;
    const char *want; /* "<display> (substituted)" or "<display> (literal)" */
} display_row_t;

static const display_row_t display_rows[] = {
    {"password in a URI", "postgresql://app:${ENV:SLT_PW}@h/db",
     "postgresql://app:[redacted]@h/db (substituted)"},
    {"whole value", "${ENV:SLT_PW}", "[redacted] (substituted)"},
    {"default is redacted too", "${ENV:SLT_UNSET:-guest}", "[redacted] (substituted)"},
    {"file contents", "Bearer ${FILE:@TMP@/pw.txt}", "Bearer [redacted] (substituted)"},
    {"each reference separately", "${ENV:SLT_HOST}:${ENV:SLT_PW}",
     "[redacted]:[redacted] (substituted)"},
    {"literal dollars stay visible", "$$${ENV:SLT_PW}$$", "$[redacted]$ (substituted)"},
    {"no reference", "plain", "plain (literal)"},
    {"only escapes", "a$$b", "a$b (literal)"},
};

#define N_DISPLAY (sizeof display_rows / sizeof display_rows[0])

static void
run_display(void **state)
{
    const display_row_t *row = *state;
    char *in = expand(row->in);
    char *out = NULL, *display = NULL;
    bool subst = false;
    sl_err_t err;
    sl_err_clear(&err);
    int rc = sl_cfg_interpolate(in, "a", &out, &display, &subst, &err);
    char got[RESULT_MAX] = "";
    if (rc == SL_OK)
        cat(got, "%s (%s)", display, subst ? "substituted" : "literal");
    else
        cat_err(got, rc, &err);
    free(out);
    free(display);
    free(in);
    check(got, row->want);
}

/* ------------------------------------------------------------------------ */
/* sl_cfg_doc_parse and sl_cfg_doc_load                                      */
/* ------------------------------------------------------------------------ */

typedef struct doc_row {
    const char *name;
    const char *text; /* for doc_rows; a file name for load_rows */
    const char *want; /* "ok: <root> | display: <display>" or "error: ..." */
} doc_row_t;

static const doc_row_t doc_rows[] = {
    {"plain object", "{\"a\": 1, \"b\": [true, null, \"x\"]}",
     "ok: {\"a\":1,\"b\":[true,null,\"x\"]} | display: {\"a\":1,\"b\":[true,null,\"x\"]}"},
    {"line comments", "// head\n{\"a\": 1, // why\n \"b\": 2}\n// tail",
     "ok: {\"a\":1,\"b\":2} | display: {\"a\":1,\"b\":2}"},
    {"block comments", "/* head */{/* k */\"a\"/* : */:/**/1/* multi\nline */}",
     "ok: {\"a\":1} | display: {\"a\":1}"},
    {"comment markers inside strings survive",
     "{\"u\": \"http://h/x\", \"c\": \"/* no */\", \"q\": \"say \\\"// hi\\\"\"} // real",
     "ok: {\"u\":\"http://h/x\",\"c\":\"/* no */\",\"q\":\"say \\\"// hi\\\"\"}"
     " | display: {\"u\":\"http://h/x\",\"c\":\"/* no */\",\"q\":\"say \\\"// hi\\\"\"}"},
    {"escaped backslash before closing quote", "{\"p\": \"C:\\\\\"} // c",
     "ok: {\"p\":\"C:\\\\\"} | display: {\"p\":\"C:\\\\\"}"},
    {"keys are not interpolated", "{\"${ENV:SLT_PW}\": \"v\"}",
     "ok: {\"${ENV:SLT_PW}\":\"v\"} | display: {\"${ENV:SLT_PW}\":\"v\"}"},
    {"strings in nested arrays and objects",
     "{\"p\": [{\"s\": {\"pw\": \"${ENV:SLT_PW}\", \"n\": 3}}, \"${ENV:SLT_HOST}\"]}",
     "ok: {\"p\":[{\"s\":{\"pw\":\"s3cret\",\"n\":3}},\"db.example\"]}"
     " | display: {\"p\":[{\"s\":{\"pw\":\"[redacted]\",\"n\":3}},\"[redacted]\"]}"},
    {"root string", "\"${ENV:SLT_PW}\"", "ok: \"s3cret\" | display: \"[redacted]\""},
    {"escapes only", "{\"a\": \"$$x\"}", "ok: {\"a\":\"$x\"} | display: {\"a\":\"$x\"}"},
    {"missing variable names its path",
     "{\"pipelines\": [{}, {\"sink\": {\"password\": \"${ENV:SLT_UNSET}\"}}]}",
     "error: config.json: pipelines[1].sink.password: environment variable SLT_UNSET is not set"
     " | hint: export SLT_UNSET=... or use ${ENV:SLT_UNSET:-default}"},
    {"bad reference in an array names the index", "{\"tables\": [\"a\", \"b\", \"${X}\"]}",
     "error: config.json: tables[2]: unknown source \"X\" in \"${X:...}\" | hint: sources are ENV "
     "and FILE (upper case): ${ENV:NAME}, ${ENV:NAME:-default}, ${FILE:/path}; write $$ for a "
     "literal $"},
    {"missing comma: line and column", "{\n  \"a\": 1\n  \"b\": 2\n}\n",
     "error: config.json:3:3: invalid JSON near \"\\\"b\\\": 2\" | hint: comments (// and /* */) "
     "are allowed; keys and strings need double quotes"},
    {"trailing comma in object", "{\n  \"a\": 1,\n}\n",
     "error: config.json:3:1: invalid JSON near \"}\""
     " | hint: remove the trailing comma: JSON does not allow one"},
    {"trailing comma in nested object", "{\"a\": {\"b\": 1,}, \"c\": 2}",
     "error: config.json:1:15: invalid JSON near \"}, \\\"c\\\": 2}\""
     " | hint: remove the trailing comma: JSON does not allow one"},
    {"trailing comma in array", "{\n\t\"a\": [1, 2, ]\n}",
     "error: config.json:2:14: invalid JSON near \"]\""
     " | hint: remove the trailing comma: JSON does not allow one"},
    {"position counts characters, comments included", "/* \xc3\xa9t\xc3\xa9 */ {\"a\": tru}",
     "error: config.json:1:17: invalid JSON near \"tru}\" | hint: comments (// and /* */) "
     "are allowed; keys and strings need double quotes"},
    {"single quotes", "{'a': 1}",
     "error: config.json:1:3: invalid JSON near \"a': 1}\" | hint: comments (// and /* */) "
     "are allowed; keys and strings need double quotes"},
    {"unclosed object", "{\"a\": 1",
     "error: config.json:1:8: invalid JSON near end of input"
     " | hint: a bracket, brace or string may be left open"},
    {"trailing garbage", "{} x",
     "error: config.json:1:4: invalid JSON near \"x\" | hint: comments (// and /* */) "
     "are allowed; keys and strings need double quotes"},
    {"unterminated block comment", "{\"a\": 1}\n  /* never closed\n",
     "error: config.json:2:3: unterminated comment | hint: close it with */"},
    {"empty document", "  // nothing\n",
     "error: config.json: configuration is empty | hint: write a JSON object, for example {}"},
};

#define N_DOC (sizeof doc_rows / sizeof doc_rows[0])

static const doc_row_t load_rows[] = {
    {"fixture with comments", "@DATA@/config_ok.json",
     "ok: {\"source\":\"postgresql://app:s3cret@db/app\",\"pipelines\":[{\"name\":\"orders\","
     "\"sink\":{\"type\":\"kafka\",\"brokers\":\"https://k1:9092\"}}]}"
     " | display: {\"source\":\"postgresql://app:[redacted]@db/app\",\"pipelines\":[{\"name\":"
     "\"orders\",\"sink\":{\"type\":\"kafka\",\"brokers\":\"https://k1:9092\"}}]}"},
    {"syntax error names the file", "@DATA@/config_bad.json",
     "error: @DATA@/config_bad.json:5:5: invalid JSON near \"\\\"pipelines\\\": []\""
     " | hint: comments (// and /* */) are allowed; keys and strings need double quotes"},
    {"missing file", "@DATA@/no_such.json",
     "error: cannot read configuration file @DATA@/no_such.json: No such file or directory"},
};

#define N_LOAD (sizeof load_rows / sizeof load_rows[0])

static void
render_doc(char *got, int rc, const sl_cfg_doc_t *doc, const sl_err_t *err)
{
    if (rc != SL_OK) {
        cat_err(got, rc, err);
        return;
    }
    char *root = cJSON_PrintUnformatted(doc->root);
    char *display = cJSON_PrintUnformatted(doc->display);
    assert_non_null(root);
    assert_non_null(display);
    cat(got, "ok: %s | display: %s", root, display);
    cJSON_free(root);
    cJSON_free(display);
}

static void
run_doc(void **state)
{
    const doc_row_t *row = *state;
    char *text = expand(row->text);
    sl_cfg_doc_t doc = {0};
    sl_err_t err;
    sl_err_clear(&err);
    int rc = sl_cfg_doc_parse(text, "config.json", &doc, &err);
    char got[RESULT_MAX] = "";
    render_doc(got, rc, &doc, &err);
    sl_cfg_doc_free(&doc);
    free(text);
    check(got, row->want);
}

static void
run_load(void **state)
{
    const doc_row_t *row = *state;
    char *file = expand(row->text);
    sl_cfg_doc_t doc = {0};
    sl_err_t err;
    sl_err_clear(&err);
    int rc = sl_cfg_doc_load(file, &doc, &err);
    char got[RESULT_MAX] = "";
    render_doc(got, rc, &doc, &err);
    sl_cfg_doc_free(&doc);
    free(file);
    check(got, row->want);
}

/* ------------------------------------------------------------------------ */
/* sl_cfg_object_parse                                                       */
/* ------------------------------------------------------------------------ */

/* A pipeline-like struct. String and list keys come first in the table so a
 * later failure has something to release. */
typedef struct test_pipe {
    char *name;
    sl_strlist_t tables;
    char *password;
    int64_t batch_size;
    int64_t offset;
    bool enabled;
    char *format;
    char *level;
    const cJSON *sink;
    const cJSON *filters;
} test_pipe_t;

static const char *const formats[] = {"json", "msgpack", NULL};
static const char *const levels[] = {"low", "high", NULL};

static const sl_cfg_key_t pipe_keys[] = {
    {.name = "name",
     .type = SL_CFG_STRING,
     .offset = offsetof(test_pipe_t, name),
     .required = true,
     .doc = "pipeline name"},
    {.name = "tables",
     .type = SL_CFG_STRLIST,
     .offset = offsetof(test_pipe_t, tables),
     .def = "[\"public.orders\"]",
     .doc = "tables to read"},
    {.name = "password",
     .type = SL_CFG_STRING,
     .offset = offsetof(test_pipe_t, password),
     .secret = true,
     .doc = "a secret"},
    {.name = "batch_size",
     .type = SL_CFG_INT,
     .offset = offsetof(test_pipe_t, batch_size),
     .def = "500",
     .min = 1,
     .max = 10000,
     .doc = "rows per batch"},
    {.name = "offset",
     .type = SL_CFG_INT,
     .offset = offsetof(test_pipe_t, offset),
     .doc = "any integer"},
    {.name = "enabled",
     .type = SL_CFG_BOOL,
     .offset = offsetof(test_pipe_t, enabled),
     .def = "true",
     .doc = "on or off"},
    {.name = "format",
     .type = SL_CFG_STRING,
     .offset = offsetof(test_pipe_t, format),
     .def = "\"json\"",
     .choices = formats,
     .doc = "wire format"},
    {.name = "level",
     .type = SL_CFG_STRING,
     .offset = offsetof(test_pipe_t, level),
     .choices = levels,
     .secret = true,
     .doc = "a secret enum"},
    {.name = "sink",
     .type = SL_CFG_OBJECT,
     .offset = offsetof(test_pipe_t, sink),
     .required = true,
     .doc = "where messages go"},
    {.name = "filters",
     .type = SL_CFG_ARRAY,
     .offset = offsetof(test_pipe_t, filters),
     .doc = "filters"},
};

#define N_PIPE_KEYS (sizeof pipe_keys / sizeof pipe_keys[0])

typedef struct test_sink {
    char *type;
    char *topic;
    const cJSON *properties;
} test_sink_t;

static const char *const sink_types[] = {"kafka", "stdout", NULL};

static const sl_cfg_key_t sink_keys[] = {
    {.name = "type",
     .type = SL_CFG_STRING,
     .offset = offsetof(test_sink_t, type),
     .required = true,
     .choices = sink_types,
     .doc = "sink type"},
    {.name = "topic",
     .type = SL_CFG_STRING,
     .offset = offsetof(test_sink_t, topic),
     .def = "\"events\"",
     .doc = "topic"},
    {.name = "properties",
     .type = SL_CFG_OBJECT,
     .offset = offsetof(test_sink_t, properties),
     .doc = "librdkafka properties"},
};

#define N_SINK_KEYS (sizeof sink_keys / sizeof sink_keys[0])

typedef enum object_kind {
    OBJ_PIPE,   /* parse `json` with pipe_keys at `path` */
    OBJ_SINK,   /* parse `json` with sink_keys at `path` */
    OBJ_NESTED, /* `json` is {"pipelines":[..]}: parse pipelines[2] and then its sink */
} object_kind_t;

typedef struct object_row {
    const char *name;
    object_kind_t kind;
    const char *json; /* NULL: the object is absent */
    const char *path;
    const char *want; /* "ok: <fields>" or "error: ... | state: <fields>" */
} object_row_t;

/* What a pipe looks like after a failure: every field zeroed. */
#define PIPE_ZERO                                                                          \
    " | state: name=(null) tables=[] password=(null) batch_size=0 offset=0 enabled=false " \
    "format=(null) level=(null) sink=(null) filters=(null)"

#define SINK_ZERO " | state: type=(null) topic=(null) properties=(null)"

#define MIN_PIPE "\"name\": \"orders\", \"sink\": {}"

static const object_row_t object_rows[] = {
    {"defaults apply", OBJ_PIPE, "{" MIN_PIPE "}", "pipelines[0]",
     "ok: name=orders tables=[public.orders] password=(null) batch_size=500 offset=0 "
     "enabled=true format=json level=(null) sink={} filters=(null)"},
    {"every key given", OBJ_PIPE,
     "{" MIN_PIPE ", \"tables\": [\"a\", \"b\"], \"password\": \"pw\", \"batch_size\": 10000,"
     " \"offset\": -7, \"enabled\": false, \"format\": \"msgpack\", \"level\": \"high\","
     " \"filters\": [1]}",
     "pipelines[0]",
     "ok: name=orders tables=[a,b] password=pw batch_size=10000 offset=-7 enabled=false "
     "format=msgpack level=high sink={} filters=[1]"},
    {"empty string list", OBJ_PIPE, "{" MIN_PIPE ", \"tables\": []}", "p",
     "ok: name=orders tables=[] password=(null) batch_size=500 offset=0 enabled=true "
     "format=json level=(null) sink={} filters=(null)"},
    {"integral float and exponent accepted", OBJ_PIPE,
     "{" MIN_PIPE ", \"batch_size\": 2.0, \"offset\": 1e3}", "p",
     "ok: name=orders tables=[public.orders] password=(null) batch_size=2 offset=1000 "
     "enabled=true format=json level=(null) sink={} filters=(null)"},
    {"unknown key with a hint", OBJ_PIPE, "{" MIN_PIPE ", \"batch_sise\": 5}", "pipelines[0]",
     "error: pipelines[0].batch_sise: unknown key | hint: did you mean \"batch_size\"?" PIPE_ZERO},
    {"unknown key differing in case", OBJ_PIPE, "{\"Name\": \"x\", \"sink\": {}}", "p",
     "error: p.Name: unknown key | hint: did you mean \"name\"?" PIPE_ZERO},
    {"unknown key without a close match", OBJ_SINK, "{\"type\": \"kafka\", \"compression\": 1}",
     "pipelines[0].sink",
     "error: pipelines[0].sink.compression: unknown key"
     " | hint: valid keys: \"type\", \"topic\", \"properties\"" SINK_ZERO},
    {"duplicate key", OBJ_PIPE, "{" MIN_PIPE ", \"name\": \"again\"}", "p",
     "error: p.name: duplicate key | hint: each key may appear once in an object" PIPE_ZERO},
    {"missing required key", OBJ_PIPE, "{\"sink\": {}}", "pipelines[0]",
     "error: pipelines[0]: missing required key \"name\""
     " | hint: add \"name\": pipeline name" PIPE_ZERO},
    {"missing required key after filled ones", OBJ_PIPE,
     "{\"name\": \"orders\", \"tables\": [\"a\"], \"password\": \"pw\"}", "pipelines[0]",
     "error: pipelines[0]: missing required key \"sink\""
     " | hint: add \"sink\": where messages go" PIPE_ZERO},
    {"absent object: required key missing", OBJ_SINK, NULL, "pipelines[0].sink",
     "error: pipelines[0].sink: missing required key \"type\""
     " | hint: add \"type\": sink type" SINK_ZERO},
    {"not an object", OBJ_SINK, "[1]", "pipelines[0].sink",
     "error: pipelines[0].sink: expected an object, got array" SINK_ZERO},
    {"empty path names the key alone", OBJ_PIPE, "{" MIN_PIPE ", \"batch_size\": \"10\"}", "",
     "error: batch_size: expected an integer, got string"
     " | hint: \"batch_size\" is rows per batch; `sluice relay --help-config` lists every "
     "key" PIPE_ZERO},
    {"string where an integer is expected", OBJ_PIPE,
     "{" MIN_PIPE ", \"tables\": [\"a\"], \"batch_size\": \"100\"}", "pipelines[0]",
     "error: pipelines[0].batch_size: expected an integer, got string"
     " | hint: \"batch_size\" is rows per batch; `sluice relay --help-config` lists every "
     "key" PIPE_ZERO},
    {"fraction where an integer is expected", OBJ_PIPE, "{" MIN_PIPE ", \"batch_size\": 1.5}",
     "pipelines[0]",
     "error: pipelines[0].batch_size: expected an integer, got 1.5"
     " | hint: \"batch_size\" is rows per batch; `sluice relay --help-config` lists every "
     "key" PIPE_ZERO},
    {"below the range", OBJ_PIPE, "{" MIN_PIPE ", \"batch_size\": 0}", "pipelines[0]",
     "error: pipelines[0].batch_size: must be between 1 and 10000, got 0"
     " | hint: \"batch_size\" is rows per batch; `sluice relay --help-config` lists every "
     "key" PIPE_ZERO},
    {"above the range", OBJ_PIPE, "{" MIN_PIPE ", \"batch_size\": 10001}", "pipelines[0]",
     "error: pipelines[0].batch_size: must be between 1 and 10000, got 10001"
     " | hint: \"batch_size\" is rows per batch; `sluice relay --help-config` lists every "
     "key" PIPE_ZERO},
    {"too large for int64", OBJ_PIPE, "{" MIN_PIPE ", \"offset\": 1e20}", "p",
     "error: p.offset: must be between -9223372036854775808 and 9223372036854775807, "
     "got 1e+20"
     " | hint: \"offset\" is any integer; `sluice relay --help-config` lists every key" PIPE_ZERO},
    {"null is a wrong type", OBJ_PIPE, "{" MIN_PIPE ", \"offset\": null}", "p",
     "error: p.offset: expected an integer, got null"
     " | hint: \"offset\" is any integer; `sluice relay --help-config` lists every key" PIPE_ZERO},
    {"number where a boolean is expected", OBJ_PIPE, "{" MIN_PIPE ", \"enabled\": 1}", "p",
     "error: p.enabled: expected a boolean, got number"
     " | hint: \"enabled\" is on or off; `sluice relay --help-config` lists every key" PIPE_ZERO},
    {"number where a string is expected", OBJ_PIPE, "{\"name\": 5, \"sink\": {}}", "p",
     "error: p.name: expected a string, got number"
     " | hint: \"name\" is pipeline name; `sluice relay --help-config` lists every key" PIPE_ZERO},
    {"value not among choices", OBJ_PIPE, "{" MIN_PIPE ", \"format\": \"xml\"}", "pipelines[0]",
     "error: pipelines[0].format: expected one of \"json\", \"msgpack\", got \"xml\""
     " | hint: \"format\" is wire format; `sluice relay --help-config` lists every key" PIPE_ZERO},
    {"choice typo gets a hint", OBJ_PIPE, "{" MIN_PIPE ", \"format\": \"jsno\"}", "p",
     "error: p.format: expected one of \"json\", \"msgpack\", got \"jsno\""
     " | hint: did you mean \"json\"?" PIPE_ZERO},
    {"secret choice is not echoed", OBJ_PIPE, "{" MIN_PIPE ", \"level\": \"hig\"}", "p",
     "error: p.level: expected one of \"low\", \"high\""
     " | hint: \"level\" is a secret enum; `sluice relay --help-config` lists every key" PIPE_ZERO},
    {"string list with a non-string", OBJ_PIPE, "{" MIN_PIPE ", \"tables\": [\"a\", 2]}",
     "pipelines[0]",
     "error: pipelines[0].tables[1]: expected a string, got number"
     " | hint: \"tables\" is tables to read; `sluice relay --help-config` lists every "
     "key" PIPE_ZERO},
    {"string list given a string", OBJ_PIPE, "{" MIN_PIPE ", \"tables\": \"a\"}", "p",
     "error: p.tables: expected an array of strings, got string"
     " | hint: \"tables\" is tables to read; `sluice relay --help-config` lists every "
     "key" PIPE_ZERO},
    {"object given a string", OBJ_PIPE, "{\"name\": \"o\", \"sink\": \"kafka\"}", "pipelines[0]",
     "error: pipelines[0].sink: expected an object, got string"
     " | hint: \"sink\" is where messages go; `sluice relay --help-config` lists every "
     "key" PIPE_ZERO},
    {"array given an object", OBJ_PIPE, "{" MIN_PIPE ", \"filters\": {}}", "p",
     "error: p.filters: expected an array, got object"
     " | hint: \"filters\" is filters; `sluice relay --help-config` lists every key" PIPE_ZERO},
    {"nested: sink parsed at its path", OBJ_NESTED,
     "{\"pipelines\": [{}, {}, {\"name\": \"c\", \"sink\": {\"type\": \"stdout\","
     " \"properties\": {\"a\": 1}}}]}",
     "pipelines[2]",
     "ok: name=c tables=[public.orders] password=(null) batch_size=500 offset=0 enabled=true "
     "format=json level=(null) sink={\"type\":\"stdout\",\"properties\":{\"a\":1}} "
     "filters=(null) / type=stdout topic=events properties={\"a\":1}"},
    {"nested: error names the full path", OBJ_NESTED,
     "{\"pipelines\": [{}, {}, {\"name\": \"c\", \"sink\": {\"type\": \"kafka\","
     " \"topc\": \"t\"}}]}",
     "pipelines[2]",
     "error: pipelines[2].sink.topc: unknown key | hint: did you mean \"topic\"?" SINK_ZERO},
    {"nested: properties must be an object", OBJ_NESTED,
     "{\"pipelines\": [{}, {}, {\"name\": \"c\", \"sink\": {\"type\": \"kafka\","
     " \"topic\": \"t\", \"properties\": [1]}}]}",
     "pipelines[2]",
     "error: pipelines[2].sink.properties: expected an object, got array"
     " | hint: \"properties\" is librdkafka properties; `sluice relay --help-config` lists every "
     "key" SINK_ZERO},
    {"nested: missing sink type", OBJ_NESTED,
     "{\"pipelines\": [{}, {}, {\"name\": \"c\", \"sink\": {}}]}", "pipelines[2]",
     "error: pipelines[2].sink: missing required key \"type\""
     " | hint: add \"type\": sink type" SINK_ZERO},
};

#define N_OBJECT (sizeof object_rows / sizeof object_rows[0])

static void
cat_json(char *buf, const cJSON *j)
{
    if (j == NULL) {
        cat(buf, "(null)");
        return;
    }
    char *s = cJSON_PrintUnformatted(j);
    assert_non_null(s);
    cat(buf, "%s", s);
    cJSON_free(s);
}

static void
render_pipe(char *buf, const test_pipe_t *p)
{
    cat(buf, "name=%s tables=[", p->name != NULL ? p->name : "(null)");
    for (size_t i = 0; i < p->tables.n; i++)
        cat(buf, "%s%s", i > 0 ? "," : "", p->tables.v[i]);
    cat(buf, "] password=%s batch_size=%lld offset=%lld enabled=%s format=%s level=%s sink=",
        p->password != NULL ? p->password : "(null)", (long long)p->batch_size,
        (long long)p->offset, p->enabled ? "true" : "false",
        p->format != NULL ? p->format : "(null)", p->level != NULL ? p->level : "(null)");
    cat_json(buf, p->sink);
    cat(buf, " filters=");
    cat_json(buf, p->filters);
}

static void
render_sink(char *buf, const test_sink_t *s)
{
    cat(buf, "type=%s topic=%s properties=", s->type != NULL ? s->type : "(null)",
        s->topic != NULL ? s->topic : "(null)");
    cat_json(buf, s->properties);
}

/* Garbage in every field, so the rows prove that a failure zeroes them all. */
#define POISON 0xA5

static void
run_object(void **state)
{
    const object_row_t *row = *state;
    cJSON *json = NULL;
    if (row->json != NULL) {
        json = cJSON_Parse(row->json);
        assert_non_null(json);
    }
    test_pipe_t pipe;
    test_sink_t sink;
    memset(&pipe, POISON, sizeof pipe);
    memset(&sink, POISON, sizeof sink);
    sl_err_t err;
    sl_err_clear(&err);
    char got[RESULT_MAX] = "";
    int rc;

    switch (row->kind) {
    case OBJ_PIPE:
        rc = sl_cfg_object_parse(json, row->path, pipe_keys, N_PIPE_KEYS, &pipe, &err);
        if (rc == SL_OK) {
            cat(got, "ok: ");
            render_pipe(got, &pipe);
            sl_cfg_release(pipe_keys, N_PIPE_KEYS, &pipe);
        } else {
            cat_err(got, rc, &err);
            cat(got, " | state: ");
            render_pipe(got, &pipe);
        }
        break;
    case OBJ_SINK:
        rc = sl_cfg_object_parse(json, row->path, sink_keys, N_SINK_KEYS, &sink, &err);
        if (rc == SL_OK) {
            cat(got, "ok: ");
            render_sink(got, &sink);
            sl_cfg_release(sink_keys, N_SINK_KEYS, &sink);
        } else {
            cat_err(got, rc, &err);
            cat(got, " | state: ");
            render_sink(got, &sink);
        }
        break;
    case OBJ_NESTED: {
        const cJSON *pipelines = cJSON_GetObjectItemCaseSensitive(json, "pipelines");
        const cJSON *pl = cJSON_GetArrayItem(pipelines, 2);
        assert_non_null(pl);
        rc = sl_cfg_object_parse(pl, row->path, pipe_keys, N_PIPE_KEYS, &pipe, &err);
        if (rc != SL_OK) {
            cat_err(got, rc, &err);
            break;
        }
        char sink_path[128];
        snprintf(sink_path, sizeof sink_path, "%s.sink", row->path);
        rc = sl_cfg_object_parse(pipe.sink, sink_path, sink_keys, N_SINK_KEYS, &sink, &err);
        if (rc == SL_OK) {
            cat(got, "ok: ");
            render_pipe(got, &pipe);
            cat(got, " / ");
            render_sink(got, &sink);
            sl_cfg_release(sink_keys, N_SINK_KEYS, &sink);
        } else {
            cat_err(got, rc, &err);
            cat(got, " | state: ");
            render_sink(got, &sink);
        }
        sl_cfg_release(pipe_keys, N_PIPE_KEYS, &pipe);
        break;
    }
    }
    cJSON_Delete(json);
    check(got, row->want);
}

/* ------------------------------------------------------------------------ */
/* Allocation failures inside cJSON                                          */
/* ------------------------------------------------------------------------ */

typedef struct oom_row {
    const char *name;
    const char *text;
} oom_row_t;

static const oom_row_t oom_rows[] = {
    {"nested document with references",
     "{\"source\": \"postgresql://app:${ENV:SLT_PW}@db/app\", // c\n"
     " \"pipelines\": [{\"name\": \"a$$b\", \"sink\": {\"brokers\": [\"${ENV:SLT_HOST}:9092\"],"
     " \"n\": 3, \"ok\": true}}]}"},
    {"root string", "\"${ENV:SLT_PW}\""},
};

#define N_OOM (sizeof oom_rows / sizeof oom_rows[0])

/* Allocations cJSON may still make before failing; -1 for no limit. */
static long oom_budget = -1;
static bool oom_injected;

static void *
oom_malloc(size_t n)
{
    if (oom_budget == 0) {
        oom_injected = true;
        return NULL;
    }
    if (oom_budget > 0)
        oom_budget--;
    return malloc(n);
}

/* Largest number of allocations a row may need; a bound against an endless loop. */
#define OOM_MAX_STEPS 10000

static void
run_oom(void **state)
{
    const oom_row_t *row = *state;
    cJSON_Hooks hooks = {.malloc_fn = oom_malloc, .free_fn = free};
    cJSON_InitHooks(&hooks);
    char got[RESULT_MAX] = "";
    long step;
    for (step = 0; step < OOM_MAX_STEPS; step++) {
        oom_budget = step;
        oom_injected = false;
        sl_cfg_doc_t doc = {0};
        sl_err_t err;
        sl_err_clear(&err);
        int rc = sl_cfg_doc_parse(row->text, "config.json", &doc, &err);
        bool injected = oom_injected;
        bool empty = doc.root == NULL && doc.display == NULL;
        sl_cfg_doc_free(&doc);
        if (!injected) {
            if (rc != SL_OK)
                cat(got, "step %ld: no failure injected, yet: %s; ", step, err.msg);
            break;
        }
        /* cJSON's parser cannot tell a failed allocation from bad syntax. */
        if (rc == SL_OK || !empty || (rc != SL_ENOMEM && rc != SL_EUSAGE))
            cat(got, "step %ld: rc %d, doc %s; ", step, rc, empty ? "empty" : "filled");
    }
    oom_budget = -1;
    cJSON_InitHooks(NULL);
    if (step == OOM_MAX_STEPS)
        cat(got, "never completed; ");
    if (got[0] == '\0')
        cat(got, "every failure reported, then ok");
    assert_string_equal(got, "every failure reported, then ok");
}

/* ------------------------------------------------------------------------ */
/* Small contracts                                                           */
/* ------------------------------------------------------------------------ */

/* _free and _release accept zeroed input, and release leaves fields zeroed. */
static void
test_free_accepts_zeroed(void **state)
{
    sl_cfg_doc_t doc = {0};
    sl_cfg_doc_free(&doc);
    sl_cfg_doc_free(NULL);
    sl_strlist_t l = {0};
    sl_strlist_free(&l);
    sl_strlist_free(NULL);
    test_pipe_t pipe = {0};
    sl_cfg_release(pipe_keys, N_PIPE_KEYS, &pipe);
    char got[RESULT_MAX] = "";
    render_pipe(got, &pipe);
    assert_string_equal(got, "name=(null) tables=[] password=(null) batch_size=0 offset=0 "
                             "enabled=false format=(null) level=(null) sink=(null) "
                             "filters=(null)");
}

/* ------------------------------------------------------------------------ */
/* Registration: one cmocka test per row                                     */
/* ------------------------------------------------------------------------ */

#define N_TESTS (N_INTERP + N_DISPLAY + N_DOC + N_LOAD + N_OBJECT + N_OOM + 1)

static struct CMUnitTest tests[N_TESTS];
static char test_names[N_TESTS][128];

static size_t
add_rows(size_t at, const char *group, void (*fn)(void **), const void *rows, size_t stride,
         size_t n)
{
    for (size_t i = 0; i < n; i++, at++) {
        const void *row = (const char *)rows + i * stride;
        /* Every row type starts with its name. */
        const char *name = *(const char *const *)row;
        snprintf(test_names[at], sizeof test_names[at], "%s: %s", group, name);
        tests[at] = (struct CMUnitTest){
            .name = test_names[at],
            .test_func = fn,
            .initial_state = (void *)(uintptr_t)row,
        };
    }
    return at;
}

int
main(void)
{
    size_t at = 0;
    at = add_rows(at, "interpolate", run_interp, interp_rows, sizeof interp_rows[0], N_INTERP);
    at = add_rows(at, "display", run_display, display_rows, sizeof display_rows[0], N_DISPLAY);
    at = add_rows(at, "doc", run_doc, doc_rows, sizeof doc_rows[0], N_DOC);
    at = add_rows(at, "load", run_load, load_rows, sizeof load_rows[0], N_LOAD);
    at = add_rows(at, "object", run_object, object_rows, sizeof object_rows[0], N_OBJECT);
    at = add_rows(at, "oom", run_oom, oom_rows, sizeof oom_rows[0], N_OOM);
    tests[at++] = (struct CMUnitTest)cmocka_unit_test(test_free_accepts_zeroed);
    if (at != N_TESTS)
        return 1;
    return cmocka_run_group_tests_name("config", tests, group_setup, group_teardown);
}
