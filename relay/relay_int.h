/*
 * relay/relay_int.h - internals shared by the relay's files. Nothing outside
 * relay/ includes this; the public surface is relay/relay.h.
 */
#ifndef SL_RELAY_INT_H
#define SL_RELAY_INT_H

#include "core/core.h"
#include "relay/relay.h"
#include "sinks/sink.h"

#include <libpq-fe.h>
#include <uv.h>

/* ------------------------------------------------------------------------ */
/* In-flight window and checkpoint position (relay/window.c)                 */
/* ------------------------------------------------------------------------ */

/*
 * A delivery position: every row visible in `lo` is acknowledged; when `hi`
 * is set, so are the rows visible in `hi` but not `lo` with id <= last_id.
 * (range_no, last_id) grows with every step and orders positions.
 */
typedef struct sl_pos {
    char *lo; /* owned snapshot text */
    char *hi; /* owned snapshot text, NULL outside a range */
    int64_t last_id;
    int64_t range_no;
} sl_pos_t;

/* Sets p to copies of lo and hi (hi may be NULL). SL_OK, or SL_ENOMEM with p unchanged. */
int sl_pos_set(sl_pos_t *p, const char *lo, const char *hi, int64_t last_id, int64_t range_no);
/* Frees p's strings and zeroes it. */
void sl_pos_clear(sl_pos_t *p);

/* The window of unacknowledged messages; see relay/window.c. Loop thread only. */
typedef struct sl_window sl_window_t;

/* A window of cap message slots, allocated once. Free with sl_window_free. */
int sl_window_new(size_t cap, sl_window_t **out, sl_err_t *err);
/* Accepts NULL. */
void sl_window_free(sl_window_t *w);
/* Forgets every message and range (after a restart of the reader). */
void sl_window_reset(sl_window_t *w);

/* Unacknowledged messages, and their bytes. */
size_t sl_window_used(const sl_window_t *w);
uint64_t sl_window_bytes(const sl_window_t *w);

/* Opens a range (lo, hi): messages pushed from now on belong to it. The
 * previous range must be closed. Strings are copied. */
int sl_window_range_open(sl_window_t *w, const char *lo, const char *hi, int64_t range_no,
                         sl_err_t *err);
/* Closes the open range: every row was read; `pending` of them are still to
 * be pushed. Returns true when the range holds no message at all. */
bool sl_window_range_close(sl_window_t *w, uint64_t pending);

/* The sequence number the next push will get. */
uint64_t sl_window_next(const sl_window_t *w);
/* Adds a message of the open range; the window must have room. Returns its
 * sequence number (the sink's ack token). */
uint64_t sl_window_push(sl_window_t *w, int64_t outbox_id, uint32_t bytes);
/* True while seq is unacknowledged in the window. */
bool sl_window_has(const sl_window_t *w, uint64_t seq);
/* Outbox id of an unacknowledged message. */
int64_t sl_window_outbox_id(const sl_window_t *w, uint64_t seq);
/* Acknowledges seq (stale tokens are ignored). Returns how many messages the
 * acknowledged prefix grew by. */
uint64_t sl_window_ack(sl_window_t *w, uint64_t seq);
/* Brings *ck up to the acknowledged prefix. Returns 1 when ck changed, 0 when
 * not, SL_ENOMEM (ck unchanged, still true) when a copy failed. */
int sl_window_position(sl_window_t *w, sl_pos_t *ck);

/* ------------------------------------------------------------------------ */
/* Pipelines (relay/pipeline.c)                                              */
/* ------------------------------------------------------------------------ */

typedef struct sl_pipeline sl_pipeline_t;

/* Creates and starts a pipeline on the loop. cfg is borrowed until free.
 * on_stopped(relay, pl) is called once the pipeline has fully stopped
 * (drained, failed or closed). */
int sl_pipeline_new(uv_loop_t *loop, const sl_relay_cfg_t *rcfg, const sl_pipeline_cfg_t *cfg,
                    void (*on_stopped)(sl_pipeline_t *pl, void *arg), void *arg,
                    sl_pipeline_t **out, sl_err_t *err);

/* Begins a graceful stop: no more reads, drain in-flight until deadline_ms
 * (absolute, sl_now_ms clock), write the checkpoint, close. */
void sl_pipeline_stop(sl_pipeline_t *pl, uint64_t deadline_ms);

/* True when the pipeline stopped because of an error it cannot heal from. */
bool sl_pipeline_is_failed(const sl_pipeline_t *pl);

const char *sl_pipeline_name(const sl_pipeline_t *pl);

/* Frees a stopped pipeline. Accepts NULL. */
void sl_pipeline_free(sl_pipeline_t *pl);

/* ------------------------------------------------------------------------ */
/* Kafka sources: the reverse relay (relay/ksource.c)                        */
/* ------------------------------------------------------------------------ */

/* Parses and checks a "source" object (path names it in errors). Free with
 * sl_ksource_conf_free. */
int sl_ksource_conf_parse(const struct cJSON *obj, const char *path, sl_ksource_conf_t **out,
                          sl_err_t *err);
/* Accepts NULL. */
void sl_ksource_conf_free(sl_ksource_conf_t *c);
/* Prints the source keys (for --help-config). */
void sl_ksource_help(FILE *out);

typedef struct sl_ksource sl_ksource_t;

/* Starts a Kafka -> sink pipeline on the loop (cfg->ksrc set). Same life
 * cycle as a pipeline: stop, then on_stopped, then free. */
int sl_ksource_new(uv_loop_t *loop, const sl_relay_cfg_t *rcfg, const sl_pipeline_cfg_t *cfg,
                   void (*on_stopped)(sl_ksource_t *ks, void *arg), void *arg, sl_ksource_t **out,
                   sl_err_t *err);
/* Stops reading, waits for in-flight records until deadline_ms, commits, closes. */
void sl_ksource_stop(sl_ksource_t *ks, uint64_t deadline_ms);
bool sl_ksource_is_failed(const sl_ksource_t *ks);
/* Frees a stopped source. Accepts NULL. */
void sl_ksource_free(sl_ksource_t *ks);

#endif /* SL_RELAY_INT_H */
