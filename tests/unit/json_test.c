/*
 * tests/unit/json_test.c - core/json.c: UTF-8 checks, JSON member spans and
 * base64, which the reverse relay applies to bytes read from Kafka.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "core/core.h"

#include <string.h>

static bool
utf8(const char *s)
{
    return sl_utf8_valid(s, strlen(s));
}

static void
test_utf8(void **state)
{
    assert_true(utf8(""));
    assert_true(utf8("plain ascii"));
    assert_true(utf8("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80")); /* é € 😀 */
    assert_false(utf8("\xc3"));                                     /* truncated */
    assert_false(utf8("\xc0\xaf"));                                 /* overlong '/' */
    assert_false(utf8("\xe0\x80\xaf"));                             /* overlong, 3 bytes */
    assert_false(utf8("\xed\xa0\x80"));                             /* surrogate D800 */
    assert_false(utf8("\xf4\x90\x80\x80"));                         /* above U+10FFFF */
    assert_false(utf8("\x80"));                                     /* lone continuation */
    assert_false(utf8("\xff"));
    assert_false(sl_utf8_valid("a\0b", 3)); /* PostgreSQL text cannot hold NUL */
}

static void
member(const char *json, const char *name, int want, const char *value)
{
    size_t off = 0, len = 0;
    int rc = sl_json_member(json, strlen(json), name, &off, &len);
    assert_int_equal(rc, want);
    if (want == 1) {
        assert_int_equal(len, strlen(value));
        assert_memory_equal(json + off, value, len);
    }
}

static void
test_member(void **state)
{
    member("{\"payload\": {\"n\": 123456789012345678901}, \"headers\": {}}", "payload", 1,
           "{\"n\": 123456789012345678901}");
    member("{\"payload\": {\"n\": 1}, \"headers\": {\"a\": \"}\"}}", "headers", 1,
           "{\"a\": \"}\"}");
    member("{\"a\":\"x\\\"payload\\\"\",\"payload\":[1,{\"b\":[2]}]}", "payload", 1,
           "[1,{\"b\":[2]}]");
    member(" { \"id\" : \"x\" , \"payload\" : 42 } ", "payload", 1, "42");
    member("{\"payload\":null}", "payload", 1, "null");
    member("{\"payload\":\"a\\\\\"}", "payload", 1, "\"a\\\\\"");
    member("{}", "payload", 0, NULL);
    member("{\"pay\\u006coad\": 1}", "payload", 0, NULL); /* escaped spellings never match */
    member("{\"payloads\": 1}", "payload", 0, NULL);
    member("[1, 2]", "payload", -1, NULL);
    member("\"payload\"", "payload", -1, NULL);
}

static void
b64(const char *in, size_t n, const char *want)
{
    sl_buf_t b = {0};
    sl_err_t err;
    sl_err_clear(&err);
    assert_int_equal(sl_buf_append_base64(&b, in, n, &err), SL_OK);
    assert_string_equal(b.data != NULL ? b.data : "", want);
    sl_buf_free(&b);
}

static void
test_base64(void **state)
{
    /* RFC 4648, section 10. */
    b64("", 0, "");
    b64("f", 1, "Zg==");
    b64("fo", 2, "Zm8=");
    b64("foo", 3, "Zm9v");
    b64("foob", 4, "Zm9vYg==");
    b64("fooba", 5, "Zm9vYmE=");
    b64("foobar", 6, "Zm9vYmFy");
    b64("\xff\x00\xfe", 3, "/wD+");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_utf8),
        cmocka_unit_test(test_member),
        cmocka_unit_test(test_base64),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
