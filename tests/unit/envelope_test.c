/*
 * tests/unit/envelope_test.c - the wire envelope and the byte buffer under it.
 *
 * Table-driven, one registered test per row:
 *   - sl_buf_append_json_str(): input bytes -> exact JSON literal;
 *   - sl_buf_*: growth by doubling, NUL termination, reset and free;
 *   - sl_format_parse(): names -> formats or usage errors;
 *   - JSON envelopes compared byte for byte with golden files in
 *     tests/unit/data/envelope_<name>.golden (run with SL_UPDATE_GOLDEN=1 to
 *     rewrite them, then review the diff);
 *   - msgpack envelopes decoded with msgpack-c and checked field by field
 *     through a small path syntax ("payload.arr[2][1].four");
 *   - invalid payload or headers: SL_ERR naming the outbox id, and the output
 *     buffer left as it was.
 */
#include "core/core.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <cjson/cJSON.h>
#include <msgpack.h>

#define ROWS(a) (sizeof(a) / sizeof((a)[0]))

/*
 * Rows are written as "the base message, plus what differs":
 * {BASE_MSG, .key = NULL}. That is exactly what -Woverride-init flags, and
 * here it is the clearest way to show what each row is about.
 */
#if defined(__clang__)
#pragma clang diagnostic ignored "-Winitializer-overrides"
#else
#pragma GCC diagnostic ignored "-Woverride-init"
#endif

/* ------------------------------------------------------------------------ */
/* sl_buf_append_json_str                                                    */
/* ------------------------------------------------------------------------ */

typedef struct escape_row {
    const char *name;
    const char *in;   /* input bytes */
    size_t n;         /* input length (may cover embedded NULs) */
    const char *want; /* exact output, quotes included */
} escape_row_t;

#define ESC(name, lit, want)             \
    {                                    \
        name, lit, sizeof(lit) - 1, want \
    }

static const escape_row_t escape_rows[] = {
    ESC("escape_empty", "", "\"\""),
    ESC("escape_plain", "orders.created", "\"orders.created\""),
    ESC("escape_quote", "say \"hi\"", "\"say \\\"hi\\\"\""),
    ESC("escape_backslash", "C:\\tmp\\", "\"C:\\\\tmp\\\\\""),
    ESC("escape_short_forms", "\b\f\n\r\t", "\"\\b\\f\\n\\r\\t\""),
    ESC("escape_other_controls", "\x01\x1f\x0b", "\"\\u0001\\u001f\\u000b\""),
    ESC("escape_embedded_nul", "a\0b", "\"a\\u0000b\""),
    ESC("escape_slash_and_del_pass", "a/b\x7f", "\"a/b\x7f\""),
    ESC("escape_utf8_passes", "caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x9a\x80",
        "\"caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x9a\x80\""),
    ESC("escape_high_bytes_unchanged", "\xff\x80", "\"\xff\x80\""),
};

static void
test_escape(void **state)
{
    const escape_row_t *row = *state;
    sl_buf_t b = {0};
    sl_err_t err;
    sl_err_clear(&err);
    assert_int_equal(sl_buf_append_json_str(&b, row->in, row->n, &err), SL_OK);
    assert_int_equal(b.len, strlen(row->want));
    assert_memory_equal(b.data, row->want, b.len + 1);
    sl_buf_free(&b);
}

/* ------------------------------------------------------------------------ */
/* sl_buf                                                                    */
/* ------------------------------------------------------------------------ */

static void
test_buf_zeroed_is_empty(void **state)
{
    sl_buf_t b = {0};
    sl_err_t err;
    assert_int_equal(sl_buf_append(&b, "", 0, &err), SL_OK);
    assert_non_null(b.data);
    assert_string_equal(b.data, "");
    sl_buf_free(&b);
    assert_null(b.data);
    sl_buf_free(&b); /* freeing twice is harmless */
    sl_buf_free(NULL);
}

static void
test_buf_growth_doubles(void **state)
{
    sl_buf_t b = {0};
    sl_err_t err;
    size_t grows = 0;
    size_t last_cap = 0;
    for (size_t i = 0; i < 100000; i++) {
        char c = (char)('a' + i % 26);
        assert_int_equal(sl_buf_append(&b, &c, 1, &err), SL_OK);
        assert_int_equal(b.data[b.len], '\0');
        if (b.cap != last_cap) {
            assert_true(last_cap == 0 || b.cap == 2 * last_cap);
            last_cap = b.cap;
            grows++;
        }
    }
    assert_int_equal(b.len, 100000);
    assert_true(grows <= 12); /* 256 << 9 is the first capacity above 100000 */
    size_t cap = b.cap;
    sl_buf_reset(&b);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.cap, cap);
    assert_string_equal(b.data, "");
    assert_int_equal(sl_buf_append_str(&b, "again", &err), SL_OK);
    assert_string_equal(b.data, "again");
    sl_buf_free(&b);
}

static void
test_buf_reserve_overflow(void **state)
{
    sl_buf_t b = {0};
    sl_err_t err;
    sl_err_clear(&err);
    assert_int_equal(sl_buf_append_str(&b, "kept", &err), SL_OK);
    assert_int_equal(sl_buf_reserve(&b, SIZE_MAX - 2, &err), SL_ENOMEM);
    assert_string_equal(b.data, "kept");
    sl_buf_free(&b);
}

/* ------------------------------------------------------------------------ */
/* sl_format_parse                                                           */
/* ------------------------------------------------------------------------ */

typedef struct format_row {
    const char *name; /* test name */
    const char *in;
    int rc;
    sl_format_t want; /* when rc is SL_OK */
} format_row_t;

static const format_row_t format_rows[] = {
    {"format_json", "json", SL_OK, SL_FORMAT_JSON},
    {"format_msgpack", "msgpack", SL_OK, SL_FORMAT_MSGPACK},
    {"format_upper_case_rejected", "JSON", SL_EUSAGE, 0},
    {"format_empty_rejected", "", SL_EUSAGE, 0},
    {"format_unknown_rejected", "avro", SL_EUSAGE, 0},
    {"format_null_rejected", NULL, SL_EUSAGE, 0},
};

static void
test_format(void **state)
{
    const format_row_t *row = *state;
    sl_err_t err;
    sl_err_clear(&err);
    sl_format_t f = (sl_format_t)-1;
    int rc = sl_format_parse(row->in, &f, &err);
    assert_int_equal(rc, row->rc);
    if (rc == SL_OK) {
        assert_int_equal(f, row->want);
    } else {
        assert_non_null(strstr(err.msg, "unknown format"));
        assert_non_null(strstr(err.hint, "msgpack"));
    }
}

/* ------------------------------------------------------------------------ */
/* JSON envelopes against golden files                                       */
/* ------------------------------------------------------------------------ */

/* The message most rows start from: what publish() writes. */
#define BASE_MSG                                                                        \
    .outbox_id = 42, .id = "0190f3c2-7a1b-7c3d-8e4f-0123456789ab", .topic = "orders",   \
    .key = "order-17", .op = "event", .payload = "{\"total\": 99.5, \"order_id\": 17}", \
    .headers = "{}", .ts = "2026-11-21T08:30:00.123456+00:00", .db = "shop", .txid = "7771"

typedef struct golden_row {
    const char *name; /* test name; golden file data/envelope_<name>.golden */
    sl_msg_t msg;
} golden_row_t;

static const golden_row_t golden_rows[] = {
    {"basic", {BASE_MSG}},
    {"null_key",
     {BASE_MSG, .key = NULL, .op = "delete",
      .payload = "{\"before\": {\"id\": 3, \"name\": \"x\"}, \"after\": null}"}},
    {"unicode_and_controls",
     {BASE_MSG, .topic = "commandes.\xc3\xa9t\xc3\xa9 \"q\" \\ \t",
      .key = "cl\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x9a\x80 \"k\"\n\r\x01\x1f",
      .payload = "{\"name\": \"Z\xc3\xbcrich \\u00e9 \\n\"}"}},
    {"nested_payload_headers",
     {BASE_MSG, .op = "update",
      .payload = "{\"a\": [1, 2.5, {\"b\": null, \"c\": [true, false]}], "
                 "\"d\": {\"e\": {\"f\": \"deep\"}}, \"g\": []}",
      .headers = "{\"attempt\": 2, \"trace\": {\"id\": \"abc\", \"sampled\": true}}"}},
    {"limits",
     {BASE_MSG, .outbox_id = INT64_MAX, .txid = "18446744073709551615",
      .payload = "\"a bare string payload\"", .key = ""}},
};

/* Reads a whole file into a malloc'ed string, or NULL when it does not exist. */
static char *
read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    sl_buf_t b = {0};
    sl_err_t err;
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        assert_int_equal(sl_buf_append(&b, chunk, n, &err), SL_OK);
    fclose(f);
    if (b.data == NULL)
        assert_int_equal(sl_buf_append(&b, "", 0, &err), SL_OK);
    return b.data;
}

static void
test_golden(void **state)
{
    const golden_row_t *row = *state;
    char path[512];
    snprintf(path, sizeof path, "%s/envelope_%s.golden", SL_TEST_DATA_DIR, row->name);

    sl_buf_t out = {0};
    sl_err_t err;
    sl_err_clear(&err);
    assert_int_equal(sl_envelope_encode(&row->msg, SL_FORMAT_JSON, &out, &err), SL_OK);
    assert_int_equal(strlen(out.data), out.len);

    /* Whatever the golden file says, the envelope must be valid JSON. */
    cJSON *parsed = cJSON_Parse(out.data);
    assert_non_null(parsed);
    cJSON_Delete(parsed);

    if (getenv("SL_UPDATE_GOLDEN") != NULL) {
        FILE *f = fopen(path, "wb");
        assert_non_null(f);
        fprintf(f, "%s\n", out.data);
        fclose(f);
    }
    char *want = read_file(path);
    if (want == NULL) {
        sl_buf_free(&out);
        fail_msg("missing golden file %s (run with SL_UPDATE_GOLDEN=1)", path);
    }
    /* Golden files end with one newline so that they diff well. */
    size_t n = strlen(want);
    if (n > 0 && want[n - 1] == '\n')
        want[n - 1] = '\0';
    bool same = strcmp(out.data, want) == 0;
    if (!same)
        print_error("got:  %s\nwant: %s\n", out.data, want);
    free(want);
    sl_buf_free(&out);
    assert_true(same);
}

/* Encoding appends: what the buffer held before is kept. */
static void
test_json_appends(void **state)
{
    const sl_msg_t m = {BASE_MSG};
    sl_buf_t out = {0};
    sl_err_t err;
    assert_int_equal(sl_buf_append_str(&out, "prefix|", &err), SL_OK);
    assert_int_equal(sl_envelope_encode(&m, SL_FORMAT_JSON, &out, &err), SL_OK);
    assert_memory_equal(out.data, "prefix|{\"id\":", 13);
    sl_buf_free(&out);
}

/* ------------------------------------------------------------------------ */
/* msgpack envelopes, decoded field by field                                 */
/* ------------------------------------------------------------------------ */

static const sl_msg_t mp_msg = {
    BASE_MSG,
    .outbox_id = 1234567890123,
    .txid = "18446744073709551615",
    .payload = "{\"int\": 42, \"neg\": -7, \"zero\": 0, \"minus_zero\": -0, "
               "\"max\": 9223372036854775807, \"min\": -9223372036854775808, "
               "\"over\": 9223372036854775808, \"under\": -9223372036854775809, "
               "\"snowflake\": 1234567890123456789, "
               "\"float\": 1.5, \"int_valued_float\": 10.0, \"exp\": 1e2, "
               "\"small\": -2.5e-3, \"t\": true, \"f\": false, \"n\": null, "
               "\"s\": \"h\\u00e9llo \\\"q\\\"\\n\", \"utf8\": \"\xe6\x97\xa5\", "
               "\"arr\": [1, \"two\", [3, {\"four\": 4}]], "
               "\"obj\": {\"a\": {\"b\": {\"c\": \"deep\"}}}, "
               "\"empty_obj\": {}, \"empty_arr\": []}",
    .headers = "{\"trace_id\": \"abc\", \"attempt\": 2}",
};

static const sl_msg_t mp_msg_null_key = {BASE_MSG, .key = NULL, .payload = "[1, 2.25]"};

typedef enum want_type {
    W_NIL,
    W_BOOL,
    W_INT,   /* int64: a positive or negative msgpack integer */
    W_FLOAT, /* float64 */
    W_STR,
    W_ARRAY, /* array of n elements */
    W_MAP,   /* map of n entries */
} want_type_t;

typedef struct mp_row {
    const char *name;
    const sl_msg_t *msg;
    const char *path; /* "payload.arr[2][1].four"; "" is the envelope itself */
    want_type_t type;
    int64_t i;     /* W_BOOL, W_INT; W_ARRAY/W_MAP: element count */
    double f;      /* W_FLOAT */
    const char *s; /* W_STR */
} mp_row_t;

static const mp_row_t mp_rows[] = {
    {"mp_envelope_is_map_of_9", &mp_msg, "", W_MAP, .i = 9},
    {"mp_id", &mp_msg, "id", W_STR, .s = "0190f3c2-7a1b-7c3d-8e4f-0123456789ab"},
    {"mp_topic", &mp_msg, "topic", W_STR, .s = "orders"},
    {"mp_op", &mp_msg, "op", W_STR, .s = "event"},
    {"mp_key", &mp_msg, "key", W_STR, .s = "order-17"},
    {"mp_key_null", &mp_msg_null_key, "key", W_NIL, .i = 0},
    {"mp_ts", &mp_msg, "ts", W_STR, .s = "2026-11-21T08:30:00.123456+00:00"},
    {"mp_outbox_id_int", &mp_msg, "outbox_id", W_INT, .i = 1234567890123},
    {"mp_source_is_map_of_2", &mp_msg, "source", W_MAP, .i = 2},
    {"mp_source_db", &mp_msg, "source.db", W_STR, .s = "shop"},
    {"mp_source_txid_string", &mp_msg, "source.txid", W_STR, .s = "18446744073709551615"},
    {"mp_headers_map", &mp_msg, "headers", W_MAP, .i = 2},
    {"mp_headers_str", &mp_msg, "headers.trace_id", W_STR, .s = "abc"},
    {"mp_headers_int", &mp_msg, "headers.attempt", W_INT, .i = 2},
    {"mp_payload_map", &mp_msg, "payload", W_MAP, .i = 22},
    {"mp_payload_array", &mp_msg_null_key, "payload", W_ARRAY, .i = 2},
    {"mp_payload_array_float", &mp_msg_null_key, "payload[1]", W_FLOAT, .f = 2.25},
    {"mp_int", &mp_msg, "payload.int", W_INT, .i = 42},
    {"mp_negative_int", &mp_msg, "payload.neg", W_INT, .i = -7},
    {"mp_zero", &mp_msg, "payload.zero", W_INT, .i = 0},
    {"mp_minus_zero_is_int", &mp_msg, "payload.minus_zero", W_INT, .i = 0},
    {"mp_int64_max", &mp_msg, "payload.max", W_INT, .i = INT64_MAX},
    {"mp_int64_min", &mp_msg, "payload.min", W_INT, .i = INT64_MIN},
    {"mp_above_int64_is_float", &mp_msg, "payload.over", W_FLOAT, .f = 9223372036854775808.0},
    {"mp_below_int64_is_float", &mp_msg, "payload.under", W_FLOAT, .f = -9223372036854775809.0},
    {"mp_int_beyond_2_53_exact", &mp_msg, "payload.snowflake", W_INT, .i = 1234567890123456789},
    {"mp_float", &mp_msg, "payload.float", W_FLOAT, .f = 1.5},
    {"mp_fraction_stays_float", &mp_msg, "payload.int_valued_float", W_FLOAT, .f = 10.0},
    {"mp_exponent_stays_float", &mp_msg, "payload.exp", W_FLOAT, .f = 100.0},
    {"mp_small_float", &mp_msg, "payload.small", W_FLOAT, .f = -2.5e-3},
    {"mp_true", &mp_msg, "payload.t", W_BOOL, .i = 1},
    {"mp_false", &mp_msg, "payload.f", W_BOOL, .i = 0},
    {"mp_null", &mp_msg, "payload.n", W_NIL, .i = 0},
    {"mp_string_unescaped", &mp_msg, "payload.s", W_STR, .s = "h\xc3\xa9llo \"q\"\n"},
    {"mp_string_utf8", &mp_msg, "payload.utf8", W_STR, .s = "\xe6\x97\xa5"},
    {"mp_array", &mp_msg, "payload.arr", W_ARRAY, .i = 3},
    {"mp_array_int", &mp_msg, "payload.arr[0]", W_INT, .i = 1},
    {"mp_array_str", &mp_msg, "payload.arr[1]", W_STR, .s = "two"},
    {"mp_nested_array", &mp_msg, "payload.arr[2]", W_ARRAY, .i = 2},
    {"mp_map_in_array", &mp_msg, "payload.arr[2][1].four", W_INT, .i = 4},
    {"mp_nested_map", &mp_msg, "payload.obj.a.b.c", W_STR, .s = "deep"},
    {"mp_empty_map", &mp_msg, "payload.empty_obj", W_MAP, .i = 0},
    {"mp_empty_array", &mp_msg, "payload.empty_arr", W_ARRAY, .i = 0},
};

/* Encodes m as msgpack and unpacks it into *obj (zone owned by *up). */
static void
mp_decode(const sl_msg_t *m, sl_buf_t *out, msgpack_unpacked *up)
{
    sl_err_t err;
    sl_err_clear(&err);
    assert_int_equal(sl_envelope_encode(m, SL_FORMAT_MSGPACK, out, &err), SL_OK);
    size_t off = 0;
    msgpack_unpacked_init(up);
    assert_int_equal(msgpack_unpack_next(up, out->data, out->len, &off), MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(off, out->len); /* exactly one object, nothing after it */
}

static bool
mp_str_is(const msgpack_object *o, const char *s, size_t n)
{
    return o->type == MSGPACK_OBJECT_STR && o->via.str.size == n &&
           memcmp(o->via.str.ptr, s, n) == 0;
}

/* Follows path from o; fails the test when a step does not exist. */
static const msgpack_object *
mp_lookup(const msgpack_object *o, const char *path)
{
    const char *p = path;
    while (*p != '\0') {
        if (*p == '.') {
            p++;
        } else if (*p == '[') {
            char *end;
            unsigned long idx = strtoul(p + 1, &end, 10);
            assert_int_equal(*end, ']');
            assert_int_equal(o->type, MSGPACK_OBJECT_ARRAY);
            assert_true(idx < o->via.array.size);
            o = &o->via.array.ptr[idx];
            p = end + 1;
        } else {
            size_t n = strcspn(p, ".[");
            assert_int_equal(o->type, MSGPACK_OBJECT_MAP);
            const msgpack_object *found = NULL;
            for (uint32_t i = 0; i < o->via.map.size && found == NULL; i++)
                if (mp_str_is(&o->via.map.ptr[i].key, p, n))
                    found = &o->via.map.ptr[i].val;
            if (found == NULL)
                fail_msg("no key \"%.*s\" in path \"%s\"", (int)n, p, path);
            o = found;
            p += n;
        }
    }
    return o;
}

static void
test_mp(void **state)
{
    const mp_row_t *row = *state;
    sl_buf_t out = {0};
    msgpack_unpacked up;
    mp_decode(row->msg, &out, &up);
    const msgpack_object *o = mp_lookup(&up.data, row->path);

    switch (row->type) {
    case W_NIL: assert_int_equal(o->type, MSGPACK_OBJECT_NIL); break;
    case W_BOOL:
        assert_int_equal(o->type, MSGPACK_OBJECT_BOOLEAN);
        assert_int_equal(o->via.boolean, row->i != 0);
        break;
    case W_INT:
        if (row->i >= 0) {
            assert_int_equal(o->type, MSGPACK_OBJECT_POSITIVE_INTEGER);
            assert_true(o->via.u64 == (uint64_t)row->i);
        } else {
            assert_int_equal(o->type, MSGPACK_OBJECT_NEGATIVE_INTEGER);
            assert_true(o->via.i64 == row->i);
        }
        break;
    case W_FLOAT:
        assert_int_equal(o->type, MSGPACK_OBJECT_FLOAT64);
        assert_true(o->via.f64 == row->f);
        break;
    case W_STR:
        if (!mp_str_is(o, row->s, strlen(row->s)))
            fail_msg("%s: want string \"%s\", got type %d", row->path, row->s, (int)o->type);
        break;
    case W_ARRAY:
        assert_int_equal(o->type, MSGPACK_OBJECT_ARRAY);
        assert_int_equal(o->via.array.size, row->i);
        break;
    case W_MAP:
        assert_int_equal(o->type, MSGPACK_OBJECT_MAP);
        assert_int_equal(o->via.map.size, row->i);
        break;
    }
    msgpack_unpacked_destroy(&up);
    sl_buf_free(&out);
}

/* The msgpack map keys come in the same order as the JSON keys. */
static void
test_mp_key_order(void **state)
{
    static const char *const want[] = {"id",      "topic", "op",        "key",   "payload",
                                       "headers", "ts",    "outbox_id", "source"};
    sl_buf_t out = {0};
    msgpack_unpacked up;
    mp_decode(&mp_msg, &out, &up);
    assert_int_equal(up.data.type, MSGPACK_OBJECT_MAP);
    assert_int_equal(up.data.via.map.size, ROWS(want));
    for (size_t i = 0; i < ROWS(want); i++)
        assert_true(mp_str_is(&up.data.via.map.ptr[i].key, want[i], strlen(want[i])));
    const msgpack_object *src = mp_lookup(&up.data, "source");
    assert_true(mp_str_is(&src->via.map.ptr[0].key, "db", 2));
    assert_true(mp_str_is(&src->via.map.ptr[1].key, "txid", 4));
    msgpack_unpacked_destroy(&up);
    sl_buf_free(&out);
}

/* ------------------------------------------------------------------------ */
/* Invalid input                                                             */
/* ------------------------------------------------------------------------ */

typedef struct bad_row {
    const char *name;
    sl_format_t format;
    const char *payload;
    const char *headers;
    const char *want; /* substring of the error message */
} bad_row_t;

static const bad_row_t bad_rows[] = {
    {"bad_unclosed_object", SL_FORMAT_MSGPACK, "{\"a\": 1", "{}",
     "outbox id 1234: payload is not valid JSON (error at byte 7"},
    {"bad_missing_value", SL_FORMAT_MSGPACK, "{\"a\": }", "{}", "payload is not valid JSON"},
    {"bad_trailing_comma", SL_FORMAT_MSGPACK, "[1, 2,]", "{}", "payload is not valid JSON"},
    {"bad_bare_word", SL_FORMAT_MSGPACK, "nul", "{}", "payload is not valid JSON"},
    {"bad_trailing_garbage", SL_FORMAT_MSGPACK, "{\"a\": 1} x", "{}",
     "payload is not valid JSON (error at byte 9"},
    {"bad_headers", SL_FORMAT_MSGPACK, "{}", "{\"h\": ", "outbox id 1234: headers is not valid"},
    {"bad_empty_payload_msgpack", SL_FORMAT_MSGPACK, "", "{}", "outbox id 1234: payload is empty"},
    {"bad_empty_payload_json", SL_FORMAT_JSON, "", "{}", "outbox id 1234: payload is empty"},
    {"bad_empty_headers_json", SL_FORMAT_JSON, "{}", "", "outbox id 1234: headers are empty"},
};

static void
test_bad(void **state)
{
    const bad_row_t *row = *state;
    sl_msg_t m = {BASE_MSG, .outbox_id = 1234, .payload = row->payload, .headers = row->headers};
    sl_buf_t out = {0};
    sl_err_t err;
    sl_err_clear(&err);
    assert_int_equal(sl_buf_append_str(&out, "kept", &err), SL_OK);
    assert_int_equal(sl_envelope_encode(&m, row->format, &out, &err), SL_ERR);
    if (strstr(err.msg, row->want) == NULL)
        fail_msg("error \"%s\" does not contain \"%s\"", err.msg, row->want);
    /* Failure is atomic: the buffer is as it was. */
    assert_int_equal(out.len, 4);
    assert_string_equal(out.data, "kept");
    sl_buf_free(&out);
}

/* cJSON refuses nesting deeper than CJSON_NESTING_LIMIT; so does the encoder. */
static void
test_bad_too_deep(void **state)
{
    enum { DEPTH = CJSON_NESTING_LIMIT + 1 };
    char *payload = malloc(2 * DEPTH + 1);
    assert_non_null(payload);
    memset(payload, '[', DEPTH);
    memset(payload + DEPTH, ']', DEPTH);
    payload[2 * DEPTH] = '\0';
    sl_msg_t m = {BASE_MSG, .payload = payload};
    sl_buf_t out = {0};
    sl_err_t err;
    sl_err_clear(&err);
    assert_int_equal(sl_envelope_encode(&m, SL_FORMAT_MSGPACK, &out, &err), SL_ERR);
    assert_non_null(strstr(err.msg, "nesting is limited"));
    assert_int_equal(out.len, 0);
    sl_buf_free(&out);
    free(payload);
}

/* ------------------------------------------------------------------------ */

/* Appends one test per row of a table to tests. */
#define ADD_ROWS(table, func)                                                                  \
    for (size_t i = 0; i < ROWS(table); i++)                                                   \
        tests[n++] = (struct CMUnitTest)                                                       \
        {                                                                                      \
            .name = (table)[i].name, .test_func = (func), .initial_state = (void *)&(table)[i] \
        }

#define ADD(func) tests[n++] = (struct CMUnitTest)cmocka_unit_test(func)

int
main(void)
{
    struct CMUnitTest tests[ROWS(escape_rows) + ROWS(format_rows) + ROWS(golden_rows) +
                            ROWS(mp_rows) + ROWS(bad_rows) + 16];
    size_t n = 0;
    ADD_ROWS(escape_rows, test_escape);
    ADD(test_buf_zeroed_is_empty);
    ADD(test_buf_growth_doubles);
    ADD(test_buf_reserve_overflow);
    ADD_ROWS(format_rows, test_format);
    ADD_ROWS(golden_rows, test_golden);
    ADD(test_json_appends);
    ADD_ROWS(mp_rows, test_mp);
    ADD(test_mp_key_order);
    ADD_ROWS(bad_rows, test_bad);
    ADD(test_bad_too_deep);
    if (n > ROWS(tests))
        abort();
    return _cmocka_run_group_tests("envelope", tests, n, NULL, NULL);
}
