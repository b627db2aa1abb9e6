/*
 * core/core.h - the one public header of sluice's leaf library.
 *
 * core/ knows nothing about outboxes, pipelines or Kafka. It gives every other
 * folder the same small vocabulary:
 *
 *   - return codes and the error object (sl_err_t) that every fallible
 *     function takes last;
 *   - structured logging, one line per event, key=value;
 *   - the exponential backoff schedule used for every reconnect;
 *   - the JSON configuration loader: comments, ${ENV:..}/${FILE:..}
 *     interpolation, redaction, and a table-driven object validator;
 *   - embedded SQL files and the catalog migration runner;
 *   - small libpq helpers.
 *
 * Threading: nothing here is thread-safe unless stated; sluice runs all of its
 * work on one libuv loop thread.
 */
#ifndef SL_CORE_H
#define SL_CORE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

struct cJSON;
struct pg_conn;
struct pg_result;
struct uv_loop_s;

/* ------------------------------------------------------------------------ */
/* Return codes                                                              */
/* ------------------------------------------------------------------------ */

/*
 * Fallible functions return int: 0 on success, a positive value for outcomes
 * that are not errors (AGAIN, DONE), a negative value on failure. On failure
 * the error object passed last has been filled.
 */
#define SL_OK 0
#define SL_AGAIN 1     /* not ready yet: call again when woken */
#define SL_DONE 2      /* nothing more to do */
#define SL_ERR (-1)    /* runtime failure (exit code 1 at the top) */
#define SL_EUSAGE (-2) /* usage or configuration error (exit code 2) */
#define SL_ENOMEM (-3) /* allocation failed */

/* Process exit codes, documented in docs/operations.md. */
#define SL_EXIT_OK 0
#define SL_EXIT_RUNTIME 1
#define SL_EXIT_USAGE 2

/* ------------------------------------------------------------------------ */
/* Errors                                                                    */
/* ------------------------------------------------------------------------ */

#define SL_ERR_MSG_MAX 1024
#define SL_ERR_HINT_MAX 512

/*
 * An error: message, optional hint, and the native code of the layer that
 * failed. Lives on the caller's stack; filling it never allocates.
 * Messages are lower case without a final period, like PostgreSQL's.
 */
typedef struct sl_err {
    int code;                   /* SL_ERR, SL_EUSAGE or SL_ENOMEM */
    int native;                 /* uv errno, rd_kafka_resp_err_t, ... or 0 */
    char sqlstate[6];           /* PostgreSQL SQLSTATE, "" when none */
    char msg[SL_ERR_MSG_MAX];   /* what went wrong, with context */
    char hint[SL_ERR_HINT_MAX]; /* how to fix it, "" when none */
} sl_err_t;

/* Resets err to "no error". */
void sl_err_clear(sl_err_t *err);

/* Fills err->msg (and code) and returns code, so `return sl_err_set(...)` works. */
int sl_err_set(sl_err_t *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Sets the hint. Returns err->code. */
int sl_err_hint(sl_err_t *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prepends context: "pipeline \"x\": " + old message. Returns err->code. */
int sl_err_prefix(sl_err_t *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Shorthand for an allocation failure; returns SL_ENOMEM. */
int sl_err_nomem(sl_err_t *err, const char *what);

/* ------------------------------------------------------------------------ */
/* Logging                                                                   */
/* ------------------------------------------------------------------------ */

typedef enum sl_log_level {
    SL_LOG_DEBUG,
    SL_LOG_INFO,
    SL_LOG_WARN,
    SL_LOG_ERROR,
} sl_log_level_t;

/* Sets the minimum level written (default INFO). Runs on any thread at start-up. */
void sl_log_set_level(sl_log_level_t level);

/* Parses "debug", "info", "warn", "error". Returns SL_OK or SL_EUSAGE. */
int sl_log_level_parse(const char *name, sl_log_level_t *out, sl_err_t *err);

/*
 * Writes one line to stderr:
 *   ts=2026-11-21T08:30:00.123Z level=info event=<event> <fmt...>
 * fmt is more key=value pairs; quote free text with sl_log_quote().
 */
void sl_log(sl_log_level_t level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define sl_log_debug(ev, ...) sl_log(SL_LOG_DEBUG, ev, __VA_ARGS__)
#define sl_log_info(ev, ...) sl_log(SL_LOG_INFO, ev, __VA_ARGS__)
#define sl_log_warn(ev, ...) sl_log(SL_LOG_WARN, ev, __VA_ARGS__)
#define sl_log_error(ev, ...) sl_log(SL_LOG_ERROR, ev, __VA_ARGS__)

/* True when a line at this level would be written. */
bool sl_log_is_enabled(sl_log_level_t level);

/*
 * Writes s into buf as a double-quoted value with ", \ and control
 * characters escaped, truncating (with "...") to fit n. Returns buf.
 */
const char *sl_log_quote(char *buf, size_t n, const char *s);

/* ------------------------------------------------------------------------ */
/* Time                                                                      */
/* ------------------------------------------------------------------------ */

/* Monotonic milliseconds and microseconds. */
uint64_t sl_now_ms(void);
uint64_t sl_now_us(void);

/* ------------------------------------------------------------------------ */
/* Backoff                                                                   */
/* ------------------------------------------------------------------------ */

/* Defaults from DESIGN.md: 100 ms initial, 30 s cap, +/-20 % jitter. */
#define SL_BACKOFF_INITIAL_MS 100
#define SL_BACKOFF_CAP_MS 30000
#define SL_BACKOFF_JITTER_PCT 20
/* A connection that stayed healthy this long starts again from the initial delay. */
#define SL_BACKOFF_HEALTHY_MS 60000

typedef struct sl_backoff {
    uint32_t initial_ms;       /* first delay */
    uint32_t cap_ms;           /* delays never exceed this (before jitter) */
    uint32_t jitter_pct;       /* each delay is scaled by a random factor in [1-j, 1+j] */
    uint32_t healthy_ms;       /* success lasting this long resets the schedule */
    uint32_t attempt;          /* attempts since the last reset */
    uint64_t healthy_since_ms; /* when the last success started, 0 = not healthy */
    uint64_t rng;              /* xorshift state; seed with sl_backoff_init */
} sl_backoff_t;

/* Sets the DESIGN.md defaults and seeds the jitter generator. */
void sl_backoff_init(sl_backoff_t *bo, uint64_t seed);

/*
 * Returns the delay before the next attempt and counts the attempt. The
 * un-jittered delay is initial * 2^attempt, capped at cap_ms.
 */
uint32_t sl_backoff_next(sl_backoff_t *bo);

/* Records a successful connect at now_ms (the healthy period starts). */
void sl_backoff_success(sl_backoff_t *bo, uint64_t now_ms);

/* Records a failure at now_ms: resets the attempt count first when the
 * connection had been healthy for at least healthy_ms. */
void sl_backoff_failure(sl_backoff_t *bo, uint64_t now_ms);

/* ------------------------------------------------------------------------ */
/* Configuration                                                             */
/* ------------------------------------------------------------------------ */

/*
 * A loaded configuration document. `root` is the resolved tree (every
 * ${ENV:..}/${FILE:..} substituted); `display` is the same tree with every
 * substituted part replaced by "[redacted]", safe to print or log.
 */
typedef struct sl_cfg_doc {
    struct cJSON *root;    /* owned */
    struct cJSON *display; /* owned */
    struct sl_strlist {
        char **v;
        size_t n;
    } secrets; /* owned: every value a ${...} produced */
} sl_cfg_doc_t;

/*
 * Interpolates one string. Supported forms:
 *   ${ENV:NAME}            value of NAME; error if unset
 *   ${ENV:NAME:-default}   value of NAME, or default when unset or empty
 *   ${FILE:/path}          contents of the file, one trailing newline removed
 *   $$                     a literal '$'
 * `path` names the JSON location for error messages ("pipelines[0].sink.brokers").
 * On success *out (caller frees with free()) holds the result and *display
 * (caller frees) the same string with substitutions shown as "[redacted]";
 * *substituted tells whether anything was substituted.
 */
int sl_cfg_interpolate(const char *in, const char *path, char **out, char **display,
                       bool *substituted, sl_err_t *err);

/* Parses JSON text (// and block comments allowed) and interpolates every string.
 * `origin` names the source in errors (a file name). Fills doc on success. */
int sl_cfg_doc_parse(const char *text, const char *origin, sl_cfg_doc_t *doc, sl_err_t *err);

/* Reads a file and calls sl_cfg_doc_parse. */
int sl_cfg_doc_load(const char *file, sl_cfg_doc_t *doc, sl_err_t *err);

/* Frees both trees; accepts a zeroed doc. */
void sl_cfg_doc_free(sl_cfg_doc_t *doc);

/*
 * Replaces, in err's message and hint, every value that a ${ENV:..} or
 * ${FILE:..} of doc produced with "[redacted]". Validators may echo a bad
 * value to help the user; this keeps secrets out of what reaches the user
 * whatever the validator printed.
 */
void sl_cfg_doc_scrub(const sl_cfg_doc_t *doc, sl_err_t *err);

typedef enum sl_cfg_type {
    SL_CFG_STRING,  /* char *, owned by the struct (free with sl_cfg_release) */
    SL_CFG_INT,     /* int64_t */
    SL_CFG_BOOL,    /* bool */
    SL_CFG_STRLIST, /* sl_strlist_t, owned */
    SL_CFG_OBJECT,  /* const struct cJSON *, borrowed from the doc (validated by the caller) */
    SL_CFG_ARRAY,   /* const struct cJSON *, borrowed from the doc (validated by the caller) */
} sl_cfg_type_t;

/* A list of owned strings (declared inside sl_cfg_doc_t above). */
typedef struct sl_strlist sl_strlist_t;

/*
 * One configuration key. A table of these describes one JSON object: it
 * drives parsing, validation, defaults, `--help`, the docs and redaction.
 */
typedef struct sl_cfg_key {
    const char *name; /* JSON key */
    sl_cfg_type_t type;
    size_t offset; /* offsetof() the field in the target struct */
    bool required;
    const char *def;  /* default as JSON text ("1000", "\"json\"", "true"), NULL for none */
    int64_t min, max; /* inclusive range for SL_CFG_INT */
    const char *const *choices; /* NULL-terminated allowed values for SL_CFG_STRING, or NULL */
    bool secret;                /* always shown as [redacted] */
    const char *doc;            /* one line for --help and docs */
} sl_cfg_key_t;

/*
 * Fills the struct at `out` from JSON object `obj` using `keys`. Errors name
 * the JSON path ("pipelines[1].sink.topic: expected a string, got number"):
 * unknown keys (with the nearest valid key as a hint), wrong types, missing
 * required keys, out-of-range integers, values not among `choices`.
 * `obj` NULL means "absent": defaults apply and required keys fail.
 * On failure, whatever was already filled is released.
 */
int sl_cfg_object_parse(const struct cJSON *obj, const char *path, const sl_cfg_key_t *keys,
                        size_t nkeys, void *out, sl_err_t *err);

/* Frees the owned fields (strings, lists) described by keys; leaves them zeroed. */
void sl_cfg_release(const sl_cfg_key_t *keys, size_t nkeys, void *out);

/* Prints a key table as reference text: name, type, default, doc, one per
 * line, each prefixed by indent. Drives --help and docs. (core/cfghelp.c) */
void sl_cfg_keys_help(FILE *out, const sl_cfg_key_t *keys, size_t nkeys, const char *indent);

/* Frees a list's strings and array; accepts a zeroed list. */
void sl_strlist_free(sl_strlist_t *l);

/* ------------------------------------------------------------------------ */
/* Embedded SQL and migrations                                               */
/* ------------------------------------------------------------------------ */

/* One SQL file embedded at build time (cmake/embed_sql.cmake). */
typedef struct sl_sql_file {
    const char *name; /* "0001_outbox.sql" */
    const char *text; /* NUL-terminated SQL */
} sl_sql_file_t;

/*
 * Applies numbered migrations to schema `sluice`. `files` are ordered; the
 * number before '_' in each name is its version. Under an advisory lock, each
 * missing version runs in its own transaction and is recorded in
 * sluice.schema_version. A database whose recorded version is newer than the
 * newest file is refused. *applied (optional) receives how many ran.
 * Runs blocking; used only by `sluice init` and tests.
 */
int sl_migrate(struct pg_conn *conn, const sl_sql_file_t *files, size_t nfiles, int *applied,
               sl_err_t *err);

/* ------------------------------------------------------------------------ */
/* libpq helpers                                                             */
/* ------------------------------------------------------------------------ */

/* Connects (blocking), sets application_name, checks server >= 15. */
int sl_pg_connect(const char *conninfo, const char *app, struct pg_conn **out, sl_err_t *err);

/* Runs a command that returns no rows (blocking). Fills err with the server
 * message, SQLSTATE and hint on failure. */
int sl_pg_exec(struct pg_conn *conn, const char *sql, sl_err_t *err);

/* Fills err from a failed PGresult (message, detail, hint, SQLSTATE). */
struct pg_result;
int sl_pg_result_err(const struct pg_result *res, struct pg_conn *conn, sl_err_t *err);

/* Removes a password from a conninfo/URI for logs: writes a copy to buf. */
const char *sl_pg_conninfo_redact(const char *conninfo, char *buf, size_t n);

/* ------------------------------------------------------------------------ */
/* Growable byte buffer                                                      */
/* ------------------------------------------------------------------------ */

/* A reusable buffer: reset between messages so hot paths do not allocate. */
typedef struct sl_buf {
    char *data; /* owned, NUL-terminated after every append */
    size_t len; /* bytes used, excluding the terminating NUL */
    size_t cap; /* bytes allocated */
} sl_buf_t;

/* Ensures room for `extra` more bytes plus a NUL. */
int sl_buf_reserve(sl_buf_t *b, size_t extra, sl_err_t *err);
int sl_buf_append(sl_buf_t *b, const void *data, size_t n, sl_err_t *err);
int sl_buf_append_str(sl_buf_t *b, const char *s, sl_err_t *err);
/* Appends s as a JSON string literal (quotes and escapes included). */
int sl_buf_append_json_str(sl_buf_t *b, const char *s, size_t n, sl_err_t *err);
/* Appends n bytes as RFC 4648 base64 (with padding). */
int sl_buf_append_base64(sl_buf_t *b, const void *data, size_t n, sl_err_t *err);
void sl_buf_reset(sl_buf_t *b);
void sl_buf_free(sl_buf_t *b);

/* ------------------------------------------------------------------------ */
/* Bytes from outside PostgreSQL (core/json.c)                              */
/* ------------------------------------------------------------------------ */

/* True when s[0..n) is strict UTF-8 without NUL bytes: text PostgreSQL can store. */
bool sl_utf8_valid(const char *s, size_t n);

/*
 * Finds member `name` of the top-level JSON object s[0..n) (already accepted
 * by a JSON parser). Returns 1 with the span of its value, as
 * written, in *off and *len; 0 when the object has no such member; -1 when s
 * is not an object.
 */
int sl_json_member(const char *s, size_t n, const char *name, size_t *off, size_t *len);

/* ------------------------------------------------------------------------ */
/* Messages and envelopes                                                    */
/* ------------------------------------------------------------------------ */

/*
 * One outbox message as the relay sees it. Every pointer is borrowed (from a
 * PGresult, usually) and must outlive the call it is passed to.
 */
typedef struct sl_msg {
    int64_t outbox_id;   /* sluice.outbox.id */
    const char *id;      /* stable message id: same bytes on every redelivery */
    const char *topic;   /* outbox topic */
    const char *key;     /* entity key, NULL when none */
    const char *op;      /* "event" for publish(); insert/update/delete for stream tables */
    const char *payload; /* valid JSON text (from jsonb) */
    const char *headers; /* JSON object text, "{}" when none */
    const char *ts;      /* created_at, RFC 3339 with time zone */
    const char *db;      /* source database name */
    const char *txid;    /* xid8 of the publishing transaction, decimal text */
    const char *error;   /* why the message is invalid (reverse relay), else NULL */
} sl_msg_t;

typedef enum sl_format {
    SL_FORMAT_JSON,
    SL_FORMAT_MSGPACK,
} sl_format_t;

/* Parses "json" or "msgpack". */
int sl_format_parse(const char *name, sl_format_t *out, sl_err_t *err);

/*
 * Encodes the wire envelope of m into out (appending). JSON shape:
 *   {"id":..,"topic":..,"op":..,"key":..|null,"payload":{..},"headers":{..},
 *    "ts":..,"outbox_id":N,"source":{"db":..,"txid":".."}}
 * msgpack: a map with the same keys and the payload/headers converted to
 * msgpack values. Runs on the loop thread; JSON encoding does not allocate
 * beyond growing `out`.
 */
int sl_envelope_encode(const sl_msg_t *m, sl_format_t format, sl_buf_t *out, sl_err_t *err);

/* ------------------------------------------------------------------------ */
/* Name templates                                                            */
/* ------------------------------------------------------------------------ */

/*
 * A compiled name template such as "app.{topic}" or "orders_{topic}".
 * Placeholders: {topic}, {op}. Literal braces are written {{ and }}.
 */
typedef struct sl_template sl_template_t;

/* Compiles tpl; `path` names the config key in errors. *out freed with sl_template_free. */
int sl_template_new(const char *tpl, const char *path, sl_template_t **out, sl_err_t *err);
void sl_template_free(sl_template_t *t);

/* True when the template has no placeholder (renders the same for every message). */
bool sl_template_is_constant(const sl_template_t *t);

/*
 * Renders for m into buf (size n, NUL-terminated). Returns the length, or -1
 * when the result does not fit. Does not allocate.
 */
int sl_template_render(const sl_template_t *t, const sl_msg_t *m, char *buf, size_t n);

/*
 * Checks a Kafka topic name: 1..249 characters from [A-Za-z0-9._-], not "."
 * or "..". `what` names the value in the error.
 */
int sl_kafka_topic_check(const char *name, const char *what, sl_err_t *err);

/* ------------------------------------------------------------------------ */
/* Asynchronous PostgreSQL connection (core/pgconn.c)                        */
/* ------------------------------------------------------------------------ */

/*
 * One libpq connection driven by the libuv loop: non-blocking connect,
 * one statement in flight at a time, LISTEN notifications, and reconnect with
 * exponential backoff. Everything runs on the loop thread.
 *
 *            sl_pgconn_start
 *   DOWN ─────────────────────▶ CONNECTING ──ok──▶ READY ◀──result── BUSY
 *    ▲                              │                 │ send          ▲
 *    │ close                        │ fail            └───────────────┘
 *    │                              ▼                 │ connection lost
 *  CLOSED ◀── sl_pgconn_close ── BACKOFF ◀────────────┘ (from READY or BUSY)
 *                                   │ timer
 *                                   └──────▶ CONNECTING
 */
typedef enum sl_pgconn_state {
    SL_PGCONN_DOWN,
    SL_PGCONN_CONNECTING,
    SL_PGCONN_READY,
    SL_PGCONN_BUSY,
    SL_PGCONN_BACKOFF,
    SL_PGCONN_CLOSED,
} sl_pgconn_state_t;

typedef struct sl_pgconn sl_pgconn_t;

typedef struct sl_pgconn_cbs {
    /* The connection is up (state READY). Runs on the loop. */
    void (*on_up)(sl_pgconn_t *pc, void *ctx);
    /* The statement sent last finished. Takes res (PQclear it); res may be
     * NULL when the statement produced no result at all. */
    void (*on_result)(sl_pgconn_t *pc, struct pg_result *res, void *ctx);
    /* A NOTIFY arrived on a channel this connection listens to. */
    void (*on_notify)(sl_pgconn_t *pc, const char *channel, void *ctx);
    /* The connection was lost (a statement in flight is lost with it); a
     * reconnect is scheduled. err says why. */
    void (*on_down)(sl_pgconn_t *pc, const sl_err_t *err, void *ctx);
} sl_pgconn_cbs_t;

/* Creates a connection object (not connected). conninfo is copied; name is
 * used in logs ("pipeline orders"). Free with sl_pgconn_close. */
int sl_pgconn_new(struct uv_loop_s *loop, const char *conninfo, const char *name,
                  const sl_pgconn_cbs_t *cbs, void *ctx, sl_pgconn_t **out, sl_err_t *err);

/* Starts connecting (DOWN -> CONNECTING). */
void sl_pgconn_start(sl_pgconn_t *pc);

/* Sends one statement with text parameters (nparams 0: simple protocol,
 * several statements allowed); only in READY. Returns SL_OK
 * (the result arrives via on_result) or SL_ERR (connection is going down). */
int sl_pgconn_send(sl_pgconn_t *pc, const char *sql, int nparams, const char *const *params,
                   sl_err_t *err);

bool sl_pgconn_is_ready(const sl_pgconn_t *pc);
sl_pgconn_state_t sl_pgconn_state(const sl_pgconn_t *pc);

/* Forces a disconnect and a reconnect after backoff (used when a statement
 * fails in a way that leaves the session in doubt). */
void sl_pgconn_reset(sl_pgconn_t *pc, const sl_err_t *why);

/* Closes the connection and frees pc once its libuv handles are closed;
 * done(arg) runs after that (may be NULL). Accepts NULL. */
void sl_pgconn_close(sl_pgconn_t *pc, void (*done)(void *arg), void *arg);

#endif /* SL_CORE_H */
