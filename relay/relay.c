/*
 * relay/relay.c - the relay process: one libuv loop running every pipeline.
 *
 * Pipelines are independent: each has its own connection, window, sink and
 * checkpoint, so one failing pipeline (bad message, bad sink config at run
 * time) never stalls the others. The relay exits:
 *   - with SL_OK after SIGTERM/SIGINT once every pipeline drained (or hit
 *     shutdown_timeout_ms) and wrote its checkpoint;
 *   - with SL_ERR when every pipeline has failed.
 * A second signal during the drain stops at once (checkpoints already written
 * stay; unacknowledged messages are sent again on the next start).
 */
#include "relay/relay_int.h"

#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

typedef struct sl_relay {
    uv_loop_t loop;
    const sl_relay_cfg_t *cfg; /* borrowed */
    sl_pipeline_t **pls;       /* owned array of owned pipelines (outbox sources) */
    sl_ksource_t **kss;        /* owned array: the Kafka-source pipelines, same index */
    size_t npls;
    size_t running; /* pipelines not yet stopped */
    size_t failed;
    uv_signal_t sigterm, sigint;
    int signals; /* signals received */
    bool stopping;
} sl_relay_t;

static void
relay_close_walk(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static void
relay_one_stopped(sl_relay_t *r, bool failed)
{
    if (failed)
        r->failed++;
    r->running--;
    if (r->running == 0) {
        uv_signal_stop(&r->sigterm);
        uv_signal_stop(&r->sigint);
        uv_close((uv_handle_t *)&r->sigterm, NULL);
        uv_close((uv_handle_t *)&r->sigint, NULL);
    }
}

static void
relay_on_pipeline_stopped(sl_pipeline_t *pl, void *arg)
{
    relay_one_stopped(arg, sl_pipeline_is_failed(pl));
}

static void
relay_on_ksource_stopped(sl_ksource_t *ks, void *arg)
{
    relay_one_stopped(arg, sl_ksource_is_failed(ks));
}

/* Stops pipeline i, whichever its source. */
static void
relay_stop_one(sl_relay_t *r, size_t i, uint64_t deadline)
{
    if (r->pls[i] != NULL)
        sl_pipeline_stop(r->pls[i], deadline);
    if (r->kss[i] != NULL)
        sl_ksource_stop(r->kss[i], deadline);
}

static void
relay_signal_cb(uv_signal_t *h, int signum)
{
    sl_relay_t *r = h->data;
    r->signals++;
    if (r->signals == 1) {
        uint64_t deadline = sl_now_ms() + (uint64_t)r->cfg->shutdown_timeout_ms;
        sl_log_info("relay.stopping", "signal=%s shutdown_timeout_ms=%" PRId64,
                    signum == SIGTERM ? "SIGTERM" : "SIGINT", r->cfg->shutdown_timeout_ms);
        r->stopping = true;
        for (size_t i = 0; i < r->npls; i++)
            relay_stop_one(r, i, deadline);
        return;
    }
    sl_log_warn("relay.stop_now", "signal=%s note=\"second signal: not waiting for acks\"",
                signum == SIGTERM ? "SIGTERM" : "SIGINT");
    for (size_t i = 0; i < r->npls; i++)
        relay_stop_one(r, i, 0);
}

int
sl_relay_run(const sl_relay_cfg_t *cfg, sl_err_t *err)
{
    sl_relay_t r;
    memset(&r, 0, sizeof r);
    r.cfg = cfg;
    int rc = uv_loop_init(&r.loop);
    if (rc != 0)
        return sl_err_set(err, SL_ERR, "cannot create the event loop: %s", uv_strerror(rc));
    /* A dead peer must not kill the process: writes report EPIPE instead. */
    signal(SIGPIPE, SIG_IGN);
    uv_signal_init(&r.loop, &r.sigterm);
    uv_signal_init(&r.loop, &r.sigint);
    r.sigterm.data = &r;
    r.sigint.data = &r;
    uv_signal_start(&r.sigterm, relay_signal_cb, SIGTERM);
    uv_signal_start(&r.sigint, relay_signal_cb, SIGINT);

    r.pls = calloc(cfg->npl, sizeof *r.pls);
    r.kss = calloc(cfg->npl, sizeof *r.kss);
    if (r.pls == NULL || r.kss == NULL) {
        free(r.pls);
        free(r.kss);
        rc = sl_err_nomem(err, "the pipeline list");
        goto fail_loop;
    }
    r.npls = cfg->npl;
    char q[SL_ERR_MSG_MAX + 16];
    sl_log_info("relay.start", "version=%s pipelines=%zu", SL_VERSION, cfg->npl);
    for (size_t i = 0; i < cfg->npl; i++) {
        sl_err_t perr;
        sl_err_clear(&perr);
        int prc = cfg->pl[i].ksrc != NULL
                      ? sl_ksource_new(&r.loop, cfg, &cfg->pl[i], relay_on_ksource_stopped, &r,
                                       &r.kss[i], &perr)
                      : sl_pipeline_new(&r.loop, cfg, &cfg->pl[i], relay_on_pipeline_stopped, &r,
                                        &r.pls[i], &perr);
        if (prc != SL_OK) {
            /* Other pipelines keep running (invariant 7). */
            sl_log_error("pipeline.failed", "pipeline=%s err=%s", cfg->pl[i].name,
                         sl_log_quote(q, sizeof q, perr.msg));
            r.failed++;
            continue;
        }
        r.running++;
    }
    if (r.running == 0) {
        uv_close((uv_handle_t *)&r.sigterm, NULL);
        uv_close((uv_handle_t *)&r.sigint, NULL);
    }
    uv_run(&r.loop, UV_RUN_DEFAULT);

    for (size_t i = 0; i < r.npls; i++) {
        sl_pipeline_free(r.pls[i]);
        sl_ksource_free(r.kss[i]);
    }
    free(r.pls);
    free(r.kss);
    rc = SL_OK;
    sl_log_info("relay.stopped", "pipelines=%zu failed=%zu", r.npls, r.failed);
    if (r.failed > 0) {
        /* Even after a clean SIGTERM: a failed pipeline needs a human. */
        rc = sl_err_set(err, SL_ERR, "%zu of %zu pipelines failed", r.failed, r.npls);
        sl_err_hint(err, "the pipeline.failed log lines above say why; fix the cause and "
                         "restart: failed pipelines resume from their checkpoint");
    }

fail_loop:
    uv_walk(&r.loop, relay_close_walk, NULL);
    uv_run(&r.loop, UV_RUN_DEFAULT);
    uv_loop_close(&r.loop);
    return rc;
}
