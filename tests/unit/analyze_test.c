/*
 * tests/unit/analyze_test.c - the stream-table query analyzer
 * (refresh/analyze.c, sl_analyze): which queries are refreshed
 * differentially, why the others fall back to FULL, and the shape of the
 * SQL generated for the refresh driver. No server: libpg_query only.
 *
 * Each row is a query as the engine reads it from the catalog (the text of
 * pg_get_viewdef, schema-qualified; its row-identity keys; for a UNION ALL,
 * the branches sluice._st_union_all_branches cut), analysed against the
 * sources below. The row names the expected mode and one output to search
 * for a substring ("^..." : the output must start with it):
 *
 *   REASON     a->reason (mode full)
 *   AFFECTED   a->affected_sql, RECOMPUTE a->recompute_sql, UNITS
 *              a->unit_columns (mode differential)
 *   BRANCHES   a->branches (differential UNION ALL): a JSON array with one
 *              {"affected", "recompute"} of non-empty strings per given
 *              branch, and no affected_sql/recompute_sql; the substring is
 *              searched in the last branch's "affected"
 *   ERROR      sl_analyze returns SL_EUSAGE, leaves the analysis zeroed,
 *              and err.msg holds the substring
 *   TREE       a->tree, the operator tree (either mode)
 *
 * Every row also checks the invariants of its mode (a full analysis has a
 * reason and no SQL; a differential one no reason and its SQL), and all of
 * it ends in one assertion per row: the list of problems found is empty.
 */
#include "refresh/refresh.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <cmocka.h>

#define ROWS(a) (sizeof(a) / sizeof((a)[0]))
#define OR_NULL(s) ((s) != NULL ? (s) : "(null)")

/* ------------------------------------------------------------------------ */
/* The catalog: sources every row may read                                   */
/* ------------------------------------------------------------------------ */

static const char *const orders_pk[] = {"id"};
static const char *const orders_cols[] = {"id", "customer_id", "amount", "status"};
static const char *const customers_pk[] = {"id"};
static const char *const customers_cols[] = {"id", "name", "region"};
static const char *const refunds_pk[] = {"id"};
static const char *const refunds_cols[] = {"id", "order_id", "amount"};
static const char *const audit_cols[] = {"at", "what", "order_id"}; /* no primary key */

/* With column types: its GROUP BY aggregates can be kept from the changes. */
static const char *const sales_pk[] = {"id"};
static const char *const sales_cols[] = {"id", "region", "qty", "price", "weight", "day", "note"};
static const char *const sales_types[] = {"bigint",           "text", "integer", "numeric(12,2)",
                                          "double precision", "date", "numeric"};
static const bool sales_notnull[] = {true, false, true, false, false, false, false};

static const sl_analyze_src_t sources[] = {
    {16401, "public", "orders", orders_pk, ROWS(orders_pk), orders_cols, ROWS(orders_cols), NULL,
     NULL},
    {16402, "public", "customers", customers_pk, ROWS(customers_pk), customers_cols,
     ROWS(customers_cols), NULL, NULL},
    {16403, "public", "refunds", refunds_pk, ROWS(refunds_pk), refunds_cols, ROWS(refunds_cols),
     NULL, NULL},
    {16404, "public", "audit", NULL, 0, audit_cols, ROWS(audit_cols), NULL, NULL},
    {16405, "public", "sales", sales_pk, ROWS(sales_pk), sales_cols, ROWS(sales_cols), sales_types,
     sales_notnull},
};

/* ------------------------------------------------------------------------ */
/* Rows                                                                      */
/* ------------------------------------------------------------------------ */

typedef enum field { REASON, AFFECTED, RECOMPUTE, UNITS, BRANCHES, ERROR, TREE } field_t;

typedef struct analyze_row {
    const char *name;
    const char *query;       /* pg_get_viewdef's text */
    const char *const *keys; /* row-identity output columns */
    size_t nkeys;
    bool no_identity;    /* has_keys false */
    bool requested_full; /* refresh_mode 'full' */
    const sl_analyze_branch_t *branches;
    size_t nbranches;
    const sl_analyze_keyform_t *keyforms; /* the stream table's columns' key forms */
    size_t nkeyforms;
    const sl_analyze_col_t *cols; /* the stream table's columns and types */
    size_t ncols;
    const char *mode; /* "differential", "full"; NULL for ERROR */
    field_t field;    /* the output searched */
    const char *want; /* substring of it; "^..." a prefix */
} analyze_row_t;

#define DIFF "differential"
#define FULL "full"
/* The row-identity columns of a row (a compound literal and its length). */
#define KEYS(...)                               \
    .keys = (const char *const[]){__VA_ARGS__}, \
    .nkeys = sizeof((const char *const[]){__VA_ARGS__}) / sizeof(const char *)
#define BRANCHES_OF(b) .branches = (b), .nbranches = ROWS(b)
#define KEYFORMS_OF(f) .keyforms = (f), .nkeyforms = ROWS(f)
#define COLS_OF(c) .cols = (c), .ncols = ROWS(c)
/* The stream table of an expression's sum and extremes (their types tell
 * those of what they read, but for the numeric sum). */
static const sl_analyze_col_t expr_cols[] = {
    {"region", "text"}, {"q2", "bigint"}, {"m2", "integer"}, {"p2", "numeric"}};
#define EXPR_AGG_Q(aggs) \
    "SELECT sales.region,\n    " aggs "\n   FROM public.sales\n  GROUP BY sales.region"
/* A numeric column without a scale, as sluice._st_key_value_sql writes it. */
static const sl_analyze_keyform_t note_form[] = {{"note", "trim_scale(", ")", NULL}};
static const sl_analyze_keyform_t cid_form[] = {{"cid", "trim_scale(", ")", NULL}};
/* A column of a type with its own = (citext's): its JSON form, and the type. */
static const sl_analyze_keyform_t region_citext[] = {
    {"region", "pg_catalog.lower(", "::pg_catalog.text)", "citext"}};

/* A set-returning function in FROM, WITH ORDINALITY (migration 32). */
#define SRF_Q                                                                                    \
    " SELECT orders.id,\n    t.n,\n    t.tag\n   FROM public.orders,\n    LATERAL "              \
    "regexp_split_to_table(orders.status, ','::text) WITH ORDINALITY t(tag, n)\n  WHERE (t.tag " \
    "<> 'x'::text)"
/* Its rows grouped (migration 33). */
#define SRF_GROUP_Q                                                                              \
    " SELECT t.tag,\n    count(*) AS n,\n    max(sales.qty) AS top\n   FROM public.sales,\n    " \
    "LATERAL regexp_split_to_table(sales.region, ','::text) t(tag)\n  WHERE (sales.qty > 0)\n  " \
    "GROUP BY t.tag"
#define SRF_BRANCH                                                     \
    "SELECT orders.id,\n    t.n\n   FROM public.orders,\n    LATERAL " \
    "unnest(ARRAY[orders.status]) "                                    \
    "WITH ORDINALITY t(v, n)"
#define SRF_UNION_Q \
    " " SRF_BRANCH "\nUNION ALL\n SELECT refunds.id,\n    0 AS n\n   FROM public.refunds"
static const sl_analyze_branch_t srf_branches[] = {
    {SRF_BRANCH, (const char *const[]){"id", "n"}, 2},
    {"SELECT refunds.id,\n    0 AS n\n   FROM public.refunds", (const char *const[]){"id", "n"}, 2},
};

/* UNION ALL queries and the branches the catalog cuts from them (btrimmed
 * text between the depth-0 UNION ALLs, parentheses kept). */
#define ORDERS_BRANCH                                                                       \
    "SELECT orders.id,\n    orders.amount\n   FROM public.orders\n  WHERE orders.status = " \
    "'paid'::text"
#define REFUNDS_BRANCH \
    "SELECT refunds.id,\n    (- refunds.amount) AS amount\n   FROM public.refunds"
#define LEFT_BRANCH                                                                            \
    "SELECT orders.id,\n    customers.name AS amount\n   FROM (public.orders\n     LEFT JOIN " \
    "public.customers ON ((customers.id = orders.customer_id)))"
/* Groups of the first table's column over a LEFT JOIN: no first-table key. */
#define REGION_LEFT                                                                              \
    "SELECT customers.region,\n    count(orders.id) AS n\n   FROM (public.customers\n     LEFT " \
    "JOIN public.orders ON ((orders.customer_id = customers.id)))\n  GROUP BY customers.region"
/* Window functions over an inner join, partitioned by the joined table's column. */
#define WINDOW_JOIN_Q                                                                            \
    " SELECT orders.id,\n    customers.id AS cid,\n    customers.region,\n    rank() OVER "      \
    "(PARTITION BY customers.region ORDER BY orders.amount) AS r\n   FROM (public.orders\n     " \
    "JOIN "                                                                                      \
    "public.customers ON ((customers.id = orders.customer_id)))"
/* Window functions partitioned by a selected column (and another). */
#define WINDOW_Q                                                                                   \
    " SELECT orders.id,\n    orders.customer_id,\n    rank() OVER (PARTITION BY "                  \
    "orders.customer_id ORDER BY orders.amount) AS r,\n    sum(orders.amount) OVER (PARTITION BY " \
    "orders.customer_id, orders.status) AS s\n   FROM public.orders\n  WHERE (orders.amount > "    \
    "(0)::numeric)"
/* A window partitioned by an expression that the select list has. */
#define WINDOW_EXPR_Q                                                                          \
    " SELECT orders.id,\n    (orders.customer_id % 3) AS bucket,\n    rank() OVER (PARTITION " \
    "BY (orders.customer_id % 3) ORDER BY orders.amount) AS r,\n    sum(orders.amount) OVER "  \
    "(PARTITION BY (orders.customer_id % 3), orders.status) AS s\n   FROM public.orders"
#define REGION_LEFT_WHERE                                                                        \
    "SELECT customers.region,\n    count(orders.id) AS n\n   FROM (public.customers\n     LEFT " \
    "JOIN public.orders ON ((orders.customer_id = customers.id)))\n  WHERE (orders.amount > "    \
    "(0)::numeric)\n  GROUP BY customers.region"
#define LIMIT_BRANCH                                                                               \
    "( SELECT refunds.id,\n    refunds.amount\n   FROM public.refunds\n  ORDER BY refunds.amount " \
    "DESC\n LIMIT 5)"

static const sl_analyze_branch_t two_keyed[] = {
    {ORDERS_BRANCH, (const char *const[]){"id"}, 1},
    {REFUNDS_BRANCH, (const char *const[]){"id"}, 1},
};
static const sl_analyze_branch_t left_first[] = {
    {LEFT_BRANCH, (const char *const[]){"id"}, 1},
    {REFUNDS_BRANCH, (const char *const[]){"id"}, 1},
};
static const sl_analyze_branch_t left_second[] = {
    {REFUNDS_BRANCH, (const char *const[]){"id"}, 1},
    {LEFT_BRANCH, (const char *const[]){"id"}, 1},
};
/* A LEFT JOIN chain in a subquery that the branch filters and projects. */
#define DERIVED_LEFT_BRANCH                                                                        \
    "SELECT s.id,\n    s.cid AS amount\n   FROM ( SELECT orders.id,\n            customers.id AS " \
    "cid\n           FROM (public.orders\n             LEFT JOIN public.customers ON "             \
    "((customers.id = orders.customer_id)))) s\n  WHERE (s.cid IS DISTINCT FROM 3)"
static const sl_analyze_branch_t derived_left_second[] = {
    {REFUNDS_BRANCH, (const char *const[]){"id", "amount"}, 2},
    {DERIVED_LEFT_BRANCH, (const char *const[]){"id", "amount"}, 2},
};
static const sl_analyze_branch_t joined_second[] = {
    {ORDERS_BRANCH, (const char *const[]){"id"}, 1},
    {"SELECT c.id,\n    t.total AS amount\n   FROM (public.customers c\n     JOIN ( SELECT "
     "orders.customer_id,\n            sum(orders.amount) AS total\n           FROM "
     "public.orders\n          GROUP BY orders.customer_id) t ON ((t.customer_id = c.id)))",
     (const char *const[]){"id"}, 1},
};
static const sl_analyze_branch_t limit_second[] = {
    {ORDERS_BRANCH, (const char *const[]){"id"}, 1},
    {LIMIT_BRANCH, (const char *const[]){"id"}, 1},
};

/* A WITH query over orders, and a query that reads it. */
#define BIG_BODY                                                                            \
    "        SELECT orders.id,\n            orders.amount\n           FROM public.orders\n" \
    "          WHERE (orders.amount > (100)::numeric)"
#define BIG_MAIN "SELECT big.id,\n    big.amount\n   FROM big"
#define TOTALS_BODY                                                                 \
    "        SELECT orders.customer_id,\n            sum(orders.amount) AS total\n" \
    "           FROM public.orders\n          GROUP BY orders.customer_id"

/* The rest of a DISTINCT ON query after its parentheses. */
#define DON_REST                                                                              \
    "orders.customer_id,\n    orders.id,\n    orders.amount\n   FROM public.orders\n  WHERE " \
    "(orders.status <> 'void'::text)\n  ORDER BY orders.customer_id, orders.amount DESC, "    \
    "orders.id"

/* A UNION (without ALL) of two queries, as pg_get_viewdef prints it (every
 * query's columns named as the view's). */
#define UNION_Q                                                                               \
    " SELECT orders.customer_id AS id,\n    orders.status AS what\n   FROM public.orders\n  " \
    "WHERE "                                                                                  \
    "(orders.amount > (10)::numeric)\nUNION\n SELECT customers.id,\n    customers.name AS "   \
    "what\n   FROM public.customers"

/* The same in a subquery in FROM, the second query's column named otherwise. */
#define UNION_SUB                                                                           \
    " SELECT u.k\n   FROM ( SELECT orders.id AS k\n           FROM public.orders\n        " \
    "UNION\n "                                                                              \
    "        SELECT refunds.order_id\n           FROM public.refunds) u\n  WHERE (u.k > 10)"

static const analyze_row_t rows[] = {
    /* One table. */
    {"projection_pk_differential",
     " SELECT orders.id,\n    orders.customer_id,\n    orders.amount\n   FROM public.orders\n  "
     "WHERE (orders.status = 'paid'::text)",
     KEYS("id"), .mode = DIFF, .field = AFFECTED,
     .want = "^SELECT DISTINCT (orders.id) AS \"id\" FROM pg_temp.\"__sluice_chg_16401\" AS "
             "\"orders\" WHERE  (orders.status = 'paid'::text)"},
    {"group_by_differential",
     " SELECT orders.customer_id,\n    sum(orders.amount) AS total\n   FROM public.orders\n  "
     "GROUP BY orders.customer_id",
     KEYS("customer_id"), .mode = DIFF, .field = RECOMPUTE,
     .want = "FROM public.orders\n   WHERE (orders.customer_id) IN (SELECT "
             "\"customer_id\" FROM pg_temp.\"__sluice_aff\" WHERE \"customer_id\" IS NOT NULL) "
             "GROUP BY orders.customer_id"},
    {"group_by_null_keys_through_hash",
     " SELECT orders.customer_id,\n    sum(orders.amount) AS total\n   FROM public.orders\n  "
     "GROUP BY orders.customer_id",
     KEYS("customer_id"), .mode = DIFF, .field = RECOMPUTE,
     .want = "jsonb_build_array((orders.customer_id)) IN (SELECT "
             "jsonb_build_array(\"customer_id\") FROM pg_temp.\"__sluice_aff\")"},
    /* Regression: a global aggregate's recompute must return its one row
     * only when a change reached it (passed WHERE); without the EXISTS, a
     * change filtered out by WHERE made the refresh insert the row twice. */
    {"global_aggregate_where_recompute_gated",
     " SELECT count(*) AS n,\n    sum(orders.amount) AS total\n   FROM public.orders\n  WHERE "
     "(orders.status = 'paid'::text)",
     .keys = NULL, .nkeys = 0, .mode = DIFF, .field = RECOMPUTE,
     .want = "WHERE EXISTS (SELECT FROM pg_temp.\"__sluice_aff\")"},
    {"global_aggregate_where_affected_filtered",
     " SELECT count(*) AS n,\n    sum(orders.amount) AS total\n   FROM public.orders\n  WHERE "
     "(orders.status = 'paid'::text)",
     .keys = NULL, .nkeys = 0, .mode = DIFF, .field = AFFECTED,
     .want = "AS \"orders\" WHERE  (orders.status = 'paid'::text) LIMIT 1"},
    {"projection_without_where_gains_one",
     " SELECT orders.id,\n    orders.amount\n   FROM public.orders", KEYS("id"), .mode = DIFF,
     .field = RECOMPUTE,
     .want = "FROM public.orders WHERE (orders.id) IN (SELECT \"id\" FROM "
             "pg_temp.\"__sluice_aff\" WHERE \"id\" IS NOT NULL)"},

    /* Fallbacks to FULL. */
    {"no_identity_full", " SELECT orders.amount\n   FROM public.orders", .no_identity = true,
     .mode = FULL, .field = REASON, .want = "no identity"},
    {"limit_full",
     " SELECT orders.id,\n    orders.amount\n   FROM public.orders\n  ORDER BY orders.amount "
     "DESC\n LIMIT 10",
     KEYS("id"), .mode = FULL, .field = REASON, .want = "^LIMIT/OFFSET"},
    {"window_function_full",
     " SELECT orders.id,\n    rank() OVER (ORDER BY orders.amount) AS r\n   FROM public.orders",
     KEYS("id"), .mode = FULL, .field = REASON, .want = "^window functions without PARTITION BY"},
    /* Window functions by partition (migration 26): the unit is the
     * partition columns every window has, selected as they are. */
    {"window_partition_units", WINDOW_Q, KEYS("id"), .mode = DIFF, .field = UNITS,
     .want = "{\"customer_id\"}"},
    {"window_partition_affected", WINDOW_Q, KEYS("id"), .mode = DIFF, .field = AFFECTED,
     .want = "SELECT DISTINCT \"orders\".\"customer_id\" AS \"customer_id\" FROM "
             "pg_temp.\"__sluice_chg_16401\" AS \"orders\" WHERE  (orders.amount > (0)::numeric)"},
    /* Recomputed restricted before the windows run, NULL partitions too. */
    {"window_partition_recompute", WINDOW_Q, KEYS("id"), .mode = DIFF, .field = RECOMPUTE,
     .want = "WHERE ( (orders.amount > (0)::numeric)) AND \"orders\".\"customer_id\" IN "
             "(SELECT \"customer_id\" FROM pg_temp.\"__sluice_aff\" WHERE \"customer_id\" "
             "IS NOT NULL)"},
    {"window_partition_null", WINDOW_Q, KEYS("id"), .mode = DIFF, .field = RECOMPUTE,
     .want = "(\"orders\".\"customer_id\" IS NULL) AND jsonb_build_array("
             "\"orders\".\"customer_id\") IN"},
    {"window_partition_tree", WINDOW_Q, KEYS("id"), .mode = DIFF, .field = TREE,
     .want = "Project (4 columns)\n  Window (2 functions)\n    Filter (WHERE)\n"},
    /* Top-N per group: the subquery's partitions are the query's units. */
    {"window_top_n",
     " SELECT s.id,\n    s.customer_id,\n    s.amount\n   FROM ( SELECT orders.id,\n            "
     "orders.customer_id,\n            orders.amount,\n            row_number() OVER (PARTITION BY "
     "orders.customer_id ORDER BY orders.amount DESC) AS rn\n           FROM public.orders) s\n  "
     "WHERE (s.rn <= 3)",
     KEYS("id"), .mode = DIFF, .field = UNITS, .want = "{\"customer_id\"}"},
    {"window_top_n_unit_unselected",
     " SELECT s.id,\n    s.amount\n   FROM ( SELECT orders.id,\n            "
     "orders.customer_id,\n            orders.amount,\n            row_number() OVER (PARTITION BY "
     "orders.customer_id ORDER BY orders.amount DESC) AS rn\n           FROM public.orders) s\n  "
     "WHERE (s.rn <= 3)",
     KEYS("id"), .mode = FULL, .field = REASON,
     .want = "the subquery in FROM is refreshed by the partitions of its window functions: select "
             "its column customer_id unchanged"},
    /* A named window is followed to its PARTITION BY. */
    {"window_named",
     " SELECT orders.id,\n    orders.customer_id,\n    sum(orders.amount) OVER w AS s\n   FROM "
     "public.orders\n  WINDOW w AS (PARTITION BY orders.customer_id ORDER BY orders.id)",
     KEYS("id"), .mode = DIFF, .field = UNITS, .want = "{\"customer_id\"}"},
    /* Refused: the partition column not selected, an expression, no
     * common column, over a join, with GROUP BY. */
    {"window_partition_unselected",
     " SELECT orders.id,\n    rank() OVER (PARTITION BY orders.customer_id ORDER BY "
     "orders.amount) AS r\n   FROM public.orders",
     KEYS("id"), .mode = FULL, .field = REASON,
     .want = "^window functions are refreshed "
             "differentially by partition: the select"},
    {"window_partition_expression_unselected",
     " SELECT orders.id,\n    orders.customer_id,\n    rank() OVER (PARTITION BY "
     "(orders.customer_id % 3)) AS r\n   FROM public.orders",
     KEYS("id"), .mode = FULL, .field = REASON,
     .want = "the select list must have, as they are, the columns or expressions"},
    /* Partitioned by an expression the select list has (engine only). */
    {"window_partition_expression_units", WINDOW_EXPR_Q, KEYS("id"), .mode = DIFF, .field = UNITS,
     .want = "{\"bucket\"}"},
    {"window_partition_expression_affected", WINDOW_EXPR_Q, KEYS("id"), .mode = DIFF,
     .field = AFFECTED,
     .want = "^SELECT DISTINCT ((orders.customer_id % 3)) AS \"bucket\" FROM "
             "pg_temp.\"__sluice_chg_16401\" AS \"orders\""},
    {"window_partition_expression_recompute", WINDOW_EXPR_Q, KEYS("id"), .mode = DIFF,
     .field = RECOMPUTE, .want = "WHERE ((orders.customer_id % 3)) IN (SELECT \"bucket\" FROM"},
    /* Over a subquery that filters and projects one table (a WITH query
     * written in place): as over its table. */
    {"window_over_filter_subquery_affected",
     " WITH o AS (\n         SELECT orders.id,\n            orders.customer_id,\n            "
     "orders.amount\n           FROM public.orders\n          WHERE (orders.amount > "
     "(10)::numeric)\n        )\n SELECT o.id,\n    o.customer_id,\n    rank() OVER (PARTITION "
     "BY o.customer_id ORDER BY o.amount) AS r\n   FROM o",
     KEYS("id"), .mode = DIFF, .field = AFFECTED, .want = "FROM pg_temp.\"__sluice_before_16401\""},
    {"distinct_on_over_with_units",
     " WITH o AS (\n         SELECT orders.id,\n            orders.customer_id,\n            "
     "orders.amount\n           FROM public.orders\n        )\n SELECT DISTINCT ON "
     "(o.customer_id) o.customer_id,\n    o.amount\n   FROM o\n  ORDER BY o.customer_id, "
     "o.amount DESC",
     KEYS("customer_id"), .mode = DIFF, .field = UNITS, .want = "{\"customer_id\"}"},
    {"window_over_grouping_subquery_full",
     " SELECT t.customer_id,\n    rank() OVER (PARTITION BY (t.customer_id % 2) ORDER BY t.n) AS "
     "r,\n    (t.customer_id % 2) AS half\n   FROM ( SELECT orders.customer_id,\n            "
     "count(*) AS n\n           FROM public.orders\n          GROUP BY orders.customer_id) t",
     KEYS("customer_id"), .mode = FULL, .field = REASON,
     .want = "^a subquery in FROM is refreshed differentially when it filters"},
    {"window_partition_expression_other_window",
     " SELECT orders.id,\n    (orders.customer_id % 3) AS bucket,\n    rank() OVER (PARTITION BY "
     "(orders.customer_id % 3) ORDER BY orders.amount) AS r,\n    count(*) OVER (PARTITION BY "
     "orders.status) AS n\n   FROM public.orders",
     KEYS("id"), .mode = FULL, .field = REASON, .want = "the columns or expressions that every"},
    {"window_partition_disjoint",
     " SELECT orders.id,\n    orders.customer_id,\n    orders.status,\n    rank() OVER (PARTITION "
     "BY orders.customer_id) AS r,\n    rank() OVER (PARTITION BY orders.status) AS q\n   FROM "
     "public.orders",
     KEYS("id"), .mode = FULL, .field = REASON, .want = "every window is partitioned by"},
    /* Over an inner join: the partitions of the join's rows that involve
     * a changed row of either table, now and before the window. */
    {"window_join_units", WINDOW_JOIN_Q, KEYS("id", "cid"), .mode = DIFF, .field = UNITS,
     .want = "{\"region\"}"},
    {"window_join_affected", WINDOW_JOIN_Q, KEYS("id", "cid"), .mode = DIFF, .field = AFFECTED,
     .want =
         "(SELECT \"customers\".\"region\" AS \"region\" FROM  (public.orders\n     JOIN "
         "public.customers ON ((customers.id = orders.customer_id))) WHERE \"customers\".\"id\" "
         "= ANY (ARRAY(SELECT \"id\" FROM pg_temp.\"__sluice_chg_16402\")))"},
    {"window_left_join_full",
     " SELECT orders.id,\n    customers.id AS cid,\n    orders.customer_id,\n    rank() OVER "
     "(PARTITION BY orders.customer_id) AS r\n   FROM (public.orders\n     LEFT JOIN "
     "public.customers ON ((customers.id = orders.customer_id)))",
     KEYS("id", "cid"), .mode = FULL, .field = REASON,
     .want = "^window functions are refreshed differentially over one table or tables joined by "
             "inner joins"},
    {"window_group_full",
     " SELECT orders.customer_id,\n    sum(orders.amount) AS s,\n    rank() OVER (PARTITION BY "
     "orders.customer_id) AS r\n   FROM public.orders\n  GROUP BY orders.customer_id",
     KEYS("customer_id"), .mode = FULL, .field = REASON,
     .want = "^window functions are refreshed differentially over one table"},
    /* WITH, written in place (the text as pg_get_viewdef prints it). */
    {"with_derived_recompute_in_place", " WITH big AS (\n " BIG_BODY "\n        )\n " BIG_MAIN,
     KEYS("id"), .mode = DIFF, .field = RECOMPUTE,
     .want = "FROM (\n         SELECT orders.id,\n            orders.amount\n           FROM "},
    {"with_derived_tree", " WITH big AS (\n " BIG_BODY "\n        )\n " BIG_MAIN, KEYS("id"),
     .mode = DIFF, .field = TREE, .want = "^With big (written in place)\n  "},
    {"with_materialized_same", " WITH big AS MATERIALIZED (\n " BIG_BODY "\n        )\n " BIG_MAIN,
     KEYS("id"), .mode = DIFF, .field = RECOMPUTE, .want = ") AS big"},
    {"with_joined_units",
     " WITH t AS (\n " TOTALS_BODY "\n        )\n SELECT c.id,\n    c.name,\n    t.total\n   "
     "FROM (public.customers c\n     JOIN t ON ((t.customer_id = c.id)))",
     KEYS("id"), .mode = DIFF, .field = UNITS, .want = "{\"id\"}"},
    {"with_chained_aliased",
     " WITH t AS (\n " TOTALS_BODY "\n        ), b AS (\n         SELECT t.customer_id,\n       "
     "     t.total\n           FROM t\n          WHERE (t.total > (5)::numeric)\n        )\n "
     "SELECT x.customer_id,\n    x.total\n   FROM b x",
     KEYS("customer_id"), .mode = DIFF, .field = AFFECTED,
     .want = "FROM pg_temp.\"__sluice_chg_16401\""},
    {"with_unread_query_ignored",
     " WITH unused AS (\n         SELECT refunds.id\n           FROM public.refunds\n        ), "
     "big AS (\n " BIG_BODY "\n        )\n " BIG_MAIN,
     KEYS("id"), .mode = DIFF, .field = RECOMPUTE, .want = "^("},
    {"with_recursive_full",
     " WITH RECURSIVE r(n) AS (\n         VALUES (1)\n        UNION ALL\n         SELECT (r_1.n "
     "+ 1)\n           FROM r r_1\n          WHERE (r_1.n < 3)\n        )\n SELECT orders.id\n  "
     " FROM (public.orders\n     JOIN r ON ((r.n = orders.id)))",
     KEYS("id"), .mode = FULL, .field = REASON, .want = "^WITH RECURSIVE is refreshed in full"},
    {"with_read_twice_full",
     " WITH big AS (\n " BIG_BODY "\n        )\n SELECT a.id,\n    b.amount\n   FROM (big a\n  "
     "   JOIN big b ON ((b.id = a.id)))",
     KEYS("id"), .mode = FULL, .field = REASON,
     .want = "^the WITH query big is read more than once"},
    {"with_column_names_full",
     " WITH big(i, a) AS (\n " BIG_BODY "\n        )\n SELECT big.i,\n    big.a\n   FROM big",
     KEYS("i"), .mode = FULL, .field = REASON,
     .want = "^the WITH query big has column names (WITH big(a, b)"},
    {"with_over_union_full",
     " WITH big AS (\n " BIG_BODY "\n        )\n SELECT big.id\n   FROM big\nUNION ALL\n SELECT "
     "refunds.id\n   FROM public.refunds",
     KEYS("id"), .mode = FULL, .field = REASON, .want = "^a WITH over a UNION ALL"},
    {"with_over_union_distinct",
     " WITH big AS (\n " BIG_BODY "\n        )\n SELECT big.id\n   FROM big\nUNION\n SELECT "
     "refunds.id\n   FROM public.refunds",
     KEYS("id"), .mode = DIFF, .field = RECOMPUTE,
     .want = "FROM (\n " BIG_BODY "\n        ) AS big"},
    {"with_inside_derived_subquery",
     " SELECT s.id\n   FROM ( WITH big AS (\n " BIG_BODY "\n                )\n         SELECT "
     "big.id\n           FROM big) s",
     KEYS("id"), .mode = DIFF, .field = RECOMPUTE, .want = "FROM (\n         SELECT orders.id,"},
    {"with_nested_in_with_full",
     " WITH big AS (\n         WITH inner_q AS (\n " BIG_BODY "\n                )\n         "
     "SELECT inner_q.id,\n            inner_q.amount\n           FROM inner_q\n        "
     ")\n " BIG_MAIN,
     KEYS("id"), .mode = FULL, .field = REASON, .want = "^a WITH inside a query that has a WITH"},
    {"with_read_in_where_subquery_full",
     " WITH r AS (\n         SELECT refunds.order_id\n           FROM public.refunds\n        )\n "
     "SELECT orders.id\n   FROM public.orders\n  WHERE (EXISTS ( SELECT 1\n           FROM r\n   "
     "       WHERE (r.order_id = orders.id)))",
     KEYS("id"), .mode = FULL, .field = REASON, .want = "subqueries in expressions"},
    /* INTERSECT and EXCEPT (without ALL): the same, the recomputed rows
     * combined by the set operation; the affected rows still united. */
    {"intersect_recompute",
     " SELECT orders.id\n   FROM public.orders\nINTERSECT\n SELECT refunds.id\n   FROM "
     "public.refunds",
     KEYS("id"), .mode = DIFF, .field = RECOMPUTE, .want = ")) INTERSECT ((SELECT refunds.id"},
    {"except_affected_united",
     " SELECT orders.id\n   FROM public.orders\nEXCEPT\n SELECT refunds.order_id AS id\n   FROM "
     "public.refunds",
     KEYS("id"), .mode = DIFF, .field = AFFECTED,
     .want = " UNION SELECT \"__sluice_b\".\"id\" AS \"id\" FROM (SELECT DISTINCT "
             "(refunds.order_id) AS \"id\""},
    {"except_recompute",
     " SELECT orders.id\n   FROM public.orders\nEXCEPT\n SELECT refunds.order_id AS id\n   FROM "
     "public.refunds",
     KEYS("id"), .mode = DIFF, .field = RECOMPUTE, .want = ")) EXCEPT ((SELECT refunds.order_id"},
    {"union_then_except_full",
     " SELECT orders.id\n   FROM public.orders\nUNION\n SELECT customers.id\n   FROM "
     "public.customers\nEXCEPT\n SELECT refunds.order_id AS id\n   FROM public.refunds",
     KEYS("id"), .mode = FULL, .field = REASON,
     .want = "^UNION, INTERSECT and EXCEPT (without ALL) are refreshed differentially as a chain "
             "of one of them"},
    {"except_branch_groups_full",
     " SELECT orders.customer_id AS id\n   FROM public.orders\nEXCEPT\n SELECT refunds.order_id "
     "AS id\n   FROM public.refunds\n  GROUP BY refunds.order_id",
     KEYS("id"), .mode = FULL, .field = REASON,
     .want = "^EXCEPT branch 2 groups or aggregates (GROUP BY, HAVING or an aggregate, in it or in "
             "a subquery in its FROM): inside an EXCEPT"},
    {"intersect_all_full",
     " SELECT orders.id\n   FROM public.orders\nINTERSECT ALL\n SELECT refunds.id\n   FROM "
     "public.refunds",
     KEYS("id"), .mode = FULL, .field = REASON,
     .want = "^INTERSECT ALL and EXCEPT ALL are refreshed in full"},
    /* UNION (without ALL): keyed by all its columns, each query analysed
     * with those keys, affected rows and recomputed rows united. */
    {"union_affected_each_query", UNION_Q, KEYS("id", "what"), .mode = DIFF, .field = AFFECTED,
     .want =
         "^SELECT \"__sluice_b\".\"id\" AS \"id\", \"__sluice_b\".\"what\" AS \"what\" FROM "
         "(SELECT DISTINCT (orders.customer_id) AS \"id\", (orders.status) AS \"what\" FROM "
         "pg_temp.\"__sluice_chg_16401\" AS \"orders\" WHERE  (orders.amount > (10)::numeric)) AS "
         "\"__sluice_b\" UNION SELECT \"__sluice_b\".\"id\" AS \"id\", \"__sluice_b\".\"what\" AS "
         "\"what\" FROM (SELECT DISTINCT (customers.id) AS \"id\", (customers.name) AS \"what\" "
         "FROM pg_temp.\"__sluice_chg_16402\" AS \"customers\") AS \"__sluice_b\""},
    {"union_recompute_united", UNION_Q, KEYS("id", "what"), .mode = DIFF, .field = RECOMPUTE,
     .want = "WHERE ((customers.id), (customers.name)) IN (SELECT \"id\", \"what\" FROM "
             "pg_temp.\"__sluice_aff\")"},
    {"union_recompute_second_query", UNION_Q, KEYS("id", "what"), .mode = DIFF, .field = RECOMPUTE,
     .want = ")) UNION ((SELECT customers.id,"},
    {"union_tree", UNION_Q, KEYS("id", "what"), .mode = DIFF, .field = TREE, .want = "^Union\n"},
    {"union_three_queries",
     UNION_Q
     "\nUNION\n SELECT refunds.order_id AS id,\n    'refund'::text AS what\n   FROM public.refunds",
     KEYS("id", "what"), .mode = DIFF, .field = AFFECTED,
     .want = "(SELECT DISTINCT (refunds.order_id) AS \"id\", ('refund'::text) AS \"what\" FROM "
             "pg_temp.\"__sluice_chg_16403\" AS \"refunds\")"},
    {"union_left_join_by_keys",
     " SELECT o.id,\n    c.name AS what\n   FROM (public.orders o\n     LEFT JOIN public.customers "
     "c "
     "ON ((c.id = o.customer_id)))\nUNION\n SELECT customers.id,\n    customers.name AS what\n   "
     "FROM public.customers",
     KEYS("id", "what"), .mode = DIFF, .field = RECOMPUTE, .want = "LEFT JOIN public.customers c"},
    {"union_after_union_all_full",
     "(\n SELECT orders.id\n   FROM public.orders\nUNION ALL\n SELECT refunds.id\n   FROM "
     "public.refunds\n) UNION\n SELECT customers.id\n   FROM public.customers",
     KEYS("id"), .mode = FULL, .field = REASON,
     .want = "^UNION, INTERSECT and EXCEPT (without ALL) are refreshed differentially"},
    {"union_order_by_full", UNION_Q "\n  ORDER BY 1", KEYS("id", "what"), .mode = FULL,
     .field = REASON,
     .want = "^UNION, INTERSECT and EXCEPT (without ALL) are refreshed differentially"},
    {"union_query_groups_full",
     UNION_Q "\nUNION\n SELECT refunds.order_id AS id,\n    (count(*))::text AS what\n   FROM "
             "public.refunds\n  GROUP BY refunds.order_id",
     KEYS("id", "what"), .mode = FULL, .field = REASON,
     .want = "^UNION branch 3 groups or aggregates"},
    {"union_query_aggregates_full",
     " SELECT (max(orders.id))::integer AS id,\n    'max'::text AS what\n   FROM "
     "public.orders\nUNION\n"
     " SELECT customers.id,\n    customers.name AS what\n   FROM public.customers",
     KEYS("id", "what"), .mode = FULL, .field = REASON,
     .want = "^UNION branch 1 groups or aggregates"},
    {"union_query_grouping_subquery_full",
     " SELECT g.id,\n    'g'::text AS what\n   FROM ( SELECT orders.customer_id AS id\n           "
     "FROM "
     "public.orders\n          GROUP BY orders.customer_id) g\nUNION\n SELECT customers.id,\n    "
     "customers.name AS what\n   FROM public.customers",
     KEYS("id", "what"), .mode = FULL, .field = REASON,
     .want = "^UNION branch 1 groups or aggregates"},
    {"union_aggregate_in_subquery_expression",
     " SELECT orders.id,\n    orders.status AS what\n   FROM public.orders\n  WHERE (orders.amount "
     "> ( "
     "SELECT avg(refunds.amount) AS avg\n           FROM public.refunds\n          WHERE "
     "(refunds.order_id = orders.id)))\nUNION\n SELECT customers.id,\n    customers.name AS what\n "
     "  "
     "FROM public.customers",
     KEYS("id", "what"), .mode = DIFF, .field = AFFECTED, .want = "__sluice_chg_16403"},
    {"union_query_window_full",
     " SELECT orders.id,\n    (rank() OVER (PARTITION BY orders.customer_id ORDER BY "
     "orders.amount))::text "
     "AS what\n   FROM public.orders\nUNION\n SELECT customers.id,\n    customers.name AS what\n   "
     "FROM "
     "public.customers",
     KEYS("id", "what"), .mode = FULL, .field = REASON,
     .want = "^UNION branch 1: window functions"},
    /* In a subquery in FROM that a query filters and projects (or a WITH
     * query written in place), each query keeps its own column names. */
    {"union_in_subquery",
     " SELECT u.id\n   FROM ( SELECT orders.id\n           FROM public.orders\n        UNION\n     "
     "    SELECT refunds.id\n           FROM public.refunds) u",
     KEYS("id"), .mode = DIFF, .field = AFFECTED,
     .want = "^SELECT \"__sluice_d\".\"id\" AS \"id\" FROM (SELECT \"__sluice_b\".\"id\" AS \"id\" "
             "FROM (SELECT DISTINCT (orders.id) AS \"id\" FROM "},
    {"union_in_subquery_renamed_affected", UNION_SUB, KEYS("k"), .mode = DIFF, .field = AFFECTED,
     .want = "UNION SELECT \"__sluice_b\".\"order_id\" AS \"k\" FROM (SELECT DISTINCT "
             "(refunds.order_id) AS \"order_id\" FROM pg_temp.\"__sluice_chg_16403\""},
    {"union_in_subquery_renamed_recompute", UNION_SUB, KEYS("k"), .mode = DIFF, .field = RECOMPUTE,
     .want = "(SELECT \"k\" AS \"order_id\" FROM pg_temp.\"__sluice_aff\") AS \"__sluice_aff\""},
    {"union_in_subquery_unnamed_named",
     " SELECT u.k,\n    u.one\n   FROM ( SELECT orders.id AS k,\n            1 AS one\n           "
     "FROM "
     "public.orders\n        UNION\n         SELECT refunds.order_id,\n            2\n           "
     "FROM public.refunds) u",
     KEYS("k", "one"), .mode = DIFF, .field = RECOMPUTE, .want = "2 AS \"__sluice_c2\"\n"},
    {"union_in_subquery_same_names_full",
     " SELECT u.k,\n    u.one\n   FROM ( SELECT orders.id AS k,\n            1 AS one\n           "
     "FROM "
     "public.orders\n        UNION\n         SELECT refunds.order_id AS x,\n            refunds.id "
     "AS x\n  "
     "         FROM public.refunds) u",
     KEYS("k", "one"), .mode = FULL, .field = REASON,
     .want = "the subquery in FROM: UNION branch 2: its columns 1 and 2 are both named x"},
    {"union_without_identity_full", UNION_Q, .no_identity = true, .mode = FULL, .field = REASON,
     .want = "^rows have no key (content identity): the rows of a UNION, INTERSECT or EXCEPT are "
             "keyed by all of its columns"},
    {"requested_full",
     " SELECT orders.customer_id,\n    sum(orders.amount) AS total\n   FROM public.orders\n  "
     "GROUP BY orders.customer_id",
     KEYS("customer_id"), .requested_full = true, .mode = FULL, .field = REASON,
     .want = "refresh_mode is 'full'"},
    /* Subqueries in the select list: the rows for which a changed row of
     * the subquery's table passes its WHERE clause alone (what it computes
     * from those rows does not matter). */
    {"scalar_subquery_affected",
     " SELECT orders.id,\n    ( SELECT count(*) AS count\n           FROM public.refunds\n     "
     "     WHERE (refunds.order_id = orders.id)) AS n\n   FROM public.orders",
     KEYS("id"), .mode = DIFF, .field = AFFECTED,
     .want = "FROM  public.orders WHERE (true) AND EXISTS (SELECT FROM "
             "pg_temp.\"__sluice_chg_16403\" AS \"refunds\"\n          WHERE (refunds.order_id = "
             "orders.id))) UNION"},
    {"scalar_subquery_recompute",
     " SELECT orders.id,\n    ( SELECT count(*) AS count\n           FROM public.refunds\n     "
     "     WHERE (refunds.order_id = orders.id)) AS n\n   FROM public.orders",
     KEYS("id"), .mode = DIFF, .field = RECOMPUTE,
     .want = "( SELECT count(*) AS count\n           FROM public.refunds\n          WHERE "
             "(refunds.order_id = orders.id)) AS n"},
    {"scalar_subquery_tree",
     " SELECT orders.id,\n    ( SELECT count(*) AS count\n           FROM public.refunds\n     "
     "     WHERE (refunds.order_id = orders.id)) AS n\n   FROM public.orders",
     KEYS("id"), .mode = DIFF, .field = TREE,
     .want = "^Project (2 columns)\n  Subquery (scalar)\n    Project (1 column)\n      "
             "Aggregate\n        Filter (WHERE)\n          Scan public.refunds\n  Scan "
             "public.orders\n"},
    /* ORDER BY and LIMIT cut off; an alias kept as written. */
    {"scalar_latest_where_only",
     " SELECT orders.id,\n    ( SELECT r.amount\n           FROM public.refunds r\n          "
     "WHERE (r.order_id = orders.id)\n          ORDER BY r.id DESC\n         LIMIT 1) AS "
     "last_refund\n   FROM public.orders",
     KEYS("id"), .mode = DIFF, .field = AFFECTED,
     .want = "EXISTS (SELECT FROM pg_temp.\"__sluice_chg_16403\" r\n          WHERE (r.order_id "
             "= orders.id)\n          )) UNION"},
    {"scalar_uncorrelated_every_row",
     " SELECT orders.id,\n    ( SELECT max(refunds.amount) AS max\n           FROM "
     "public.refunds) AS top\n   FROM public.orders",
     KEYS("id"), .mode = DIFF, .field = AFFECTED,
     .want = "WHERE (true) AND EXISTS (SELECT FROM pg_temp.\"__sluice_chg_16403\" AS "
             "\"refunds\")) UNION"},
    /* With one in WHERE too: that one is masked, this one is not. */
    {"exists_column_and_where",
     " SELECT orders.id,\n    (EXISTS ( SELECT 1\n           FROM public.refunds\n          "
     "WHERE (refunds.order_id = orders.id))) AS refunded\n   FROM public.orders\n  WHERE "
     "((orders.amount > (0)::numeric) AND (orders.customer_id IN ( SELECT customers.id\n        "
     "   FROM public.customers\n          WHERE (customers.region = 'eu'::text))))",
     KEYS("id"), .mode = DIFF, .field = AFFECTED,
     .want = "WHERE ( ((orders.amount > (0)::numeric) AND (true))) AND EXISTS (SELECT FROM "
             "pg_temp.\"__sluice_chg_16403\" AS \"refunds\"\n          WHERE "
             "(refunds.order_id = orders.id)))"},
    {"array_in_left_join_units",
     " SELECT orders.id,\n    customers.name,\n    ARRAY( SELECT refunds.amount\n           "
     "FROM public.refunds\n          WHERE (refunds.order_id = orders.id)) AS amounts\n   FROM "
     "(public.orders\n     LEFT JOIN public.customers ON ((customers.id = "
     "orders.customer_id)))",
     KEYS("id"), .mode = DIFF, .field = AFFECTED,
     .want = "WHERE EXISTS (SELECT FROM pg_temp.\"__sluice_chg_16403\" AS \"refunds\"\n    "
             "      WHERE (refunds.order_id = orders.id))) AS \"__sluice_u\" (\"id\")"},
    {"scalar_in_branch",
     " SELECT customers.id,\n    0 AS n\n   FROM public.customers\nUNION ALL\n SELECT "
     "orders.id,\n    ( SELECT count(*) AS count\n           FROM public.refunds\n          "
     "WHERE (refunds.order_id = orders.id)) AS n\n   FROM public.orders",
     KEYS("id"),
     BRANCHES_OF(((const sl_analyze_branch_t[]){
         {"SELECT customers.id,\n    0 AS n\n   FROM public.customers", (const char *const[]){"id"},
          1},
         {"SELECT orders.id,\n    ( SELECT count(*) AS count\n           FROM public.refunds\n "
          "         WHERE (refunds.order_id = orders.id)) AS n\n   FROM public.orders",
          (const char *const[]){"id"}, 1}})),
     .mode = DIFF, .field = BRANCHES, .want = "AND EXISTS (SELECT FROM pg_temp."},
    /* Refused in the select list. */
    {"scalar_in_group_by_full",
     " SELECT orders.customer_id,\n    sum(orders.amount) AS total,\n    ( SELECT "
     "customers.name\n           FROM public.customers\n          WHERE (customers.id = "
     "orders.customer_id)) AS name\n   FROM public.orders\n  GROUP BY orders.customer_id",
     KEYS("customer_id"), .mode = FULL, .field = REASON,
     .want = "in the select list of a query that neither groups nor aggregates"},
    {"scalar_one_row_aggregate_full",
     " SELECT count(*) AS n,\n    ( SELECT count(*) AS count\n           FROM public.refunds) "
     "AS r\n   FROM public.orders",
     .keys = NULL, .nkeys = 0, .mode = FULL, .field = REASON,
     .want =
         "^subqueries in expressions are refreshed differentially in the WHERE clause, and in the "
         "select list"},
    {"scalar_join_in_subquery_full",
     " SELECT orders.id,\n    ( SELECT count(*) AS count\n           FROM (public.refunds\n     "
     "        JOIN public.customers ON ((customers.id = refunds.order_id)))\n          WHERE "
     "(refunds.order_id = orders.id)) AS n\n   FROM public.orders",
     KEYS("id"), .mode = FULL, .field = REASON,
     .want =
         "^subqueries in expressions are refreshed differentially in the WHERE clause, and in the "
         "select list"},
    {"scalar_nested_full",
     " SELECT orders.id,\n    ( SELECT count(*) AS count\n           FROM public.refunds\n     "
     "     WHERE (refunds.amount > ( SELECT 1))) AS n\n   FROM public.orders",
     KEYS("id"), .mode = FULL, .field = REASON,
     .want =
         "^subqueries in expressions are refreshed differentially in the WHERE clause, and in the "
         "select list"},
    {"scalar_with_subquery_in_from_full",
     " SELECT s.id,\n    ( SELECT count(*) AS count\n           FROM public.refunds\n        "
     "  WHERE (refunds.order_id = s.id)) AS n\n   FROM (( SELECT orders.id,\n            "
     "orders.customer_id\n           FROM public.orders) s\n     JOIN public.customers ON "
     "((customers.id = s.customer_id)))",
     KEYS("id"), .mode = FULL, .field = REASON,
     .want = "^a query with a subquery in an expression (in its WHERE clause or its select "
             "list) is refreshed differentially when its FROM has only tables"},
    {"scalar_over_table_without_key_full",
     " SELECT audit.at,\n    ( SELECT orders.amount\n           FROM public.orders\n          "
     "WHERE (orders.id = audit.order_id)) AS amount\n   FROM public.audit",
     KEYS("at"), .mode = FULL, .field = REASON,
     .want = "table public.audit has no primary key: a query over it with a subquery in WHERE "
             "or in the select list"},
    /* DISTINCT ON, as the first row of each partition (migration 27). */
    {"distinct_on_units", " SELECT DISTINCT ON (orders.customer_id) " DON_REST, KEYS("customer_id"),
     .mode = DIFF, .field = UNITS, .want = "{\"customer_id\"}"},
    {"distinct_on_recompute_numbers_rows", " SELECT DISTINCT ON (orders.customer_id) " DON_REST,
     KEYS("customer_id"), .mode = DIFF, .field = RECOMPUTE,
     .want = ", row_number() OVER (PARTITION BY orders.customer_id ORDER BY orders.customer_id, "
             "orders.amount DESC, orders.id) AS \"__sluice_rn\" FROM public.orders\n   WHERE "},
    {"distinct_on_recompute_keeps_first", " SELECT DISTINCT ON (orders.customer_id) " DON_REST,
     KEYS("customer_id"), .mode = DIFF, .field = RECOMPUTE,
     .want = "WHERE \"__sluice_on\".\"__sluice_rn\" = 1"},
    {"distinct_on_tree", " SELECT DISTINCT ON (orders.customer_id) " DON_REST, KEYS("customer_id"),
     .mode = DIFF, .field = TREE, .want = "^Distinct On (the first row of each"},
    {"distinct_on_without_order",
     " SELECT DISTINCT ON (orders.customer_id) orders.customer_id,\n    orders.amount\n   FROM "
     "public.orders",
     KEYS("customer_id"), .mode = DIFF, .field = RECOMPUTE,
     .want = "row_number() OVER (PARTITION BY orders.customer_id) AS"},
    {"distinct_on_join_units",
     " SELECT DISTINCT ON (c.region) c.region,\n    o.id,\n    o.amount\n   FROM (public.orders o\n"
     "     JOIN public.customers c ON ((c.id = o.customer_id)))\n  ORDER BY c.region, o.amount "
     "DESC",
     KEYS("region"), .mode = DIFF, .field = UNITS, .want = "{\"region\"}"},
    {"distinct_on_not_selected_full",
     " SELECT DISTINCT ON (orders.status) orders.customer_id,\n    orders.amount\n   FROM "
     "public.orders\n  ORDER BY orders.status, orders.amount",
     KEYS("customer_id"), .mode = FULL, .field = REASON,
     .want = "^DISTINCT ON is refreshed differentially (by the values of its expressions) in"},
    {"distinct_on_expression_units",
     " SELECT DISTINCT ON ((lower(orders.status))) lower(orders.status) AS s,\n    orders.amount\n"
     "   FROM public.orders\n  ORDER BY (lower(orders.status)), orders.amount",
     KEYS("s"), .mode = DIFF, .field = UNITS, .want = "{\"s\"}"},
    {"distinct_on_left_join_full",
     " SELECT DISTINCT ON (o.customer_id) o.customer_id,\n    c.name\n   FROM (public.orders o\n   "
     "  LEFT JOIN public.customers c ON ((c.id = o.customer_id)))\n  ORDER BY o.customer_id, "
     "c.name",
     KEYS("customer_id"), .mode = FULL, .field = REASON, .want = "^DISTINCT ON is refreshed"},
    {"distinct_on_group_full",
     " SELECT DISTINCT ON (orders.customer_id) orders.customer_id,\n    count(*) AS n\n   FROM "
     "public.orders\n  GROUP BY orders.customer_id, orders.status\n  ORDER BY orders.customer_id",
     KEYS("customer_id"), .mode = FULL, .field = REASON, .want = "^DISTINCT ON is refreshed"},
    {"distinct_on_limit_full", " SELECT DISTINCT ON (orders.customer_id) " DON_REST "\n LIMIT 3",
     KEYS("customer_id"), .mode = FULL, .field = REASON, .want = "^LIMIT/OFFSET"},
    {"uncaptured_source_full", " SELECT invoices.id\n   FROM public.invoices", KEYS("id"),
     .mode = FULL, .field = REASON, .want = "not among the stream table's captured sources"},
    {"key_not_in_select_list_full", " SELECT orders.amount\n   FROM public.orders", KEYS("id"),
     .mode = FULL, .field = REASON, .want = "not a plain entry of the select list"},
    /* Set-returning functions in FROM (migration 32): refreshed by the
     * table's rows when each is WITH ORDINALITY and the identity is the
     * table's key and the ordinalities. */
    {"function_in_from_needs_ordinality",
     " SELECT orders.id,\n    g.g\n   FROM public.orders,\n    LATERAL generate_series(1, 2) "
     "g(g)",
     KEYS("id", "g"), .mode = FULL, .field = REASON, .want = "written WITH ORDINALITY"},
    {"function_in_from_units", SRF_Q, KEYS("id", "n"), .mode = DIFF, .field = UNITS,
     .want = "{\"id\"}"},
    {"function_in_from_affected", SRF_Q, KEYS("id", "n"), .mode = DIFF, .field = AFFECTED,
     .want = "SELECT DISTINCT * FROM (SELECT \"id\" FROM pg_temp.\"__sluice_chg_16401\") AS "
             "\"__sluice_u\" (\"id\")"},
    {"function_in_from_recompute", SRF_Q, KEYS("id", "n"), .mode = DIFF, .field = RECOMPUTE,
     .want = "WHERE ( (t.tag <> 'x'::text)) AND \"orders\".\"id\" IN (SELECT \"id\" "
             "FROM pg_temp.\"__sluice_aff\""},
    {"function_in_from_tree", SRF_Q, KEYS("id", "n"), .mode = DIFF, .field = TREE,
     .want = "Function Scan regexp_split_to_table AS t WITH ORDINALITY"},
    {"function_cross_join_lateral_differential",
     " SELECT o.id,\n    e.n,\n    e.v\n   FROM (public.orders o\n     CROSS JOIN LATERAL "
     "unnest(ARRAY[o.status, 'x'::text]) WITH ORDINALITY e(v, n))",
     KEYS("id", "n"), .mode = DIFF, .field = UNITS, .want = "{\"id\"}"},
    {"two_functions_differential",
     " SELECT o.id,\n    a.n,\n    b.m\n   FROM public.orders o,\n    LATERAL generate_series(1, "
     "2) WITH ORDINALITY a(g, n),\n    LATERAL generate_series(1, a.g) WITH ORDINALITY b(h, m)",
     KEYS("id", "n", "m"), .mode = DIFF, .field = UNITS, .want = "{\"id\"}"},
    {"function_ordinality_not_key_full",
     " SELECT o.id,\n    e.v\n   FROM public.orders o,\n    LATERAL unnest(ARRAY[o.status]) "
     "WITH ORDINALITY e(v, n)",
     KEYS("id"), .mode = FULL, .field = REASON, .want = "each function's ordinality column"},
    /* Grouped (migration 33): the functions called on the change images,
     * the aggregates kept from them; no ordinality needed. */
    {"function_group_by_affected", SRF_GROUP_Q, KEYS("tag"), .mode = DIFF, .field = AFFECTED,
     .want = "^SELECT DISTINCT (t.tag) AS \"tag\" FROM  pg_temp.\"__sluice_chg_16405\" AS "
             "\"sales\",\n    LATERAL regexp_split_to_table(sales.region, ','::text) t(tag)\n   "
             "WHERE  (sales.qty > 0)\n  "},
    {"function_group_by_kept_from_changes", SRF_GROUP_Q, KEYS("tag"), .mode = DIFF,
     .field = RECOMPUTE,
     .want = "^WITH \"__sluice_dg\" AS (SELECT (t.tag) AS \"tag\", sum(CASE WHEN "
             "\"sales\".\"__sluice_op\" = 'D' THEN -1 ELSE 1 END) AS \"__sluice_n\""},
    /* Every removed value counts as removed: the last image of its row
     * is not looked up (its WHERE is over the table alone). */
    {"function_group_by_extreme_without_last_image", SRF_GROUP_Q, KEYS("tag"), .mode = DIFF,
     .field = RECOMPUTE,
     .want = "max(\"sales\".\"qty\") FILTER (WHERE \"sales\".\"__sluice_op\" = 'D') AS "
             "\"__sluice_d1\" FROM  pg_temp.\"__sluice_chg_16405\" AS \"sales\",\n    LATERAL "
             "regexp_split_to_table(sales.region, ','::text) t(tag)\n   WHERE  (sales.qty > 0)\n   "
             "GROUP BY 1)"},
    {"function_group_by_redo_from_the_query", SRF_GROUP_Q, KEYS("tag"), .mode = DIFF,
     .field = RECOMPUTE,
     .want = "FROM public.sales,\n    LATERAL regexp_split_to_table(sales.region, ','::text) "
             "t(tag)\n   WHERE ( (sales.qty > 0)\n  ) AND EXISTS (SELECT FROM \"__sluice_redo\") "
             "AND (t.tag) IN (SELECT \"tag\" FROM "
             "\"__sluice_redo\" WHERE \"tag\" IS NOT NULL) GROUP BY t.tag)"},
    /* A sum of an element needs its type: a cast, or a column definition. */
    {"function_group_by_sum_of_cast",
     " SELECT t.tag,\n    sum((t.tag)::integer) AS s\n   FROM public.sales,\n    LATERAL "
     "regexp_split_to_table(sales.region, ','::text) t(tag)\n  GROUP BY t.tag",
     KEYS("tag"), .mode = DIFF, .field = RECOMPUTE,
     .want = "sum(CASE WHEN \"sales\".\"__sluice_op\" = 'D' THEN -(((t.tag)::integer)::numeric) "
             "ELSE ((t.tag)::integer)::numeric END) AS \"__sluice_s0\""},
    {"function_group_by_column_definition",
     " SELECT r.v,\n    count(*) AS n,\n    sum(r.q) AS q,\n    max(r.q) AS top\n   FROM "
     "public.sales,\n    LATERAL json_to_recordset((sales.region)::json) r(v integer, q "
     "numeric(8,2))\n  GROUP BY r.v",
     KEYS("v"), .mode = DIFF, .field = RECOMPUTE,
     .want = "max((r.q)) FILTER (WHERE \"sales\".\"__sluice_op\" = 'I') AS \"__sluice_i2\""},
    /* An argument that calls a function (which could give a row's image
     * another value when the row goes than when it came): recomputed. */
    {"function_group_by_call_in_argument_recomputed",
     " SELECT t.tag,\n    count(*) AS n,\n    count(\n        CASE\n            WHEN "
     "(length(t.tag) > 2) THEN 1\n            ELSE NULL::integer\n        END) AS long\n   FROM "
     "public.sales,\n    LATERAL regexp_split_to_table(sales.region, ','::text) t(tag)\n  GROUP "
     "BY t.tag",
     KEYS("tag"), .mode = DIFF, .field = RECOMPUTE, .want = "^( SELECT t.tag"},
    {"function_group_by_count_of_case",
     " SELECT t.tag,\n    count(*) AS n,\n    count(\n        CASE\n            WHEN "
     "(sales.qty > 1) THEN 1\n            ELSE NULL::integer\n        END) AS big\n   FROM "
     "public.sales,\n    LATERAL regexp_split_to_table(sales.region, ','::text) t(tag)\n  GROUP "
     "BY t.tag",
     KEYS("tag"), .mode = DIFF, .field = RECOMPUTE, .want = "^WITH \"__sluice_dg\""},
    {"function_group_by_untyped_sum_recomputed",
     " SELECT t.tag,\n    sum(length(t.tag)) AS s\n   FROM public.sales,\n    LATERAL "
     "regexp_split_to_table(sales.region, ','::text) t(tag)\n  GROUP BY t.tag",
     KEYS("tag"), .mode = DIFF, .field = RECOMPUTE, .want = "^( SELECT t.tag"},
    {"function_group_by_left_join",
     " SELECT t.tag,\n    count(*) AS n\n   FROM (public.sales s\n     LEFT JOIN LATERAL "
     "regexp_split_to_table(s.region, ','::text) t(tag) ON (true))\n  GROUP BY t.tag",
     KEYS("tag"), .mode = DIFF, .field = AFFECTED,
     .want = "FROM  (pg_temp.\"__sluice_chg_16405\" s\n     LEFT JOIN LATERAL "
             "regexp_split_to_table(s.region, ','::text) t(tag) ON (true))"},
    {"function_aggregate_one_row",
     " SELECT count(*) AS n\n   FROM public.sales,\n    LATERAL "
     "regexp_split_to_table(sales.region, ','::text) t(tag)",
     .keys = NULL, .nkeys = 0, .mode = DIFF, .field = AFFECTED,
     .want = "^SELECT  FROM  pg_temp.\"__sluice_chg_16405\" AS \"sales\",\n    LATERAL "
             "regexp_split_to_table(sales.region, ','::text) t(tag) LIMIT 1"},
    {"function_group_by_table_without_key",
     " SELECT t.w,\n    count(*) AS count\n   FROM public.audit,\n    LATERAL "
     "regexp_split_to_table(audit.what, ','::text) t(w)\n  GROUP BY t.w",
     KEYS("w"), .mode = DIFF, .field = AFFECTED, .want = "pg_temp.\"__sluice_chg_16404\" AS "},
    {"function_distinct_full",
     " SELECT DISTINCT t.tag\n   FROM public.sales,\n    LATERAL "
     "regexp_split_to_table(sales.region, ','::text) t(tag)",
     KEYS("tag"), .mode = FULL, .field = REASON, .want = "^a set-returning function in FROM is"},
    {"function_group_by_two_tables_full",
     " SELECT t.tag,\n    count(*) AS count\n   FROM public.sales,\n    public.customers c,\n   "
     " LATERAL regexp_split_to_table(c.region, ','::text) t(tag)\n  GROUP BY t.tag",
     KEYS("tag"), .mode = FULL, .field = REASON, .want = "^a set-returning function in FROM is"},
    {"function_group_by_window_full",
     " SELECT t.tag,\n    count(*) AS n,\n    rank() OVER (ORDER BY (count(*))) AS r\n   FROM "
     "public.sales,\n    LATERAL regexp_split_to_table(sales.region, ','::text) t(tag)\n  GROUP "
     "BY t.tag",
     KEYS("tag"), .mode = FULL, .field = REASON, .want = "window"},
    /* Over one table, the same rule: an expression argument whose type a
     * cast gives is kept from the changes. */
    {"algebraic_cast_argument",
     "SELECT sales.region,\n    sum(((sales.qty * 2))::integer) AS q\n   FROM public.sales\n  "
     "GROUP BY sales.region",
     KEYS("region"), .mode = DIFF, .field = RECOMPUTE,
     .want = "sum(CASE WHEN \"sales\".\"__sluice_op\" = 'D' THEN -((((sales.qty * "
             "2))::integer)::numeric) ELSE (((sales.qty * 2))::integer)::numeric END) AS "
             "\"__sluice_s0\""},
    {"function_two_tables_full",
     " SELECT o.id,\n    c.id AS cid,\n    e.n\n   FROM public.orders o,\n    public.customers "
     "c,\n    LATERAL unnest(ARRAY[c.name]) WITH ORDINALITY e(v, n)\n  WHERE c.id = o.customer_id",
     KEYS("id", "n"), .mode = FULL, .field = REASON,
     .want = "^a set-returning function in FROM is"},
    {"function_left_join_differential",
     " SELECT o.id,\n    e.n\n   FROM (public.orders o\n     LEFT JOIN LATERAL "
     "unnest(ARRAY[o.status]) WITH ORDINALITY e(v, n) ON (true))",
     KEYS("id", "n"), .mode = DIFF, .field = UNITS, .want = "{\"id\"}"},
    {"function_left_join_table_full",
     " SELECT o.id,\n    e.n\n   FROM (generate_series(1, 2) WITH ORDINALITY e(v, n)\n     LEFT "
     "JOIN public.orders o ON ((o.id = e.v)))",
     KEYS("id", "n"), .mode = FULL, .field = REASON,
     .want = "^a set-returning function in FROM is"},
    {"function_left_join_using_full",
     " SELECT o.id,\n    e.n\n   FROM (public.orders o\n     LEFT JOIN unnest(ARRAY[1]) WITH "
     "ORDINALITY e(id, n) USING (id))",
     KEYS("id", "n"), .mode = FULL, .field = REASON,
     .want = "^a set-returning function in FROM is"},
    {"function_in_subquery_full",
     " SELECT s.id,\n    s.n\n   FROM ( SELECT o.id,\n            e.n\n           FROM "
     "public.orders o,\n            LATERAL unnest(ARRAY[o.status]) WITH ORDINALITY e(v, n)) s",
     KEYS("id", "n"), .mode = FULL, .field = REASON,
     .want = "^a set-returning function in FROM is"},
    {"function_in_union_all_branch_full", SRF_UNION_Q, KEYS("id", "n"), BRANCHES_OF(srf_branches),
     .mode = FULL, .field = REASON, .want = "a set-returning function in FROM is"},
    /* A call in the select list is a call: whether it returns a set is
     * decided at creation, from PostgreSQL's analysis. */
    {"select_list_call_differential",
     " SELECT orders.id,\n    abs(orders.amount) AS a\n   FROM public.orders", KEYS("id"),
     .mode = DIFF, .field = RECOMPUTE, .want = "abs(orders.amount)"},

    /* Subqueries in WHERE (migration 24): the tables' terms, then per
     * subquery the rows (now and before the window) for which it finds one
     * of its table's changed rows; the rest of WHERE with it masked. */
    {"exists_affected_tables_term",
     " SELECT orders.id,\n    orders.amount\n   FROM public.orders\n  WHERE ((orders.amount > "
     "(0)::numeric) AND (NOT (EXISTS ( SELECT 1\n           FROM public.refunds r\n          WHERE "
     "(r.order_id = orders.id)))))",
     KEYS("id"), .mode = DIFF, .field = AFFECTED,
     .want = "^(SELECT DISTINCT (orders.id) AS \"id\" FROM pg_temp.\"__sluice_chg_16401\" AS "
             "\"orders\" WHERE  ((orders.amount > (0)::numeric) AND (NOT (EXISTS ( SELECT 1\n"
             "           FROM public.refunds r\n          WHERE (r.order_id = orders.id)))))) "
             "UNION (SELECT (orders.id) AS \"id\" FROM  public.orders\n   WHERE ( "
             "((orders.amount > (0)::numeric) AND (true))) AND EXISTS ( SELECT 1\n           "
             "FROM pg_temp.\"__sluice_chg_16403\" r\n          WHERE (r.order_id = orders.id)))"},
    {"exists_affected_old_state_term",
     " SELECT orders.id,\n    orders.amount\n   FROM public.orders\n  WHERE ((orders.amount > "
     "(0)::numeric) AND (NOT (EXISTS ( SELECT 1\n           FROM public.refunds r\n          WHERE "
     "(r.order_id = orders.id)))))",
     KEYS("id"), .mode = DIFF, .field = AFFECTED,
     .want = "pg_temp.\"__sluice_before_16401\") AS \"__sluice_u\" WHERE \"__sluice_b\" OR "
             "(\"id\") NOT IN (SELECT \"id\" FROM pg_temp.\"__sluice_chg_16401\")) AS "
             "\"orders\"\n   WHERE ( ((orders.amount > (0)::numeric) AND (true))) AND EXISTS ( "
             "SELECT 1\n           FROM pg_temp.\"__sluice_chg_16403\" r\n"},
    {"exists_recompute_is_the_query",
     " SELECT orders.id,\n    orders.amount\n   FROM public.orders\n  WHERE ((orders.amount > "
     "(0)::numeric) AND (NOT (EXISTS ( SELECT 1\n           FROM public.refunds r\n          WHERE "
     "(r.order_id = orders.id)))))",
     KEYS("id"), .mode = DIFF, .field = RECOMPUTE,
     .want = "WHERE ( ((orders.amount > (0)::numeric) AND (NOT (EXISTS ( SELECT 1\n           FROM "
             "public.refunds r\n          WHERE (r.order_id = orders.id)))))) AND (orders.id) IN"},
    {"in_subquery_unaliased_table",
     " SELECT orders.id\n   FROM public.orders\n  WHERE (orders.customer_id IN ( SELECT "
     "customers.id\n           FROM public.customers\n          WHERE (customers.region = "
     "'eu'::text)))",
     KEYS("id"), .mode = DIFF, .field = AFFECTED,
     .want = "WHERE ( (true)) AND orders.customer_id IN ( SELECT customers.id\n           FROM "
             "pg_temp.\"__sluice_chg_16402\" AS \"customers\"\n          WHERE "
             "(customers.region = 'eu'::text))) UNION"},
    {"exists_tree",
     " SELECT orders.id\n   FROM public.orders\n  WHERE ((EXISTS ( SELECT 1\n           FROM "
     "public.refunds\n          WHERE (refunds.order_id = orders.id))) AND (NOT (EXISTS ( SELECT "
     "1\n           FROM public.customers\n          WHERE (customers.id = "
     "orders.customer_id)))))",
     KEYS("id"), .mode = DIFF, .field = TREE,
     .want = "^Project (1 column)\n  Filter (WHERE)\n    Semi Join (EXISTS)\n      Project (1 "
             "column)\n        Filter (WHERE)\n          Scan public.refunds\n    Anti Join (NOT "
             "EXISTS)\n"},
    /* A group moves with the subquery's table alone: not kept from the
     * changes of its own table (gen_algebraic), but recomputed. */
    {"exists_group_recomputed",
     " SELECT sales.region,\n    sum(sales.qty) AS q\n   FROM public.sales\n  WHERE (EXISTS ( "
     "SELECT 1\n           FROM public.orders\n          WHERE (orders.id = sales.id)))\n  GROUP "
     "BY sales.region",
     KEYS("region"), .mode = DIFF, .field = RECOMPUTE, .want = "^( SELECT sales.region"},
    {"exists_one_row_limit",
     " SELECT count(*) AS n\n   FROM public.orders\n  WHERE (EXISTS ( SELECT 1\n           FROM "
     "public.refunds\n          WHERE (refunds.order_id = orders.id)))",
     .keys = NULL, .nkeys = 0, .mode = DIFF, .field = AFFECTED,
     .want = "FROM pg_temp.\"__sluice_chg_16403\" AS \"refunds\"\n          WHERE "
             "(refunds.order_id = orders.id)) LIMIT 1)"},
    {"exists_in_join",
     " SELECT orders.id,\n    customers.id AS cid\n   FROM (public.orders\n     JOIN "
     "public.customers ON ((customers.id = orders.customer_id)))\n  WHERE (EXISTS ( SELECT 1\n  "
     "         FROM public.refunds\n          WHERE (refunds.order_id = orders.id)))",
     KEYS("id", "cid"), .mode = DIFF, .field = AFFECTED,
     .want = "AS \"customers\" ON ((customers.id = orders.customer_id)))\n   WHERE ( (true)) AND "
             "EXISTS ( SELECT 1\n           FROM pg_temp.\"__sluice_chg_16403\" AS \"refunds\""},
    {"exists_in_branch",
     " SELECT orders.id\n   FROM public.orders\n  WHERE (EXISTS ( SELECT 1\n           FROM "
     "public.refunds\n          WHERE (refunds.order_id = orders.id)))\nUNION ALL\n SELECT "
     "refunds.id\n   FROM public.refunds",
     KEYS("id"),
     BRANCHES_OF(((const sl_analyze_branch_t[]){
         {"SELECT orders.id\n   FROM public.orders\n  WHERE (EXISTS ( SELECT 1\n           FROM "
          "public.refunds\n          WHERE (refunds.order_id = orders.id)))",
          (const char *const[]){"id"}, 1},
         {"SELECT refunds.id\n   FROM public.refunds", (const char *const[]){"id"}, 1}})),
     .mode = DIFF, .field = BRANCHES, .want = "__sluice_chg_16403"},
    /* Refused, with the reason. */
    {"not_in_differential",
     " SELECT orders.id\n   FROM public.orders\n  WHERE (NOT (orders.customer_id IN ( SELECT "
     "customers.id\n           FROM public.customers)))",
     KEYS("id"), .mode = DIFF, .field = AFFECTED,
     .want = "WHERE (true) AND EXISTS (SELECT FROM pg_temp.\"__sluice_chg_16402\" AS "
             "\"customers\"))"},
    {"not_in_tree",
     " SELECT orders.id\n   FROM public.orders\n  WHERE (NOT (orders.customer_id IN ( SELECT "
     "customers.id\n           FROM public.customers)))",
     KEYS("id"), .mode = DIFF, .field = TREE,
     .want = "^Project (1 column)\n  Filter (WHERE)\n    Subquery (IN/ANY)\n      Project (1 "
             "column)\n        Scan public.customers\n    Scan public.orders\n"},
    /* A comparison with a correlated aggregate: the rows whose group of
     * refunds a change reaches. */
    {"scalar_compare_in_where",
     " SELECT orders.id\n   FROM public.orders\n  WHERE (orders.amount > ( SELECT "
     "avg(refunds.amount) AS avg\n           FROM public.refunds\n          WHERE "
     "(refunds.order_id = orders.customer_id)))",
     KEYS("id"), .mode = DIFF, .field = AFFECTED,
     .want = "WHERE (true) AND EXISTS (SELECT FROM pg_temp.\"__sluice_chg_16403\" AS "
             "\"refunds\"\n          WHERE (refunds.order_id = orders.customer_id)))"},
    {"exists_under_or_differential",
     " SELECT orders.id\n   FROM public.orders\n  WHERE ((orders.amount > (5)::numeric) OR "
     "(EXISTS ( SELECT 1\n           FROM public.refunds\n          WHERE (refunds.order_id = "
     "orders.id))))",
     KEYS("id"), .mode = DIFF, .field = AFFECTED,
     .want = "WHERE (true) AND EXISTS (SELECT FROM pg_temp.\"__sluice_chg_16403\" AS "
             "\"refunds\"\n          WHERE (refunds.order_id = orders.id)))"},
    {"in_aggregate_differential",
     " SELECT orders.id\n   FROM public.orders\n  WHERE (orders.amount IN ( SELECT "
     "max(refunds.amount) AS max\n           FROM public.refunds))",
     KEYS("id"), .mode = DIFF, .field = AFFECTED,
     .want = "WHERE (true) AND EXISTS (SELECT FROM pg_temp.\"__sluice_chg_16403\" AS "
             "\"refunds\"))"},
    {"exists_group_by_differential",
     " SELECT orders.id\n   FROM public.orders\n  WHERE (EXISTS ( SELECT refunds.order_id\n     "
     "      FROM public.refunds\n          GROUP BY refunds.order_id))",
     KEYS("id"), .mode = DIFF, .field = AFFECTED,
     .want = "WHERE (true) AND EXISTS (SELECT FROM pg_temp.\"__sluice_chg_16403\" AS "
             "\"refunds\"\n          ))"},
    {"exists_join_in_subquery_full",
     " SELECT orders.id\n   FROM public.orders\n  WHERE (EXISTS ( SELECT 1\n           FROM "
     "(public.refunds\n             JOIN public.customers ON ((customers.id = "
     "refunds.order_id)))\n          WHERE (refunds.order_id = orders.id)))",
     KEYS("id"), .mode = FULL, .field = REASON,
     .want =
         "^subqueries in expressions are refreshed differentially in the WHERE clause, and in the "
         "select list"},
    /* In a LEFT JOIN chain (units: the first table's rows), the units of
     * the combinations for which the subquery finds a changed row; by
     * identity, the keys built from the units with the subquery masked. */
    {"exists_left_join_units",
     " SELECT orders.id,\n    customers.name\n   FROM (public.orders\n     LEFT JOIN "
     "public.customers ON ((customers.id = orders.customer_id)))\n  WHERE (EXISTS ( SELECT 1\n  "
     "         FROM public.refunds\n          WHERE (refunds.order_id = orders.id)))",
     KEYS("id"), .mode = DIFF, .field = AFFECTED,
     .want = "AS \"customers\" ON ((customers.id = orders.customer_id)))\n   WHERE EXISTS ( "
             "SELECT 1\n           FROM pg_temp.\"__sluice_chg_16403\" AS \"refunds\"\n    "
             "      WHERE (refunds.order_id = orders.id))) AS \"__sluice_u\" (\"id\")"},
    {"not_exists_left_join_by_keys",
     " SELECT customers.region,\n    count(orders.id) AS n\n   FROM (public.customers\n     "
     "LEFT JOIN public.orders ON ((orders.customer_id = customers.id)))\n  WHERE (NOT (EXISTS ( "
     "SELECT 1\n           FROM public.refunds\n          WHERE (refunds.order_id = "
     "customers.id))))\n  GROUP BY customers.region",
     KEYS("region"), .mode = DIFF, .field = AFFECTED,
     .want = "WHERE ( (true)\n  ) AND \"customers\".\"id\" = ANY (ARRAY(SELECT \"id\" FROM "
             "\"__sluice_units\"))"},
    {"exists_with_subquery_in_from_full",
     " SELECT s.id,\n    customers.name\n   FROM (( SELECT orders.id,\n            "
     "orders.customer_id\n           FROM public.orders) s\n     JOIN public.customers ON "
     "((customers.id = s.customer_id)))\n  WHERE (EXISTS ( SELECT 1\n           FROM "
     "public.refunds\n          WHERE (refunds.order_id = s.id)))",
     KEYS("id"), .mode = FULL, .field = REASON,
     .want = "^a query with a subquery in an expression (in its WHERE clause or its select "
             "list) is refreshed differentially when its FROM has only tables"},
    {"exists_in_derived_full",
     " SELECT s.id\n   FROM ( SELECT orders.id\n           FROM public.orders\n          WHERE "
     "(EXISTS ( SELECT 1\n                   FROM public.refunds\n                  WHERE "
     "(refunds.order_id = orders.id)))) s",
     KEYS("id"), .mode = FULL, .field = REASON, .want = "not inside a subquery in FROM"},
    {"exists_over_table_without_key_full",
     " SELECT audit.at\n   FROM public.audit\n  WHERE (EXISTS ( SELECT 1\n           FROM "
     "public.orders\n          WHERE (orders.id = audit.order_id)))",
     KEYS("at"), .mode = FULL, .field = REASON,
     .want = "table public.audit has no primary key: a query over it with a subquery in WHERE"},
    {"exists_uncaptured_full",
     " SELECT orders.id\n   FROM public.orders\n  WHERE (EXISTS ( SELECT 1\n           FROM "
     "public.invoices\n          WHERE (invoices.order_id = orders.id)))",
     KEYS("id"), .mode = FULL, .field = REASON,
     .want = "a table read by a subquery in an expression is not among"},

    /* Joins. */
    {"inner_join_differential",
     " SELECT orders.id,\n    customers.id AS customer_id,\n    customers.name\n   FROM "
     "(public.orders\n     JOIN public.customers ON ((customers.id = orders.customer_id)))",
     KEYS("id", "customer_id"), .mode = DIFF, .field = AFFECTED,
     .want = "NOT IN (SELECT \"id\" FROM pg_temp.\"__sluice_chg_16402\")"},
    {"inner_join_old_state_flattens",
     /* A UNION ALL of two plain scans with the filter outside: PostgreSQL
      * flattens it and reaches customers by index from the old images. */
     " SELECT orders.id,\n    customers.id AS customer_id,\n    customers.name\n   FROM "
     "(public.orders\n     JOIN public.customers ON ((customers.id = orders.customer_id)))",
     KEYS("id", "customer_id"), .mode = DIFF, .field = AFFECTED,
     .want = "(SELECT \"id\", \"name\", \"region\" FROM (SELECT \"id\", \"name\", \"region\", "
             "false AS \"__sluice_b\" FROM \"public\".\"customers\" UNION ALL SELECT \"id\", "
             "\"name\", \"region\", true FROM pg_temp.\"__sluice_before_16402\") AS \"__sluice_u\" "
             "WHERE \"__sluice_b\" OR (\"id\") NOT IN (SELECT \"id\" FROM "
             "pg_temp.\"__sluice_chg_16402\")) AS \"customers\""},
    {"inner_join_touched_rows_by_key",
     " SELECT orders.id,\n    customers.id AS customer_id,\n    customers.name\n   FROM "
     "(public.orders\n     JOIN public.customers ON ((customers.id = orders.customer_id)))",
     KEYS("id", "customer_id"), .mode = DIFF, .field = AFFECTED,
     .want = "WHERE \"customers\".\"id\" = ANY (ARRAY(SELECT \"id\" FROM "
             "pg_temp.\"__sluice_chg_16402\"))"},
    {"left_join_root_key_differential",
     " SELECT orders.id,\n    customers.name\n   FROM (public.orders\n     LEFT JOIN "
     "public.customers ON ((customers.id = orders.customer_id)))",
     KEYS("id"), .mode = DIFF, .field = UNITS, .want = "^{\"id\"}"},
    {"left_join_recompute_by_root_key",
     " SELECT orders.id,\n    customers.name\n   FROM (public.orders\n     LEFT JOIN "
     "public.customers ON ((customers.id = orders.customer_id)))",
     KEYS("id"), .mode = DIFF, .field = RECOMPUTE,
     .want = "WHERE \"orders\".\"id\" IN (SELECT \"id\" FROM pg_temp.\"__sluice_aff\" "
             "WHERE \"id\" IS NOT NULL)"},
    {"left_join_old_side_only_rows_that_joined",
     " SELECT orders.id,\n    customers.name\n   FROM (public.orders\n     LEFT JOIN "
     "public.customers ON ((customers.id = orders.customer_id)))",
     KEYS("id"), .mode = DIFF, .field = AFFECTED,
     .want = "FROM pg_temp.\"__sluice_before_16402\") AS \"customers\" ON ((customers.id = "
             "orders.customer_id))) WHERE \"customers\".\"id\" IS NOT NULL"},
    /* Rows without the first table's key: refreshed by the row identity
     * (migration 23), from the keys of the rows built from the touched
     * first-table rows, before the window and after it. */
    {"left_join_by_identity_units_first", " " REGION_LEFT, KEYS("region"), .mode = DIFF,
     .field = AFFECTED,
     .want = "^WITH \"__sluice_units\" AS MATERIALIZED (SELECT DISTINCT * FROM (SELECT \"id\" "
             "FROM pg_temp.\"__sluice_chg_16402\" UNION ALL SELECT \"customers\".\"id\" FROM "},
    {"left_join_by_identity_keys_after", " " REGION_LEFT, KEYS("region"), .mode = DIFF,
     .field = AFFECTED,
     .want =
         ") (SELECT (customers.region) AS \"region\" FROM  (public.customers\n     LEFT JOIN "
         "public.orders ON ((orders.customer_id = customers.id)))\n   WHERE \"customers\".\"id\" "
         "= ANY (ARRAY(SELECT \"id\" FROM \"__sluice_units\"))) UNION (SELECT"},
    {"left_join_by_identity_keys_before", " " REGION_LEFT, KEYS("region"), .mode = DIFF,
     .field = AFFECTED,
     .want =
         "FROM pg_temp.\"__sluice_before_16401\") AS \"__sluice_u\" WHERE \"__sluice_b\" OR "
         "(\"id\") NOT IN (SELECT \"id\" FROM pg_temp.\"__sluice_chg_16401\")) AS \"orders\" ON "
         "((orders.customer_id = customers.id)))\n   WHERE \"customers\".\"id\" = ANY"},
    {"left_join_by_identity_recompute", " " REGION_LEFT, KEYS("region"), .mode = DIFF,
     .field = RECOMPUTE,
     .want = "(customers.region) IN (SELECT \"region\" FROM pg_temp.\"__sluice_aff\""},
    {"left_join_by_identity_where", " " REGION_LEFT_WHERE, KEYS("region"), .mode = DIFF,
     .field = AFFECTED,
     .want = "(0)::numeric)\n  ) AND \"customers\".\"id\" = ANY (ARRAY(SELECT \"id\" FROM "
             "\"__sluice_units\"))"},
    {"left_join_one_row_by_identity",
     " SELECT count(*) AS n,\n    count(orders.id) AS orders\n   FROM (public.customers\n     "
     "LEFT JOIN public.orders ON ((orders.customer_id = customers.id)))",
     .mode = DIFF, .field = AFFECTED,
     .want = "= ANY (ARRAY(SELECT \"id\" FROM "
             "\"__sluice_units\")) LIMIT 1) UNION ALL (SELECT  FROM "},
    {"right_join_full",
     " SELECT customers.id\n   FROM (public.orders\n     RIGHT JOIN public.customers ON "
     "((customers.id = orders.customer_id)))",
     KEYS("id"), .mode = FULL, .field = REASON, .want = "^RIGHT and FULL joins"},
    {"join_table_without_pk_full",
     " SELECT orders.id,\n    audit.what\n   FROM (public.orders\n     JOIN public.audit ON "
     "((audit.order_id = orders.id)))",
     KEYS("id"), .mode = FULL, .field = REASON, .want = "public.audit has no primary key"},

/* A subquery in FROM that the query only filters and projects. */
#define TOTALS_SUB                                                                            \
    "( SELECT orders.customer_id,\n            sum(orders.amount) AS total\n           FROM " \
    "public.orders\n          GROUP BY orders.customer_id) s"
    {"derived_aggregate_affected_renamed",
     " SELECT s.customer_id AS cid,\n    s.total\n   FROM " TOTALS_SUB "\n  WHERE (s.total > "
     "(500)::numeric)",
     KEYS("cid"), .mode = DIFF, .field = AFFECTED,
     .want = "^SELECT \"__sluice_d\".\"customer_id\" AS \"cid\" FROM (SELECT DISTINCT "
             "(orders.customer_id) AS \"customer_id\" FROM pg_temp.\"__sluice_chg_16401\" AS "
             "\"orders\") AS \"__sluice_d\""},
    {"derived_aggregate_recompute_keeps_outer_where",
     " SELECT s.customer_id AS cid,\n    s.total\n   FROM " TOTALS_SUB "\n  WHERE (s.total > "
     "(500)::numeric)",
     KEYS("cid"), .mode = DIFF, .field = RECOMPUTE,
     .want = "jsonb_build_array(\"customer_id\") FROM (SELECT \"cid\" AS "
             "\"customer_id\" FROM pg_temp.\"__sluice_aff\") AS \"__sluice_aff\") GROUP BY "
             "orders.customer_id)) s\n  WHERE (s.total > (500)::numeric)"},
    /* The inner query's keys have other names: the stream table's key forms
     * are not applied to them. */
    {"derived_renamed_keys_without_forms",
     " SELECT s.customer_id AS cid,\n    s.total\n   FROM " TOTALS_SUB "\n  WHERE (s.total > "
     "(500)::numeric)",
     KEYS("cid"), KEYFORMS_OF(cid_form), .mode = DIFF, .field = RECOMPUTE,
     .want = "AND jsonb_build_array((orders.customer_id)) IN (SELECT "
             "jsonb_build_array(\"customer_id\") FROM (SELECT \"cid\" AS"},
    {"derived_nested_renames_compose",
     " SELECT t.c1 AS c2\n   FROM ( SELECT s.customer_id AS c1\n           FROM " TOTALS_SUB ") t",
     KEYS("c2"), .mode = DIFF, .field = RECOMPUTE,
     .want = "(SELECT \"c1\" AS \"customer_id\" FROM (SELECT \"c2\" AS \"c1\" FROM "
             "pg_temp.\"__sluice_aff\") AS \"__sluice_aff\") AS \"__sluice_aff\""},
    {"derived_same_names_read_aff_directly",
     " SELECT s.customer_id,\n    s.total\n   FROM " TOTALS_SUB, KEYS("customer_id"), .mode = DIFF,
     .field = RECOMPUTE, .want = "IN (SELECT \"customer_id\" FROM pg_temp.\"__sluice_aff\" WHERE"},
    {"derived_join_inside_differential",
     " SELECT s.cid,\n    s.n\n   FROM ( SELECT customers.id AS cid,\n            count(*) AS "
     "n\n           FROM (public.orders\n             JOIN public.customers ON ((customers.id = "
     "orders.customer_id)))\n          GROUP BY customers.id) s",
     KEYS("cid"), .mode = DIFF, .field = AFFECTED, .want = "__sluice_before_16401"},
/* A LEFT JOIN chain in it keeps its unit: a row of the first table,
 * under the name the query gives its key (migration 22). */
#define LEFT_SUB                                                                           \
    "( SELECT orders.id,\n            customers.id AS cid,\n            customers.name\n " \
    "          FROM (public.orders\n             LEFT JOIN public.customers ON "           \
    "((customers.id = orders.customer_id)))) s"
    {"derived_left_join_units", " SELECT s.id,\n    s.cid\n   FROM " LEFT_SUB, KEYS("id", "cid"),
     .mode = DIFF, .field = UNITS, .want = "{\"id\"}"},
    {"derived_left_join_renamed_units",
     " SELECT s.id AS oid,\n    s.cid,\n    s.name\n   FROM " LEFT_SUB "\n  WHERE (s.name IS NULL)",
     KEYS("oid", "cid"), .mode = DIFF, .field = UNITS, .want = "{\"oid\"}"},
    {"derived_left_join_affected_renamed",
     " SELECT s.id AS oid,\n    s.cid,\n    s.name\n   FROM " LEFT_SUB "\n  WHERE (s.name IS NULL)",
     KEYS("oid", "cid"), .mode = DIFF, .field = AFFECTED,
     .want = "^SELECT \"__sluice_d\".\"id\" AS \"oid\" FROM (SELECT DISTINCT"},
    {"derived_left_join_recompute_reads_query_units",
     " SELECT s.id AS oid,\n    s.cid,\n    s.name\n   FROM " LEFT_SUB "\n  WHERE (s.name IS NULL)",
     KEYS("oid", "cid"), .mode = DIFF, .field = RECOMPUTE,
     .want = "(SELECT \"oid\" AS \"id\" FROM pg_temp.\"__sluice_aff\") AS \"__sluice_aff\""},
    {"derived_left_join_nested_units",
     " SELECT t.oid,\n    t.cid\n   FROM ( SELECT s.id AS oid,\n            s.cid\n           "
     "FROM " LEFT_SUB "\n          WHERE (s.cid > 0)) t",
     KEYS("oid", "cid"), .mode = DIFF, .field = UNITS, .want = "{\"oid\"}"},
    {"derived_limit_full",
     " SELECT s.id\n   FROM ( SELECT orders.id\n           FROM public.orders\n         LIMIT "
     "2) s",
     KEYS("id"), .mode = FULL, .field = REASON, .want = "^the subquery in FROM: LIMIT/OFFSET"},
    {"derived_key_expression_full",
     " SELECT (s.customer_id + 1) AS customer_id,\n    s.total\n   FROM " TOTALS_SUB,
     KEYS("customer_id"), .mode = FULL, .field = REASON,
     .want = "^the subquery in FROM: a row-identity column must be one of its columns"},
    {"derived_one_row_full",
     " SELECT s.total\n   FROM ( SELECT sum(orders.amount) AS total\n           FROM "
     "public.orders) s",
     .keys = NULL, .nkeys = 0, .mode = FULL, .field = REASON,
     .want = "^the subquery in FROM: a query around it is refreshed differentially only when its "
             "rows have a key"},
    {"derived_column_aliases_full",
     " SELECT s.k,\n    s.t\n   FROM ( SELECT orders.customer_id,\n            "
     "sum(orders.amount) AS total\n           FROM public.orders\n          GROUP BY "
     "orders.customer_id) s(k, t)",
     KEYS("k"), .mode = FULL, .field = REASON, .want = "LATERAL and column aliases"},
    {"derived_under_group_by_full",
     " SELECT s.total,\n    count(*) AS n\n   FROM " TOTALS_SUB "\n  GROUP BY s.total",
     KEYS("total"), .mode = FULL, .field = REASON,
     .want = "^a subquery in FROM is refreshed differentially when"},

/* A subquery that groups, joined with tables (the query as pg_get_viewdef
 * prints it). */
#define JOINED_SUB                                                                  \
    "(public.customers c\n     JOIN ( SELECT orders.customer_id,\n            "     \
    "sum(orders.amount) AS total\n           FROM public.orders\n          WHERE "  \
    "(orders.status <> 'void'::text)\n          GROUP BY orders.customer_id) t ON " \
    "((t.customer_id = c.id)))"
    {"joined_units_through_on", " SELECT c.id,\n    c.name,\n    t.total\n   FROM " JOINED_SUB,
     KEYS("id"), .mode = DIFF, .field = UNITS, .want = "{\"id\"}"},
    {"joined_affected_from_subquery_and_table",
     " SELECT c.id,\n    c.name,\n    t.total\n   FROM " JOINED_SUB, KEYS("id"), .mode = DIFF,
     .field = AFFECTED,
     .want = "^SELECT DISTINCT * FROM (SELECT \"__sluice_d\".\"customer_id\" FROM (SELECT "
             "DISTINCT (orders.customer_id) AS \"customer_id\" FROM "
             "pg_temp.\"__sluice_chg_16401\" AS \"orders\""},
    {"joined_affected_reads_possible_keys",
     " SELECT c.id,\n    c.name,\n    t.total\n   FROM " JOINED_SUB, KEYS("id"), .mode = DIFF,
     .field = AFFECTED,
     .want = "JOIN (SELECT (orders.customer_id) AS \"customer_id\" FROM public.orders\n          "
             "WHERE (orders.status <> 'void'::text)\n          ) t ON ((t.customer_id = c.id))) "
             "WHERE \"c\".\"id\" = ANY (ARRAY(SELECT \"id\" FROM "
             "pg_temp.\"__sluice_chg_16402\"))"},
    {"joined_recompute_restricts_subquery",
     " SELECT c.id,\n    c.name,\n    t.total\n   FROM " JOINED_SUB
     "\n  WHERE (c.region = 'eu'::text)",
     KEYS("id"), .mode = DIFF, .field = RECOMPUTE,
     .want = "(SELECT \"id\" AS \"customer_id\" FROM pg_temp.\"__sluice_aff\") AS "
             "\"__sluice_aff\""},
    {"joined_units_selected_key", " SELECT t.customer_id AS cid,\n    c.name\n   FROM " JOINED_SUB,
     KEYS("cid"), .mode = DIFF, .field = UNITS, .want = "{\"cid\"}"},
    {"joined_distinct_differential",
     " SELECT c.id\n   FROM public.customers c,\n    ( SELECT DISTINCT orders.customer_id\n  "
     "         FROM public.orders) d\n  WHERE (d.customer_id = c.id)",
     KEYS("id"), .mode = DIFF, .field = AFFECTED,
     .want = "(SELECT orders.customer_id\n           FROM public.orders) d"},
    {"joined_filter_on_aggregate_full",
     " SELECT c.id,\n    t.total\n   FROM " JOINED_SUB "\n  WHERE (t.total > (5)::numeric)",
     KEYS("id"), .mode = FULL, .field = REASON,
     .want = "^the subquery t in FROM groups: the join's ON and WHERE may use only its key "
             "columns, and total is not one"},
    {"joined_key_not_selected_full", " SELECT c.name,\n    t.total\n   FROM " JOINED_SUB,
     KEYS("name"), .mode = FULL, .field = REASON,
     .want = "its key column customer_id must be equal"},
    {"joined_key_without_equality_full",
     " SELECT c.id,\n    t.customer_id,\n    t.total\n   FROM (public.customers c\n     JOIN ( "
     "SELECT orders.customer_id,\n            sum(orders.amount) AS total\n           FROM "
     "public.orders\n          GROUP BY orders.customer_id) t ON ((t.customer_id > c.id)))",
     KEYS("id", "customer_id"), .mode = FULL, .field = REASON,
     .want = "its key column customer_id must be equal"},
    {"joined_group_by_expression_full",
     " SELECT c.id,\n    t.n\n   FROM (public.customers c\n     JOIN ( SELECT (orders.customer_id "
     "+ 1) AS k,\n            count(*) AS n\n           FROM public.orders\n          GROUP BY "
     "(orders.customer_id + 1)) t ON ((t.k = c.id)))",
     KEYS("id"), .mode = FULL, .field = REASON,
     .want = "every GROUP BY item must be a plain column"},
    {"joined_inner_in_left_chain_units_first_table",
     " SELECT c.id,\n    t.total\n   FROM ((public.customers c\n     JOIN ( SELECT "
     "orders.customer_id,\n            sum(orders.amount) AS total\n           FROM "
     "public.orders\n          GROUP BY orders.customer_id) t ON ((t.customer_id = c.id)))\n     "
     "LEFT JOIN public.refunds r ON ((r.id = c.id)))",
     KEYS("id"), .mode = DIFF, .field = UNITS, .want = "{\"id\"}"},
    {"joined_grouped_around_full",
     " SELECT c.region,\n    sum(t.total) AS s\n   FROM " JOINED_SUB "\n  GROUP BY c.region",
     KEYS("region"), .mode = FULL, .field = REASON,
     .want = "^a query that groups, aggregates or removes duplicates over a join"},
    {"joined_filtered_around_units_pass_through",
     " SELECT j.id,\n    j.total\n   FROM ( SELECT c.id,\n            t.total\n           "
     "FROM " JOINED_SUB ") j\n  WHERE (j.total > (100)::numeric)",
     KEYS("id"), .mode = DIFF, .field = UNITS, .want = "{\"id\"}"},
    {"joined_filtered_around_reads_renamed_units",
     " SELECT j.cid,\n    j.total\n   FROM ( SELECT c.id AS cid,\n            t.total\n      "
     "     FROM " JOINED_SUB ") j\n  WHERE (j.total > (100)::numeric)",
     KEYS("cid"), .mode = DIFF, .field = RECOMPUTE,
     .want = "(SELECT \"customer_id\" FROM (SELECT \"cid\" AS \"customer_id\" FROM (SELECT "
             "\"cid\" AS \"cid\" FROM pg_temp.\"__sluice_aff\") AS \"__sluice_aff\") AS "
             "\"__sluice_aff\""},
    {"joined_filtered_around_unit_not_selected_full",
     " SELECT j.total\n   FROM ( SELECT c.id,\n            t.total\n           FROM " JOINED_SUB
     ") j\n  WHERE (j.total > (100)::numeric)",
     KEYS("total"), .mode = FULL, .field = REASON, .want = "select its column id unchanged"},
    {"joined_in_union_branch_full", " " ORDERS_BRANCH "\nUNION ALL\n " REFUNDS_BRANCH, KEYS("id"),
     BRANCHES_OF(joined_second), .mode = FULL, .field = REASON,
     .want = "^UNION ALL branch 2 has a subquery that groups joined with tables"},
    {"joined_two_grouping_subqueries_full",
     " SELECT c.id\n   FROM ((public.customers c\n     JOIN ( SELECT DISTINCT "
     "orders.customer_id\n           FROM public.orders) a ON ((a.customer_id = c.id)))\n     JOIN "
     "( SELECT DISTINCT orders.customer_id\n           FROM public.orders) b ON ((b.customer_id = "
     "c.id)))",
     KEYS("id"), .mode = FULL, .field = REASON, .want = "^a join with more than one subquery"},

/* The same on the right side of a LEFT JOIN. */
#define LEFT_JOINED_SUB                                                              \
    "(public.customers c\n     LEFT JOIN ( SELECT orders.customer_id,\n            " \
    "sum(orders.amount) AS total\n           FROM public.orders\n          WHERE "   \
    "(orders.status <> 'void'::text)\n          GROUP BY orders.customer_id) t ON "  \
    "((t.customer_id = c.id)))"
    {"left_joined_units_first_table",
     " SELECT c.id,\n    c.name,\n    t.total\n   FROM " LEFT_JOINED_SUB, KEYS("id"), .mode = DIFF,
     .field = UNITS, .want = "{\"id\"}"},
    {"left_joined_affected_first_table_changes",
     " SELECT c.id,\n    c.name,\n    t.total\n   FROM " LEFT_JOINED_SUB, KEYS("id"), .mode = DIFF,
     .field = AFFECTED,
     .want = "^SELECT DISTINCT * FROM (SELECT \"id\" FROM pg_temp.\"__sluice_chg_16402\" UNION "
             "ALL SELECT \"c\".\"id\" FROM "},
    {"left_joined_affected_meets_subquery_groups",
     " SELECT c.id,\n    c.name,\n    t.total\n   FROM " LEFT_JOINED_SUB, KEYS("id"), .mode = DIFF,
     .field = AFFECTED,
     .want = ") AS \"__sluice_a\") t ON ((t.customer_id = c.id))) WHERE \"t\".\"__sluice_m\" UNION "
             "ALL "},
    {"left_joined_tables_read_possible_and_affected_groups",
     " SELECT c.id,\n    r.id AS rid,\n    t.total\n   FROM ((public.customers c\n     LEFT JOIN "
     "public.refunds r ON ((r.order_id = c.id)))\n     LEFT JOIN ( SELECT orders.customer_id,\n "
     "           sum(orders.amount) AS total\n           FROM public.orders\n          GROUP BY "
     "orders.customer_id) t ON ((t.customer_id = c.id)))",
     KEYS("id", "rid"), .mode = DIFF, .field = AFFECTED,
     .want = "LEFT JOIN (SELECT * FROM (SELECT (orders.customer_id) AS \"customer_id\" FROM "
             "public.orders\n          ) AS \"__sluice_s\" UNION ALL SELECT * FROM (SELECT "
             "DISTINCT (orders.customer_id) AS \"customer_id\" FROM "
             "pg_temp.\"__sluice_chg_16401\" AS \"orders\") AS \"__sluice_a\") t ON "
             "((t.customer_id = c.id))) WHERE \"r\".\"id\" = ANY (ARRAY(SELECT \"id\" FROM "
             "pg_temp.\"__sluice_chg_16403\"))"},
    {"left_joined_recompute_groups_equal_to_units",
     " SELECT c.id,\n    c.name,\n    t.total\n   FROM " LEFT_JOINED_SUB, KEYS("id"), .mode = DIFF,
     .field = RECOMPUTE,
     .want = "(SELECT \"id\" AS \"customer_id\" FROM pg_temp.\"__sluice_aff\") AS "
             "\"__sluice_aff\""},
    {"left_joined_recompute_groups_the_units_meet",
     " SELECT c.id,\n    r.id AS rid,\n    t.total\n   FROM ((public.customers c\n     LEFT JOIN "
     "public.refunds r ON ((r.order_id = c.id)))\n     LEFT JOIN ( SELECT orders.customer_id,\n "
     "           sum(orders.amount) AS total\n           FROM public.orders\n          GROUP BY "
     "orders.customer_id) t ON ((t.customer_id = r.order_id)))",
     KEYS("id", "rid"), .mode = DIFF, .field = RECOMPUTE,
     .want = "WHERE \"t\".\"__sluice_m\" AND \"c\".\"id\" IN (SELECT \"id\" FROM "
             "pg_temp.\"__sluice_aff\" WHERE \"id\" IS NOT NULL)) AS \"__sluice_aff\""},
    {"left_joined_recompute_restricted_to_units",
     " SELECT c.id,\n    c.name,\n    t.total\n   FROM " LEFT_JOINED_SUB, KEYS("id"), .mode = DIFF,
     .field = RECOMPUTE,
     .want = " t ON ((t.customer_id = c.id))) WHERE \"c\".\"id\" IN (SELECT \"id\" FROM "
             "pg_temp.\"__sluice_aff\" WHERE \"id\" IS NOT NULL) "},
    {"left_joined_filter_on_aggregate_full",
     " SELECT c.id,\n    t.total\n   FROM (public.customers c\n     LEFT JOIN ( SELECT "
     "orders.customer_id,\n            sum(orders.amount) AS total\n           FROM "
     "public.orders\n          GROUP BY orders.customer_id) t ON (((t.customer_id = c.id) AND "
     "(t.total = c.region))))",
     KEYS("id"), .mode = FULL, .field = REASON, .want = "the ON conditions may use only its key"},
    {"left_joined_where_on_aggregate_differential",
     " SELECT c.id,\n    t.total\n   FROM " LEFT_JOINED_SUB "\n  WHERE (COALESCE(t.total, "
     "(0)::numeric) < (100)::numeric)",
     KEYS("id"), .mode = DIFF, .field = RECOMPUTE,
     .want = "(COALESCE(t.total, (0)::numeric) < (100)::numeric)) AND \"c\".\"id\" IN"},
    {"left_joined_first_relation_full",
     " SELECT t.customer_id,\n    c.name\n   FROM (( SELECT DISTINCT orders.customer_id\n       "
     "    FROM public.orders) t\n     LEFT JOIN public.customers c ON ((c.id = t.customer_id)))",
     KEYS("customer_id"), .mode = FULL, .field = REASON,
     .want = "not as the first relation of a chain of LEFT JOINs"},
    {"left_joined_first_table_key_not_selected_full",
     " SELECT c.name,\n    t.total\n   FROM " LEFT_JOINED_SUB, KEYS("name"), .mode = FULL,
     .field = REASON,
     .want = "^with a LEFT JOIN and a subquery that groups, every row (or group) must include the "
             "primary key of the first table (public.customers)"},

    /* UNION ALL. */
    {"union_all_without_branches_full", " " ORDERS_BRANCH "\nUNION ALL\n " REFUNDS_BRANCH,
     KEYS("id"), .mode = FULL, .field = REASON, .want = "UNION ALL"},
    {"union_all_branches_differential", " " ORDERS_BRANCH "\nUNION ALL\n " REFUNDS_BRANCH,
     KEYS("id"), BRANCHES_OF(two_keyed), .mode = DIFF, .field = BRANCHES,
     .want = "pg_temp.\"__sluice_chg_16403\" AS \"refunds\""},
    {"union_all_branch_count_mismatch_full",
     " " ORDERS_BRANCH "\nUNION ALL\n " REFUNDS_BRANCH "\nUNION ALL\n " ORDERS_BRANCH, KEYS("id"),
     BRANCHES_OF(two_keyed), .mode = FULL, .field = REASON,
     .want = "has 3 branches but the catalog split it into 2"},
    /* A LEFT JOIN chain in a branch: by the branch's row identity. */
    {"union_all_left_join_branch_differential", " " LEFT_BRANCH "\nUNION ALL\n " REFUNDS_BRANCH,
     KEYS("id"), BRANCHES_OF(left_first), .mode = DIFF, .field = BRANCHES,
     .want = "pg_temp.\"__sluice_chg_16403\" AS \"refunds\""},
    {"union_all_left_join_branch_by_identity", " " REFUNDS_BRANCH "\nUNION ALL\n " LEFT_BRANCH,
     KEYS("id"), BRANCHES_OF(left_second), .mode = DIFF, .field = BRANCHES,
     .want = "^WITH \"__sluice_units\" AS MATERIALIZED ("},
    {"union_all_derived_left_join_branch", " " REFUNDS_BRANCH "\nUNION ALL\n " DERIVED_LEFT_BRANCH,
     KEYS("id", "amount"), BRANCHES_OF(derived_left_second), .mode = DIFF, .field = BRANCHES,
     .want = "\"__sluice_units\""},
    {"union_all_limit_branch_full", " " ORDERS_BRANCH "\nUNION ALL\n" LIMIT_BRANCH, KEYS("id"),
     BRANCHES_OF(limit_second), .mode = FULL, .field = REASON,
     .want = "^UNION ALL branch 2: LIMIT/OFFSET"},

    {"union_all_limit_on_whole_union_full",
     " " ORDERS_BRANCH "\nUNION ALL\n " REFUNDS_BRANCH "\n LIMIT 5", KEYS("id"),
     BRANCHES_OF(two_keyed), .mode = FULL, .field = REASON,
     .want = "^ORDER BY, LIMIT, OFFSET, WITH or FOR UPDATE applies to the whole UNION ALL"},

    /* GROUP BY over one table with typed columns: aggregates kept from the
     * stored rows and the changes (gen_algebraic), the rest recomputed. */
    {"algebraic_all_kinds",
     "SELECT sales.region,\n    count(*) AS n,\n    sum(sales.qty) AS q,\n    avg(sales.qty) AS "
     "aq,\n    min(sales.day) AS first,\n    max(sales.price) AS top\n   FROM public.sales\n  "
     "GROUP BY sales.region",
     KEYS("region"), .mode = DIFF, .field = RECOMPUTE,
     .want = "^WITH \"__sluice_dg\" AS (SELECT (sales.region) AS \"region\", sum(CASE WHEN "
             "\"sales\".\"__sluice_op\" = 'D' THEN -1 ELSE 1 END) AS \"__sluice_n\""},
    /* The stored rows are joined on the keys with = (hashed or merged on
     * the values) where no key part is NULL, as JSON (which equates NULLs)
     * where one is. */
    {"algebraic_reads_stored_rows",
     "SELECT sales.region,\n    count(*) AS n\n   FROM public.sales\n  GROUP BY sales.region",
     KEYS("region"), .mode = DIFF, .field = RECOMPUTE,
     .want = "LEFT JOIN pg_temp.\"__sluice_old_7\" AS \"__sluice_s\" ON "
             "\"__sluice_s\".\"region\" = \"__sluice_d\".\"region\" WHERE "
             "(\"__sluice_d\".\"region\" IS NOT NULL) UNION ALL SELECT \"__sluice_d\".*, "},
    {"algebraic_reads_stored_rows_of_null_keys_as_json",
     "SELECT sales.region,\n    count(*) AS n\n   FROM public.sales\n  GROUP BY sales.region",
     KEYS("region"), .mode = DIFF, .field = RECOMPUTE,
     .want = "LEFT JOIN pg_temp.\"__sluice_old_7\" AS \"__sluice_s\" ON "
             "jsonb_build_array(\"__sluice_s\".\"region\") = "
             "jsonb_build_array(\"__sluice_d\".\"region\") WHERE NOT "
             "(\"__sluice_d\".\"region\" IS NOT NULL)), \"__sluice_redo\" AS ("},
    {"algebraic_reads_stored_rows_by_every_key",
     "SELECT sales.region,\n    sales.day,\n    count(*) AS n\n   FROM public.sales\n  GROUP "
     "BY sales.region, sales.day",
     KEYS("region", "day"), .mode = DIFF, .field = RECOMPUTE,
     .want = "ON \"__sluice_s\".\"region\" = \"__sluice_d\".\"region\" AND "
             "\"__sluice_s\".\"day\" = \"__sluice_d\".\"day\" WHERE "
             "(\"__sluice_d\".\"region\" IS NOT NULL AND \"__sluice_d\".\"day\" IS NOT "
             "NULL) UNION ALL "},
    /* Keys in their forms (migration 30): a stored 1.0 and a changed
     * row's 1.00 are one group where they are compared as JSON (= finds
     * them equal by itself); NULL parts compared the same way. */
    {"algebraic_stored_rows_by_key_form",
     "SELECT sales.note,\n    count(*) AS n\n   FROM public.sales\n  GROUP BY sales.note",
     KEYS("note"), KEYFORMS_OF(note_form), .mode = DIFF, .field = RECOMPUTE,
     .want = "LEFT JOIN pg_temp.\"__sluice_old_7\" AS \"__sluice_s\" ON "
             "jsonb_build_array(trim_scale(\"__sluice_s\".\"note\")) = "
             "jsonb_build_array(trim_scale(\"__sluice_d\".\"note\")) WHERE NOT ("},
    {"algebraic_null_keys_by_key_form",
     "SELECT sales.note,\n    count(*) AS n\n   FROM public.sales\n  GROUP BY sales.note",
     KEYS("note"), KEYFORMS_OF(note_form), .mode = DIFF, .field = RECOMPUTE,
     .want = "AND jsonb_build_array(trim_scale((sales.note))) IN (SELECT "
             "jsonb_build_array(trim_scale(\"note\")) FROM \"__sluice_redo\")"},
    /* Grouped by a key of a type with its own =: FULL; keyed by a primary
     * key of such a type: differential. */
    {"own_equality_group_full",
     "SELECT sales.region,\n    count(*) AS n\n   FROM public.sales\n  GROUP BY sales.region",
     KEYS("region"), KEYFORMS_OF(region_citext), .mode = FULL, .field = REASON,
     .want = "^column region is of type citext, whose = is not PostgreSQL's built-in one: a "
             "GROUP BY, DISTINCT or set operation keyed by it is refreshed in full (select "
             "region::text or lower(region::text) instead for a differential refresh)"},
    {"own_equality_distinct_full", "SELECT DISTINCT sales.region\n   FROM public.sales",
     KEYS("region"), KEYFORMS_OF(region_citext), .mode = FULL, .field = REASON,
     .want = "^column region is of type citext"},
    {"own_equality_window_partition_full",
     " SELECT sales.id,\n    sales.region,\n    rank() OVER (PARTITION BY sales.region ORDER BY "
     "sales.qty) AS r\n   FROM public.sales",
     KEYS("id"), KEYFORMS_OF(region_citext), .mode = FULL, .field = REASON,
     .want = "^column region is of type citext, whose = is not PostgreSQL's built-in one: a "
             "query with window functions and such a column is refreshed in full"},
    {"own_equality_primary_key_differential",
     " SELECT sales.region,\n    sales.id\n   FROM public.sales", KEYS("id", "region"),
     KEYFORMS_OF(region_citext), .mode = DIFF, .field = RECOMPUTE,
     .want = "WHERE ((sales.id), (sales.region)) IN (SELECT \"id\", \"region\" FROM "},
    {"algebraic_avg_divides_like_avg",
     "SELECT sales.region,\n    count(sales.qty) AS c,\n    sum(sales.qty) AS q,\n    "
     "avg(sales.qty) AS aq\n   FROM public.sales\n  GROUP BY sales.region",
     KEYS("region"), .mode = DIFF, .field = RECOMPUTE,
     .want = "(CASE WHEN (coalesce(\"__sluice_j\".\"__sluice_o0\", 0) + "
             "\"__sluice_j\".\"__sluice_c0\") > 0 THEN (coalesce(\"__sluice_j\".\"__sluice_o1\", "
             "0) + coalesce(\"__sluice_j\".\"__sluice_s1\", 0))::numeric / "
             "(coalesce(\"__sluice_j\".\"__sluice_o0\", 0) + "
             "\"__sluice_j\".\"__sluice_c0\")::numeric END) AS \"aq\""},
    {"algebraic_sum_of_not_null_counted_by_count_star",
     "SELECT sales.region,\n    count(*) AS n,\n    sum(sales.qty) AS q\n   FROM public.sales\n  "
     "GROUP BY sales.region",
     KEYS("region"), .mode = DIFF, .field = RECOMPUTE,
     .want = "(CASE WHEN (coalesce(\"__sluice_j\".\"__sluice_o0\", 0) + "
             "\"__sluice_j\".\"__sluice_n\") > 0 THEN"},
    {"algebraic_not_null_checked_when_used",
     "SELECT sales.region,\n    count(*) AS n,\n    sum(sales.qty) AS q\n   FROM public.sales\n  "
     "GROUP BY sales.region",
     KEYS("region"), .mode = DIFF, .field = RECOMPUTE,
     .want = "AND coalesce((SELECT a.attnotnull FROM pg_catalog.pg_attribute a WHERE a.attrelid = "
             "16405 AND a.attname = 'qty'), false)"},
    {"algebraic_sum_without_count_unknown_when_values_leave",
     "SELECT sales.region,\n    sum(sales.price) AS total\n   FROM public.sales\n  GROUP BY "
     "sales.region",
     KEYS("region"), .mode = DIFF, .field = RECOMPUTE,
     .want =
         "WHERE NOT (true AND (NOT \"__sluice_j\".\"__sluice_had\" OR "
         "\"__sluice_j\".\"__sluice_n\" >= 0) AND (\"__sluice_j\".\"__sluice_o0\" IS NULL OR "
         "\"__sluice_j\".\"__sluice_c0\" >= 0) AND NOT coalesce(\"__sluice_j\".\"__sluice_nan0\", "
         "false) AND \"__sluice_j\".\"__sluice_o0\" IS DISTINCT FROM 'NaN')"},
    {"algebraic_extreme_left_is_recomputed",
     "SELECT sales.region,\n    max(sales.price) AS top\n   FROM public.sales\n  GROUP BY "
     "sales.region",
     KEYS("region"), .mode = DIFF, .field = RECOMPUTE,
     .want =
         "(\"__sluice_j\".\"__sluice_d0\" IS NULL OR coalesce(\"__sluice_j\".\"__sluice_o0\" "
         "> \"__sluice_j\".\"__sluice_d0\", false) OR coalesce(\"__sluice_j\".\"__sluice_i0\" > "
         "\"__sluice_j\".\"__sluice_d0\", false))"},
    {"algebraic_extreme_still_there_by_its_key",
     "SELECT sales.region,\n    max(sales.price) AS top\n   FROM public.sales\n  WHERE (sales.qty "
     "> "
     "0)\n  GROUP BY sales.region",
     KEYS("region"), .mode = DIFF, .field = RECOMPUTE,
     .want = "max(\"sales\".\"price\") FILTER (WHERE \"sales\".\"__sluice_op\" = 'D' AND NOT "
             "coalesce(\"__sluice_l\".\"__sluice_lop\" = 'I' AND \"__sluice_l\".\"__sluice_lw\" "
             "AND \"__sluice_l\".\"__sluice_lk0\" IS NOT DISTINCT FROM (sales.region) AND "
             "\"__sluice_l\".\"__sluice_lx0\" IS NOT DISTINCT FROM \"sales\".\"price\", false)) AS "
             "\"__sluice_d0\""},
    {"algebraic_last_image_of_each_key",
     "SELECT sales.region,\n    max(sales.price) AS top\n   FROM public.sales\n  WHERE (sales.qty "
     "> "
     "0)\n  GROUP BY sales.region",
     KEYS("region"), .mode = DIFF, .field = RECOMPUTE,
     .want = "LEFT JOIN (SELECT DISTINCT ON (\"sales\".\"id\") \"sales\".\"id\" AS "
             "\"__sluice_lp0\", \"sales\".\"__sluice_op\" AS \"__sluice_lop\", (sales.region) AS "
             "\"__sluice_lk0\", \"sales\".\"price\" AS \"__sluice_lx0\", coalesce(( (sales.qty > "
             "0)\n  ), false) AS \"__sluice_lw\" FROM pg_temp.\"__sluice_chg_16405\" AS \"sales\" "
             "ORDER BY \"sales\".\"id\", \"sales\".\"__sluice_seq\" DESC) AS \"__sluice_l\" ON "
             "\"__sluice_l\".\"__sluice_lp0\" = \"sales\".\"id\" WHERE"},
    {"algebraic_redo_groups_recomputed_from_the_table",
     "SELECT sales.region,\n    max(sales.price) AS top\n   FROM public.sales\n  GROUP BY "
     "sales.region",
     KEYS("region"), .mode = DIFF, .field = RECOMPUTE,
     .want =
         "UNION ALL (SELECT sales.region,\n    max(sales.price) AS top\n   FROM public.sales\n  "
         " WHERE EXISTS (SELECT FROM \"__sluice_redo\") AND (sales.region) IN (SELECT "
         "\"region\" FROM \"__sluice_redo\" WHERE \"region\" IS NOT NULL) GROUP BY "
         "sales.region)"},
    {"algebraic_where_and_key_expression",
     "SELECT date_trunc('month'::text, (sales.day)::timestamp with time zone) AS month,\n    "
     "count(*) AS n\n   FROM public.sales\n  WHERE (sales.qty > 0)\n  GROUP BY "
     "(date_trunc('month'::text, (sales.day)::timestamp with time zone))",
     KEYS("month"), .mode = DIFF, .field = RECOMPUTE,
     .want = "FROM pg_temp.\"__sluice_chg_16405\" AS \"sales\" WHERE  (sales.qty > 0)\n   GROUP BY "
             "1)"},
    {"algebraic_not_float_sum",
     "SELECT sales.region,\n    sum(sales.weight) AS w\n   FROM public.sales\n  GROUP BY "
     "sales.region",
     KEYS("region"), .mode = DIFF, .field = RECOMPUTE, .want = "^(SELECT sales.region"},
    {"algebraic_not_unconstrained_numeric",
     "SELECT sales.region,\n    max(sales.note) AS m\n   FROM public.sales\n  GROUP BY "
     "sales.region",
     KEYS("region"), .mode = DIFF, .field = RECOMPUTE, .want = "^(SELECT sales.region"},
    {"algebraic_not_avg_alone",
     "SELECT sales.region,\n    avg(sales.qty) AS a\n   FROM public.sales\n  GROUP BY "
     "sales.region",
     KEYS("region"), .mode = DIFF, .field = RECOMPUTE, .want = "^(SELECT sales.region"},
    {"algebraic_not_having",
     "SELECT sales.region,\n    count(*) AS n\n   FROM public.sales\n  GROUP BY sales.region\n "
     "HAVING (count(*) > 1)",
     KEYS("region"), .mode = DIFF, .field = RECOMPUTE, .want = "^(SELECT sales.region"},
    {"algebraic_not_distinct_aggregate",
     "SELECT sales.region,\n    count(DISTINCT sales.qty) AS n\n   FROM public.sales\n  GROUP BY "
     "sales.region",
     KEYS("region"), .mode = DIFF, .field = RECOMPUTE, .want = "^(SELECT sales.region"},
    {"algebraic_not_expression_argument",
     "SELECT sales.region,\n    sum((sales.qty * 2)) AS q\n   FROM public.sales\n  GROUP BY "
     "sales.region",
     KEYS("region"), .mode = DIFF, .field = RECOMPUTE, .want = "^(SELECT sales.region"},
    /* An expression's type from the aggregate's result: a bigint sum
     * reads integers, an extreme is of its argument's type. */
    {"algebraic_sum_typed_by_its_result", EXPR_AGG_Q("sum((sales.qty * 2)) AS q2"), KEYS("region"),
     COLS_OF(expr_cols), .mode = DIFF, .field = RECOMPUTE,
     .want =
         "(coalesce(\"__sluice_j\".\"__sluice_o0\", 0) + coalesce(\"__sluice_j\".\"__sluice_s0\", "
         "0)) END)::bigint AS \"q2\""},
    {"algebraic_extreme_typed_by_its_result", EXPR_AGG_Q("max((sales.qty * 2)) AS m2"),
     KEYS("region"), COLS_OF(expr_cols), .mode = DIFF, .field = RECOMPUTE,
     .want = "greatest(\"__sluice_j\".\"__sluice_o0\", \"__sluice_j\".\"__sluice_i0\") AS \"m2\""},
    {"algebraic_avg_typed_by_its_sum",
     EXPR_AGG_Q("sum((sales.qty * 2)) AS q2,\n    count((sales.qty * 2)) AS c2,\n    "
                "avg((sales.qty * 2)) AS a2"),
     KEYS("region"), COLS_OF(expr_cols), .mode = DIFF, .field = RECOMPUTE,
     .want = "::numeric END) AS \"a2\""},
    {"algebraic_not_avg_of_expression_alone",
     EXPR_AGG_Q("count((sales.qty * 2)) AS c2,\n    avg((sales.qty * 2)) AS a2"), KEYS("region"),
     COLS_OF(expr_cols), .mode = DIFF, .field = RECOMPUTE, .want = "^(SELECT sales.region"},
    {"algebraic_not_numeric_result", EXPR_AGG_Q("sum((sales.price * 2)) AS p2"), KEYS("region"),
     COLS_OF(expr_cols), .mode = DIFF, .field = RECOMPUTE, .want = "^(SELECT sales.region"},
    {"algebraic_not_untyped_source",
     "SELECT orders.customer_id,\n    count(*) AS n\n   FROM public.orders\n  GROUP BY "
     "orders.customer_id",
     KEYS("customer_id"), .mode = DIFF, .field = RECOMPUTE, .want = "^(SELECT orders.customer_id"},

    /* The clock (migration 33): in a condition or what a query groups by,
     * FULL; in the select list of a query that does not group, shown as
     * each row was computed. */
    {"clock_in_where_full",
     " SELECT sales.id,\n    sales.day\n   FROM public.sales\n  WHERE (sales.day > (CURRENT_DATE - "
     "7))",
     KEYS("id"), .mode = FULL, .field = REASON, .want = "^the query reads the clock (now(), "},
    {"clock_now_in_where_full",
     " SELECT sales.id\n   FROM public.sales\n  WHERE ((sales.day)::timestamp with time zone > "
     "(now() - '7 days'::interval))",
     KEYS("id"), .mode = FULL, .field = REASON, .want = "^the query reads the clock"},
    {"clock_in_select_list_differential",
     " SELECT sales.id,\n    now() AS seen\n   FROM public.sales", KEYS("id"), .mode = DIFF,
     .field = RECOMPUTE, .want = "now() AS seen"},
    {"clock_in_select_list_subquery_full",
     " SELECT orders.id,\n    ( SELECT count(*) AS count\n           FROM public.refunds\n         "
     " WHERE ((refunds.order_id = orders.id) AND (refunds.amount > (EXTRACT(day FROM "
     "now()))::numeric))) AS n\n   FROM "
     "public.orders",
     KEYS("id"), .mode = FULL, .field = REASON, .want = "^the query reads the clock"},
    {"clock_in_group_key_full",
     " SELECT (sales.day = CURRENT_DATE) AS today,\n    count(*) AS n\n   FROM public.sales\n  "
     "GROUP BY (sales.day = CURRENT_DATE)",
     KEYS("today"), .mode = FULL, .field = REASON, .want = "^the query reads the clock"},
    {"clock_in_aggregate_full",
     " SELECT sales.region,\n    max(now() - (sales.day)::timestamp with time zone) AS age\n   "
     "FROM public.sales\n  GROUP BY sales.region",
     KEYS("region"), .mode = FULL, .field = REASON, .want = "^the query reads the clock"},
    {"clock_in_function_in_from_full",
     " SELECT sales.id,\n    g.n\n   FROM public.sales,\n    LATERAL "
     "generate_series((sales.day)::timestamp with time zone, now(), '1 day'::interval) WITH "
     "ORDINALITY g(d, n)",
     KEYS("id", "n"), .mode = FULL, .field = REASON, .want = "^the query reads the clock"},

    /* Not one SELECT. */
    {"two_statements_error", "SELECT 1; SELECT 2", .field = ERROR,
     .want = "a stream table's query is one SELECT statement"},
    {"insert_error", "INSERT INTO public.orders (id) VALUES (1)", .field = ERROR,
     .want = "one SELECT statement"},
    {"syntax_error", "SELEC orders.id FROM public.orders", .field = ERROR,
     .want = "^the query does not parse"},
};

/* ------------------------------------------------------------------------ */
/* Checks                                                                    */
/* ------------------------------------------------------------------------ */

/* Appends a problem to p (bounded). */
static void problem(char *p, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void
problem(char *p, size_t n, const char *fmt, ...)
{
    size_t len = strlen(p);
    if (len + 1 >= n)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p + len, n - len, fmt, ap);
    va_end(ap);
}

static bool
matches(const char *got, const char *want)
{
    if (got == NULL)
        return false;
    if (want[0] == '^')
        return strncmp(got, want + 1, strlen(want + 1)) == 0;
    return strstr(got, want) != NULL;
}

/* What no recompute statement may restrict a query by: without an index on
 * the key, PostgreSQL compares each row with each element of an array
 * made by a subquery in turn (it hashes only constant arrays). Recompute
 * statements use IN (SELECT ...), a semi-join it can hash; affected_sql
 * keeps the form for primary keys, which always have their index. */
#define SAOP_SUBQUERY "= ANY (ARRAY(SELECT"

/* Checks a->branches; returns the last branch's "affected" (owned by *json,
 * which the caller deletes), or NULL after noting the problem. */
static const char *
check_branches(const analyze_row_t *r, const sl_analysis_t *a, cJSON **json, char *p, size_t n)
{
    if (a->affected_sql != NULL || a->recompute_sql != NULL)
        problem(p, n, "affected_sql/recompute_sql set beside branches; ");
    *json = a->branches != NULL ? cJSON_Parse(a->branches) : NULL;
    if (!cJSON_IsArray(*json) || (size_t)cJSON_GetArraySize(*json) != r->nbranches) {
        problem(p, n, "branches is not a JSON array of %zu: %s; ", r->nbranches,
                OR_NULL(a->branches));
        return NULL;
    }
    const char *last = NULL;
    const cJSON *b;
    cJSON_ArrayForEach (b, *json) {
        const cJSON *aff = cJSON_GetObjectItemCaseSensitive(b, "affected");
        const cJSON *rec = cJSON_GetObjectItemCaseSensitive(b, "recompute");
        if (!cJSON_IsString(aff) || !cJSON_IsString(rec) || aff->valuestring[0] == '\0' ||
            rec->valuestring[0] == '\0') {
            problem(p, n, "a branch lacks \"affected\"/\"recompute\" strings; ");
            return NULL;
        }
        if (strstr(rec->valuestring, SAOP_SUBQUERY) != NULL)
            problem(p, n, "a branch's recompute restricts by " SAOP_SUBQUERY "; ");
        last = aff->valuestring;
    }
    return last;
}

/* Fills p with what differs from the row's expectations ("" when nothing). */
static void
check(const analyze_row_t *r, int rc, const sl_analysis_t *a, const sl_err_t *err, char *p,
      size_t n)
{
    static const char *const field_names[] = {
        "reason", "affected_sql", "recompute_sql", "unit_columns", "branches", "error", "tree"};
    cJSON *json = NULL;
    const char *got = NULL;
    if (r->field == ERROR) {
        if (rc != SL_EUSAGE)
            problem(p, n, "rc %d, want SL_EUSAGE; ", rc);
        if (a->mode != NULL || a->tree != NULL)
            problem(p, n, "the analysis is not zeroed after an error; ");
        got = err->msg;
    } else if (rc != SL_OK) {
        problem(p, n, "rc %d (%s), want SL_OK; ", rc, err->msg);
        return;
    } else {
        if (a->mode == NULL || strcmp(a->mode, r->mode) != 0)
            problem(p, n, "mode %s, want %s; ", OR_NULL(a->mode), r->mode);
        if (a->tree == NULL || a->tree[0] == '\0')
            problem(p, n, "no operator tree; ");
        bool full = strcmp(r->mode, FULL) == 0;
        if (full && (a->reason == NULL || a->affected_sql != NULL || a->recompute_sql != NULL ||
                     a->branches != NULL || a->unit_columns != NULL))
            problem(p, n, "a full analysis needs a reason and no SQL; ");
        if (!full && a->reason != NULL)
            problem(p, n, "a differential analysis has a reason; ");
        if (a->recompute_sql != NULL && strstr(a->recompute_sql, SAOP_SUBQUERY) != NULL)
            problem(p, n, "recompute_sql restricts by " SAOP_SUBQUERY "; ");
        if (!full && r->field != BRANCHES &&
            (a->affected_sql == NULL || a->recompute_sql == NULL || a->branches != NULL))
            problem(p, n, "a differential analysis needs affected_sql and recompute_sql; ");
        switch (r->field) {
        case REASON: got = a->reason; break;
        case AFFECTED: got = a->affected_sql; break;
        case RECOMPUTE: got = a->recompute_sql; break;
        case UNITS: got = a->unit_columns; break;
        case BRANCHES: got = check_branches(r, a, &json, p, n); break;
        case ERROR: break;
        case TREE: got = a->tree; break;
        }
    }
    if (!matches(got, r->want))
        problem(p, n, "%s does not %s \"%s\"; ", field_names[r->field],
                r->want[0] == '^' ? "start with" : "contain", r->want + (r->want[0] == '^'));
    if (p[0] != '\0')
        problem(p, n,
                "\n  mode: %s\n  reason: %s\n  affected_sql: %s\n  recompute_sql: %s\n  "
                "unit_columns: %s\n  branches: %s\n  err: %s",
                OR_NULL(a->mode), OR_NULL(a->reason), OR_NULL(a->affected_sql),
                OR_NULL(a->recompute_sql), OR_NULL(a->unit_columns), OR_NULL(a->branches),
                err->msg);
    cJSON_Delete(json);
}

static void
test_analyze(void **state)
{
    const analyze_row_t *r = *state;
    sl_analyze_in_t in = {.query = r->query,
                          .keys = r->keys,
                          .nkeys = r->nkeys,
                          .has_keys = !r->no_identity,
                          .sources = sources,
                          .nsources = ROWS(sources),
                          .requested_full = r->requested_full,
                          .branches = r->branches,
                          .nbranches = r->nbranches,
                          .old_rel = "pg_temp.\"__sluice_old_7\"",
                          .keyforms = r->keyforms,
                          .nkeyforms = r->nkeyforms,
                          .cols = r->cols,
                          .ncols = r->ncols};
    sl_analysis_t a;
    sl_err_t err;
    sl_err_clear(&err);
    int rc = sl_analyze(&in, &a, &err);
    char p[16384] = "";
    check(r, rc, &a, &err, p, sizeof p);
    sl_analysis_free(&a);
    assert_string_equal(p, "");
}

int
main(void)
{
    struct CMUnitTest tests[ROWS(rows)];
    for (size_t i = 0; i < ROWS(rows); i++)
        tests[i] = (struct CMUnitTest){rows[i].name, test_analyze, NULL, NULL, (void *)&rows[i]};
    return _cmocka_run_group_tests("analyze", tests, ROWS(rows), NULL, NULL);
}
