/*
 * tests/bench/bench.h - small helpers shared by the benchmark programs.
 *
 * The programs in tests/bench/ are driven by scripts/bench, which parses
 * their one-line results ("key=value key=value ..."). They are test tools,
 * not part of sluice: they fail loudly (message on stderr, exit 1) instead of
 * recovering, and they keep every measurement on CLOCK_MONOTONIC so that a
 * clock step never shows up as a latency.
 */
#ifndef SL_BENCH_H
#define SL_BENCH_H

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Microseconds on CLOCK_MONOTONIC. */
static inline int64_t
bench_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Prints "<prog>: <message>" on stderr and exits 1. */
static inline void bench_die(const char *prog, const char *fmt, ...)
    __attribute__((format(printf, 2, 3), noreturn));

static inline void
bench_die(const char *prog, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: ", prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

/* Parses a positive integer option value or dies naming the option. */
static inline int64_t
bench_parse_int(const char *prog, const char *opt, const char *s)
{
    char *end = NULL;
    long long v = strtoll(s, &end, 10);
    if (end == s || *end != '\0' || v <= 0)
        bench_die(prog, "%s: expected a positive integer, got \"%s\"", opt, s);
    return (int64_t)v;
}

/* Compares two int64_t for qsort. */
static inline int
bench_cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* The q-quantile (0..1) of a sorted array, nearest-rank. */
static inline int64_t
bench_quantile(const int64_t *sorted, size_t n, double q)
{
    if (n == 0)
        return -1;
    size_t rank = (size_t)(q * (double)n + 0.999999);
    if (rank < 1)
        rank = 1;
    if (rank > n)
        rank = n;
    return sorted[rank - 1];
}

#endif /* SL_BENCH_H */
