/*
 * core/backoff.c - the reconnect schedule shared by every connection.
 *
 * delay(attempt) = min(initial * 2^attempt, cap) scaled by a random factor in
 * [1 - jitter, 1 + jitter]. Jitter keeps a fleet of relays from reconnecting
 * in lock-step after a shared outage. A connection that stayed up for
 * healthy_ms counts as recovered: its next failure starts again at `initial`,
 * while a connection that flaps (fails soon after connecting) keeps backing off.
 *
 * The random source is a private xorshift64* so tests can seed it and the
 * schedule never touches global rand() state.
 */
#include "core/core.h"

#include <time.h>

void
sl_backoff_init(sl_backoff_t *bo, uint64_t seed)
{
    bo->initial_ms = SL_BACKOFF_INITIAL_MS;
    bo->cap_ms = SL_BACKOFF_CAP_MS;
    bo->jitter_pct = SL_BACKOFF_JITTER_PCT;
    bo->healthy_ms = SL_BACKOFF_HEALTHY_MS;
    bo->attempt = 0;
    bo->healthy_since_ms = 0;
    bo->rng = seed != 0 ? seed : 0x9E3779B97F4A7C15ULL;
}

static uint64_t
backoff_rand(sl_backoff_t *bo)
{
    uint64_t x = bo->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    bo->rng = x;
    return x * 0x2545F4914F6CDD1DULL;
}

uint32_t
sl_backoff_next(sl_backoff_t *bo)
{
    uint64_t delay = bo->initial_ms;
    for (uint32_t i = 0; i < bo->attempt && delay < bo->cap_ms; i++)
        delay *= 2;
    if (delay > bo->cap_ms)
        delay = bo->cap_ms;
    if (bo->attempt < UINT32_MAX)
        bo->attempt++;
    if (bo->jitter_pct > 0) {
        /* Factor in [100 - j, 100 + j] percent, uniformly in steps of 0.01 %. */
        uint64_t span = (uint64_t)bo->jitter_pct * 2 * 100 + 1;
        int64_t basis = (int64_t)(backoff_rand(bo) % span) - (int64_t)bo->jitter_pct * 100;
        delay = (uint64_t)((int64_t)delay * (10000 + basis) / 10000);
    }
    return (uint32_t)delay;
}

void
sl_backoff_success(sl_backoff_t *bo, uint64_t now_ms)
{
    bo->healthy_since_ms = now_ms;
}

void
sl_backoff_failure(sl_backoff_t *bo, uint64_t now_ms)
{
    if (bo->healthy_since_ms != 0 && now_ms >= bo->healthy_since_ms + bo->healthy_ms)
        bo->attempt = 0;
    bo->healthy_since_ms = 0;
}

uint64_t
sl_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

uint64_t
sl_now_ms(void)
{
    return sl_now_us() / 1000u;
}
