/*
 * refresh/refresh.h - stream tables: their SQL surface (refresh/sql), the
 * query analyzer (libpg_query) and the refresh engine (`sluice engine`).
 */
#ifndef SL_REFRESH_H
#define SL_REFRESH_H

#include "core/core.h"

/* Migrations of schema sluice owned by refresh/ (embedded from refresh/sql).
 * Their versions are unique across folders; `sluice init` merges them. */
extern const sl_sql_file_t sl_refresh_migrations[];
extern const size_t sl_refresh_migrations_count;

/* ------------------------------------------------------------------------ */
/* The analyzer (refresh/analyze.c)                                          */
/* ------------------------------------------------------------------------ */

/* A relation the query reads, from the catalog. */
typedef struct sl_analyze_src {
    uint32_t relid;
    const char *schema, *name; /* as PostgreSQL prints them in the stored query */
    const char *const *pk;     /* primary-key columns (npk == 0: none) */
    size_t npk;
    const char *const *cols; /* every column, in attnum order */
    size_t ncols;
    /* Per column, as cols: format_type() of its type and whether it is NOT
     * NULL (NULL: not known, and no aggregate is maintained from changes). */
    const char *const *types;
    const bool *notnull;
} sl_analyze_src_t;

/* A branch of a top-level UNION ALL whose branches all have a row identity
 * (catalog column branches, split by sluice._st_union_all_branches). */
typedef struct sl_analyze_branch {
    const char *query;       /* the branch's text */
    const char *const *keys; /* its row-identity output columns (may be empty: one row) */
    size_t nkeys;
} sl_analyze_branch_t;

/* How a value of a stream-table column is written where keys are compared
 * as JSON, so that equal values print alike: open, the value, close
 * (sluice._st_key_value_sql; trim_scale( ... ) for a numeric without a
 * scale, justify_interval( ... ) for an interval, ...; both empty: as it
 * is). own_eq: the column's type when its = is not pg_catalog's (citext's
 * is the extension's): the refresh SQL, run under search_path pg_catalog,
 * would compare its values with another type's = (text's, case-sensitive);
 * NULL otherwise. */
typedef struct sl_analyze_keyform {
    const char *col, *open, *close, *own_eq;
} sl_analyze_keyform_t;

/* A column of the stream table, and its type as format_type prints it. */
typedef struct sl_analyze_col {
    const char *name, *type;
} sl_analyze_col_t;

/* What the analyzer is told about a stream table (from the catalog). */
typedef struct sl_analyze_in {
    const char *query;       /* the defining query */
    const char *const *keys; /* row-identity output columns (may be empty) */
    size_t nkeys;
    bool has_keys;                   /* false: content identity (no keys known) */
    const sl_analyze_src_t *sources; /* the relations the query reads */
    size_t nsources;
    bool requested_full;                 /* refresh_mode 'full' */
    const sl_analyze_branch_t *branches; /* UNION ALL branches (nbranches == 0: not one) */
    size_t nbranches;
    /* The relation recompute_sql reads the affected keys from, under the
     * names in keys (NULL: pg_temp."__sluice_aff"). Set only when a query is
     * analysed inside another whose key columns have other names. */
    const char *aff_rel;
    /* The relation holding the stored rows of the affected units while
     * recompute_sql runs (sluice._refresh: pg_temp."__sluice_old_<id>"), or
     * NULL. Set only for a stream table's own query: with it, the
     * aggregates of a GROUP BY over one table are computed from the stored
     * rows and the changes where that is exact (see gen_algebraic). */
    const char *old_rel;
    /* A LEFT JOIN chain of tables is refreshed by the query's row identity
     * rather than by the rows of its first table (no unit_columns), as it
     * is anyway when the identity lacks that table's key. Set for UNION ALL
     * branches, whose rows the driver finds by their identity, and passed on
     * to a subquery a branch only filters and projects. */
    bool rooted_keys;
    /* The query is a subquery in FROM of another (analyze_derived,
     * analyze_joined): subqueries in its expressions are refused (those
     * in WHERE are followed only in a stream table's query or a branch). */
    bool in_subquery;
    /* The forms of the stream table's columns whose equal values can print
     * differently (none: every column prints equal values alike). They
     * apply to keys named like those columns: the stream table's keys, a
     * UNION ALL branch's and the units. An analysis under other names
     * (aff_rel renamed) is given none. */
    const sl_analyze_keyform_t *keyforms;
    size_t nkeyforms;
    /* The stream table's columns (none: not known). An aggregate of the
     * query whose result type tells the type of what it reads (a sum that
     * is bigint reads a smallint or an integer; a min or max is of the
     * type it reads) can be kept from the changes when the query text
     * does not say that type (gen_algebraic). */
    const sl_analyze_col_t *cols;
    size_t ncols;
} sl_analyze_in_t;

/* The analysis, as sluice._set_analysis stores it. Strings owned. */
typedef struct sl_analysis {
    char *mode;          /* "differential" or "full" */
    char *reason;        /* why full; NULL when differential */
    char *tree;          /* operator tree, one node per line, indented */
    char *affected_sql;  /* differential only: the refresh units the window touches */
    char *recompute_sql; /* differential only: new rows of those units */
    char *unit_columns;  /* text[] literal of the stream table's columns naming a unit
                          * (the columns of affected_sql); NULL: the row identity */
    char *branches;      /* differential UNION ALL: JSON array of {"affected", "recompute"},
                          * one per branch, in place of affected_sql and recompute_sql */
    bool grouped_units;  /* unit_columns name the groups of a subquery joined with tables
                          * (not the first table's rows of a LEFT JOIN) */
    bool window_units;   /* unit_columns name the partitions of window functions */
} sl_analysis_t;

/*
 * Parses in->query with libpg_query and fills *a. A query that cannot be
 * refreshed differentially is not an error: a->mode is "full" and a->reason
 * says why. Errors (SL_EUSAGE) are for text that is not one SELECT.
 */
int sl_analyze(const sl_analyze_in_t *in, sl_analysis_t *a, sl_err_t *err);
/* Frees the strings; accepts a zeroed analysis. */
void sl_analysis_free(sl_analysis_t *a);

/* ------------------------------------------------------------------------ */
/* The engine (refresh/engine.c)                                             */
/* ------------------------------------------------------------------------ */

/* Defaults of `sluice engine` (core/main.c), documented in docs/stream-tables.md. */
/* Refresh connections: enough that a few slow stream tables leave room for
 * the others, few enough not to crowd a small server's max_connections. */
#define SL_ENGINE_WORKERS_DEFAULT 4
#define SL_ENGINE_WORKERS_MAX 64
/* Re-check every stream table this often even when no change woke the
 * engine: bounds the delay of anything a ring missed (see engine.c). */
#define SL_ENGINE_SAFETY_POLL_MS_DEFAULT 1000

typedef struct sl_engine_opts {
    const char *db;         /* conninfo */
    int notify_coalesce_ms; /* window of coalesced subscription notifications */
    bool once;              /* analyse and refresh what is due once, then return */
    int workers;            /* refresh connections, 1 .. SL_ENGINE_WORKERS_MAX */
    int safety_poll_ms;     /* >= 1: every stream table is re-checked this often */
    int catalog_version;    /* the sluice.schema_version this binary's migrations reach; a
                             * database behind it is refused, one ahead of it is refreshed
                             * but not analysed (0: not checked) */
} sl_engine_opts_t;

/*
 * Runs `sluice engine` until SIGTERM/SIGINT (or one pass with o->once, on
 * one connection). The loop runs on the calling thread (its own libuv
 * loop). Returns SL_OK; with once, the first database error; without, only
 * errors setting the loop up (database errors are logged and retried).
 */
int sl_engine_run(const sl_engine_opts_t *o, sl_err_t *err);

#endif /* SL_REFRESH_H */
