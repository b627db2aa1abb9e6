/*
 * refresh/analyze.c - reads a stream table's query with libpg_query and
 * decides how it can be refreshed.
 *
 * The result is what refresh/sql stores through sluice._set_analysis(): the
 * operator tree (for explain_stream_table), the effective mode, the reason
 * for a fallback to FULL, and for DIFFERENTIAL two SQL statements that the
 * refresh driver runs (see docs/stream-tables.md):
 *
 *   affected_sql   the values of the row-identity (key) columns that the
 *                  changes in the window can touch: the query's key
 *                  expressions evaluated over the changed rows' images (old
 *                  and new), through the query's own WHERE clause, from the
 *                  temp table pg_temp.__sluice_chg_<relid> the driver fills.
 *   recompute_sql  the query itself, restricted to those key values (read
 *                  back from pg_temp.__sluice_aff): the new content of every
 *                  row the window can have changed, and nothing else.
 *
 * The driver compares recompute_sql's rows with the stored rows of the same
 * keys and publishes the difference, so a refresh recomputes whole groups
 * (or rows) from the current source rather than adding up deltas. That is
 * correct for every aggregate (min and max included) and for HAVING and
 * DISTINCT, and a change seen twice changes nothing. Its cost is the
 * affected groups' rows, which an index on the key columns keeps small.
 * The exception: a GROUP BY over one table (or over the rows of
 * set-returning functions called on its rows) whose aggregates are counts,
 * sums, averages and extremes of columns or typed expressions adds the
 * changes to the stored rows where that is exact, and recomputes the other
 * groups (gen_algebraic, which says when).
 *
 * What is differential:
 *   - one table (projection, WHERE, GROUP BY with any aggregates, HAVING,
 *     DISTINCT) when the row identity is known: affected keys from the
 *     change images themselves, as above;
 *   - inner joins of tables (and of subqueries that only filter and project
 *     one table), with any of that on top: affected keys are those of the
 *     result rows produced by combinations of rows that involve a changed
 *     row, over the tables now and over the tables as they were before the
 *     window (rebuilt from the change images: gen_affected_inner);
 *   - chains of LEFT JOIN equi-joins whose first table's key is in the row
 *     identity: the refresh unit is a row of the first table with every
 *     result row built from it (unit_columns, gen_affected_rooted), because
 *     a NULL-extended row comes from the absence of a partner; a chain of
 *     tables whose identity lacks that key (a GROUP BY of another column),
 *     or in a UNION ALL branch, is refreshed by its identity: the keys of
 *     the rows built from those first-table rows, before and after the
 *     window (gen_affected_rooted_keys);
 *   - a UNION ALL of any of those but a subquery that groups joined with
 *     tables, when the catalog could cut it into branches that each have a
 *     row identity (in->branches): each branch is analysed alone, and the
 *     driver runs the branches in turn (analyze_union; a row id starts with
 *     its branch number);
 *   - a query that only filters and projects the one subquery in its FROM,
 *     when that subquery is any of the above but a UNION ALL (a GROUP BY, a
 *     DISTINCT, a join, a LEFT JOIN chain): the subquery is analysed alone
 *     and its SQL wrapped, keeping its refresh units (analyze_derived);
 *   - an inner join of tables with one subquery that groups (GROUP BY or
 *     DISTINCT) and is joined by its key columns: the refresh unit is a
 *     group of that subquery (unit_columns, analyze_joined); with LEFT
 *     JOINs in the chain (the subquery not its first relation), a row of
 *     the first table, as for a chain of tables.
 *   - EXISTS, NOT EXISTS and IN (SELECT ...) over one table ANDed into the
 *     WHERE clause of a query over tables (inner joins or a LEFT JOIN
 *     chain; or of a UNION ALL branch): the tables' terms as above, plus
 *     the keys (or units) of the rows for which the subquery, run over its
 *     table's change images, finds a row (gen_affected_sublinks);
 *   - any other subquery over one table that gives a value (a scalar
 *     subquery, EXISTS, IN, ANY, ALL, ARRAY) anywhere in that WHERE clause
 *     (NOT IN, under OR, compared with a column), or in the select list of
 *     such a query that neither groups nor aggregates: the same, where
 *     what is run over the change images is the subquery's WHERE clause
 *     alone, since its value for a row depends only on the rows of its
 *     table that clause lets through.
 *   - window functions over one table or an inner join, every window
 *     partitioned (PARTITION BY) by columns the select list has as they
 *     are: refreshed by partition, the unit being those columns (like a
 *     LEFT JOIN chain's first table): the partitions of the rows the
 *     window's changes touch (a table's change images; for a join, its
 *     rows that involve a changed row, as for keys), before and after,
 *     recomputed whole, since a row's window values depend only on the
 *     rows of its partition.
 *   - a chain of UNIONs (without ALL) of queries that are any of the above
 *     but a refresh by units (a LEFT JOIN chain's first table, a joined
 *     subquery that groups, windows) and that neither group nor aggregate,
 *     as the whole query or the subquery a query filters and projects (a
 *     WITH query written in place): keyed by all of its columns, each
 *     query analysed alone with those keys, the affected rows and the
 *     recomputed ones united (analyze_distinct_setop); a chain of
 *     INTERSECTs or of EXCEPTs the same, the recomputed rows combined by
 *     it.
 *   - one table and set-returning functions in its FROM, each WITH
 *     ORDINALITY, filtered and projected: refreshed by the table's rows
 *     (unit_columns, as a LEFT JOIN chain's first table), whose result
 *     rows depend on that row alone; keyed by its primary key and the
 *     ordinality columns (srf_units); or the same rows grouped (GROUP BY,
 *     aggregates, HAVING), keyed by the group keys and refreshed like a
 *     GROUP BY over the table, the functions called on the change images
 *     (srf_groups).
 * INTERSECT ALL, EXCEPT ALL, subqueries elsewhere, window functions without
 * PARTITION BY, LIMIT, queries whose rows depend on the clock (clock_keyed)
 * and the rest are refreshed in full, and the reason says so. docs/stream-tables.md
 * ("What is refreshed differentially") has the argument in prose.
 *
 * Text handling: the generated SQL is spliced from the user's own query
 * text, cut at top-level clause boundaries found with libpg_query's scanner
 * (pg_query_scan), so expressions keep exactly the meaning PostgreSQL gave
 * them. Only identifiers sluice adds are written here, always double-quoted.
 * pg_query_scan answers in protobuf; the few fields needed are read by a
 * small decoder below rather than through protobuf-c.
 */
#include "refresh/refresh.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <pg_query.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* Tokens (pg_query_scan's protobuf ScanResult)                              */
/* ------------------------------------------------------------------------ */

typedef struct tok {
    int start, end; /* byte offsets in the query */
    bool keyword;   /* a keyword of any kind (quoted identifiers are not) */
} tok_t;

typedef struct toks {
    tok_t *v;
    size_t n, cap;
} toks_t;

/* Reads a varint at *p (below end); false when truncated. */
static bool
pb_varint(const unsigned char **p, const unsigned char *end, uint64_t *out)
{
    uint64_t v = 0;
    for (int shift = 0; shift < 64 && *p < end; shift += 7) {
        unsigned char b = *(*p)++;
        v |= (uint64_t)(b & 0x7F) << shift;
        if ((b & 0x80) == 0) {
            *out = v;
            return true;
        }
    }
    return false;
}

/* Skips a field of wire type wt; false when malformed. */
static bool
pb_skip(const unsigned char **p, const unsigned char *end, int wt)
{
    uint64_t v;
    switch (wt) {
    case 0: return pb_varint(p, end, &v);
    case 1: *p += 8; return *p <= end;
    case 2:
        if (!pb_varint(p, end, &v) || v > (uint64_t)(end - *p))
            return false;
        *p += v;
        return true;
    case 5: *p += 4; return *p <= end;
    default: return false;
    }
}

static int
scan_tokens(const char *query, toks_t *out, sl_err_t *err)
{
    PgQueryScanResult r = pg_query_scan(query);
    if (r.error != NULL) {
        sl_err_set(err, SL_EUSAGE, "the query cannot be scanned: %s (at character %d)",
                   r.error->message, r.error->cursorpos);
        pg_query_free_scan_result(r);
        return SL_EUSAGE;
    }
    const unsigned char *p = (const unsigned char *)r.pbuf.data;
    const unsigned char *end = p + r.pbuf.len;
    int rc = SL_OK;
    while (p < end && rc == SL_OK) {
        uint64_t key;
        if (!pb_varint(&p, end, &key)) {
            rc = SL_ERR;
            break;
        }
        if (key >> 3 != 2 || (key & 7) != 2) {
            if (!pb_skip(&p, end, (int)(key & 7)))
                rc = SL_ERR;
            continue;
        }
        uint64_t len;
        if (!pb_varint(&p, end, &len) || len > (uint64_t)(end - p)) {
            rc = SL_ERR;
            break;
        }
        const unsigned char *q = p, *qend = p + len;
        p = qend;
        tok_t t = {0, 0, false};
        while (q < qend) {
            uint64_t k, v;
            if (!pb_varint(&q, qend, &k)) {
                rc = SL_ERR;
                break;
            }
            if ((k & 7) != 0) {
                if (!pb_skip(&q, qend, (int)(k & 7)))
                    rc = SL_ERR;
                continue;
            }
            if (!pb_varint(&q, qend, &v)) {
                rc = SL_ERR;
                break;
            }
            if (k >> 3 == 1)
                t.start = (int)v;
            else if (k >> 3 == 2)
                t.end = (int)v;
            else if (k >> 3 == 5)
                t.keyword = v != 0;
        }
        if (out->n == out->cap) {
            size_t cap = out->cap ? out->cap * 2 : 64;
            tok_t *nv = realloc(out->v, cap * sizeof *nv);
            if (nv == NULL) {
                rc = SL_ENOMEM;
                break;
            }
            out->v = nv;
            out->cap = cap;
        }
        out->v[out->n++] = t;
    }
    pg_query_free_scan_result(r);
    if (rc == SL_ENOMEM)
        return sl_err_nomem(err, "the query's tokens");
    if (rc != SL_OK)
        return sl_err_set(err, SL_ERR, "cannot read libpg_query's scan result");
    return SL_OK;
}

/* Index of the token that starts at byte `at`, or t->n. */
static size_t
tok_at(const toks_t *t, int at)
{
    size_t k = 0;
    while (k < t->n && t->v[k].start != at)
        k++;
    return k;
}

static bool
tok_is(const char *q, const tok_t *t, const char *word)
{
    size_t n = strlen(word);
    return (size_t)(t->end - t->start) == n && strncasecmp(q + t->start, word, n) == 0;
}

/* The last token of a table's name that starts at token k (name, or
 * schema . name). */
static size_t
name_last_tok(const char *q, const toks_t *t, size_t k)
{
    return k + 2 < t->n && tok_is(q, &t->v[k + 1], ".") ? k + 2 : k;
}

/* ------------------------------------------------------------------------ */
/* Output buffer with printf                                                 */
/* ------------------------------------------------------------------------ */

typedef struct out {
    sl_buf_t b;
    int rc;
    sl_err_t *err;
} out_t;

static void outf(out_t *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
outf(out_t *o, const char *fmt, ...)
{
    if (o->rc != SL_OK)
        return;
    char small[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) {
        o->rc = sl_err_set(o->err, SL_ERR, "formatting failed");
        return;
    }
    if ((size_t)n < sizeof small) {
        o->rc = sl_buf_append(&o->b, small, (size_t)n, o->err);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (big == NULL) {
        o->rc = sl_err_nomem(o->err, "generated SQL");
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    o->rc = sl_buf_append(&o->b, big, (size_t)n, o->err);
    free(big);
}

/* Appends len bytes of the query. */
static void
outq(out_t *o, const char *q, int from, int to)
{
    if (o->rc == SL_OK && to > from)
        o->rc = sl_buf_append(&o->b, q + from, (size_t)(to - from), o->err);
}

/* Appends an identifier, always double-quoted. */
static void
outid(out_t *o, const char *id)
{
    outf(o, "\"");
    for (const char *c = id; *c != '\0'; c++)
        outf(o, *c == '"' ? "\"\"" : "%c", *c);
    outf(o, "\"");
}

static char *
out_take(out_t *o)
{
    if (o->rc != SL_OK) {
        sl_buf_free(&o->b);
        return NULL;
    }
    char *s = o->b.data != NULL ? o->b.data : strdup("");
    o->b.data = NULL;
    o->b.len = o->b.cap = 0;
    return s;
}

/* ------------------------------------------------------------------------ */
/* The parse tree (libpg_query JSON)                                         */
/* ------------------------------------------------------------------------ */

static const cJSON *
node(const cJSON *n, const char *type)
{
    return cJSON_GetObjectItemCaseSensitive(n, type);
}

static const char *
str(const cJSON *n, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(n, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* The byte offset a node gives as its location in the query, or -1. */
static int
location(const cJSON *n)
{
    const cJSON *loc = cJSON_GetObjectItemCaseSensitive(n, "location");
    return cJSON_IsNumber(loc) ? loc->valueint : -1;
}

/* True when any node below n is of `type` (e.g. "SubLink"); with own, not
 * looking inside subqueries in expressions. */
static bool
find_node(const cJSON *n, const char *type, bool own)
{
    if (n == NULL || (own && n->string != NULL && strcmp(n->string, "SubLink") == 0))
        return false;
    if (n->string != NULL && strcmp(n->string, type) == 0)
        return true;
    for (const cJSON *c = n->child; c != NULL; c = c->next)
        if (find_node(c, type, own))
            return true;
    return false;
}

static bool
has_node(const cJSON *n, const char *type)
{
    return find_node(n, type, false);
}

static bool
has_own_node(const cJSON *n, const char *type)
{
    return find_node(n, type, true);
}

/* True when sel is SELECT DISTINCT ON (...). */
static bool
is_distinct_on(const cJSON *sel)
{
    const cJSON *distinct = cJSON_GetObjectItemCaseSensitive(sel, "distinctClause");
    return distinct != NULL && cJSON_GetArrayItem(distinct, 0) != NULL &&
           cJSON_GetArrayItem(distinct, 0)->child != NULL;
}

/* True when a FuncCall below n has an OVER clause (a window function). */
static bool
has_window(const cJSON *n)
{
    if (n == NULL)
        return false;
    if (n->string != NULL && strcmp(n->string, "FuncCall") == 0 &&
        cJSON_GetObjectItemCaseSensitive(n, "over") != NULL)
        return true;
    for (const cJSON *c = n->child; c != NULL; c = c->next)
        if (has_window(c))
            return true;
    return false;
}

#define MAX_WINDOWS 32

/* Collects the OVER clauses (WindowDef fields) of the FuncCalls below n
 * into v[k..max); returns the new count (more than max: too many). */
static size_t
collect_windows(const cJSON *n, const cJSON **v, size_t k, size_t max)
{
    if (n == NULL)
        return k;
    if (n->string != NULL && strcmp(n->string, "FuncCall") == 0) {
        const cJSON *over = cJSON_GetObjectItemCaseSensitive(n, "over");
        if (over != NULL) {
            if (k < max)
                v[k] = over;
            k++;
        }
    }
    for (const cJSON *c = n->child; c != NULL; c = c->next)
        k = collect_windows(c, v, k, max);
    return k;
}

/* The PARTITION BY list of window w (an OVER clause, or a WINDOW clause
 * entry), following a reference to a named window (OVER w, OVER (w ORDER
 * BY ...)) through the query's WINDOW clause; NULL when it has none. */
static const cJSON *
window_partition(const cJSON *sel, const cJSON *w)
{
    for (int hops = 0; w != NULL && hops < 8; hops++) {
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(w, "partitionClause");
        if (cJSON_GetArraySize(p) > 0)
            return p;
        const char *ref = str(w, "refname") != NULL ? str(w, "refname") : str(w, "name");
        const cJSON *next = NULL, *item;
        cJSON_ArrayForEach (item, cJSON_GetObjectItemCaseSensitive(sel, "windowClause")) {
            const cJSON *d = node(item, "WindowDef");
            if (ref != NULL && d != w && str(d, "name") != NULL && strcmp(str(d, "name"), ref) == 0)
                next = d;
        }
        w = next;
    }
    return NULL;
}

/* The windows of sel's select list and ORDER BY (up to MAX_WINDOWS). */
static size_t
query_windows(const cJSON *sel, const cJSON **v)
{
    size_t n =
        collect_windows(cJSON_GetObjectItemCaseSensitive(sel, "targetList"), v, 0, MAX_WINDOWS);
    return collect_windows(cJSON_GetObjectItemCaseSensitive(sel, "sortClause"), v, n, MAX_WINDOWS);
}

static const char *const why_window =
    "window functions are refreshed differentially over one table or tables joined by inner "
    "joins, when every window has a PARTITION BY and the query neither groups, aggregates, "
    "removes duplicates nor has subqueries; this one is refreshed in full";

/* Why sel's window functions make it FULL whatever its FROM, or NULL. */
static const char *
window_reason(const cJSON *sel)
{
    const cJSON *w[MAX_WINDOWS];
    size_t n = query_windows(sel, w);
    if (n > MAX_WINDOWS)
        return "a query with more than 32 window functions is refreshed in full";
    if (cJSON_GetObjectItemCaseSensitive(sel, "groupClause") != NULL ||
        cJSON_GetObjectItemCaseSensitive(sel, "havingClause") != NULL ||
        cJSON_GetObjectItemCaseSensitive(sel, "distinctClause") != NULL)
        return why_window;
    for (size_t i = 0; i < n; i++)
        if (window_partition(sel, w[i]) == NULL)
            return "window functions without PARTITION BY are refreshed in full (a change can "
                   "move every row's value)";
    return NULL;
}

/* The column of table alias that partition item p is (alias.col, or col
 * alone), or NULL. */
static const char *
partition_column(const cJSON *p, const char *alias)
{
    const cJSON *fields = cJSON_GetObjectItemCaseSensitive(node(p, "ColumnRef"), "fields");
    int nf = cJSON_GetArraySize(fields);
    const char *c = str(node(cJSON_GetArrayItem(fields, nf - 1), "String"), "sval");
    if (c == NULL || nf > 2)
        return NULL;
    if (nf == 2) {
        const char *t = str(node(cJSON_GetArrayItem(fields, 0), "String"), "sval");
        if (t == NULL || strcmp(t, alias) != 0)
            return NULL;
    }
    return c;
}

/* True when partition list p has column col of table alias. */
static bool
partition_has(const cJSON *p, const char *alias, const char *col)
{
    const cJSON *item;
    cJSON_ArrayForEach (item, p) {
        const char *c = partition_column(item, alias);
        if (c != NULL && strcmp(c, col) == 0)
            return true;
    }
    return false;
}

/* True when a ColumnRef below n has 3 or more parts (schema.table.column). */
static bool
has_long_colref(const cJSON *n)
{
    if (n == NULL)
        return false;
    if (n->string != NULL && strcmp(n->string, "ColumnRef") == 0 &&
        cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(n, "fields")) >= 3)
        return true;
    for (const cJSON *c = n->child; c != NULL; c = c->next)
        if (has_long_colref(c))
            return true;
    return false;
}

/* The name PostgreSQL gives an unnamed select-list entry (the cases keys use). */
static const char *
figure_colname(const cJSON *val)
{
    const cJSON *n;
    if ((n = node(val, "ColumnRef")) != NULL) {
        const cJSON *fields = cJSON_GetObjectItemCaseSensitive(n, "fields");
        const cJSON *last = cJSON_GetArrayItem(fields, cJSON_GetArraySize(fields) - 1);
        return str(node(last, "String"), "sval");
    }
    if ((n = node(val, "FuncCall")) != NULL) {
        const cJSON *names = cJSON_GetObjectItemCaseSensitive(n, "funcname");
        const cJSON *last = cJSON_GetArrayItem(names, cJSON_GetArraySize(names) - 1);
        return str(node(last, "String"), "sval");
    }
    if ((n = node(val, "TypeCast")) != NULL)
        return figure_colname(cJSON_GetObjectItemCaseSensitive(n, "arg"));
    return NULL;
}

/* The name of select-list entry rt (a ResTarget) in the query's output:
 * its AS name, or the one PostgreSQL gives a column or a function call;
 * NULL when it gives another (?column?). */
static const char *
target_name(const cJSON *rt)
{
    return str(rt, "name") != NULL ? str(rt, "name")
                                   : figure_colname(cJSON_GetObjectItemCaseSensitive(rt, "val"));
}

/* ------------------------------------------------------------------------ */
/* Subqueries in expressions                                                 */
/* ------------------------------------------------------------------------ */

/* Subqueries in expressions (SubLinks) that a refresh can follow, in the
 * stream table's query or in a UNION ALL branch, each over one table with
 * no subquery of its own, giving a value (scalar, EXISTS, IN, ANY, ALL,
 * ARRAY): anywhere in the WHERE clause, and in the select list of a query
 * that neither groups nor aggregates. How their changes are followed:
 * gen_affected_sublinks. */
static const char *const why_sublink =
    "subqueries in expressions are refreshed differentially in the WHERE clause, and in the "
    "select list of a query that neither groups nor aggregates, each reading one table with "
    "no join or subquery of its own; this one is refreshed in full";
static const char *const why_sublink_nested =
    "subqueries in expressions are refreshed differentially in the WHERE clause or the select "
    "list of the stream table's query or of a UNION ALL branch, not inside a subquery in FROM";
static const char *const why_sublink_from =
    "a query with a subquery in an expression (in its WHERE clause or its select list) is "
    "refreshed differentially when its FROM has only tables (joined, or in a LEFT JOIN chain), "
    "no subquery in FROM";

#define MAX_SUBLINKS 16

/* Collects the conjuncts of an AND tree (e itself when it is not an AND). */
static size_t
conjuncts(const cJSON *e, const cJSON **v, size_t n, size_t max)
{
    const cJSON *b = node(e, "BoolExpr");
    if (b != NULL && str(b, "boolop") != NULL && strcmp(str(b, "boolop"), "AND_EXPR") == 0) {
        const cJSON *arg;
        cJSON_ArrayForEach (arg, cJSON_GetObjectItemCaseSensitive(b, "args"))
            n = conjuncts(arg, v, n, max);
        return n;
    }
    if (n < max)
        v[n] = e;
    return n + 1;
}

/* The SubLink of WHERE conjunct e when it is EXISTS, NOT EXISTS or a
 * column compared with ANY row of a subquery (IN), else NULL. *neg: NOT
 * EXISTS, and *not_at the byte offset of its NOT. NOT IN is refused: one
 * NULL among the subquery's values makes it false for every row, which no
 * single changed row would tell. */
static const cJSON *
conjunct_sublink(const cJSON *e, bool *neg, int *not_at)
{
    const cJSON *b = node(e, "BoolExpr");
    const cJSON *args = cJSON_GetObjectItemCaseSensitive(b, "args");
    *neg = b != NULL && str(b, "boolop") != NULL && strcmp(str(b, "boolop"), "NOT_EXPR") == 0 &&
           cJSON_GetArraySize(args) == 1;
    if (*neg) {
        *not_at = location(b);
        e = cJSON_GetArrayItem(args, 0);
    }
    const cJSON *s = node(e, "SubLink");
    const char *type = str(s, "subLinkType");
    if (type == NULL)
        return NULL;
    if (strcmp(type, "EXISTS_SUBLINK") == 0)
        return s;
    if (strcmp(type, "ANY_SUBLINK") == 0 && !*neg &&
        node(cJSON_GetObjectItemCaseSensitive(s, "testexpr"), "ColumnRef") != NULL)
        return s;
    return NULL;
}

/* The subquery of SubLink s when it reads one table, plainly (see
 * why_sublink); else NULL. */
static const cJSON *
sublink_select(const cJSON *s)
{
    const cJSON *sel = node(cJSON_GetObjectItemCaseSensitive(s, "subselect"), "SelectStmt");
    const cJSON *from = cJSON_GetObjectItemCaseSensitive(sel, "fromClause");
    const cJSON *rv = node(cJSON_GetArrayItem(from, 0), "RangeVar");
    const char *op = str(sel, "op");
    static const char *const refused[] = {"groupClause",   "havingClause", "windowClause",
                                          "limitCount",    "limitOffset",  "withClause",
                                          "lockingClause", "valuesLists",  "intoClause"};
    if (sel == NULL || (op != NULL && strcmp(op, "SETOP_NONE") != 0) ||
        cJSON_GetArraySize(from) != 1 || rv == NULL ||
        !cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(rv, "inh")) || has_window(sel) ||
        has_node(sel, "SubLink") || has_long_colref(sel) || is_distinct_on(sel))
        return NULL;
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++)
        if (cJSON_GetObjectItemCaseSensitive(sel, refused[i]) != NULL)
            return NULL;
    /* IN: one plain column (an aggregate there would depend on every row
     * of the table; the raw parse tree cannot tell one from a function). */
    if (str(s, "subLinkType") != NULL && strcmp(str(s, "subLinkType"), "ANY_SUBLINK") == 0) {
        const cJSON *tl = cJSON_GetObjectItemCaseSensitive(sel, "targetList");
        const cJSON *val =
            cJSON_GetObjectItemCaseSensitive(node(cJSON_GetArrayItem(tl, 0), "ResTarget"), "val");
        if (cJSON_GetArraySize(tl) != 1 || node(val, "ColumnRef") == NULL)
            return NULL;
    }
    return sel;
}

/* The subquery of SubLink s when it reads one table, whatever it does
 * with that table's rows, and gives a value (a scalar subquery, EXISTS,
 * IN, ANY, ALL or ARRAY); else NULL. Its changes are followed through its
 * WHERE clause alone (out_sublink_changes). */
static const cJSON *
value_sublink_select(const cJSON *s)
{
    const cJSON *sel = node(cJSON_GetObjectItemCaseSensitive(s, "subselect"), "SelectStmt");
    const cJSON *from = cJSON_GetObjectItemCaseSensitive(sel, "fromClause");
    const cJSON *rv = node(cJSON_GetArrayItem(from, 0), "RangeVar");
    const char *op = str(sel, "op"), *type = str(s, "subLinkType");
    static const char *const types[] = {"EXPR_SUBLINK", "EXISTS_SUBLINK", "ANY_SUBLINK",
                                        "ALL_SUBLINK", "ARRAY_SUBLINK"};
    static const char *const refused[] = {"withClause", "lockingClause", "valuesLists",
                                          "intoClause"};
    bool typed = false;
    for (size_t i = 0; type != NULL && i < sizeof types / sizeof types[0]; i++)
        typed = typed || strcmp(type, types[i]) == 0;
    if (!typed || sel == NULL || (op != NULL && strcmp(op, "SETOP_NONE") != 0) ||
        cJSON_GetArraySize(from) != 1 || rv == NULL ||
        !cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(rv, "inh")) || has_node(sel, "SubLink") ||
        has_long_colref(sel))
        return NULL;
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++)
        if (cJSON_GetObjectItemCaseSensitive(sel, refused[i]) != NULL)
            return NULL;
    return sel;
}

/* Collects the SubLinks below n that are not inside another one, in the
 * order of the tree (the text's, for a select list); returns how many
 * there are, storing at most max. */
static size_t
top_sublinks(const cJSON *n, const cJSON **v, size_t k, size_t max)
{
    if (n == NULL)
        return k;
    if (n->string != NULL && strcmp(n->string, "SubLink") == 0) {
        if (k < max)
            v[k] = n;
        return k + 1;
    }
    for (const cJSON *c = n->child; c != NULL; c = c->next)
        k = top_sublinks(c, v, k, max);
    return k;
}

/* Why the subqueries in sel's select list keep it from being refreshed
 * differentially, or NULL. A query with no row identity (in->nkeys 0)
 * aggregates into one row. */
static const char *
target_sublink_reason(const cJSON *sel, const sl_analyze_in_t *in)
{
    const cJSON *tl = cJSON_GetObjectItemCaseSensitive(sel, "targetList");
    if (!has_node(tl, "SubLink"))
        return NULL;
    if (in->nkeys == 0 || cJSON_GetObjectItemCaseSensitive(sel, "groupClause") != NULL ||
        cJSON_GetObjectItemCaseSensitive(sel, "havingClause") != NULL ||
        cJSON_GetObjectItemCaseSensitive(sel, "distinctClause") != NULL)
        return why_sublink;
    const cJSON *v[MAX_SUBLINKS];
    size_t n = top_sublinks(tl, v, 0, MAX_SUBLINKS);
    if (n > MAX_SUBLINKS)
        return why_sublink;
    for (size_t i = 0; i < n; i++)
        if (value_sublink_select(v[i]) == NULL)
            return why_sublink;
    return NULL;
}

/* Why the subqueries in sel's expressions keep it from being refreshed
 * differentially, or NULL (none, or only ones a refresh can follow). */
static const char *
sublink_reason(const cJSON *sel, const sl_analyze_in_t *in)
{
    if (!has_node(sel, "SubLink"))
        return NULL;
    if (in->in_subquery)
        return why_sublink_nested;
    const cJSON *item;
    cJSON_ArrayForEach (item, cJSON_GetObjectItemCaseSensitive(sel, "fromClause"))
        if (has_node(item, "RangeSubselect") && has_node(item, "SubLink"))
            return why_sublink_nested;
    for (const cJSON *c = sel->child; c != NULL; c = c->next)
        if ((c->string == NULL ||
             (strcmp(c->string, "whereClause") != 0 && strcmp(c->string, "targetList") != 0)) &&
            has_node(c, "SubLink"))
            return why_sublink;
    const char *why = target_sublink_reason(sel, in);
    if (why != NULL)
        return why;
    /* WHERE: a conjunct that is a condition (conjunct_sublink), or any
     * other expression whose subqueries give values. */
    const cJSON *v[MAX_SUBLINKS * 4];
    size_t n =
        conjuncts(cJSON_GetObjectItemCaseSensitive(sel, "whereClause"), v, 0, MAX_SUBLINKS * 4);
    if (n > MAX_SUBLINKS * 4)
        return why_sublink;
    size_t nsub = 0;
    for (size_t i = 0; i < n; i++) {
        if (!has_node(v[i], "SubLink"))
            continue;
        bool neg;
        int not_at;
        const cJSON *s = conjunct_sublink(v[i], &neg, &not_at);
        if (s != NULL && sublink_select(s) != NULL) {
            nsub++;
            continue;
        }
        const cJSON *tv[MAX_SUBLINKS];
        size_t nt = top_sublinks(v[i], tv, 0, MAX_SUBLINKS);
        for (size_t k = 0; k < nt; k++)
            if (k >= MAX_SUBLINKS || value_sublink_select(tv[k]) == NULL)
                return why_sublink;
        nsub += nt;
    }
    return nsub > MAX_SUBLINKS ? why_sublink : NULL;
}

/* ------------------------------------------------------------------------ */
/* Operator tree                                                             */
/* ------------------------------------------------------------------------ */

static void tree_select(out_t *o, const cJSON *sel, int depth);

/* The SelectStmt of a set operation's side (libpg_query writes it with or
 * without the node wrapper). */
static const cJSON *
setop_side(const cJSON *sel, const char *side)
{
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(sel, side);
    return node(s, "SelectStmt") != NULL ? node(s, "SelectStmt") : s;
}

static void
indent(out_t *o, int depth)
{
    for (int i = 0; i < depth; i++)
        outf(o, "  ");
}

static void
tree_from(out_t *o, const cJSON *item, int depth)
{
    const cJSON *n;
    if ((n = node(item, "RangeVar")) != NULL) {
        indent(o, depth);
        const char *schema = str(n, "schemaname");
        const char *alias = str(node(n, "alias"), "aliasname");
        outf(o, "Scan %s%s%s%s%s\n", schema ? schema : "", schema ? "." : "", str(n, "relname"),
             alias ? " AS " : "", alias ? alias : "");
    } else if ((n = node(item, "JoinExpr")) != NULL) {
        const char *jt = str(n, "jointype");
        const char *kind = jt == NULL                      ? "Join"
                           : strcmp(jt, "JOIN_INNER") == 0 ? "Inner Join"
                           : strcmp(jt, "JOIN_LEFT") == 0  ? "Left Join"
                           : strcmp(jt, "JOIN_RIGHT") == 0 ? "Right Join"
                           : strcmp(jt, "JOIN_FULL") == 0  ? "Full Join"
                                                           : "Join";
        indent(o, depth);
        outf(o, "%s%s\n", kind,
             cJSON_GetObjectItemCaseSensitive(n, "usingClause") != NULL ? " (USING)"
             : cJSON_GetObjectItemCaseSensitive(n, "quals") != NULL     ? " (ON)"
                                                                        : "");
        tree_from(o, cJSON_GetObjectItemCaseSensitive(n, "larg"), depth + 1);
        tree_from(o, cJSON_GetObjectItemCaseSensitive(n, "rarg"), depth + 1);
    } else if ((n = node(item, "RangeSubselect")) != NULL) {
        indent(o, depth);
        const char *alias = str(node(n, "alias"), "aliasname");
        outf(o, "Subquery%s%s\n", alias ? " AS " : "", alias ? alias : "");
        tree_select(o, node(cJSON_GetObjectItemCaseSensitive(n, "subquery"), "SelectStmt"),
                    depth + 1);
    } else if ((n = node(item, "RangeFunction")) != NULL) {
        /* Its first function's name, as written. */
        const cJSON *call = cJSON_GetArrayItem(
            cJSON_GetObjectItemCaseSensitive(
                node(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(n, "functions"), 0),
                     "List"),
                "items"),
            0);
        const cJSON *fname = cJSON_GetObjectItemCaseSensitive(node(call, "FuncCall"), "funcname");
        const char *name =
            str(node(cJSON_GetArrayItem(fname, cJSON_GetArraySize(fname) - 1), "String"), "sval");
        const char *alias = str(node(n, "alias"), "aliasname");
        indent(o, depth);
        outf(o, "Function Scan %s%s%s%s\n", name != NULL ? name : "(ROWS FROM)",
             alias ? " AS " : "", alias ? alias : "",
             cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(n, "ordinality")) ? " WITH ORDINALITY"
                                                                             : "");
    } else {
        indent(o, depth);
        outf(o, "%s\n", item != NULL && item->child != NULL ? item->child->string : "?");
    }
}

/* Prints the subqueries below n that give values, with their trees. */
static void
tree_sublinks(out_t *o, const cJSON *n, int d)
{
    const cJSON *tv[MAX_SUBLINKS];
    size_t nt = top_sublinks(n, tv, 0, MAX_SUBLINKS);
    static const char *const names[][2] = {
        {"EXPR_SUBLINK", "scalar"}, {"EXISTS_SUBLINK", "EXISTS"}, {"ANY_SUBLINK", "IN/ANY"},
        {"ALL_SUBLINK", "ALL"},     {"ARRAY_SUBLINK", "ARRAY"},
    };
    for (size_t i = 0; i < nt && i < MAX_SUBLINKS; i++) {
        const char *type = str(tv[i], "subLinkType");
        const char *name = type != NULL ? type : "?";
        for (size_t k = 0; type != NULL && k < sizeof names / sizeof names[0]; k++)
            if (strcmp(type, names[k][0]) == 0)
                name = names[k][1];
        indent(o, d);
        outf(o, "Subquery (%s)\n", name);
        tree_select(o, node(cJSON_GetObjectItemCaseSensitive(tv[i], "subselect"), "SelectStmt"),
                    d + 1);
    }
}

static void
tree_select(out_t *o, const cJSON *sel, int depth)
{
    if (sel == NULL)
        return;
    const char *op = str(sel, "op");
    if (op != NULL && strcmp(op, "SETOP_NONE") != 0) {
        bool all = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(sel, "all"));
        const char *name = strcmp(op, "SETOP_UNION") == 0       ? "Union"
                           : strcmp(op, "SETOP_INTERSECT") == 0 ? "Intersect"
                                                                : "Except";
        indent(o, depth);
        outf(o, "%s%s\n", name, all ? " All" : "");
        tree_select(o, setop_side(sel, "larg"), depth + 1);
        tree_select(o, setop_side(sel, "rarg"), depth + 1);
        return;
    }
    int d = depth;
    if (cJSON_GetObjectItemCaseSensitive(sel, "limitCount") != NULL ||
        cJSON_GetObjectItemCaseSensitive(sel, "limitOffset") != NULL) {
        indent(o, d++);
        outf(o, "Limit\n");
    }
    if (cJSON_GetObjectItemCaseSensitive(sel, "sortClause") != NULL) {
        indent(o, d++);
        outf(o, "Sort\n");
    }
    if (cJSON_GetObjectItemCaseSensitive(sel, "distinctClause") != NULL) {
        indent(o, d++);
        outf(o, "%s\n", is_distinct_on(sel) ? "Distinct On" : "Distinct");
    }
    indent(o, d++);
    outf(o, "Project (%d column%s)\n",
         cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(sel, "targetList")),
         cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(sel, "targetList")) == 1 ? "" : "s");
    /* The select list's subqueries, then the Project's input. */
    tree_sublinks(o, cJSON_GetObjectItemCaseSensitive(sel, "targetList"), d);
    const cJSON *wv[MAX_WINDOWS];
    size_t nwin = query_windows(sel, wv);
    if (nwin > 0) {
        indent(o, d++);
        outf(o, "Window (%zu function%s)\n", nwin, nwin == 1 ? "" : "s");
    }
    if (cJSON_GetObjectItemCaseSensitive(sel, "havingClause") != NULL) {
        indent(o, d++);
        outf(o, "Filter (HAVING)\n");
    }
    const cJSON *group = cJSON_GetObjectItemCaseSensitive(sel, "groupClause");
    if (group != NULL ||
        has_own_node(cJSON_GetObjectItemCaseSensitive(sel, "targetList"), "FuncCall")) {
        int ng = cJSON_GetArraySize(group);
        if (group != NULL || (nwin == 0 && has_own_node(sel, "agg_star")) ||
            has_own_node(cJSON_GetObjectItemCaseSensitive(sel, "havingClause"), "FuncCall")) {
            indent(o, d++);
            if (ng > 0)
                outf(o, "Aggregate (GROUP BY %d key%s)\n", ng, ng == 1 ? "" : "s");
            else
                outf(o, "Aggregate\n");
        }
    }
    const cJSON *where = cJSON_GetObjectItemCaseSensitive(sel, "whereClause");
    if (where != NULL) {
        indent(o, d++);
        outf(o, "Filter (WHERE)\n");
        /* Its subqueries that a refresh follows, then its input. */
        const cJSON *v[MAX_SUBLINKS * 4];
        size_t n = conjuncts(where, v, 0, MAX_SUBLINKS * 4);
        for (size_t i = 0; i < n && i < MAX_SUBLINKS * 4; i++) {
            bool neg;
            int not_at;
            const cJSON *s = conjunct_sublink(v[i], &neg, &not_at);
            if (s == NULL) {
                tree_sublinks(o, v[i], d);
                continue;
            }
            indent(o, d);
            outf(o, "%s\n",
                 neg                                                 ? "Anti Join (NOT EXISTS)"
                 : strcmp(str(s, "subLinkType"), "ANY_SUBLINK") == 0 ? "Semi Join (IN)"
                                                                     : "Semi Join (EXISTS)");
            tree_select(o, node(cJSON_GetObjectItemCaseSensitive(s, "subselect"), "SelectStmt"),
                        d + 1);
        }
    }
    const cJSON *from = cJSON_GetObjectItemCaseSensitive(sel, "fromClause");
    int nfrom = cJSON_GetArraySize(from);
    if (nfrom > 1) {
        indent(o, d++);
        outf(o, "Cross Join (%d items)\n", nfrom);
    }
    const cJSON *item;
    cJSON_ArrayForEach (item, from)
        tree_from(o, item, d);
}

/* ------------------------------------------------------------------------ */
/* Classification                                                            */
/* ------------------------------------------------------------------------ */

/* The shapes in which a set-returning function in FROM is refreshed
 * differentially (srf_units, srf_groups; the creation check is
 * sluice._st_srf_reason and sluice._st_srf_shape_reason,
 * refresh/sql/0032_set_returning_functions.sql and
 * 0033_grouped_functions.sql). */
static const char *const why_srf =
    "a set-returning function in FROM is refreshed differentially in a query over one table and "
    "functions called in its FROM (joined by commas, CROSS JOIN, an inner JOIN, or a LEFT JOIN "
    "whose right side is a function) that filters and projects their rows (the table with a "
    "primary key) or groups them with GROUP BY or aggregates (no DISTINCT, window function, "
    "subquery, WITH, set operation or LIMIT); this one is refreshed in full";

/* How many nodes of `type` are below n, subqueries included. */
static size_t
count_nodes(const cJSON *n, const char *type)
{
    if (n == NULL)
        return 0;
    size_t k = n->string != NULL && strcmp(n->string, type) == 0;
    for (const cJSON *c = n->child; c != NULL; c = c->next)
        k += count_nodes(c, type);
    return k;
}

/* How many functions (RangeFunction) FROM item `item` is, or has as sides
 * of its joins (not counting those inside subqueries). */
static size_t
from_functions(const cJSON *item)
{
    const cJSON *j = node(item, "JoinExpr");
    if (j != NULL)
        return from_functions(cJSON_GetObjectItemCaseSensitive(j, "larg")) +
               from_functions(cJSON_GetObjectItemCaseSensitive(j, "rarg"));
    return node(item, "RangeFunction") != NULL;
}

/* How many functions the FROM list of sel has as its items (above). */
static size_t
own_functions(const cJSON *sel)
{
    size_t k = 0;
    const cJSON *item;
    cJSON_ArrayForEach (item, cJSON_GetObjectItemCaseSensitive(sel, "fromClause"))
        k += from_functions(item);
    return k;
}

/* Whether n reads the clock: now() and the other functions of the
 * transaction's time, CURRENT_DATE, CURRENT_TIMESTAMP, LOCALTIME, ... */
static bool
reads_clock(const cJSON *n)
{
    if (!cJSON_IsObject(n) && !cJSON_IsArray(n))
        return false;
    const cJSON *fn = cJSON_GetObjectItemCaseSensitive(node(n, "FuncCall"), "funcname");
    const char *name =
        str(node(cJSON_GetArrayItem(fn, cJSON_GetArraySize(fn) - 1), "String"), "sval");
    if (name != NULL && (strcmp(name, "now") == 0 || strcmp(name, "statement_timestamp") == 0 ||
                         strcmp(name, "transaction_timestamp") == 0))
        return true;
    const char *op = str(node(n, "SQLValueFunction"), "op");
    if (op != NULL &&
        (strstr(op, "SVFOP_CURRENT_DATE") == op || strstr(op, "SVFOP_CURRENT_TIME") == op ||
         strstr(op, "SVFOP_LOCALTIME") == op))
        return true;
    for (const cJSON *c = n->child; c != NULL; c = c->next)
        if (reads_clock(c))
            return true;
    return false;
}

/* Whether a subquery below n reads the clock. */
static bool
sublink_reads_clock(const cJSON *n)
{
    if (!cJSON_IsObject(n) && !cJSON_IsArray(n))
        return false;
    if (node(n, "SubLink") != NULL)
        return reads_clock(n);
    for (const cJSON *c = n->child; c != NULL; c = c->next)
        if (sublink_reads_clock(c))
            return true;
    return false;
}

static bool groups_or_aggregates(const cJSON *n);

/*
 * Whether the rows (or groups) that sel gives depend on the clock: it reads
 * it anywhere but in the select list of a query that neither groups,
 * aggregates, removes duplicates nor has window functions (where the
 * select list is only what each row shows; a subquery there counts: which
 * rows it finds is a condition), per branch of a UNION ALL. A
 * differential refresh finds the rows a change touches through the query's
 * conditions evaluated now; a row that a condition kept when it came and
 * rejects when it goes (WHERE at > now() - interval '1 day', the row
 * deleted two days later) would never be found again, and stay.
 */
static bool
clock_keyed(const cJSON *sel)
{
    const char *op = str(sel, "op");
    if (op != NULL && strcmp(op, "SETOP_NONE") != 0) {
        if (strcmp(op, "SETOP_UNION") != 0 ||
            !cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(sel, "all")))
            return reads_clock(sel); /* keyed by every column */
        for (const cJSON *c = sel->child; c != NULL; c = c->next)
            if ((strcmp(c->string, "larg") == 0 || strcmp(c->string, "rarg") == 0) ? clock_keyed(c)
                                                                                   : reads_clock(c))
                return true;
        return false;
    }
    const cJSON *targets = cJSON_GetObjectItemCaseSensitive(sel, "targetList");
    bool keyed_targets = cJSON_GetObjectItemCaseSensitive(sel, "groupClause") != NULL ||
                         cJSON_GetObjectItemCaseSensitive(sel, "havingClause") != NULL ||
                         cJSON_GetObjectItemCaseSensitive(sel, "distinctClause") != NULL ||
                         has_window(sel) || groups_or_aggregates(targets);
    for (const cJSON *c = sel->child; c != NULL; c = c->next)
        if (c != targets || keyed_targets ? reads_clock(c) : sublink_reads_clock(c))
            return true;
    return false;
}

static const char *const why_clock =
    "the query reads the clock (now(), CURRENT_DATE, ...) in a condition, a join, a function in "
    "FROM or what it groups by: which rows it gives changes with time as well as with its "
    "sources, and a differential refresh, which finds the rows a change touches through those "
    "conditions evaluated now, could keep rows the query no longer gives (a deleted row among "
    "them); it is refreshed in full";

/* Why sel cannot be refreshed differentially, or NULL. */
static const char *
full_reason(const cJSON *sel, const sl_analyze_in_t *in)
{
    const char *op = str(sel, "op");
    if (op != NULL && strcmp(op, "SETOP_UNION") == 0 &&
        cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(sel, "all")))
        return "a UNION ALL is refreshed differentially when every branch has a row identity of "
               "its own (its tables' primary keys, or its GROUP BY keys, in its select list) and "
               "nothing (ORDER BY, LIMIT, WITH) applies to the whole union; this one has not";
    if (op != NULL && strcmp(op, "SETOP_NONE") != 0)
        return "INTERSECT ALL and EXCEPT ALL are refreshed in full";
    if (cJSON_GetObjectItemCaseSensitive(sel, "limitCount") != NULL ||
        cJSON_GetObjectItemCaseSensitive(sel, "limitOffset") != NULL)
        return "LIMIT/OFFSET makes the result depend on rows outside any change; it is "
               "refreshed in full";
    if (cJSON_GetObjectItemCaseSensitive(sel, "lockingClause") != NULL)
        return "FOR UPDATE/SHARE has no meaning in a stream table";
    if (cJSON_GetObjectItemCaseSensitive(sel, "intoClause") != NULL)
        return "SELECT INTO is not a query";
    const char *wwhy = has_window(sel) ? window_reason(sel) : NULL;
    if (wwhy != NULL)
        return wwhy;
    const char *why = sublink_reason(sel, in);
    if (why != NULL)
        return why;
    if (has_node(cJSON_GetObjectItemCaseSensitive(sel, "groupClause"), "GroupingSet"))
        return "GROUPING SETS, ROLLUP and CUBE are refreshed in full";
    if (is_distinct_on(sel))
        return "DISTINCT ON is refreshed in full";
    /* A raw parse tree cannot tell a set-returning function in the select
     * list from any other call: create_stream_table's check finds those in
     * PostgreSQL's analysed tree (refresh/sql/0015_query_fallback.sql). A
     * function in FROM is followed only as an item of the stream table's
     * own FROM (see srf_units). */
    if (has_node(sel, "RangeFunction") &&
        (in->in_subquery || in->rooted_keys || in->aff_rel != NULL ||
         count_nodes(sel, "RangeFunction") != own_functions(sel)))
        return why_srf;
    if (cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(sel, "fromClause")) == 0)
        return "a query without FROM has no source to capture";
    if (has_long_colref(sel))
        return "a column written as schema.table.column cannot be rebound to the change rows";
    if (!in->has_keys)
        return "the rows have no identity: the select list lacks the primary key of a table "
               "that the joins do not pin to one row (or the GROUP BY keys); add it for "
               "differential refresh";
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* The relations in FROM                                                     */
/* ------------------------------------------------------------------------ */

#define MAX_RELS 32

#define MAX_KEY_COLS 16

/* A table in FROM, directly or as the one table of a subquery in FROM that
 * only filters and projects it (and selects its primary key). */
typedef struct rel {
    const sl_analyze_src_t *src;
    const char *alias;            /* the name the query uses for it (the subquery's alias) */
    const char *pk[MAX_KEY_COLS]; /* its key columns as the query sees them through alias */
    const char *text_name;        /* the table's name inside the text (alias or name) */
    bool has_alias;               /* the table is written with an alias */
    bool only;                    /* FROM ONLY */
    bool subquery;                /* read through a subquery */
    int loc;                      /* byte offset of the table's name in the query */
    /* A subquery that groups (GROUP BY or DISTINCT) joined with the tables
     * (src NULL; see analyze_joined): its SelectStmt, its parentheses as
     * token indexes, and the text put in its place in affected_sql. */
    bool grouping;
    const cJSON *gsel;
    int open, close;
    const char *superset;
    /* With LEFT JOINs (analyze_joined, rooted): its affected keys with a
     * column "__sluice_m" that is true, put in its place in its own terms. */
    const char *gaff;
} rel_t;

typedef struct from {
    rel_t v[MAX_RELS]; /* left to right */
    size_t n;
    bool outer;      /* a LEFT JOIN somewhere */
    bool left_deep;  /* one item; every join's right side is a table */
    bool equi;       /* every join has ON with only col = col conjuncts */
    int grouping;    /* index in v of the one subquery that groups, or -1 */
    size_t nfuncs;   /* functions in FROM (RangeFunction; see srf_units, srf_groups) */
    size_t nplain;   /* those of them without WITH ORDINALITY */
    bool left_other; /* a LEFT JOIN whose right side is not one function (or with USING) */
} from_t;

/* True when quals is col = col, or an AND of such. */
static bool
equi_quals(const cJSON *quals)
{
    const cJSON *n;
    if ((n = node(quals, "BoolExpr")) != NULL) {
        if (str(n, "boolop") == NULL || strcmp(str(n, "boolop"), "AND_EXPR") != 0)
            return false;
        const cJSON *arg;
        cJSON_ArrayForEach (arg, cJSON_GetObjectItemCaseSensitive(n, "args"))
            if (!equi_quals(arg))
                return false;
        return true;
    }
    if ((n = node(quals, "A_Expr")) == NULL || str(n, "kind") == NULL ||
        strcmp(str(n, "kind"), "AEXPR_OP") != 0)
        return false;
    const cJSON *name = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(n, "name"), 0);
    const char *op = str(node(name, "String"), "sval");
    return op != NULL && strcmp(op, "=") == 0 &&
           cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(n, "name")) == 1 &&
           node(cJSON_GetObjectItemCaseSensitive(n, "lexpr"), "ColumnRef") != NULL &&
           node(cJSON_GetObjectItemCaseSensitive(n, "rexpr"), "ColumnRef") != NULL;
}

/* The output name of select-list entry tgt when it is column col of table
 * tab, written tab.col (or col alone, when bare is allowed); else NULL. */
static const char *
target_column(const cJSON *tgt, const char *tab, const char *col, bool bare)
{
    const cJSON *rt = node(tgt, "ResTarget");
    const cJSON *fields = cJSON_GetObjectItemCaseSensitive(
        node(cJSON_GetObjectItemCaseSensitive(rt, "val"), "ColumnRef"), "fields");
    int nf = cJSON_GetArraySize(fields);
    const char *c = str(node(cJSON_GetArrayItem(fields, nf - 1), "String"), "sval");
    const char *t = nf == 2 ? str(node(cJSON_GetArrayItem(fields, 0), "String"), "sval") : NULL;
    if (c == NULL || strcmp(c, col) != 0 || !(nf == 2 || (nf == 1 && bare)) ||
        (nf == 2 && (t == NULL || strcmp(t, tab) != 0)))
        return NULL;
    return str(rt, "name") != NULL ? str(rt, "name") : c;
}

/* The captured source that RangeVar rv names, or NULL. */
static const sl_analyze_src_t *
source_of(const cJSON *rv, const sl_analyze_in_t *in)
{
    const char *schema = str(rv, "schemaname"), *name = str(rv, "relname");
    for (size_t i = 0; i < in->nsources && name != NULL; i++)
        if (strcmp(in->sources[i].name, name) == 0 &&
            (schema == NULL || strcmp(in->sources[i].schema, schema) == 0))
            return &in->sources[i];
    return NULL;
}

/* Appends the table of RangeVar rv to f (its key columns still unset). */
static const char *
add_table(const cJSON *rv, const sl_analyze_in_t *in, from_t *f)
{
    if (f->n == MAX_RELS)
        return "the query reads too many tables";
    const char *name = str(rv, "relname");
    const sl_analyze_src_t *src = source_of(rv, in);
    if (src == NULL)
        return "a relation in FROM is not among the stream table's captured sources";
    if (src->npk > MAX_KEY_COLS)
        return "a table's primary key has too many columns";
    rel_t *r = &f->v[f->n++];
    memset(r, 0, sizeof *r);
    r->src = src;
    r->alias = str(node(rv, "alias"), "aliasname");
    r->has_alias = r->alias != NULL;
    r->only = !cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(rv, "inh"));
    if (r->alias == NULL)
        r->alias = name;
    r->text_name = r->alias;
    r->loc = location(rv);
    return NULL;
}

/*
 * Appends the table of a subquery in FROM that reads one table and only
 * filters and projects it: no aggregate (its key column in the select list
 * without GROUP BY rules one out), DISTINCT, window, LIMIT or sublink. Such a
 * subquery is that table seen through a projection, so it takes part like
 * the table itself, its key read through the subquery's output columns.
 */
static const char *const why_shape =
    "a subquery in FROM is refreshed differentially when it filters and projects one table and "
    "selects that table's primary key, when it is the whole FROM of a query that only filters "
    "and projects its rows, or when it groups (GROUP BY or DISTINCT) and is joined by its key "
    "columns (no LATERAL, no column aliases)";

static const char *
add_subquery(const cJSON *rs, const sl_analyze_in_t *in, from_t *f)
{
    const cJSON *sel = node(cJSON_GetObjectItemCaseSensitive(rs, "subquery"), "SelectStmt");
    const cJSON *alias = node(rs, "alias");
    const cJSON *from = cJSON_GetObjectItemCaseSensitive(sel, "fromClause");
    const cJSON *rv = node(cJSON_GetArrayItem(from, 0), "RangeVar");
    if (sel == NULL || str(alias, "aliasname") == NULL ||
        cJSON_GetObjectItemCaseSensitive(alias, "colnames") != NULL ||
        cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(rs, "lateral")))
        return why_shape;
    const char *op = str(sel, "op");
    if ((op != NULL && strcmp(op, "SETOP_NONE") != 0) || cJSON_GetArraySize(from) != 1 ||
        rv == NULL || cJSON_GetObjectItemCaseSensitive(sel, "groupClause") != NULL ||
        cJSON_GetObjectItemCaseSensitive(sel, "havingClause") != NULL ||
        cJSON_GetObjectItemCaseSensitive(sel, "distinctClause") != NULL ||
        cJSON_GetObjectItemCaseSensitive(sel, "withClause") != NULL ||
        cJSON_GetObjectItemCaseSensitive(sel, "limitCount") != NULL ||
        cJSON_GetObjectItemCaseSensitive(sel, "limitOffset") != NULL || has_window(sel))
        return why_shape;
    const char *why = add_table(rv, in, f);
    if (why != NULL)
        return why;
    rel_t *r = &f->v[f->n - 1];
    r->subquery = true;
    r->alias = str(alias, "aliasname");
    for (size_t k = 0; k < r->src->npk; k++) {
        const cJSON *tgt;
        cJSON_ArrayForEach (tgt, cJSON_GetObjectItemCaseSensitive(sel, "targetList"))
            if ((r->pk[k] = target_column(tgt, r->text_name, r->src->pk[k], true)) != NULL)
                break;
        if (r->pk[k] == NULL)
            return why_shape;
    }
    return NULL;
}

/* Appends a subquery in FROM that groups (GROUP BY or DISTINCT) as a
 * relation of its own (see analyze_joined) and returns NULL; returns `why`
 * (add_subquery's reason) for any other subquery, and a reason of its own
 * when FROM has such a subquery already. */
static const char *
add_grouping(const cJSON *rs, from_t *f, const char *why)
{
    const cJSON *sel = node(cJSON_GetObjectItemCaseSensitive(rs, "subquery"), "SelectStmt");
    const cJSON *alias = node(rs, "alias");
    const char *op = str(sel, "op");
    if (sel == NULL || (op != NULL && strcmp(op, "SETOP_NONE") != 0) ||
        (cJSON_GetObjectItemCaseSensitive(sel, "groupClause") == NULL &&
         cJSON_GetObjectItemCaseSensitive(sel, "distinctClause") == NULL) ||
        str(alias, "aliasname") == NULL ||
        cJSON_GetObjectItemCaseSensitive(alias, "colnames") != NULL ||
        cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(rs, "lateral")))
        return why;
    if (f->grouping >= 0)
        return "a join with more than one subquery that groups (GROUP BY or DISTINCT) is "
               "refreshed in full";
    if (f->n == MAX_RELS)
        return "the query reads too many tables";
    rel_t *r = &f->v[f->n];
    memset(r, 0, sizeof *r);
    r->grouping = true;
    r->gsel = sel;
    r->alias = str(alias, "aliasname");
    r->text_name = r->alias;
    r->has_alias = true;
    r->loc = -1; /* found in the text by analyze_joined */
    f->grouping = (int)f->n++;
    return NULL;
}

/* Collects the relations of one FROM item, left to right; returns why it is
 * not differential, or NULL. `right`: item is the right side of a join. */
static const char *
walk_from(const cJSON *item, const sl_analyze_in_t *in, from_t *f, bool right)
{
    const cJSON *n;
    if ((n = node(item, "RangeVar")) != NULL) {
        const char *why = add_table(n, in, f);
        if (why == NULL)
            for (size_t k = 0; k < f->v[f->n - 1].src->npk; k++)
                f->v[f->n - 1].pk[k] = f->v[f->n - 1].src->pk[k];
        return why;
    }
    if ((n = node(item, "JoinExpr")) != NULL) {
        const char *jt = str(n, "jointype");
        if (jt != NULL && strcmp(jt, "JOIN_LEFT") == 0) {
            f->outer = true;
            /* (srf_units: a LEFT JOIN whose right side is a function.) */
            if (node(cJSON_GetObjectItemCaseSensitive(n, "rarg"), "RangeFunction") == NULL ||
                cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(n, "isNatural")) ||
                cJSON_GetObjectItemCaseSensitive(n, "usingClause") != NULL)
                f->left_other = true;
        } else if (jt != NULL && strcmp(jt, "JOIN_INNER") != 0)
            return "RIGHT and FULL joins are refreshed in full (write a RIGHT JOIN as a LEFT "
                   "JOIN with the tables swapped)";
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(n, "isNatural")) ||
            cJSON_GetObjectItemCaseSensitive(n, "usingClause") != NULL ||
            !equi_quals(cJSON_GetObjectItemCaseSensitive(n, "quals")))
            f->equi = false;
        if (right)
            f->left_deep = false;
        const char *why = walk_from(cJSON_GetObjectItemCaseSensitive(n, "larg"), in, f, false);
        if (why == NULL)
            why = walk_from(cJSON_GetObjectItemCaseSensitive(n, "rarg"), in, f, true);
        return why;
    }
    if ((n = node(item, "RangeSubselect")) != NULL) {
        const char *why = add_subquery(n, in, f);
        return why == NULL ? NULL : add_grouping(n, f, why);
    }
    if ((n = node(item, "RangeFunction")) != NULL) {
        /* Its rows are keyed by their position (srf_units), or grouped
         * (srf_groups). */
        if (!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(n, "ordinality")))
            f->nplain++;
        f->nfuncs++;
        return NULL;
    }
    return "only tables, joins, subqueries of tables and set-returning functions in FROM are "
           "refreshed differentially";
}

/* ------------------------------------------------------------------------ */
/* Top-level clauses of the query text                                       */
/* ------------------------------------------------------------------------ */

enum {
    CL_SELECT,
    CL_FROM,
    CL_WHERE,
    CL_GROUP,
    CL_HAVING,
    CL_WINDOW,
    CL_ORDER,
    CL_LIMIT,
    CL_OFFSET,
    CL_FETCH,
    CL_FOR,
    CL_COUNT
};

static const char *const cl_words[CL_COUNT] = {"SELECT", "FROM",   "WHERE", "GROUP",
                                               "HAVING", "WINDOW", "ORDER", "LIMIT",
                                               "OFFSET", "FETCH",  "FOR"};

typedef struct clauses {
    int tok[CL_COUNT]; /* token index of each clause keyword at depth 0, -1 if absent */
    int end;           /* end of the statement text (before any ';') */
} clauses_t;

static void
find_clauses(const char *q, const toks_t *t, clauses_t *c)
{
    for (int i = 0; i < CL_COUNT; i++)
        c->tok[i] = -1;
    c->end = (int)strlen(q);
    int depth = 0;
    for (size_t i = 0; i < t->n; i++) {
        const tok_t *k = &t->v[i];
        if (tok_is(q, k, "("))
            depth++;
        else if (tok_is(q, k, ")"))
            depth--;
        else if (tok_is(q, k, ";") && depth == 0) {
            c->end = k->start;
            break;
        } else if (depth == 0 && k->keyword) {
            for (int w = 0; w < CL_COUNT; w++)
                if (c->tok[w] < 0 && tok_is(q, k, cl_words[w]))
                    c->tok[w] = (int)i;
        }
    }
}

/* Start of the first clause after `after` among `which`, or the end. */
static int
clause_end(const char *q, const toks_t *t, const clauses_t *c, int after)
{
    int end = c->end;
    for (int w = after + 1; w < CL_COUNT; w++)
        if (c->tok[w] >= 0 && t->v[c->tok[w]].start < end)
            end = t->v[c->tok[w]].start;
    return end;
}

/* ------------------------------------------------------------------------ */
/* Generation                                                                */
/* ------------------------------------------------------------------------ */

typedef struct keyexpr {
    int from, to;      /* span of the expression in the query; from < 0: a table's column */
    const char *col;   /* the key column (output name) */
    const char *alias; /* the table's name in the query, for from < 0 */
    const char *src;   /* that table's column, for from < 0 (NULL: col) */
    const cJSON *tree; /* a window's partition expression that it is (window_units) */
} keyexpr_t;

/* Appends key expression i. */
static void
out_key(out_t *o, const char *q, const keyexpr_t *k)
{
    if (k->from < 0) {
        /* A table's column, qualified (SELECT * of one table, a join's root key). */
        outid(o, k->alias);
        outf(o, ".");
        outid(o, k->src != NULL ? k->src : k->col);
        return;
    }
    outf(o, "(");
    outq(o, q, k->from, k->to);
    outf(o, ")");
}

/* Appends the n key expressions, each AS its key column. */
static void
out_keys_as(out_t *o, const char *q, const keyexpr_t *keys, size_t n)
{
    for (size_t k = 0; k < n; k++) {
        outf(o, "%s", k ? ", " : "");
        out_key(o, q, &keys[k]);
        outf(o, " AS ");
        outid(o, keys[k].col);
    }
}

#define MAX_TARGETS 256

/* The token spans [spans[i][0], spans[i][1]) of the select list's entries,
 * split at depth-0 commas; returns how many (at most MAX_TARGETS). */
static int
target_spans(const char *q, const toks_t *t, const clauses_t *c, int (*spans)[2])
{
    int first = c->tok[CL_SELECT] + 1;
    if (first < (int)t->n && tok_is(q, &t->v[first], "DISTINCT"))
        first++;
    int last = c->tok[CL_FROM]; /* exclusive token index */
    int nspans = 0, depth = 0, s = first;
    for (int i = first; i <= last && nspans < MAX_TARGETS; i++) {
        bool at_end = i == last;
        if (!at_end) {
            if (tok_is(q, &t->v[i], "("))
                depth++;
            else if (tok_is(q, &t->v[i], ")"))
                depth--;
        }
        if (at_end || (depth == 0 && tok_is(q, &t->v[i], ","))) {
            spans[nspans][0] = s;
            spans[nspans][1] = i; /* exclusive */
            nspans++;
            s = i + 1;
        }
    }
    return nspans;
}

/* The expression of select-list entry i (spans of target_spans) as key k
 * named col: its text without the alias of an entry written AS name. */
static void
target_key(const char *q, const toks_t *t, const int *span, bool named, const char *col,
           keyexpr_t *k)
{
    int a = span[0], b = span[1];
    if (named && b - 1 > a) {
        b--; /* the alias */
        if (b - 1 > a && tok_is(q, &t->v[b - 1], "AS"))
            b--;
    }
    k->col = col;
    k->from = t->v[a].start;
    k->to = t->v[b - 1].end;
}

/* Maps every key column to an expression of the select list. */
static const char *
map_keys(const char *q, const toks_t *t, const clauses_t *c, const cJSON *sel,
         const sl_analyze_in_t *in, keyexpr_t *keys)
{
    const cJSON *targets = cJSON_GetObjectItemCaseSensitive(sel, "targetList");
    int ntargets = cJSON_GetArraySize(targets);
    int spans[MAX_TARGETS][2];
    if (target_spans(q, t, c, spans) != ntargets)
        return "the select list could not be matched with the parse tree";
    bool star = false;
    for (size_t k = 0; k < in->nkeys; k++) {
        keys[k].col = in->keys[k];
        keys[k].from = -2;
        for (int i = 0; i < ntargets; i++) {
            const cJSON *rt = node(cJSON_GetArrayItem(targets, i), "ResTarget");
            const cJSON *val = cJSON_GetObjectItemCaseSensitive(rt, "val");
            const cJSON *cr = node(val, "ColumnRef");
            if (cr != NULL && has_node(cr, "A_Star")) {
                star = true;
                continue;
            }
            const char *name = str(rt, "name");
            const char *col = target_name(rt);
            if (col == NULL || strcmp(col, in->keys[k]) != 0)
                continue;
            target_key(q, t, spans[i], name != NULL, in->keys[k], &keys[k]);
            break;
        }
        if (keys[k].from == -2) {
            if (!star)
                return "a row-identity column is not a plain entry of the select list";
            keys[k].from = -1; /* SELECT *: the column of the one table */
        }
    }
    return NULL;
}

/* Appends the FROM list of a query over one table rel, with the change
 * rows of rel (pg_temp.__sluice_chg_<oid>: its images, with op and order)
 * in place of the table, under its name in the query. With funcs, the
 * query's whole FROM clause, so that its set-returning functions are
 * called on each image (srf_groups); else that relation alone. */
static void
out_changes_from(out_t *o, const char *q, const toks_t *t, const clauses_t *c, const rel_t *rel,
                 bool funcs)
{
    int at = t->v[c->tok[CL_FROM]].end, to = clause_end(q, t, c, CL_FROM);
    size_t e = name_last_tok(q, t, tok_at(t, rel->loc));
    if (funcs)
        outq(o, q, at, rel->loc);
    outf(o, "pg_temp.\"__sluice_chg_%u\"", rel->src->relid);
    if (!funcs || !rel->has_alias) {
        outf(o, " AS ");
        outid(o, rel->alias);
    }
    if (funcs)
        outq(o, q, t->v[e].end, to);
}

static void
gen_affected(out_t *o, const char *q, const toks_t *t, const clauses_t *c,
             const sl_analyze_in_t *in, const keyexpr_t *keys, const rel_t *rel, bool funcs)
{
    outf(o, "SELECT ");
    if (in->nkeys > 0)
        outf(o, "DISTINCT ");
    out_keys_as(o, q, keys, in->nkeys);
    outf(o, " FROM ");
    out_changes_from(o, q, t, c, rel, funcs);
    if (c->tok[CL_WHERE] >= 0) {
        outf(o, " WHERE ");
        outq(o, q, t->v[c->tok[CL_WHERE]].end, clause_end(q, t, c, CL_WHERE));
    }
    if (in->nkeys == 0)
        outf(o, " LIMIT 1");
}

/* Text put in place of the text between two parentheses of the query (the
 * subquery that groups of analyze_joined: its recompute_sql). */
typedef struct splice {
    int open, close; /* token indexes of the parentheses */
    const char *sql;
} splice_t;

/* Appends q[from, to), the text inside sp's parentheses replaced by sp->sql
 * when they lie in that range (sp may be NULL). */
static void
outq_spliced(out_t *o, const char *q, const toks_t *t, int from, int to, const splice_t *sp)
{
    if (sp == NULL || t->v[sp->open].end < from || t->v[sp->close].start > to) {
        outq(o, q, from, to);
        return;
    }
    outq(o, q, from, t->v[sp->open].end);
    outf(o, "%s", sp->sql);
    outq(o, q, t->v[sp->close].start, to);
}

/* The query with `extra` ANDed to its WHERE, without ORDER BY and later
 * clauses, and with sp's splice (NULL: none). */
static void
gen_restricted(out_t *o, const char *q, const toks_t *t, const clauses_t *c,
               void (*extra)(out_t *, const char *, const sl_analyze_in_t *, const keyexpr_t *),
               const sl_analyze_in_t *in, const keyexpr_t *keys, const splice_t *sp)
{
    int body_end = c->tok[CL_ORDER] >= 0 ? t->v[c->tok[CL_ORDER]].start : c->end;
    for (int w = CL_LIMIT; w < CL_COUNT; w++)
        if (c->tok[w] >= 0 && t->v[c->tok[w]].start < body_end)
            body_end = t->v[c->tok[w]].start;
    int where_kw = c->tok[CL_WHERE] >= 0 ? t->v[c->tok[CL_WHERE]].start : -1;
    int rest = clause_end(q, t, c, CL_WHERE); /* GROUP/HAVING/... or body end */
    if (rest > body_end)
        rest = body_end;
    int head_end = where_kw >= 0 ? where_kw : rest;
    outq_spliced(o, q, t, 0, head_end, sp);
    outf(o, " WHERE ");
    if (where_kw >= 0) {
        outf(o, "(");
        outq(o, q, t->v[c->tok[CL_WHERE]].end, rest);
        outf(o, ") AND ");
    }
    extra(o, q, in, keys);
    outf(o, " ");
    outq(o, q, rest, body_end);
}

/* Appends the relation that holds the affected keys (see in->aff_rel). */
static void
out_aff(out_t *o, const sl_analyze_in_t *in)
{
    outf(o, "%s", in->aff_rel != NULL ? in->aff_rel : "pg_temp.\"__sluice_aff\"");
}

/* Appends the restriction of the query to the affected keys without a NULL
 * part: key IN (SELECT ...), a semi-join, which PostgreSQL answers through an
 * index on the key when one exists and the keys are few, else by hashing
 * the keys over one scan. Not key = ANY (ARRAY(...)), which forces the
 * index where there is one but without one compares every row with every
 * key in turn (PostgreSQL 15 hashes only constant arrays, not one that a
 * subquery builds): 3,000 changed rows of a GROUP BY over 1,000,000 rows
 * without an index on its key took 12.7 s that way, against 0.7 s for a
 * full refresh. */
static void
filter_nonnull(out_t *o, const char *q, const sl_analyze_in_t *in, const keyexpr_t *keys)
{
    if (in->nkeys == 1) {
        out_key(o, q, &keys[0]);
        outf(o, " IN (SELECT ");
        outid(o, keys[0].col);
        outf(o, " FROM ");
        out_aff(o, in);
        outf(o, " WHERE ");
        outid(o, keys[0].col);
        outf(o, " IS NOT NULL)");
        return;
    }
    outf(o, "(");
    for (size_t k = 0; k < in->nkeys; k++) {
        outf(o, "%s", k ? ", " : "");
        out_key(o, q, &keys[k]);
    }
    outf(o, ") IN (SELECT ");
    for (size_t k = 0; k < in->nkeys; k++) {
        outf(o, "%s", k ? ", " : "");
        outid(o, keys[k].col);
    }
    outf(o, " FROM ");
    out_aff(o, in);
    outf(o, ")");
}

/* The form of key column col where keys are compared as JSON (NULL: the
 * value as it is). */
static const sl_analyze_keyform_t *
keyform(const sl_analyze_in_t *in, const char *col)
{
    for (size_t i = 0; i < in->nkeyforms; i++)
        if (strcmp(in->keyforms[i].col, col) == 0)
            return &in->keyforms[i];
    return NULL;
}

/* Appends jsonb_build_array(<keys>), from the query's expressions (query =
 * true) or from the key columns (of relation alias, already quoted, or
 * bare when it is NULL), each in its key form: equal keys give equal JSON,
 * NULLs included. */
static void
out_key_json(out_t *o, const char *q, const sl_analyze_in_t *in, const keyexpr_t *keys, bool query,
             const char *alias)
{
    outf(o, "jsonb_build_array(");
    for (size_t k = 0; k < in->nkeys; k++) {
        const sl_analyze_keyform_t *f = keyform(in, keys[k].col);
        outf(o, "%s%s", k ? ", " : "", f != NULL ? f->open : "");
        if (query) {
            out_key(o, q, &keys[k]);
        } else {
            if (alias != NULL)
                outf(o, "%s.", alias);
            outid(o, keys[k].col);
        }
        outf(o, "%s", f != NULL ? f->close : "");
    }
    outf(o, ")");
}

static void
filter_null(out_t *o, const char *q, const sl_analyze_in_t *in, const keyexpr_t *keys)
{
    /* Keys with a NULL part cannot be found with = or IN. They are compared
     * as JSON instead (hashable, each key in its form), and no key
     * expression is written inside a subquery over __sluice_aff, where a
     * bare column name could bind to one of its columns. The first conjunct is an InitPlan:
     * when no affected key has a NULL part, PostgreSQL skips this half
     * without scanning anything. */
    outf(o, "(SELECT count(*) > 0 FROM ");
    out_aff(o, in);
    outf(o, " WHERE ");
    for (size_t k = 0; k < in->nkeys; k++) {
        outf(o, "%s", k ? " OR " : "");
        outid(o, keys[k].col);
        outf(o, " IS NULL");
    }
    outf(o, ") AND (");
    for (size_t k = 0; k < in->nkeys; k++) {
        outf(o, "%s", k ? " OR " : "");
        out_key(o, q, &keys[k]);
        outf(o, " IS NULL");
    }
    outf(o, ") AND ");
    out_key_json(o, q, in, keys, true, NULL);
    outf(o, " IN (SELECT ");
    out_key_json(o, q, in, keys, false, NULL);
    outf(o, " FROM ");
    out_aff(o, in);
    outf(o, ")");
}

/* ------------------------------------------------------------------------ */
/* Aggregates maintained from the changes                                    */
/* ------------------------------------------------------------------------ */

/*
 * A GROUP BY over one table recomputes each affected group from the table
 * (gen_restricted), which reads every row of the group: cheap for small
 * groups, as slow as a full refresh for a few large ones (GROUP BY region).
 * When the stored rows of the affected groups are at hand (in->old_rel) and
 * every select-list entry is a key or one of the aggregates below over a
 * column (or an expression of columns, constants, casts and operators
 * whose type a cast or a function's column definition list gives; count
 * needs no type), a group's new row is its stored row plus what the
 * window's images add ('I') and take away ('D'). Summed with signs, the
 * images of a window are exactly the rows added to and removed from the
 * table, whatever came in between (an update writes a 'D' and an 'I'
 * image); with set-returning functions in FROM (srf_groups), the rows the
 * functions give for each image are, likewise, the rows added to and
 * removed from the query's FROM. So:
 *
 *   count(*), count(x)  old + signed count of the images (x not NULL);
 *   sum(x)              old + signed sum, for integer and numeric(p,s)
 *                       columns only, where that is exact (a float's sum
 *                       depends on the order of its terms, an unconstrained
 *                       numeric's scale on which rows remain); NULL when no
 *                       row with x is left, which is known from a count(x)
 *                       (or count(*) over a NOT NULL x) of the query, from an
 *                       old sum that is NULL, or from a window that added at
 *                       least as many x as it took away; else unknown;
 *   avg(x)              sum / count as avg() divides them, when the query
 *                       also has that sum(x) and that count;
 *   min(x), max(x)      the old extreme against the added images, when no
 *                       removed image reached the old extreme (else the
 *                       extreme may have left), or when an added image beats
 *                       every removed one (so it was not removed again, and
 *                       beats what is left); for types whose equal values
 *                       print alike (integers, numeric(p,s), dates, times).
 *                       A removed image whose row is still there at the end
 *                       of the window, in the same group with the same
 *                       value (the last image of its primary key adds it,
 *                       and passes the WHERE clause), does not count as
 *                       removed: an update of another column of the row
 *                       holding the extreme keeps the group (tables without
 *                       a primary key, and functions in FROM, whose WHERE
 *                       clause may read their columns: every removed image
 *                       counts).
 *
 * A group exists afterwards when its count(*) is positive; without a
 * count(*), when it gained rows, or had a row and lost none net; a group that
 * had no stored row was empty, so the images are all of it. A group where
 * any of this is unknown (or a numeric sum meets NaN, which a subtraction
 * cannot take back) is recomputed from the table as before, in the same
 * statement: "__sluice_redo" is the affected-key relation of that part.
 */

typedef enum agkind { AG_COUNT_STAR, AG_COUNT, AG_SUM, AG_AVG, AG_MIN, AG_MAX } agkind_t;

#define MAX_AGGS 64

typedef struct agg {
    agkind_t kind;
    int target;      /* select-list position */
    const char *out; /* output column name */
    const char *col; /* argument column of the table (NULL: count(*) or an expression) */
    int from, to;    /* an expression argument: its text in the query (from < 0: none) */
    bool numeric;    /* sum/avg over numeric(p,s): NaN guard */
    bool narrow;     /* sum over smallint/integer: the result is bigint */
    bool notnull;    /* the column is NOT NULL */
    bool by_notnull; /* sum/avg: count is count(*), because the column is NOT NULL */
    int count;       /* sum/avg: the aggregate counting its non-NULL values, or -1 */
    int sum;         /* avg: its sum(x), the index of that aggregate */
} agg_t;

typedef struct aggs {
    agg_t v[MAX_AGGS];
    size_t n;
    int star; /* a count(*), or -1 */
} aggs_t;

/* The argument column of a one-argument call, as written over rel; NULL
 * when it is anything but a column of rel. */
static const char *
agg_column(const cJSON *fc, const rel_t *rel, size_t *at)
{
    const cJSON *args = cJSON_GetObjectItemCaseSensitive(fc, "args");
    if (cJSON_GetArraySize(args) != 1)
        return NULL;
    const cJSON *fields =
        cJSON_GetObjectItemCaseSensitive(node(cJSON_GetArrayItem(args, 0), "ColumnRef"), "fields");
    int nf = cJSON_GetArraySize(fields);
    const char *col = str(node(cJSON_GetArrayItem(fields, nf - 1), "String"), "sval");
    if (col == NULL || nf > 2 ||
        (nf == 2 &&
         (str(node(cJSON_GetArrayItem(fields, 0), "String"), "sval") == NULL ||
          strcmp(str(node(cJSON_GetArrayItem(fields, 0), "String"), "sval"), rel->text_name) != 0)))
        return NULL;
    for (size_t i = 0; i < rel->src->ncols; i++)
        if (strcmp(rel->src->cols[i], col) == 0) {
            *at = i;
            return col;
        }
    return NULL;
}

static bool
type_is(const char *type, const char *const *names)
{
    for (; *names != NULL; names++)
        if (strcmp(type, *names) == 0)
            return true;
    return false;
}

/* numeric(p,s): every value has scale s, so equal values print alike and
 * sums keep that scale. */
static bool
fixed_numeric(const char *type)
{
    return strstr(type, "numeric(") == type;
}

/* The type of a cast's or a column definition's type name tn, as
 * format_type prints the types that agg_of takes (with a numeric's
 * precision and scale, its scale in full); NULL for any other. */
static const char *
type_name(const cJSON *tn, char *buf, size_t n)
{
    static const char *const names[][2] = {{"int2", "smallint"},
                                           {"int4", "integer"},
                                           {"int8", "bigint"},
                                           {"date", "date"},
                                           {"timestamp", "timestamp without time zone"},
                                           {"timestamptz", "timestamp with time zone"}};
    const cJSON *names_v = cJSON_GetObjectItemCaseSensitive(tn, "names");
    int nn = cJSON_GetArraySize(names_v);
    const char *schema =
        nn == 2 ? str(node(cJSON_GetArrayItem(names_v, 0), "String"), "sval") : NULL;
    const char *name = str(node(cJSON_GetArrayItem(names_v, nn - 1), "String"), "sval");
    const cJSON *mods = cJSON_GetObjectItemCaseSensitive(tn, "typmods");
    if (tn == NULL || name == NULL || nn > 2 ||
        (nn == 2 && (schema == NULL || strcmp(schema, "pg_catalog") != 0)) ||
        cJSON_GetObjectItemCaseSensitive(tn, "arrayBounds") != NULL ||
        cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(tn, "setof")) ||
        cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(tn, "pct_type")))
        return NULL;
    if (strcmp(name, "numeric") == 0) {
        /* numeric(p) is numeric(p,0): fixed_numeric takes either. */
        const cJSON *p = node(node(cJSON_GetArrayItem(mods, 0), "A_Const"), "ival");
        const cJSON *sc = node(node(cJSON_GetArrayItem(mods, 1), "A_Const"), "ival");
        int nm = cJSON_GetArraySize(mods);
        if (nm < 1 || nm > 2 || p == NULL || (nm == 2 && sc == NULL))
            return NULL;
        const cJSON *pv = cJSON_GetObjectItemCaseSensitive(p, "ival");
        const cJSON *sv = nm == 2 ? cJSON_GetObjectItemCaseSensitive(sc, "ival") : NULL;
        snprintf(buf, n, "numeric(%d,%d)", cJSON_IsNumber(pv) ? pv->valueint : 0,
                 cJSON_IsNumber(sv) ? sv->valueint : 0);
        return buf;
    }
    if (mods != NULL)
        return NULL;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(name, names[i][0]) == 0)
            return names[i][1];
    return NULL;
}

/* The type of column col of the set-returning function called alias in
 * sel's FROM (any function when alias is NULL), from its column
 * definition list (AS f(a text, b int)); NULL when it has none. */
static const char *
coldef_type(const cJSON *n, const char *alias, const char *col, char *buf, size_t bufn)
{
    if (!cJSON_IsObject(n) && !cJSON_IsArray(n))
        return NULL;
    const cJSON *rf = node(n, "RangeFunction");
    if (rf != NULL) {
        const char *name = str(node(rf, "alias"), "aliasname");
        if (alias != NULL && (name == NULL || strcmp(name, alias) != 0))
            return NULL;
        const cJSON *cd;
        cJSON_ArrayForEach (cd, cJSON_GetObjectItemCaseSensitive(rf, "coldeflist")) {
            const char *c = str(node(cd, "ColumnDef"), "colname");
            if (c != NULL && strcmp(c, col) == 0)
                return type_name(node(node(cd, "ColumnDef"), "typeName"), buf, bufn);
        }
        return NULL;
    }
    if (node(n, "RangeSubselect") != NULL)
        return NULL;
    for (const cJSON *c = n->child; c != NULL; c = c->next) {
        const char *ty = coldef_type(c, alias, col, buf, bufn);
        if (ty != NULL)
            return ty;
    }
    return NULL;
}

static int paren_end(const char *q, const toks_t *t, size_t k);

/* Whether expression n is made of columns, constants, casts, operators,
 * CASE, COALESCE and NULL tests only: no function call, whose value could
 * depend on when it runs (now()) or on other tables, so that the value it
 * gives a row's image when the row comes is the one it gives when the row
 * goes. */
static bool
plain_expr(const cJSON *n)
{
    static const char allowed[] = " ColumnRef String A_Const TypeCast TypeName A_Expr BoolExpr "
                                  "NullTest CaseExpr CaseWhen CoalesceExpr A_Indirection "
                                  "A_Indices ";
    for (const cJSON *c = n != NULL ? n->child : NULL; c != NULL; c = c->next) {
        if (c->string != NULL && c->string[0] >= 'A' && c->string[0] <= 'Z') {
            char word[64];
            if (strlen(c->string) + 3 > sizeof word)
                return false;
            snprintf(word, sizeof word, " %s ", c->string);
            if (strstr(allowed, word) == NULL)
                return false;
        }
        if ((cJSON_IsObject(c) || cJSON_IsArray(c)) && !plain_expr(c))
            return false;
    }
    return true;
}

/* The one argument of aggregate call fc as an expression: its text in q
 * (ag->from, ag->to) and its type when the text tells it (a cast, or a
 * column of a function's column definition list in sel's FROM); false when
 * it is not plain (plain_expr) or the tokens do not show it. */
static bool
agg_expr(const cJSON *fc, const char *q, const toks_t *t, const cJSON *sel, agg_t *ag, char *buf,
         size_t n, const char **type)
{
    const cJSON *arg = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(fc, "args"), 0);
    if (cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(fc, "args")) != 1 || !plain_expr(arg))
        return false;
    size_t k = tok_at(t, location(fc));
    while (k < t->n && !tok_is(q, &t->v[k], "("))
        k++;
    int end = paren_end(q, t, k); /* just after the ')' */
    if (end < 0 || k + 1 >= t->n || t->v[k + 1].start >= end - 1)
        return false;
    ag->from = t->v[k + 1].start;
    ag->to = end - 1;
    *type = NULL;
    const cJSON *cast = node(arg, "TypeCast");
    const cJSON *fields = cJSON_GetObjectItemCaseSensitive(node(arg, "ColumnRef"), "fields");
    int nf = cJSON_GetArraySize(fields);
    if (cast != NULL)
        *type = type_name(node(cast, "typeName"), buf, n);
    else if (nf == 1 || nf == 2) {
        const char *col = str(node(cJSON_GetArrayItem(fields, nf - 1), "String"), "sval");
        const char *alias =
            nf == 2 ? str(node(cJSON_GetArrayItem(fields, 0), "String"), "sval") : NULL;
        if (col != NULL && (nf == 1 || alias != NULL))
            *type = coldef_type(cJSON_GetObjectItemCaseSensitive(sel, "fromClause"), alias, col,
                                buf, n);
    }
    return true;
}

/* The type of what sum, min or max `fn` reads, from its result's type,
 * the stream table's column `out` (in->cols): a bigint sum reads a
 * smallint or an integer (both summed the same way), a min or max is of
 * the type it reads; NULL when that does not tell. */
static const char *
result_arg_type(const sl_analyze_in_t *in, const char *fn, const char *out)
{
    for (size_t i = 0; i < in->ncols; i++) {
        if (strcmp(in->cols[i].name, out) != 0)
            continue;
        if (strcmp(fn, "sum") == 0)
            return strcmp(in->cols[i].type, "bigint") == 0 ? "integer" : NULL;
        return strcmp(fn, "min") == 0 || strcmp(fn, "max") == 0 ? in->cols[i].type : NULL;
    }
    return NULL;
}

/* One select-list entry as an aggregate of *ag, or false. An argument
 * that is not a column of rel is an expression (agg_expr): counted
 * always, summed or compared when its type is known, from the text or
 * from the aggregate's result (result_arg_type). */
static bool
agg_of(const cJSON *rt, const sl_analyze_in_t *in, const rel_t *rel, const char *q, const toks_t *t,
       const cJSON *sel, agg_t *ag, char *tbuf, size_t tn)
{
    static const char *const ints[] = {"smallint", "integer", "bigint", NULL};
    static const char *const ordered[] = {"smallint",
                                          "integer",
                                          "bigint",
                                          "date",
                                          "timestamp without time zone",
                                          "timestamp with time zone",
                                          NULL};
    const cJSON *fc = node(cJSON_GetObjectItemCaseSensitive(rt, "val"), "FuncCall");
    const cJSON *names = cJSON_GetObjectItemCaseSensitive(fc, "funcname");
    int nn = cJSON_GetArraySize(names);
    const char *schema = nn == 2 ? str(node(cJSON_GetArrayItem(names, 0), "String"), "sval") : NULL;
    const char *fn = str(node(cJSON_GetArrayItem(names, nn - 1), "String"), "sval");
    if (fc == NULL || fn == NULL || nn > 2 ||
        (nn == 2 && (schema == NULL || strcmp(schema, "pg_catalog") != 0)) ||
        cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(fc, "agg_distinct")) ||
        cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(fc, "agg_within_group")) ||
        cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(fc, "func_variadic")) ||
        cJSON_GetObjectItemCaseSensitive(fc, "agg_filter") != NULL ||
        cJSON_GetObjectItemCaseSensitive(fc, "agg_order") != NULL ||
        cJSON_GetObjectItemCaseSensitive(fc, "over") != NULL)
        return false;
    memset(ag, 0, sizeof *ag);
    ag->count = ag->sum = -1;
    ag->from = ag->to = -1;
    ag->out = str(rt, "name") != NULL ? str(rt, "name") : fn;
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(fc, "agg_star"))) {
        ag->kind = AG_COUNT_STAR;
        return strcmp(fn, "count") == 0;
    }
    size_t at = 0;
    const char *type = NULL;
    if ((ag->col = agg_column(fc, rel, &at)) != NULL) {
        type = rel->src->types[at];
        ag->notnull = rel->src->notnull[at];
    } else if (!agg_expr(fc, q, t, sel, ag, tbuf, tn, &type)) {
        return false;
    } else if (type == NULL) {
        type = result_arg_type(in, fn, ag->out);
    }
    if (strcmp(fn, "count") == 0) {
        ag->kind = AG_COUNT;
        return true;
    }
    if (type == NULL) {
        /* An average is kept only with the sum and count of what it reads
         * (algebraic_aggs), so that sum's type is its. */
        ag->kind = AG_AVG;
        return strcmp(fn, "avg") == 0;
    }
    if (strcmp(fn, "sum") == 0 || strcmp(fn, "avg") == 0) {
        ag->kind = fn[0] == 's' ? AG_SUM : AG_AVG;
        ag->numeric = fixed_numeric(type);
        ag->narrow = strcmp(type, "smallint") == 0 || strcmp(type, "integer") == 0;
        return ag->numeric || type_is(type, ints);
    }
    if (strcmp(fn, "min") == 0 || strcmp(fn, "max") == 0) {
        ag->kind = fn[1] == 'i' ? AG_MIN : AG_MAX;
        return fixed_numeric(type) || type_is(type, ordered);
    }
    return false;
}

/* Whether aggregates g and h read the same argument (count(*) reads none). */
static bool
same_arg(const char *q, const agg_t *g, const agg_t *h)
{
    if (g->kind == AG_COUNT_STAR || h->kind == AG_COUNT_STAR)
        return false;
    if (g->col != NULL || h->col != NULL)
        return g->col != NULL && h->col != NULL && strcmp(g->col, h->col) == 0;
    return g->to - g->from == h->to - h->from &&
           strncmp(q + g->from, q + h->from, (size_t)(g->to - g->from)) == 0;
}

/* Reads the select list into *a when every entry is a key column or an
 * aggregate gen_algebraic maintains, and pairs sums and averages with the
 * counts they need; false otherwise. */
static bool
algebraic_aggs(const cJSON *sel, const sl_analyze_in_t *in, const rel_t *rel, const char *q,
               const toks_t *t, aggs_t *a)
{
    const cJSON *group = cJSON_GetObjectItemCaseSensitive(sel, "groupClause");
    if (in->old_rel == NULL || in->nkeys == 0 || rel->src->types == NULL ||
        rel->src->notnull == NULL || cJSON_GetArraySize(group) != (int)in->nkeys ||
        cJSON_GetObjectItemCaseSensitive(sel, "havingClause") != NULL ||
        cJSON_GetObjectItemCaseSensitive(sel, "distinctClause") != NULL)
        return false;
    a->n = 0;
    a->star = -1;
    int i = 0;
    const cJSON *tgt;
    cJSON_ArrayForEach (tgt, cJSON_GetObjectItemCaseSensitive(sel, "targetList")) {
        const cJSON *rt = node(tgt, "ResTarget");
        const char *name = target_name(rt);
        bool key = false;
        for (size_t k = 0; k < in->nkeys && name != NULL && !key; k++)
            key = strcmp(name, in->keys[k]) == 0;
        if (key) {
            i++;
            continue;
        }
        char tbuf[32];
        if (a->n == MAX_AGGS || !agg_of(rt, in, rel, q, t, sel, &a->v[a->n], tbuf, sizeof tbuf))
            return false;
        a->v[a->n].target = i++;
        if (a->v[a->n].kind == AG_COUNT_STAR && a->star < 0)
            a->star = (int)a->n;
        a->n++;
    }
    for (size_t j = 0; j < a->n; j++) {
        agg_t *g = &a->v[j];
        if (g->kind != AG_SUM && g->kind != AG_AVG)
            continue;
        for (size_t m = 0; m < a->n; m++) {
            const agg_t *h = &a->v[m];
            if (!same_arg(q, g, h))
                continue;
            if (h->kind == AG_COUNT && g->count < 0)
                g->count = (int)m;
            if (h->kind == AG_SUM && g->sum < 0)
                g->sum = (int)m;
        }
        if (g->count < 0 && g->notnull && a->star >= 0) {
            g->count = a->star;
            g->by_notnull = true;
        }
        if (g->kind == AG_AVG && (g->count < 0 || g->sum < 0))
            return false;
    }
    return true;
}

/* Appends "__sluice_j"."__sluice_<tag><j>" (a column of __sluice_dk). */
static void
aj(out_t *o, const char *tag, size_t j)
{
    outf(o, "\"__sluice_j\".\"__sluice_%s%zu\"", tag, j);
}

/* Appends the number of rows of the group afterwards counted by aggregate
 * c (count(*) or count(x)). */
static void
agg_count_after(out_t *o, const aggs_t *a, int c)
{
    outf(o, "(coalesce(");
    aj(o, "o", (size_t)c);
    outf(o, ", 0) + ");
    if (a->v[c].kind == AG_COUNT_STAR)
        outf(o, "\"__sluice_j\".\"__sluice_n\"");
    else
        aj(o, "c", (size_t)c);
    outf(o, ")");
}

/* Appends the new sum of aggregate j (a sum), without its NULL case. */
static void
agg_sum_after(out_t *o, size_t j)
{
    outf(o, "(coalesce(");
    aj(o, "o", j);
    outf(o, ", 0) + coalesce(");
    aj(o, "s", j);
    outf(o, ", 0))");
}

/* Appends the new value of aggregate j. */
static void
agg_after(out_t *o, const aggs_t *a, size_t j)
{
    const agg_t *g = &a->v[j];
    switch (g->kind) {
    case AG_COUNT_STAR:
    case AG_COUNT: agg_count_after(o, a, (int)j); break;
    case AG_SUM:
        outf(o, "(CASE WHEN ");
        if (g->count >= 0) {
            agg_count_after(o, a, g->count);
            outf(o, " > 0");
        } else {
            aj(o, "o", j);
            outf(o, " IS NOT NULL OR ");
            aj(o, "c", j);
            outf(o, " > 0");
        }
        outf(o, " THEN ");
        agg_sum_after(o, j);
        outf(o, " END)%s", g->narrow ? "::bigint" : "");
        break;
    case AG_AVG:
        outf(o, "(CASE WHEN ");
        agg_count_after(o, a, g->count);
        outf(o, " > 0 THEN ");
        agg_sum_after(o, (size_t)g->sum);
        outf(o, "::numeric / ");
        agg_count_after(o, a, g->count);
        outf(o, "::numeric END)");
        break;
    case AG_MIN:
    case AG_MAX:
        outf(o, "%s(", g->kind == AG_MIN ? "least" : "greatest");
        aj(o, "o", j);
        outf(o, ", ");
        aj(o, "i", j);
        outf(o, ")");
        break;
    }
}

/* filter_nonnull behind a test that there is a group to recompute at
 * all: an InitPlan that PostgreSQL runs first, skipping the scan when
 * none is (most refreshes). Without it, a query whose group keys no index
 * reaches (an element of a set-returning function, a column without an
 * index) would read the whole table to find no group. */
static void
filter_redo(out_t *o, const char *q, const sl_analyze_in_t *in, const keyexpr_t *keys)
{
    outf(o, "EXISTS (SELECT FROM ");
    out_aff(o, in);
    outf(o, ") AND ");
    filter_nonnull(o, q, in, keys);
}

/* Appends a string literal. */
static void
outlit(out_t *o, const char *v)
{
    outf(o, "'");
    for (const char *c = v; *c != '\0'; c++)
        outf(o, *c == '\'' ? "''" : "%c", *c);
    outf(o, "'");
}

/* Appends the condition under which every new value is exact. */
static void
agg_exact(out_t *o, const aggs_t *a, const rel_t *rel)
{
    outf(o, "true");
    if (a->star < 0)
        outf(o, " AND (NOT \"__sluice_j\".\"__sluice_had\" OR \"__sluice_j\".\"__sluice_n\" >= 0)");
    for (size_t j = 0; j < a->n; j++) {
        const agg_t *g = &a->v[j];
        if (g->kind == AG_SUM && g->count < 0) {
            outf(o, " AND (");
            aj(o, "o", j);
            outf(o, " IS NULL OR ");
            aj(o, "c", j);
            outf(o, " >= 0)");
        }
        if (g->by_notnull) {
            /* Still NOT NULL: a column that has lost it since the analysis
             * may hold NULLs that count(*) counts; then every group is
             * recomputed until the query is analysed again. */
            outf(o,
                 " AND coalesce((SELECT a.attnotnull FROM pg_catalog.pg_attribute a WHERE "
                 "a.attrelid = %u AND a.attname = ",
                 rel->src->relid);
            outlit(o, g->col);
            outf(o, "), false)");
        }
        if (g->kind == AG_SUM && g->numeric) {
            outf(o, " AND NOT coalesce(");
            aj(o, "nan", j);
            outf(o, ", false) AND ");
            aj(o, "o", j);
            outf(o, " IS DISTINCT FROM 'NaN'");
        }
        if (g->kind == AG_MIN || g->kind == AG_MAX) {
            /* No removed value reached the old extreme, or an added one
             * beats every removed one (so it is still there). */
            const char *beyond = g->kind == AG_MIN ? "<" : ">";
            outf(o, " AND (");
            aj(o, "d", j);
            outf(o, " IS NULL OR coalesce(");
            aj(o, "o", j);
            outf(o, " %s ", beyond);
            aj(o, "d", j);
            outf(o, ", false) OR coalesce(");
            aj(o, "i", j);
            outf(o, " %s ", beyond);
            aj(o, "d", j);
            outf(o, ", false))");
        }
    }
}

/* Appends column col of the change rows of rel. */
static void
rel_col(out_t *o, const rel_t *rel, const char *col)
{
    outid(o, rel->alias);
    outf(o, ".");
    outid(o, col);
}

/* Appends what aggregate g reads, over the change rows: its column, or its
 * expression as the query writes it. */
static void
agg_arg(out_t *o, const char *q, const rel_t *rel, const agg_t *g)
{
    if (g->col != NULL) {
        rel_col(o, rel, g->col);
        return;
    }
    outf(o, "(");
    outq(o, q, g->from, g->to);
    outf(o, ")");
}

/* Appends a LEFT JOIN of the change rows with the last image of their
 * primary key ("__sluice_l": its op, group keys, min/max arguments and
 * WHERE result), which tells whether a removed value of a min or max is
 * still there (out_still_there). Nothing when there is no min or max, or
 * the table has no primary key. */
static void
out_last_images(out_t *o, const char *q, const toks_t *t, const clauses_t *c,
                const sl_analyze_in_t *in, const keyexpr_t *keys, const rel_t *rel, const aggs_t *a)
{
    const sl_analyze_src_t *s = rel->src;
    bool extremes = false;
    for (size_t j = 0; j < a->n; j++)
        extremes = extremes || a->v[j].kind == AG_MIN || a->v[j].kind == AG_MAX;
    if (!extremes || s->npk == 0)
        return;
    outf(o, " LEFT JOIN (SELECT DISTINCT ON (");
    for (size_t k = 0; k < s->npk; k++) {
        outf(o, "%s", k ? ", " : "");
        rel_col(o, rel, s->pk[k]);
    }
    outf(o, ") ");
    for (size_t k = 0; k < s->npk; k++) {
        rel_col(o, rel, s->pk[k]);
        outf(o, " AS \"__sluice_lp%zu\", ", k);
    }
    outid(o, rel->alias);
    outf(o, ".\"__sluice_op\" AS \"__sluice_lop\"");
    for (size_t k = 0; k < in->nkeys; k++) {
        outf(o, ", ");
        out_key(o, q, &keys[k]);
        outf(o, " AS \"__sluice_lk%zu\"", k);
    }
    for (size_t j = 0; j < a->n; j++)
        if (a->v[j].kind == AG_MIN || a->v[j].kind == AG_MAX) {
            outf(o, ", ");
            agg_arg(o, q, rel, &a->v[j]);
            outf(o, " AS \"__sluice_lx%zu\"", j);
        }
    outf(o, ", ");
    if (c->tok[CL_WHERE] >= 0) {
        outf(o, "coalesce((");
        outq(o, q, t->v[c->tok[CL_WHERE]].end, clause_end(q, t, c, CL_WHERE));
        outf(o, "), false)");
    } else {
        outf(o, "true");
    }
    outf(o, " AS \"__sluice_lw\" FROM pg_temp.\"__sluice_chg_%u\" AS ", s->relid);
    outid(o, rel->alias);
    outf(o, " ORDER BY ");
    for (size_t k = 0; k < s->npk; k++) {
        rel_col(o, rel, s->pk[k]);
        outf(o, ", ");
    }
    outid(o, rel->alias);
    outf(o, ".\"__sluice_seq\" DESC) AS \"__sluice_l\" ON ");
    for (size_t k = 0; k < s->npk; k++) {
        outf(o, "%s\"__sluice_l\".\"__sluice_lp%zu\" = ", k ? " AND " : "", k);
        rel_col(o, rel, s->pk[k]);
    }
}

/* Appends the condition that the removed image of aggregate j (a min or
 * max) is still there: its key's last image adds a row of the same group,
 * with the same value, that the WHERE clause keeps (out_last_images). */
static void
out_still_there(out_t *o, const char *q, const sl_analyze_in_t *in, const keyexpr_t *keys,
                const rel_t *rel, const agg_t *g, size_t j)
{
    outf(o, "coalesce(\"__sluice_l\".\"__sluice_lop\" = 'I' AND \"__sluice_l\".\"__sluice_lw\"");
    for (size_t k = 0; k < in->nkeys; k++) {
        outf(o, " AND \"__sluice_l\".\"__sluice_lk%zu\" IS NOT DISTINCT FROM ", k);
        out_key(o, q, &keys[k]);
    }
    outf(o, " AND \"__sluice_l\".\"__sluice_lx%zu\" IS NOT DISTINCT FROM ", j);
    agg_arg(o, q, rel, g);
    outf(o, ", false)");
}

/* Appends the half of __sluice_dk (each changed group of __sluice_dg with
 * its stored row, if any) whose keys have no NULL part (nonnull) or have
 * one. The first half compares the keys with =, which PostgreSQL hashes or
 * merges on the values themselves; = is the GROUP BY's own equality
 * (1.0 and 1.00 are one group; a type with another = is refreshed in full,
 * why_own_equality). A NULL part is never = to anything, so the second
 * half compares the keys as JSON, which equates NULLs, each in its key
 * form (a stored 1.0 and a changed row's 1.00 are one group). Every group
 * was compared as JSON before: PostgreSQL built and sorted the JSON of
 * both sides, 47-49 ms against 8-9 ms now for 10,928 groups (by hand,
 * docs/benchmarks.md). */
static void
out_stored_group(out_t *o, const sl_analyze_in_t *in, const keyexpr_t *keys, const aggs_t *a,
                 bool nonnull)
{
    outf(o, "SELECT \"__sluice_d\".*, \"__sluice_s\".\"__sluice_row_id\" IS NOT NULL AS "
            "\"__sluice_had\"");
    for (size_t j = 0; j < a->n; j++) {
        outf(o, ", \"__sluice_s\".");
        outid(o, a->v[j].out);
        outf(o, " AS \"__sluice_o%zu\"", j);
    }
    outf(o, " FROM \"__sluice_dg\" AS \"__sluice_d\" LEFT JOIN %s AS \"__sluice_s\" ON ",
         in->old_rel);
    if (nonnull) {
        for (size_t k = 0; k < in->nkeys; k++) {
            outf(o, "%s\"__sluice_s\".", k ? " AND " : "");
            outid(o, keys[k].col);
            outf(o, " = \"__sluice_d\".");
            outid(o, keys[k].col);
        }
    } else {
        out_key_json(o, NULL, in, keys, false, "\"__sluice_s\"");
        outf(o, " = ");
        out_key_json(o, NULL, in, keys, false, "\"__sluice_d\"");
    }
    outf(o, " WHERE %s(", nonnull ? "" : "NOT ");
    for (size_t k = 0; k < in->nkeys; k++) {
        outf(o, "%s\"__sluice_d\".", k ? " AND " : "");
        outid(o, keys[k].col);
        outf(o, " IS NOT NULL");
    }
    outf(o, ")");
}

/*
 * recompute_sql of a GROUP BY over table rel from the stored rows and the
 * changes (see above): false, writing nothing, when the query is not one
 * that this covers.
 */
static bool
gen_algebraic(out_t *o, const char *q, const toks_t *t, const clauses_t *c, const cJSON *sel,
              const sl_analyze_in_t *in, const keyexpr_t *keys, const rel_t *rel, bool funcs)
{
    aggs_t *a = malloc(sizeof *a);
    if (a == NULL) {
        o->rc = sl_err_nomem(o->err, "the aggregate list");
        return true;
    }
    if (!algebraic_aggs(sel, in, rel, q, t, a)) {
        free(a);
        return false;
    }
    /* The changes by group. */
    outf(o, "WITH \"__sluice_dg\" AS (SELECT ");
    for (size_t k = 0; k < in->nkeys; k++) {
        out_key(o, q, &keys[k]);
        outf(o, " AS ");
        outid(o, keys[k].col);
        outf(o, ", ");
    }
    outf(o, "sum(CASE WHEN ");
    outid(o, rel->alias);
    outf(o, ".\"__sluice_op\" = 'D' THEN -1 ELSE 1 END) AS \"__sluice_n\"");
    for (size_t j = 0; j < a->n; j++) {
        const agg_t *g = &a->v[j];
        if (g->kind == AG_COUNT || g->kind == AG_SUM) {
            outf(o, ", sum(CASE WHEN ");
            agg_arg(o, q, rel, g);
            outf(o, " IS NULL THEN 0 WHEN ");
            outid(o, rel->alias);
            outf(o, ".\"__sluice_op\" = 'D' THEN -1 ELSE 1 END) AS \"__sluice_c%zu\"", j);
        }
        if (g->kind == AG_SUM) {
            outf(o, ", sum(CASE WHEN ");
            outid(o, rel->alias);
            outf(o, ".\"__sluice_op\" = 'D' THEN -(");
            agg_arg(o, q, rel, g);
            outf(o, "::numeric) ELSE ");
            agg_arg(o, q, rel, g);
            outf(o, "::numeric END) AS \"__sluice_s%zu\"", j);
        }
        if (g->kind == AG_SUM && g->numeric) {
            outf(o, ", bool_or(");
            agg_arg(o, q, rel, g);
            outf(o, " = 'NaN') AS \"__sluice_nan%zu\"", j);
        }
        if (g->kind == AG_MIN || g->kind == AG_MAX)
            for (int side = 0; side < 2; side++) {
                outf(o, ", %s(", g->kind == AG_MIN ? "min" : "max");
                agg_arg(o, q, rel, g);
                outf(o, ") FILTER (WHERE ");
                outid(o, rel->alias);
                outf(o, ".\"__sluice_op\" = '%c'", side ? 'D' : 'I');
                if (side && rel->src->npk > 0 && !funcs) {
                    outf(o, " AND NOT ");
                    out_still_there(o, q, in, keys, rel, g, j);
                }
                outf(o, ") AS \"__sluice_%c%zu\"", side ? 'd' : 'i', j);
            }
    }
    outf(o, " FROM ");
    out_changes_from(o, q, t, c, rel, funcs);
    if (!funcs) /* (its WHERE clause is over the table alone) */
        out_last_images(o, q, t, c, in, keys, rel, a);
    if (c->tok[CL_WHERE] >= 0) {
        outf(o, " WHERE ");
        outq(o, q, t->v[c->tok[CL_WHERE]].end, clause_end(q, t, c, CL_WHERE));
    }
    outf(o, " GROUP BY ");
    for (size_t k = 0; k < in->nkeys; k++)
        outf(o, "%s%zu", k ? ", " : "", k + 1);
    /* With each group's stored row (none: the group was empty). */
    outf(o, "), \"__sluice_dk\" AS (");
    out_stored_group(o, in, keys, a, true);
    outf(o, " UNION ALL ");
    out_stored_group(o, in, keys, a, false);
    /* The groups whose new row is not known from those: recomputed. */
    outf(o, "), \"__sluice_redo\" AS (SELECT ");
    for (size_t k = 0; k < in->nkeys; k++) {
        outf(o, "%s\"__sluice_j\".", k ? ", " : "");
        outid(o, keys[k].col);
    }
    outf(o, " FROM \"__sluice_dk\" AS \"__sluice_j\" WHERE NOT (");
    agg_exact(o, a, rel);
    outf(o, ")) SELECT ");
    size_t j = 0;
    int i = 0;
    const cJSON *tgt;
    cJSON_ArrayForEach (tgt, cJSON_GetObjectItemCaseSensitive(sel, "targetList")) {
        outf(o, "%s", i ? ", " : "");
        if (j < a->n && a->v[j].target == i) {
            agg_after(o, a, j);
            outf(o, " AS ");
            outid(o, a->v[j++].out);
        } else {
            const cJSON *rt = node(tgt, "ResTarget");
            const char *name = target_name(rt);
            outf(o, "\"__sluice_j\".");
            outid(o, name);
        }
        i++;
    }
    outf(o, " FROM \"__sluice_dk\" AS \"__sluice_j\" WHERE (");
    agg_exact(o, a, rel);
    outf(o, ") AND ");
    if (a->star >= 0) {
        agg_count_after(o, a, a->star);
        outf(o, " > 0");
    } else {
        outf(o, "(\"__sluice_j\".\"__sluice_had\" OR \"__sluice_j\".\"__sluice_n\" > 0)");
    }
    sl_analyze_in_t redo = *in;
    redo.aff_rel = "\"__sluice_redo\"";
    outf(o, " UNION ALL (");
    gen_restricted(o, q, t, c, filter_redo, &redo, keys, NULL);
    outf(o, ") UNION ALL (");
    gen_restricted(o, q, t, c, filter_null, &redo, keys, NULL);
    outf(o, ")");
    free(a);
    return true;
}

/* ------------------------------------------------------------------------ */
/* Subqueries in the WHERE clause                                            */
/* ------------------------------------------------------------------------ */

/* A subquery that sublink_reason accepted, in the text: a condition
 * (EXISTS, NOT EXISTS, IN) ANDed into the WHERE clause, or one that gives a
 * value, in the select list or anywhere in WHERE. */
typedef struct sublink {
    const sl_analyze_src_t *src; /* the table it reads */
    bool value;                  /* gives a value (conj_* unused) */
    bool in_where;               /* a value in WHERE: the whole clause is masked */
    int conj_from, conj_to;      /* its conjunct (with NOT) */
    int from, to;                /* the condition without NOT: EXISTS (...), col IN (...);
                                  * a value: the subquery's parentheses */
    int name_from, name_to;      /* the table's name inside it */
    int where_end;               /* a value: the end of its WHERE clause (or of its FROM) */
    const char *name;            /* the name to give its change rows (no alias: the table's) */
} sublink_t;

/* The end (byte offset) of the text that starts with token k and ends with
 * the first ')' closing every '(' opened after it; -1 when there is none. */
static int
paren_end(const char *q, const toks_t *t, size_t k)
{
    int depth = 0;
    for (; k < t->n; k++) {
        if (tok_is(q, &t->v[k], "("))
            depth++;
        else if (tok_is(q, &t->v[k], ")") && --depth <= 0)
            return depth == 0 ? t->v[k].end : -1;
    }
    return -1;
}

/* Locates subquery ssel's table in the text (b->name_*, b->name, b->src);
 * returns why it cannot, or NULL. */
static const char *
locate_sublink_table(const cJSON *ssel, const sl_analyze_in_t *in, const char *q, const toks_t *t,
                     sublink_t *b)
{
    const cJSON *rv = node(
        cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(ssel, "fromClause"), 0), "RangeVar");
    if ((b->src = source_of(rv, in)) == NULL)
        return "a table read by a subquery in an expression is not among the stream table's "
               "captured sources";
    size_t k = tok_at(t, location(rv)), e = name_last_tok(q, t, k);
    b->name = str(node(rv, "alias"), "aliasname") != NULL ? NULL : str(rv, "relname");
    if (k == t->n || b->to < 0 || t->v[k].start <= b->from || t->v[e].end >= b->to)
        return "a subquery in an expression could not be located in the query text";
    b->name_from = t->v[k].start;
    b->name_to = t->v[e].end;
    return NULL;
}

/* The end of the WHERE clause of value subquery b (of its FROM when it has
 * none): the first clause keyword after its table at its own depth, or its
 * closing parenthesis. */
static int
sublink_where_end(const char *q, const toks_t *t, const sublink_t *b)
{
    static const char *const after[] = {"GROUP", "HAVING", "WINDOW", "ORDER",
                                        "LIMIT", "OFFSET", "FETCH",  "FOR"};
    int depth = 0;
    size_t k = 0;
    while (k < t->n && t->v[k].start < b->name_to)
        k++;
    for (; k < t->n && t->v[k].start < b->to; k++) {
        if (tok_is(q, &t->v[k], "("))
            depth++;
        else if (tok_is(q, &t->v[k], ")") && --depth < 0)
            return t->v[k].start;
        else if (depth == 0 && t->v[k].keyword)
            for (size_t w = 0; w < sizeof after / sizeof after[0]; w++)
                if (tok_is(q, &t->v[k], after[w]))
                    return t->v[k].start;
    }
    return -1;
}

/* Adds SubLink s, which gives a value (in WHERE when in_where), to subs,
 * located in the text; returns why it cannot be followed, or NULL. */
static const char *
add_value_sublink(const cJSON *s, bool in_where, const sl_analyze_in_t *in, const char *q,
                  const toks_t *t, sublink_t *subs, size_t *nsubs)
{
    const cJSON *ssel = value_sublink_select(s);
    if (ssel == NULL || *nsubs == MAX_SUBLINKS)
        return why_sublink;
    sublink_t *b = &subs[(*nsubs)++];
    *b = (sublink_t){.value = true, .in_where = in_where, .conj_from = -1, .conj_to = -1};
    b->from = location(s);
    size_t kf = tok_at(t, b->from);
    /* A scalar or ARRAY subquery's location is its parenthesis, EXISTS's
     * the keyword, IN's and ANY's the operator after the column (NOT IN's
     * its NOT). */
    while (kf < t->n && !tok_is(q, &t->v[kf], "("))
        kf++;
    b->to = kf < t->n ? paren_end(q, t, kf) : -1;
    const char *why = locate_sublink_table(ssel, in, q, t, b);
    if (why != NULL)
        return why;
    if ((b->where_end = sublink_where_end(q, t, b)) < 0)
        return "a subquery in an expression could not be located in the query text";
    return NULL;
}

/* Finds the subqueries of sel's select list and WHERE clause (all accepted
 * by sublink_reason) in the text, with the tables they read; returns why
 * they cannot be followed, or NULL. */
static const char *
find_sublinks(const cJSON *sel, const sl_analyze_in_t *in, const char *q, const toks_t *t,
              sublink_t *subs, size_t *nsubs)
{
    *nsubs = 0;
    /* The select list's, in text order (it comes before WHERE). */
    const cJSON *tv[MAX_SUBLINKS];
    size_t nt =
        top_sublinks(cJSON_GetObjectItemCaseSensitive(sel, "targetList"), tv, 0, MAX_SUBLINKS);
    int prev_end = -1; /* the previous subquery's end: they are in text order */
    for (size_t i = 0; i < nt; i++) {
        const char *why =
            i < MAX_SUBLINKS ? add_value_sublink(tv[i], false, in, q, t, subs, nsubs) : why_sublink;
        if (why != NULL)
            return why;
        if (prev_end > subs[*nsubs - 1].from)
            return "a subquery in the select list could not be located in the query text";
        prev_end = subs[*nsubs - 1].to;
    }
    const cJSON *v[MAX_SUBLINKS * 4];
    size_t n =
        conjuncts(cJSON_GetObjectItemCaseSensitive(sel, "whereClause"), v, 0, MAX_SUBLINKS * 4);
    for (size_t i = 0; i < n && i < MAX_SUBLINKS * 4; i++) {
        if (!has_node(v[i], "SubLink"))
            continue;
        bool neg;
        int not_at = -1;
        const cJSON *s = conjunct_sublink(v[i], &neg, &not_at);
        const cJSON *ssel = sublink_select(s);
        if (ssel == NULL) {
            /* Subqueries giving values, anywhere in the conjunct. */
            const cJSON *tv2[MAX_SUBLINKS];
            size_t nt2 = top_sublinks(v[i], tv2, 0, MAX_SUBLINKS);
            for (size_t k = 0; k < nt2; k++) {
                const char *why = k < MAX_SUBLINKS
                                      ? add_value_sublink(tv2[k], true, in, q, t, subs, nsubs)
                                      : why_sublink;
                if (why != NULL)
                    return why;
            }
            continue;
        }
        if (*nsubs == MAX_SUBLINKS)
            return why_sublink;
        sublink_t *b = &subs[(*nsubs)++];
        *b = (sublink_t){.value = false};
        const cJSON *test = node(cJSON_GetObjectItemCaseSensitive(s, "testexpr"), "ColumnRef");
        b->from = test != NULL ? location(test) : location(s);
        b->conj_from = neg ? not_at : b->from;
        size_t kf = tok_at(t, b->from), kc = tok_at(t, b->conj_from);
        b->to = kf < t->n ? paren_end(q, t, kf) : -1;
        b->conj_to = kc < t->n ? paren_end(q, t, kc) : -1;
        /* Its table: a captured source, its name's tokens (schema . name). */
        const char *why = locate_sublink_table(ssel, in, q, t, b);
        if (why != NULL)
            return why;
        if (b->conj_to < 0 || b->conj_from > b->from || prev_end > b->conj_from)
            return "a subquery in the WHERE clause could not be located in the query text";
        prev_end = b->conj_to;
    }
    return NULL;
}

/* Appends the WHERE clause's text with every subquery's conjunct replaced
 * by true. */
static void
out_where_masked(out_t *o, const char *q, const toks_t *t, const clauses_t *c,
                 const sublink_t *subs, size_t nsubs)
{
    bool whole = c->tok[CL_WHERE] < 0;
    for (size_t i = 0; i < nsubs; i++)
        whole = whole || subs[i].in_where;
    if (whole) {
        /* No WHERE; or a subquery giving a value somewhere in it, whose
         * expression has no span in the text to cut out: every row is a
         * candidate, which only makes the affected keys a larger superset. */
        outf(o, "true");
        return;
    }
    int at = t->v[c->tok[CL_WHERE]].end;
    for (size_t i = 0; i < nsubs; i++) {
        if (subs[i].value)
            continue;
        outq(o, q, at, subs[i].conj_from);
        outf(o, "true");
        at = subs[i].conj_to;
    }
    outq(o, q, at, clause_end(q, t, c, CL_WHERE));
}

/* Appends subquery s's condition (without its NOT) over its table's change
 * images: the rows for which it finds a changed row. For a value in the
 * select list, the condition is that a changed row passes its WHERE
 * clause: its value depends on no other rows of its table. */
static void
out_sublink_changes(out_t *o, const char *q, const sublink_t *s)
{
    if (s->value)
        outf(o, "EXISTS (SELECT FROM ");
    else
        outq(o, q, s->from, s->name_from);
    outf(o, "pg_temp.\"__sluice_chg_%u\"", s->src->relid);
    if (s->name != NULL) {
        outf(o, " AS ");
        outid(o, s->name);
    }
    if (s->value) {
        outq(o, q, s->name_to, s->where_end);
        outf(o, ")");
    } else {
        outq(o, q, s->name_to, s->to);
    }
}

/* ------------------------------------------------------------------------ */
/* Joins                                                                     */
/* ------------------------------------------------------------------------ */

/* Appends a comma-separated list of quoted names. */
static void
out_names(out_t *o, const char *const *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        outf(o, "%s", i ? ", " : "");
        outid(o, v[i]);
    }
}

/* Appends the old images of table s: for every key that the window touched
 * and whose first change (in capture order) removed a row, that row; a key
 * first added in the window did not exist. The driver (sluice._refresh)
 * writes them to pg_temp.__sluice_before_<oid> before it runs this SQL. */
static void
out_old_images(out_t *o, const sl_analyze_src_t *s)
{
    outf(o, "SELECT ");
    out_names(o, s->cols, s->ncols);
    outf(o, " FROM pg_temp.\"__sluice_before_%u\"", s->relid);
}

/* Appends table s as it was before the window, as a parenthesised subquery:
 * its rows whose key the window did not touch, and the old images. Written
 * so that PostgreSQL can reach the table through its indexes from the other
 * side of a join: a UNION ALL of two plain scans, which it flattens, with
 * the filter outside (a UNION ALL whose sides have a WHERE, or whose old
 * images were a DISTINCT ON subquery, is planned as a whole, and every term
 * that joined it read the whole table). */
static void
out_old_state(out_t *o, const sl_analyze_src_t *s)
{
    outf(o, "(SELECT ");
    out_names(o, s->cols, s->ncols);
    outf(o, " FROM (SELECT ");
    out_names(o, s->cols, s->ncols);
    outf(o, ", false AS \"__sluice_b\" FROM ");
    outid(o, s->schema);
    outf(o, ".");
    outid(o, s->name);
    outf(o, " UNION ALL SELECT ");
    out_names(o, s->cols, s->ncols);
    outf(o,
         ", true FROM pg_temp.\"__sluice_before_%u\") AS \"__sluice_u\" WHERE \"__sluice_b\" OR (",
         s->relid);
    out_names(o, s->pk, s->npk);
    outf(o, ") NOT IN (SELECT ");
    out_names(o, s->pk, s->npk);
    outf(o, " FROM pg_temp.\"__sluice_chg_%u\"))", s->relid);
}

/* Appends the FROM clause's text (after FROM). With old, every table is
 * replaced by its state before the window, under the same name, and
 * `touched` by only the old images of its touched keys. */
static void
out_from(out_t *o, const char *q, const toks_t *t, const clauses_t *c, const from_t *f, bool old,
         const rel_t *touched)
{
    int at = t->v[c->tok[CL_FROM]].end, to = clause_end(q, t, c, CL_FROM);
    if (!old && f->grouping < 0) {
        outq(o, q, at, to);
        return;
    }
    for (size_t i = 0; i < f->n; i++) {
        const rel_t *r = &f->v[i];
        if (r->grouping) {
            /* Before and after the window alike: the keys it may have
             * (analyze_joined says why that is enough). */
            outq(o, q, at, t->v[r->open].start);
            outf(o, "%s", r == touched && r->gaff != NULL ? r->gaff : r->superset);
            at = t->v[r->close].end;
            continue;
        }
        if (!old)
            continue;
        size_t e = name_last_tok(q, t, tok_at(t, r->loc));
        outq(o, q, at, r->loc);
        if (r == touched) {
            outf(o, "(");
            out_old_images(o, r->src);
            outf(o, ")");
        } else {
            out_old_state(o, r->src);
        }
        if (!r->has_alias) {
            outf(o, " AS ");
            outid(o, r->text_name);
        }
        at = t->v[e].end;
    }
    outq(o, q, at, to);
}

/* Appends (r.pk...) IN (the keys the window touched in r's table); with a
 * one-column key as = ANY (ARRAY(...)), which PostgreSQL answers through the
 * key's index however many rows it expects. */
static void
out_touched(out_t *o, const rel_t *r)
{
    if (r->src->npk == 1) {
        outid(o, r->alias);
        outf(o, ".");
        outid(o, r->pk[0]);
        outf(o, " = ANY (ARRAY(SELECT ");
        outid(o, r->src->pk[0]);
        outf(o, " FROM pg_temp.\"__sluice_chg_%u\"))", r->src->relid);
        return;
    }
    outf(o, "(");
    for (size_t i = 0; i < r->src->npk; i++) {
        outf(o, "%s", i ? ", " : "");
        outid(o, r->alias);
        outf(o, ".");
        outid(o, r->pk[i]);
    }
    outf(o, ") IN (SELECT ");
    out_names(o, r->src->pk, r->src->npk);
    outf(o, " FROM pg_temp.\"__sluice_chg_%u\")", r->src->relid);
}

/* Appends SELECT <keys> FROM ... WHERE ...: the rows of the join that
 * involve a row of table f->v[i] the window changed, over the tables as
 * they are (old == 0) or as they were before the window. */
static void
out_touched_term(out_t *o, const char *q, const toks_t *t, const clauses_t *c, size_t nkeys,
                 const keyexpr_t *keys, const from_t *f, size_t i, int old)
{
    outf(o, "SELECT ");
    out_keys_as(o, q, keys, nkeys);
    outf(o, " FROM ");
    out_from(o, q, t, c, f, old != 0, &f->v[i]);
    outf(o, " WHERE ");
    if (c->tok[CL_WHERE] >= 0) {
        outf(o, "(");
        outq(o, q, t->v[c->tok[CL_WHERE]].end, clause_end(q, t, c, CL_WHERE));
        outf(o, ")%s", old ? "" : " AND ");
    } else if (old) {
        outf(o, "true");
    }
    if (!old)
        out_touched(o, &f->v[i]);
}

/*
 * affected_sql of an inner join (any select list with a row identity: the
 * tables' keys, GROUP BY keys, DISTINCT): the key values of every row that
 * a combination of rows involving a changed row produces, before the window
 * (over the tables' old states) and after it (over the tables). A row of
 * the result can only change when such a combination appears or goes.
 */
static void
gen_affected_inner(out_t *o, const char *q, const toks_t *t, const clauses_t *c,
                   const sl_analyze_in_t *in, const keyexpr_t *keys, const from_t *f)
{
    for (size_t i = 0; i < f->n; i++)
        for (int old = 0; old < 2; old++) {
            if (i > 0 || old > 0)
                outf(o, in->nkeys > 0 ? " UNION " : " UNION ALL ");
            outf(o, "(");
            out_touched_term(o, q, t, c, in->nkeys, keys, f, i, old);
            if (in->nkeys == 0)
                outf(o, " LIMIT 1");
            outf(o, ")");
        }
}

/*
 * affected_sql of a join with LEFT JOINs, whose result is partitioned by the
 * first table's rows (its key is in every row's identity): the keys of the
 * first table's rows the window touched, directly or through a combination
 * of rows (before or after the window) that involves a changed row. The
 * combinations are those of FROM alone: a row that WHERE rejects can still
 * decide whether a row of the first table is NULL-extended. A subquery
 * that groups among the relations (analyze_joined) stands in the tables'
 * terms as its superset, and in its own terms as its affected keys (gaff).
 */
static void
gen_affected_rooted(out_t *o, const char *q, const toks_t *t, const clauses_t *c, const from_t *f,
                    const keyexpr_t *units, const sublink_t *subs, size_t nsubs)
{
    const rel_t *root = &f->v[0];
    outf(o, "SELECT DISTINCT * FROM (SELECT ");
    out_names(o, root->src->pk, root->src->npk);
    outf(o, " FROM pg_temp.\"__sluice_chg_%u\"", root->src->relid);
    for (size_t i = 1; i < f->n; i++)
        for (int old = 0; old < 2; old++) {
            outf(o, " UNION ALL SELECT ");
            for (size_t k = 0; k < root->src->npk; k++) {
                outf(o, "%s", k ? ", " : "");
                out_key(o, q, &units[k]);
            }
            outf(o, " FROM ");
            out_from(o, q, t, c, f, old != 0, &f->v[i]);
            outf(o, " WHERE ");
            if (f->v[i].grouping) {
                /* Combinations with one of its affected groups. */
                outid(o, f->v[i].alias);
                outf(o, ".\"__sluice_m\"");
            } else if (!old) {
                out_touched(o, &f->v[i]);
            } else {
                /* Combinations with a row the table had: the outer join
                 * keeps every other row, NULL-extended, which no change
                 * of this table reached. */
                outid(o, f->v[i].alias);
                outf(o, ".");
                outid(o, f->v[i].pk[0]);
                outf(o, " IS NOT NULL");
            }
        }
    /* The first-table rows of combinations (before and after the window)
     * for which a subquery in WHERE finds a changed row: only there can
     * its value change (see gen_affected_sublinks). */
    for (size_t i = 0; i < nsubs; i++)
        for (int old = 0; old < 2; old++) {
            outf(o, " UNION ALL SELECT ");
            for (size_t k = 0; k < root->src->npk; k++) {
                outf(o, "%s", k ? ", " : "");
                out_key(o, q, &units[k]);
            }
            outf(o, " FROM ");
            out_from(o, q, t, c, f, old != 0, NULL);
            outf(o, " WHERE ");
            out_sublink_changes(o, q, &subs[i]);
        }
    outf(o, ") AS \"__sluice_u\" (");
    for (size_t k = 0; k < root->src->npk; k++) {
        outf(o, "%s", k ? ", " : "");
        outid(o, units[k].col);
    }
    outf(o, ")");
}

/*
 * affected_sql of a LEFT JOIN chain of tables refreshed by the query's row
 * identity instead of by its first table's rows: when that identity does
 * not carry the first table's key (a GROUP BY of another column), or in a
 * UNION ALL branch, whose stored rows the driver finds by identity. The
 * key values of every row built from a first-table row that
 * gen_affected_rooted finds touched, before the window (over the tables'
 * old states) and after it. Every row of the chain is built from one
 * first-table row, and the rows built from an untouched one are the same
 * before and after, so a row or group whose content can change has its key
 * among these. units name the first table's key columns.
 */
static void
gen_affected_rooted_keys(out_t *o, const char *q, const toks_t *t, const clauses_t *c,
                         const sl_analyze_in_t *in, const keyexpr_t *keys, const from_t *f,
                         const keyexpr_t *units, const sublink_t *subs, size_t nsubs)
{
    const rel_t *root = &f->v[0];
    outf(o, "WITH \"__sluice_units\" AS MATERIALIZED (");
    gen_affected_rooted(o, q, t, c, f, units, subs, nsubs);
    outf(o, ") ");
    for (int old = 0; old < 2; old++) {
        if (old > 0)
            outf(o, in->nkeys > 0 ? " UNION " : " UNION ALL ");
        outf(o, "(SELECT ");
        out_keys_as(o, q, keys, in->nkeys);
        outf(o, " FROM ");
        out_from(o, q, t, c, f, old != 0, NULL);
        outf(o, " WHERE ");
        if (c->tok[CL_WHERE] >= 0) {
            outf(o, "(");
            /* A subquery in it stands for true: the units have its changed
             * rows, and a row it let through before may be kept out now. */
            out_where_masked(o, q, t, c, subs, nsubs);
            outf(o, ") AND ");
        }
        if (root->src->npk == 1) {
            out_key(o, q, &units[0]);
            outf(o, " = ANY (ARRAY(SELECT ");
            outid(o, units[0].col);
            outf(o, " FROM \"__sluice_units\"))");
        } else {
            outf(o, "(");
            for (size_t k = 0; k < root->src->npk; k++) {
                outf(o, "%s", k ? ", " : "");
                out_key(o, q, &units[k]);
            }
            outf(o, ") IN (SELECT ");
            for (size_t k = 0; k < root->src->npk; k++) {
                outf(o, "%s", k ? ", " : "");
                outid(o, units[k].col);
            }
            outf(o, " FROM \"__sluice_units\")");
        }
        if (in->nkeys == 0)
            outf(o, " LIMIT 1");
        outf(o, ")");
    }
}

/* Maps the first table's key to output columns that are row-identity
 * columns (units[k].col); false when one is missing. */
static bool
map_units(const cJSON *sel, const sl_analyze_in_t *in, const rel_t *root, keyexpr_t *units)
{
    const cJSON *targets = cJSON_GetObjectItemCaseSensitive(sel, "targetList");
    for (size_t k = 0; k < root->src->npk; k++) {
        units[k] = (keyexpr_t){.from = -1, .alias = root->alias, .src = root->pk[k]};
        const cJSON *tgt;
        cJSON_ArrayForEach (tgt, targets) {
            const char *name = target_column(tgt, root->alias, root->pk[k], false);
            if (name == NULL)
                continue;
            for (size_t i = 0; i < in->nkeys && units[k].col == NULL; i++)
                if (strcmp(in->keys[i], name) == 0)
                    units[k].col = in->keys[i];
            if (units[k].col != NULL)
                break;
        }
        if (units[k].col == NULL)
            return false;
    }
    return true;
}

#define MAX_WINDOW_UNITS 8

/* True when parse trees a and b are the same but for their locations: the
 * same expression, however it is spaced. */
static bool
same_tree(const cJSON *a, const cJSON *b)
{
    if (a == NULL || b == NULL)
        return a == b;
    if (cJSON_IsNumber(a) || cJSON_IsString(a) || cJSON_IsBool(a) || cJSON_IsNull(a))
        return cJSON_Compare(a, b, true);
    if ((a->type & 0xFF) != (b->type & 0xFF))
        return false;
    const cJSON *x = a->child, *y = b->child;
    for (;;) {
        while (x != NULL && x->string != NULL && strcmp(x->string, "location") == 0)
            x = x->next;
        while (y != NULL && y->string != NULL && strcmp(y->string, "location") == 0)
            y = y->next;
        if (x == NULL || y == NULL)
            return x == y;
        if ((x->string == NULL) != (y->string == NULL) ||
            (x->string != NULL && strcmp(x->string, y->string) != 0) || !same_tree(x, y))
            return false;
        x = x->next;
        y = y->next;
    }
}

/* True when partition list p has an expression that is the same tree as e. */
static bool
partition_has_tree(const cJSON *p, const cJSON *e)
{
    const cJSON *item;
    cJSON_ArrayForEach (item, p)
        if (same_tree(item, e))
            return true;
    return false;
}

/* The units of a query with window functions over the tables of f
 * (window_reason passed): the columns of those tables, or expressions,
 * that every window is partitioned by and that the select list has as
 * they are, each named as its stream-table column. A row's window values
 * depend only on the rows of its partition, and a partition lies within
 * one unit (its values include the unit's), so a unit recomputed whole
 * gives exactly its rows. NULL, or why not. */
static const char *
window_units(const char *q, const toks_t *t, const clauses_t *c, const cJSON *sel, const from_t *f,
             keyexpr_t *units, size_t *nunits)
{
    const cJSON *w[MAX_WINDOWS];
    size_t nw = query_windows(sel, w);
    *nunits = 0;
    if (nw == 0 || nw > MAX_WINDOWS)
        return why_window;
    const cJSON *targets = cJSON_GetObjectItemCaseSensitive(sel, "targetList");
    int spans[MAX_TARGETS][2];
    int nspans = target_spans(q, t, c, spans);
    const cJSON *item;
    cJSON_ArrayForEach (item, window_partition(sel, w[0])) {
        if (*nunits == MAX_WINDOW_UNITS)
            break;
        if (node(item, "ColumnRef") == NULL) {
            /* An expression: a unit when every window has it and an entry
             * of the select list is that expression. */
            bool all = true;
            for (size_t i = 1; i < nw && all; i++)
                all = partition_has_tree(window_partition(sel, w[i]), item);
            for (size_t i = 0; i < *nunits && all; i++)
                all = units[i].from < 0 || !same_tree(units[i].tree, item);
            int i = 0;
            const cJSON *tgt;
            cJSON_ArrayForEach (tgt, targets) {
                const cJSON *rt = node(tgt, "ResTarget");
                const char *out = target_name(rt);
                if (all && out != NULL && i < nspans && nspans == cJSON_GetArraySize(targets) &&
                    same_tree(cJSON_GetObjectItemCaseSensitive(rt, "val"), item)) {
                    units[*nunits].tree = item;
                    target_key(q, t, spans[i], str(rt, "name") != NULL, out, &units[(*nunits)++]);
                    break;
                }
                i++;
            }
            continue;
        }
        const rel_t *rel = NULL;
        const char *col = NULL;
        for (size_t r = 0; r < f->n && col == NULL; r++)
            if ((col = partition_column(item, f->v[r].alias)) != NULL)
                rel = &f->v[r];
        bool all = col != NULL;
        for (size_t i = 0; i < *nunits && all; i++)
            all = units[i].from >= 0 || strcmp(units[i].alias, rel->alias) != 0 ||
                  strcmp(units[i].src, col) != 0;
        for (size_t i = 1; i < nw && all; i++)
            all = partition_has(window_partition(sel, w[i]), rel->alias, col);
        if (!all)
            continue;
        const char *out = NULL;
        const cJSON *tgt;
        cJSON_ArrayForEach (tgt, targets)
            if ((out = target_column(tgt, rel->alias, col, true)) != NULL)
                break;
        if (out != NULL)
            units[(*nunits)++] =
                (keyexpr_t){.from = -1, .alias = rel->alias, .src = col, .col = out};
    }
    if (*nunits == 0)
        return "window functions are refreshed differentially by partition: the select list must "
               "have, as they are, the columns or expressions that every window is partitioned "
               "by; this query's do not";
    return NULL;
}

/* The text[] literal of the units' column names. */
static void
out_units_literal(out_t *o, const keyexpr_t *units, size_t n)
{
    outf(o, "{");
    for (size_t k = 0; k < n; k++) {
        outf(o, "%s\"", k ? "," : "");
        for (const char *p = units[k].col; *p != '\0'; p++)
            outf(o, *p == '"' || *p == '\\' ? "\\%c" : "%c", *p);
        outf(o, "\"");
    }
    outf(o, "}");
}

/* Why a join of f's tables cannot be refreshed differentially, or NULL:
 * every table needs a primary key (to tell its changed rows) and must be
 * found in the text (to put its old state there). */
static const char *
check_join(const char *q, const toks_t *t, const from_t *f, char *why, size_t n)
{
    int last = -1;
    for (size_t i = 0; i < f->n; i++) {
        const rel_t *r = &f->v[i];
        if (r->grouping) {
            if (r->loc <= last)
                return "the tables of the join could not be located in the query text";
            last = r->loc;
            continue;
        }
        if (r->src->npk == 0 || r->src->ncols == 0) {
            snprintf(why, n, "table %s.%s has no primary key: joins over it are refreshed in full",
                     r->src->schema, r->src->name);
            return why;
        }
        if (r->only) {
            snprintf(why, n, "FROM ONLY %s.%s is refreshed in full", r->src->schema, r->src->name);
            return why;
        }
        size_t k = tok_at(t, r->loc);
        if (r->loc <= last || k == t->n || tok_is(q, &t->v[k], "("))
            return "the tables of the join could not be located in the query text";
        last = r->loc;
    }
    return NULL;
}

/*
 * affected_sql terms of the subqueries in WHERE, appended to the tables'
 * terms (each starts with UNION). A row's EXISTS (or IN) can only change
 * when a row of the subquery's table that meets the subquery's condition
 * for it appears or goes, and every such row is among that table's change
 * images: so the keys of the rows, before the window (over the tables' old
 * states) and after it, for which the subquery finds a changed row, with
 * the rest of WHERE. A NOT EXISTS is searched for as EXISTS: the rows it
 * can change are the same. The tables' own changes are followed by their
 * terms, where the subqueries are evaluated as they are now: a row that
 * the subquery let through before but not now differs in a changed row of
 * the subquery's table, so it is found here.
 */
static void
gen_affected_sublinks(out_t *o, const char *q, const toks_t *t, const clauses_t *c,
                      const sl_analyze_in_t *in, const keyexpr_t *keys, const from_t *f,
                      const sublink_t *subs, size_t nsubs)
{
    for (size_t i = 0; i < nsubs; i++)
        for (int old = 0; old < 2; old++) {
            const sublink_t *s = &subs[i];
            outf(o, in->nkeys > 0 ? " UNION (SELECT " : " UNION ALL (SELECT ");
            out_keys_as(o, q, keys, in->nkeys);
            outf(o, " FROM ");
            out_from(o, q, t, c, f, old != 0, NULL);
            outf(o, " WHERE (");
            out_where_masked(o, q, t, c, subs, nsubs);
            outf(o, ") AND ");
            out_sublink_changes(o, q, s);
            outf(o, in->nkeys == 0 ? " LIMIT 1)" : ")");
        }
}

/* ------------------------------------------------------------------------ */
/* UNION ALL                                                                 */
/* ------------------------------------------------------------------------ */

/* The number of branches of a chain of UNION ALL as PostgreSQL parses
 * `a UNION ALL b UNION ALL c`: left-deep, a set operation on the right
 * (written in parentheses) being one branch. */
static size_t
union_all_branches(const cJSON *sel)
{
    const char *op = str(sel, "op");
    if (op == NULL || strcmp(op, "SETOP_UNION") != 0 ||
        !cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(sel, "all")))
        return 1;
    return union_all_branches(setop_side(sel, "larg")) + 1;
}

/* The article before a set operation's name: "a UNION", "an EXCEPT". */
static const char *
article(const char *setop)
{
    return setop[0] == 'U' ? "a" : "an";
}

/* Analyses branch i (from 1) of a set operation (setop: "UNION ALL",
 * "UNION", "INTERSECT" or "EXCEPT") into *ba. SL_OK and *reason NULL: differential by its rows (ba
 * to free); SL_OK and *reason set (in why): not (FULL, or refreshed by
 * units of its own, which a branch cannot be), ba freed; else an error. */
static int
analyze_branch(const sl_analyze_in_t *bin, const char *setop, size_t i, sl_analysis_t *ba,
               char *why, size_t n, const char **reason, sl_err_t *err)
{
    sl_err_t e;
    sl_err_clear(&e);
    int rc = sl_analyze(bin, ba, &e);
    if (rc == SL_EUSAGE) {
        snprintf(why, n, "%s branch %zu: %s", setop, i, e.msg);
        *reason = why;
        return SL_OK;
    }
    if (rc != SL_OK) {
        *err = e;
        return rc;
    }
    if (strcmp(ba->mode, "differential") != 0)
        snprintf(why, n, "%s branch %zu: %s", setop, i, ba->reason);
    else if (ba->unit_columns != NULL)
        snprintf(why, n,
                 ba->grouped_units
                     ? "%s branch %zu has a subquery that groups joined with tables, which is "
                       "refreshed differentially as a whole query but not inside %s %s"
                     : "%s branch %zu has a LEFT JOIN, which is refreshed differentially as a "
                       "whole query but not inside %s %s",
                 setop, i, article(setop), setop);
    else
        return SL_OK;
    *reason = why;
    sl_analysis_free(ba);
    return SL_OK;
}

/*
 * A UNION ALL whose branches (in->branches, cut by the catalog) each have a
 * row identity: every branch is analysed as a query of its own, and the
 * union is differential when every branch is, with one affected/recompute
 * pair per branch (a->branches; the driver gives each branch's rows ids of
 * their own). Otherwise *reason (in why) says which branch is not.
 */
static int
analyze_union(const sl_analyze_in_t *in, const cJSON *sel, sl_analysis_t *a, char *why, size_t n,
              const char **reason, sl_err_t *err)
{
    size_t nb = union_all_branches(sel);
    if (cJSON_GetObjectItemCaseSensitive(sel, "sortClause") != NULL ||
        cJSON_GetObjectItemCaseSensitive(sel, "limitCount") != NULL ||
        cJSON_GetObjectItemCaseSensitive(sel, "limitOffset") != NULL ||
        cJSON_GetObjectItemCaseSensitive(sel, "withClause") != NULL ||
        cJSON_GetObjectItemCaseSensitive(sel, "lockingClause") != NULL) {
        *reason = "ORDER BY, LIMIT, OFFSET, WITH or FOR UPDATE applies to the whole UNION ALL; "
                  "it is refreshed in full";
        return SL_OK;
    }
    if (nb != in->nbranches) {
        snprintf(why, n,
                 "the UNION ALL has %zu branches but the catalog split it into %zu; it is "
                 "refreshed in full",
                 nb, in->nbranches);
        *reason = why;
        return SL_OK;
    }
    cJSON *arr = cJSON_CreateArray();
    if (arr == NULL)
        return sl_err_nomem(err, "the branch analyses");
    int rc = SL_OK;
    for (size_t i = 0; i < nb && rc == SL_OK && *reason == NULL; i++) {
        const sl_analyze_branch_t *b = &in->branches[i];
        sl_analyze_in_t bin = {.query = b->query,
                               .keys = b->keys,
                               .nkeys = b->nkeys,
                               .has_keys = true,
                               .sources = in->sources,
                               .nsources = in->nsources,
                               .rooted_keys = true,
                               .keyforms = in->keyforms,
                               .nkeyforms = in->nkeyforms};
        sl_analysis_t ba;
        rc = analyze_branch(&bin, "UNION ALL", i + 1, &ba, why, n, reason, err);
        if (rc != SL_OK || *reason != NULL)
            break;
        cJSON *obj = cJSON_CreateObject();
        if (obj == NULL || !cJSON_AddItemToArray(arr, obj) ||
            cJSON_AddStringToObject(obj, "affected", ba.affected_sql) == NULL ||
            cJSON_AddStringToObject(obj, "recompute", ba.recompute_sql) == NULL) {
            rc = sl_err_nomem(err, "the branch analyses");
        }
        sl_analysis_free(&ba);
    }
    if (rc == SL_OK && *reason == NULL) {
        a->branches = cJSON_PrintUnformatted(arr);
        a->mode = strdup("differential");
        if (a->branches == NULL || a->mode == NULL)
            rc = sl_err_nomem(err, "the branch analyses");
    }
    cJSON_Delete(arr);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* UNION, INTERSECT and EXCEPT (without ALL)                                 */
/* ------------------------------------------------------------------------ */

static const char *const why_setop =
    "UNION, INTERSECT and EXCEPT (without ALL) are refreshed differentially as a chain of one of "
    "them (a UNION b UNION c; no other set operation and no ALL among them, nothing such as "
    "ORDER BY applied to the whole), in the stream table's query or in the subquery that a query "
    "only filters and projects; this one is refreshed in full";

/* "UNION", "INTERSECT" or "EXCEPT" when sel is that set operation without
 * ALL, else NULL. */
static const char *
distinct_setop(const cJSON *sel)
{
    const char *op = str(sel, "op");
    if (op == NULL || cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(sel, "all")))
        return NULL;
    return strcmp(op, "SETOP_UNION") == 0       ? "UNION"
           : strcmp(op, "SETOP_INTERSECT") == 0 ? "INTERSECT"
           : strcmp(op, "SETOP_EXCEPT") == 0    ? "EXCEPT"
                                                : NULL;
}

/* The number of queries of `a UNION b UNION c ...` (or of a chain of
 * INTERSECTs or of EXCEPTs; PostgreSQL parses it left-deep), 0 when
 * something else is in the chain: another set operation, one with ALL, a
 * set operation in parentheses on the right. */
static size_t
setop_chain_branches(const cJSON *sel)
{
    const char *word = distinct_setop(sel);
    if (word == NULL)
        return 0;
    size_t nb = 1;
    for (const cJSON *s = sel; distinct_setop(s) != NULL; s = setop_side(s, "larg")) {
        const char *rop = str(setop_side(s, "rarg"), "op");
        const char *lop = str(setop_side(s, "larg"), "op");
        const char *lword = distinct_setop(setop_side(s, "larg"));
        if (strcmp(distinct_setop(s), word) != 0 ||
            (rop != NULL && strcmp(rop, "SETOP_NONE") != 0) ||
            (lop != NULL && strcmp(lop, "SETOP_NONE") != 0 &&
             (lword == NULL || strcmp(lword, word) != 0)))
            return 0;
        nb++;
    }
    return nb;
}

/* True when n, outside subqueries in expressions, groups (GROUP BY,
 * HAVING) or has a call that looks like an aggregate: one of PostgreSQL's
 * own by name, or one written with an aggregate's syntax (count(*),
 * DISTINCT, ORDER BY or FILTER in its parentheses). The creation check
 * (sluice._st_query_fallback), which reads PostgreSQL's analysis, is what
 * refuses every aggregate in a UNION's query, user-defined ones included;
 * this keeps the engine from taking one for a key where it can tell. */
static bool
groups_or_aggregates(const cJSON *n)
{
    /* (Space-separated, with a space at each end.) */
    static const char names[] =
        " count sum avg min max array_agg string_agg bool_and bool_or every json_agg jsonb_agg "
        "json_object_agg jsonb_object_agg bit_and bit_or bit_xor stddev stddev_pop stddev_samp "
        "variance var_pop var_samp xmlagg range_agg range_intersect_agg mode percentile_cont "
        "percentile_disc corr covar_pop covar_samp regr_avgx regr_avgy regr_count regr_intercept "
        "regr_r2 regr_slope regr_sxx regr_sxy regr_syy ";
    if (!cJSON_IsObject(n) && !cJSON_IsArray(n))
        return false;
    if (node(n, "SubLink") != NULL)
        return false;
    if (cJSON_GetObjectItemCaseSensitive(n, "groupClause") != NULL ||
        cJSON_GetObjectItemCaseSensitive(n, "havingClause") != NULL)
        return true;
    const cJSON *fc = node(n, "FuncCall");
    if (fc != NULL) {
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(fc, "agg_star")) ||
            cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(fc, "agg_distinct")) ||
            cJSON_GetObjectItemCaseSensitive(fc, "agg_order") != NULL ||
            cJSON_GetObjectItemCaseSensitive(fc, "agg_filter") != NULL)
            return true;
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(fc, "funcname");
        const char *name =
            str(node(cJSON_GetArrayItem(fn, cJSON_GetArraySize(fn) - 1), "String"), "sval");
        char word[80];
        if (name != NULL && strlen(name) + 3 <= sizeof word) {
            snprintf(word, sizeof word, " %s ", name);
            if (strstr(names, word) != NULL)
                return true;
        }
    }
    for (const cJSON *c = n->child; c != NULL; c = c->next)
        if (groups_or_aggregates(c))
            return true;
    return false;
}

/* Cuts q at its top-level set operations `word` (UNION, INTERSECT or
 * EXCEPT) into at most max [from, to) ranges of byte offsets (each
 * query's text); returns their number. */
static size_t
split_setops(const char *q, const toks_t *t, const char *word, int (*at)[2], size_t max)
{
    size_t n = 0;
    int depth = 0, from = 0;
    for (size_t k = 0; k < t->n; k++) {
        if (tok_is(q, &t->v[k], "("))
            depth++;
        else if (tok_is(q, &t->v[k], ")"))
            depth--;
        else if (depth == 0 && t->v[k].keyword && tok_is(q, &t->v[k], word)) {
            if (n == max)
                return 0;
            at[n][0] = from;
            at[n++][1] = t->v[k].start;
            if (k + 1 < t->n && tok_is(q, &t->v[k + 1], "DISTINCT"))
                k++;
            from = t->v[k].end;
        }
    }
    if (n == max)
        return 0;
    at[n][0] = from;
    at[n++][1] = (int)strlen(q);
    for (size_t i = 0; i < n; i++) { /* (the whitespace around each) */
        while (at[i][0] < at[i][1] && isspace((unsigned char)q[at[i][0]]))
            at[i][0]++;
        while (at[i][1] > at[i][0] && isspace((unsigned char)q[at[i][1] - 1]))
            at[i][1]--;
    }
    return n;
}

static char *renamed_aff(const sl_analyze_in_t *in, const char *const *from, const char *const *to,
                         size_t n, sl_err_t *err);

/* The name of each select-list entry of sel (ResTarget name, or the name
 * PostgreSQL gives a column or function call; NULL: none it can tell) into
 * names[0..max); returns their number, or -1 when there are more. */
static int
target_names(const cJSON *sel, const char **names, int max)
{
    int n = 0;
    const cJSON *tgt;
    cJSON_ArrayForEach (tgt, cJSON_GetObjectItemCaseSensitive(sel, "targetList")) {
        if (n == max)
            return -1;
        const cJSON *rt = node(tgt, "ResTarget");
        names[n++] = target_name(rt);
    }
    return n;
}

/* *out: part (malloc'ed, taken unless false is returned), a query of a
 * UNION, with `AS "__sluice_c<n>"` after each entry n of its select list
 * that has no name (own[n-1] NULL), which then names it (gen: the names'
 * storage). false: its select list could not be cut into ncols entries
 * (part and *out untouched); *out NULL: an error (err set). */
static bool
name_union_columns(char *part, const char **own, int ncols, char (*gen)[24], char **out,
                   sl_err_t *err)
{
    toks_t t = {0};
    if (scan_tokens(part, &t, err) != SL_OK) {
        free(part);
        *out = NULL;
        return true;
    }
    clauses_t c;
    find_clauses(part, &t, &c);
    int spans[MAX_TARGETS][2];
    if (c.tok[CL_SELECT] != 0 || c.tok[CL_FROM] < 0 || target_spans(part, &t, &c, spans) != ncols) {
        free(t.v);
        return false;
    }
    out_t o = {.rc = SL_OK, .err = err};
    int from = 0;
    for (int i = 0; i < ncols; i++) {
        if (own[i] != NULL)
            continue;
        int end = t.v[spans[i][1] - 1].end;
        outq(&o, part, from, end);
        snprintf(gen[i], sizeof gen[i], "__sluice_c%d", i + 1);
        outf(&o, " AS \"%s\"", gen[i]);
        own[i] = gen[i];
        from = end;
    }
    outq(&o, part, from, (int)strlen(part));
    free(t.v);
    free(part);
    *out = out_take(&o);
    return true;
}

/*
 * A UNION, INTERSECT or EXCEPT without ALL: its rows are distinct, so it is
 * keyed by all of its columns (sluice._st_select_keys says so of a stream
 * table's query). Whether a row is in it depends only on whether each query
 * gives that row: restricting every query to some rows and applying the
 * set operation gives the result restricted to those rows. So each query
 * is analysed on its own as one keyed by its columns at the keys' places
 * (the first query names the result's columns; a stream table's stored
 * text names every query's columns so, a subquery's keeps each query's own
 * names, and an entry without one is given one). The affected rows are
 * those of every query, united, under the result's names; they are
 * recomputed by running every query restricted to them, combined by the
 * same set operation: a row that one query of a UNION stops giving stays
 * when another still gives it, a row of an EXCEPT goes when the query
 * after it starts giving it.
 */
static int
analyze_distinct_setop(const sl_analyze_in_t *in, const cJSON *sel, sl_analysis_t *a, char *why,
                       size_t n, const char **reason, sl_err_t *err)
{
    enum { MAX_UNION = 32 };
    const char *word = distinct_setop(sel);
    size_t nb = setop_chain_branches(sel);
    if (nb == 0 || nb > MAX_UNION || in->rooted_keys ||
        cJSON_GetObjectItemCaseSensitive(sel, "sortClause") != NULL ||
        cJSON_GetObjectItemCaseSensitive(sel, "limitCount") != NULL ||
        cJSON_GetObjectItemCaseSensitive(sel, "limitOffset") != NULL ||
        cJSON_GetObjectItemCaseSensitive(sel, "withClause") != NULL ||
        cJSON_GetObjectItemCaseSensitive(sel, "lockingClause") != NULL) {
        *reason = why_setop;
        return SL_OK;
    }
    /* The queries, in order (the chain is left-deep: each right side is
     * one, the leftmost leaf the first). */
    const cJSON *leaf[MAX_UNION];
    size_t nl = nb;
    const cJSON *s = sel;
    for (; distinct_setop(s) != NULL; s = setop_side(s, "larg"))
        leaf[--nl] = setop_side(s, "rarg");
    leaf[0] = s;
    for (size_t i = 0; i < nb; i++)
        if (groups_or_aggregates(leaf[i])) {
            snprintf(why, n,
                     "%s branch %zu groups or aggregates (GROUP BY, HAVING or an aggregate, in it "
                     "or in a subquery in its FROM): inside %s %s a query is refreshed by the "
                     "values of its rows, which a group's aggregates are not; this one is "
                     "refreshed in full",
                     word, i + 1, article(word), word);
            *reason = why;
            return SL_OK;
        }
    /* Every column is a key: each key's place among the first query's
     * columns. */
    const char *first[MAX_TARGETS];
    int ncols = target_names(leaf[0], first, MAX_TARGETS);
    if (!in->has_keys || in->nkeys == 0 || ncols != (int)in->nkeys) {
        *reason = "rows have no key (content identity): the rows of a UNION, INTERSECT or EXCEPT "
                  "are keyed by all of its columns, which this stream table was not given";
        return SL_OK;
    }
    int pos[MAX_TARGETS];
    for (size_t k = 0; k < in->nkeys; k++) {
        pos[k] = -1;
        for (int c = 0; c < ncols && pos[k] < 0; c++)
            if (first[c] != NULL && strcmp(first[c], in->keys[k]) == 0)
                pos[k] = c;
        if (pos[k] < 0) {
            *reason = why_setop;
            return SL_OK;
        }
    }
    toks_t t = {0};
    int rc = scan_tokens(in->query, &t, err);
    if (rc != SL_OK)
        return rc;
    int at[MAX_UNION][2];
    size_t nparts = split_setops(in->query, &t, word, at, MAX_UNION);
    free(t.v);
    if (nparts != nb) {
        *reason = why_setop;
        return SL_OK;
    }
    const char **keys = calloc(in->nkeys, sizeof *keys);
    char(*gen)[24] = calloc(MAX_TARGETS, sizeof *gen);
    if (keys == NULL || gen == NULL) {
        free(keys);
        free(gen);
        return sl_err_nomem(err, "a set operation's columns");
    }
    out_t o = {.rc = SL_OK, .err = err};
    out_t r = {.rc = SL_OK, .err = err};
    for (size_t i = 0; i < nb && rc == SL_OK && *reason == NULL; i++) {
        /* Its names for the columns: an entry named like another is
         * refused, one without a name is given one. */
        const char *own[MAX_TARGETS];
        bool unnamed = false;
        if (target_names(leaf[i], own, MAX_TARGETS) != ncols) {
            *reason = why_setop;
            break;
        }
        for (int c = 0; c < ncols && *reason == NULL; c++) {
            unnamed = unnamed || own[c] == NULL;
            for (int d = 0; d < c && own[c] != NULL && *reason == NULL; d++)
                if (own[d] != NULL && strcmp(own[c], own[d]) == 0) {
                    snprintf(why, n,
                             "%s branch %zu: its columns %d and %d are both named %s; inside %s "
                             "%s each column of a query needs a name of its own (AS ...); this "
                             "one is refreshed in full",
                             word, i + 1, d + 1, c + 1, own[c], article(word), word);
                    *reason = why;
                }
        }
        if (*reason != NULL)
            break;
        char *part = strndup(in->query + at[i][0], (size_t)(at[i][1] - at[i][0]));
        if (part == NULL) {
            rc = sl_err_nomem(err, "a set operation's query");
            break;
        }
        if (unnamed) {
            char *named = part;
            if (!name_union_columns(part, own, ncols, gen, &named, err)) {
                free(part);
                snprintf(why, n, "%s branch %zu: %s", word, i + 1,
                         "its select list could not be matched with the parse tree");
                *reason = why;
                break;
            }
            if ((part = named) == NULL) {
                rc = err->code != SL_OK ? err->code : sl_err_nomem(err, "a set operation's query");
                break;
            }
        }
        bool renamed = false;
        for (size_t k = 0; k < in->nkeys; k++) {
            keys[k] = own[pos[k]];
            renamed = renamed || strcmp(keys[k], in->keys[k]) != 0;
        }
        char *aff_rel = renamed ? renamed_aff(in, in->keys, keys, in->nkeys, err) : NULL;
        if (renamed && aff_rel == NULL) {
            free(part);
            rc = sl_err_nomem(err, "a set operation's query");
            break;
        }
        sl_analyze_in_t bin = {.query = part,
                               .keys = keys,
                               .nkeys = in->nkeys,
                               .has_keys = true,
                               .sources = in->sources,
                               .nsources = in->nsources,
                               .aff_rel = renamed ? aff_rel : in->aff_rel,
                               .rooted_keys = true,
                               .in_subquery = in->in_subquery,
                               .keyforms = renamed ? NULL : in->keyforms,
                               .nkeyforms = renamed ? 0 : in->nkeyforms};
        sl_analysis_t ba;
        rc = analyze_branch(&bin, word, i + 1, &ba, why, n, reason, err);
        free(part);
        free(aff_rel);
        if (rc != SL_OK || *reason != NULL)
            break;
        /* Each query's affected rows, under the union's names. */
        outf(&o, "%sSELECT ", i ? " UNION " : "");
        for (size_t k = 0; k < in->nkeys; k++) {
            outf(&o, "%s\"__sluice_b\".", k ? ", " : "");
            outid(&o, keys[k]);
            outf(&o, " AS ");
            outid(&o, in->keys[k]);
        }
        outf(&o, " FROM (%s) AS \"__sluice_b\"", ba.affected_sql);
        if (i > 0)
            outf(&r, " %s ", word);
        outf(&r, "(%s)", ba.recompute_sql);
        sl_analysis_free(&ba);
    }
    free(keys);
    free(gen);
    if (rc == SL_OK && *reason == NULL) {
        a->affected_sql = out_take(&o);
        a->recompute_sql = out_take(&r);
        a->mode = strdup("differential");
        if (a->affected_sql == NULL || a->recompute_sql == NULL || a->mode == NULL)
            rc = sl_err_nomem(err, "the generated SQL");
    }
    sl_buf_free(&o.b);
    sl_buf_free(&r.b);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* A subquery in FROM that the query only filters and projects              */
/* ------------------------------------------------------------------------ */

/* The subquery when the query's FROM is one subquery and the query neither
 * groups nor removes duplicates; else NULL. */
static const cJSON *
derived_from(const cJSON *sel)
{
    const cJSON *from = cJSON_GetObjectItemCaseSensitive(sel, "fromClause");
    /* (Window functions of its own compute over rows of many of the
     * subquery's units: not a filter. Those inside the subquery are in
     * its FROM item.) */
    if (cJSON_GetArraySize(from) != 1 ||
        cJSON_GetObjectItemCaseSensitive(sel, "groupClause") != NULL ||
        cJSON_GetObjectItemCaseSensitive(sel, "havingClause") != NULL ||
        cJSON_GetObjectItemCaseSensitive(sel, "distinctClause") != NULL ||
        cJSON_GetObjectItemCaseSensitive(sel, "windowClause") != NULL ||
        has_window(cJSON_GetObjectItemCaseSensitive(sel, "targetList")) ||
        has_window(cJSON_GetObjectItemCaseSensitive(sel, "sortClause")))
        return NULL;
    return node(cJSON_GetArrayItem(from, 0), "RangeSubselect");
}

/* When select-list entry tgt of the query outputs a column of the subquery
 * called alias unchanged (alias.col or col): true, with that column (*col)
 * and the entry's output name (*out). False otherwise; *star is set when
 * the entry is `*` or `alias.*`, which outputs every column as it is. */
static bool
derived_ref(const cJSON *tgt, const char *alias, const char **col, const char **out, bool *star)
{
    const cJSON *rt = node(tgt, "ResTarget");
    const cJSON *val = cJSON_GetObjectItemCaseSensitive(rt, "val");
    const cJSON *fields = cJSON_GetObjectItemCaseSensitive(node(val, "ColumnRef"), "fields");
    int nf = cJSON_GetArraySize(fields);
    const char *t = nf == 2 ? str(node(cJSON_GetArrayItem(fields, 0), "String"), "sval") : NULL;
    if (nf < 1 || nf > 2 || (nf == 2 && (t == NULL || strcmp(t, alias) != 0)))
        return false;
    const cJSON *last = cJSON_GetArrayItem(fields, nf - 1);
    if (node(last, "A_Star") != NULL) {
        *star = true;
        return false;
    }
    *col = str(node(last, "String"), "sval");
    *out = str(rt, "name") != NULL ? str(rt, "name") : *col;
    return *col != NULL && *out != NULL;
}

/* The subquery's column that select-list entry tgt of the query outputs
 * unchanged as `name`, or NULL (star: see derived_ref). */
static const char *
derived_column(const cJSON *tgt, const char *alias, const char *name, bool *star)
{
    const char *col, *out;
    return derived_ref(tgt, alias, &col, &out, star) && strcmp(out, name) == 0 ? col : NULL;
}

/* Appends the query without ORDER BY (and what follows it), the text
 * between the parentheses of tokens open and close replaced by sql: the
 * new rows of a query whose subquery in FROM is recomputed for the
 * affected keys only. */
static void
out_with_subquery(out_t *o, const char *q, const toks_t *t, const clauses_t *c, int open, int close,
                  const char *sql)
{
    int body_end = c->end;
    for (int w = CL_ORDER; w < CL_COUNT; w++)
        if (c->tok[w] >= 0 && t->v[c->tok[w]].start < body_end)
            body_end = t->v[c->tok[w]].start;
    splice_t sp = {.open = open, .close = close, .sql = sql};
    outq_spliced(o, q, t, 0, body_end, &sp);
}

/* The relation a subquery's recompute_sql reads its affected keys from
 * when the query around it names them otherwise: the query's affected
 * relation (out_aff) with column from[i] renamed to[i]. NULL: no memory
 * (err is set). */
static char *
renamed_aff(const sl_analyze_in_t *in, const char *const *from, const char *const *to, size_t n,
            sl_err_t *err)
{
    out_t o = {.rc = SL_OK, .err = err};
    outf(&o, "(SELECT ");
    for (size_t k = 0; k < n; k++) {
        outf(&o, "%s", k ? ", " : "");
        outid(&o, from[k]);
        outf(&o, " AS ");
        outid(&o, to[k]);
    }
    outf(&o, " FROM ");
    out_aff(&o, in); /* a subquery in a subquery: over the renaming above */
    outf(&o, ") AS \"__sluice_aff\"");
    return out_take(&o);
}

/* Reads a text[] literal as out_units_literal writes it ({"a","b"}) into
 * names, pointing into buf; returns the count, 0 when it is not one. */
static size_t
parse_units(const char *lit, char *buf, size_t bufsz, const char **names, size_t max)
{
    size_t n = 0, b = 0;
    const char *p = lit;
    if (*p++ != '{')
        return 0;
    while (*p == '"' && n < max) {
        names[n++] = buf + b;
        for (p++; *p != '\0' && *p != '"'; p++) {
            if (*p == '\\' && p[1] != '\0')
                p++;
            if (b + 1 >= bufsz)
                return 0;
            buf[b++] = *p;
        }
        if (*p != '"' || b + 1 >= bufsz)
            return 0;
        buf[b++] = '\0';
        p++;
        if (*p == ',')
            p++;
    }
    return *p == '}' ? n : 0;
}

/* The name under which select-list entry tgt outputs column col of the
 * subquery called alias unchanged, or NULL (star: see derived_ref). */
static const char *
derived_output(const cJSON *tgt, const char *alias, const char *col, bool *star)
{
    const char *c, *out;
    return derived_ref(tgt, alias, &c, &out, star) && strcmp(c, col) == 0 ? out : NULL;
}

/* For analyze_derived, when the subquery (analysed as sa from *sin) has
 * refresh units other than its rows (the groups of a subquery joined in
 * it, or the first table's rows of a LEFT JOIN chain): its unit columns (iu)
 * as the query outputs them (ou, *nu of them), and the subquery analysed
 * again (sb) reading its affected units from the query's. Returns SL_OK
 * with *reason set (in why) when the query does not select them. */
static int
derived_units(const sl_analyze_in_t *in, const cJSON *sel, const char *alias, sl_analyze_in_t *sin,
              const sl_analysis_t *sa, char *ubuf, size_t ubufsz, const char **iu, const char **ou,
              size_t *nu, sl_analysis_t *sb, char *why, size_t n, const char **reason,
              sl_err_t *err)
{
    *nu = parse_units(sa->unit_columns, ubuf, ubufsz, iu, MAX_KEY_COLS);
    if (*nu == 0) {
        *reason = "the subquery in FROM: its refresh units could not be read";
        return SL_OK;
    }
    for (size_t j = 0; j < *nu; j++) {
        const cJSON *tgt;
        bool star = false;
        ou[j] = NULL;
        cJSON_ArrayForEach (tgt, cJSON_GetObjectItemCaseSensitive(sel, "targetList"))
            if (ou[j] == NULL)
                ou[j] = derived_output(tgt, alias, iu[j], &star);
        if (ou[j] == NULL && star)
            ou[j] = iu[j];
        if (ou[j] == NULL) {
            snprintf(why, n,
                     sa->grouped_units
                         ? "the subquery in FROM is refreshed by the groups of a subquery joined "
                           "in it: select its column %s unchanged"
                     : sa->window_units
                         ? "the subquery in FROM is refreshed by the partitions of its window "
                           "functions: select its column %s unchanged"
                         : "the subquery in FROM has a LEFT JOIN, refreshed by the rows of its "
                           "first table: select its column %s unchanged",
                     iu[j]);
            *reason = why;
            return SL_OK;
        }
    }
    char *uaff = renamed_aff(in, ou, iu, *nu, err);
    if (uaff == NULL)
        return SL_ENOMEM;
    sin->aff_rel = uaff;
    /* Under the inner names, which may be the stream table's names of
     * other columns: no key forms. */
    const sl_analyze_keyform_t *forms = sin->keyforms;
    size_t nforms = sin->nkeyforms;
    sin->keyforms = NULL;
    sin->nkeyforms = 0;
    sl_err_t e;
    sl_err_clear(&e);
    int rc = sl_analyze(sin, sb, &e);
    sin->keyforms = forms;
    sin->nkeyforms = nforms;
    if (rc != SL_OK) {
        *err = e;
    } else if (strcmp(sb->mode, "differential") != 0 || sb->unit_columns == NULL) {
        *reason = "the subquery in FROM: its second analysis differs from its first";
    }
    free(uaff);
    sin->aff_rel = NULL;
    return rc;
}

/*
 * A query whose FROM is one subquery s that is more than a table seen
 * through a projection (see derived_from), for example
 *
 *     SELECT s.k, s.total * 2 AS t2
 *       FROM (SELECT k, sum(x) AS total FROM t GROUP BY k) AS s
 *      WHERE s.total > 10
 *
 * With a row identity, such a query only filters and projects s's rows
 * (PostgreSQL rejects an aggregate beside a plain column without GROUP
 * BY). The identity is made of columns of s, so s is analysed as a query of
 * its own with those columns as its key, and the analysis is wrapped:
 * affected_sql is s's, its columns renamed to the query's key columns;
 * recompute_sql is the query with s's text replaced by s's recompute_sql,
 * so the query's WHERE and select list apply to the recomputed rows (a row
 * that the WHERE now rejects is missing from the new rows, so deleted).
 * When s's units are not its rows (a LEFT JOIN chain, a subquery that
 * groups joined in it), the query keeps them: it must select s's unit
 * columns, and s is analysed again to read its units under those names.
 * Returns SL_OK with *reason set (in why) when it is not differential.
 */
static int
analyze_derived(const sl_analyze_in_t *in, const cJSON *sel, const cJSON *rs, const toks_t *t,
                const clauses_t *c, sl_analysis_t *a, char *why, size_t n, const char **reason,
                sl_err_t *err)
{
    static const char *const why_cols =
        "the subquery in FROM: a row-identity column must be one of its columns, selected "
        "unchanged";
    const char *q = in->query;
    const char *alias = str(node(rs, "alias"), "aliasname");
    if (in->nkeys == 0) {
        /* One row: the query may aggregate the subquery's rows without
         * GROUP BY, which the parse tree cannot tell from a projection. */
        *reason = "the subquery in FROM: a query around it is refreshed differentially only when "
                  "its rows have a key (GROUP BY keys, DISTINCT columns or primary keys "
                  "selected); one row (an aggregate without GROUP BY) is refreshed in full";
        return SL_OK;
    }
    if (alias == NULL || cJSON_GetObjectItemCaseSensitive(node(rs, "alias"), "colnames") != NULL ||
        cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(rs, "lateral"))) {
        *reason = "the subquery in FROM: LATERAL and column aliases (AS s(a, b)) are refreshed in "
                  "full";
        return SL_OK;
    }
    /* The subquery's text: from the parenthesis right after FROM to its match. */
    int open = c->tok[CL_FROM] + 1, close = -1, depth = 0;
    for (int i = open; i < (int)t->n && close < 0; i++) {
        if (tok_is(q, &t->v[i], "("))
            depth++;
        else if (tok_is(q, &t->v[i], ")") && --depth == 0)
            close = i;
    }
    if (open >= (int)t->n || !tok_is(q, &t->v[open], "(") || close < 0) {
        *reason = "the subquery in FROM could not be located in the query text";
        return SL_OK;
    }
    /* Its columns that the query's key columns are. */
    const char *cols[MAX_KEY_COLS];
    bool renamed = false;
    if (in->nkeys > MAX_KEY_COLS) {
        *reason = "the row identity has too many columns";
        return SL_OK;
    }
    for (size_t k = 0; k < in->nkeys; k++) {
        const cJSON *tgt;
        bool star = false;
        cols[k] = NULL;
        cJSON_ArrayForEach (tgt, cJSON_GetObjectItemCaseSensitive(sel, "targetList"))
            if ((cols[k] = derived_column(tgt, alias, in->keys[k], &star)) != NULL)
                break;
        if (cols[k] == NULL && star)
            cols[k] = in->keys[k];
        for (size_t j = 0; j < k && cols[k] != NULL; j++)
            if (strcmp(cols[j], cols[k]) == 0)
                cols[k] = NULL;
        if (cols[k] == NULL) {
            *reason = why_cols;
            return SL_OK;
        }
        renamed = renamed || strcmp(cols[k], in->keys[k]) != 0;
    }
    int rc = SL_OK;
    char *aff_rel = renamed ? renamed_aff(in, in->keys, cols, in->nkeys, err) : NULL;
    char *inner = strndup(q + t->v[open].end, (size_t)(t->v[close].start - t->v[open].end));
    if (inner == NULL || (renamed && aff_rel == NULL)) {
        free(inner);
        free(aff_rel);
        return sl_err_nomem(err, "the subquery's analysis");
    }
    sl_analyze_in_t sin = {.query = inner,
                           .keys = cols,
                           .nkeys = in->nkeys,
                           .has_keys = true,
                           .sources = in->sources,
                           .nsources = in->nsources,
                           .aff_rel = renamed ? aff_rel : in->aff_rel,
                           .rooted_keys = in->rooted_keys,
                           .in_subquery = true,
                           .keyforms = renamed ? NULL : in->keyforms,
                           .nkeyforms = renamed ? 0 : in->nkeyforms};
    sl_analysis_t sa, sb = {0};
    sl_err_t e;
    sl_err_clear(&e);
    int src = sl_analyze(&sin, &sa, &e);
    if (src == SL_EUSAGE) {
        snprintf(why, n, "the subquery in FROM: %s", e.msg);
        *reason = why;
    } else if (src != SL_OK) {
        *err = e;
        rc = src;
    } else if (strcmp(sa.mode, "differential") != 0) {
        snprintf(why, n, "the subquery in FROM: %s", sa.reason);
        *reason = why;
    } else {
        /* The subquery's columns and the query's that name a refresh unit:
         * its keys, or its units (a LEFT JOIN chain, a join with a
         * subquery that groups). */
        const char *const *from_cols = cols, *const *to_cols = in->keys;
        size_t ncols = in->nkeys;
        const sl_analysis_t *use = &sa;
        char ubuf[SL_ERR_MSG_MAX];
        const char *iu[MAX_KEY_COLS], *ou[MAX_KEY_COLS];
        if (sa.unit_columns != NULL) {
            rc = derived_units(in, sel, alias, &sin, &sa, ubuf, sizeof ubuf, iu, ou, &ncols, &sb,
                               why, n, reason, err);
            from_cols = iu;
            to_cols = ou;
            use = &sb;
        }
        if (rc == SL_OK && *reason == NULL) {
            out_t o = {.rc = SL_OK, .err = err};
            out_t r = {.rc = SL_OK, .err = err};
            out_t u = {.rc = SL_OK, .err = err};
            outf(&o, "SELECT ");
            for (size_t k = 0; k < ncols; k++) {
                outf(&o, "%s\"__sluice_d\".", k ? ", " : "");
                outid(&o, from_cols[k]);
                outf(&o, " AS ");
                outid(&o, to_cols[k]);
            }
            outf(&o, " FROM (%s) AS \"__sluice_d\"", use->affected_sql);
            out_with_subquery(&r, q, t, c, open, close, use->recompute_sql);
            if (use->unit_columns != NULL) {
                keyexpr_t units[MAX_KEY_COLS];
                for (size_t k = 0; k < ncols; k++)
                    units[k] = (keyexpr_t){.col = to_cols[k]};
                out_units_literal(&u, units, ncols);
                a->unit_columns = out_take(&u);
                a->grouped_units = use->grouped_units;
                a->window_units = use->window_units;
            }
            a->affected_sql = out_take(&o);
            a->recompute_sql = out_take(&r);
            a->mode = strdup("differential");
            if (a->affected_sql == NULL || a->recompute_sql == NULL || a->mode == NULL ||
                (use->unit_columns != NULL && a->unit_columns == NULL))
                rc = sl_err_nomem(err, "the generated SQL");
        }
    }
    sl_analysis_free(&sa);
    sl_analysis_free(&sb);
    free(inner);
    free(aff_rel);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* A subquery that groups, joined with tables                               */
/* ------------------------------------------------------------------------ */

#define MAX_QUALS 64

/* The parts of ColumnRef n written tab.col (2) or col (1, *tab NULL); 0
 * for anything else (a star, three parts, not a column). */
static int
colref(const cJSON *n, const char **tab, const char **col)
{
    const cJSON *fields = cJSON_GetObjectItemCaseSensitive(node(n, "ColumnRef"), "fields");
    int nf = cJSON_GetArraySize(fields);
    *tab = nf == 2 ? str(node(cJSON_GetArrayItem(fields, 0), "String"), "sval") : NULL;
    *col = str(node(cJSON_GetArrayItem(fields, nf - 1), "String"), "sval");
    if (*col == NULL || (nf == 2 && *tab == NULL) || nf < 1 || nf > 2)
        return 0;
    return nf;
}

/* Collects the ON conditions of the joins in FROM item n into v. */
static void
join_quals(const cJSON *n, const cJSON **v, size_t *nv)
{
    const cJSON *j = node(n, "JoinExpr");
    if (j == NULL)
        return;
    const cJSON *quals = cJSON_GetObjectItemCaseSensitive(j, "quals");
    if (quals != NULL && *nv < MAX_QUALS)
        v[(*nv)++] = quals;
    join_quals(cJSON_GetObjectItemCaseSensitive(j, "larg"), v, nv);
    join_quals(cJSON_GetObjectItemCaseSensitive(j, "rarg"), v, nv);
}

/* The ON condition of the join in FROM item n whose right side is the
 * subquery called alias, or NULL. */
static const cJSON *
own_quals(const cJSON *n, const char *alias)
{
    const cJSON *j = node(n, "JoinExpr");
    if (j == NULL)
        return NULL;
    const cJSON *rs = node(cJSON_GetObjectItemCaseSensitive(j, "rarg"), "RangeSubselect");
    const char *ra = str(node(rs, "alias"), "aliasname");
    if (ra != NULL && strcmp(ra, alias) == 0)
        return cJSON_GetObjectItemCaseSensitive(j, "quals");
    const cJSON *q = own_quals(cJSON_GetObjectItemCaseSensitive(j, "larg"), alias);
    return q != NULL ? q : own_quals(cJSON_GetObjectItemCaseSensitive(j, "rarg"), alias);
}

/* Finds, among the AND-ed conjuncts of qual, an equality alias.col = x.y
 * (either way round, x another relation) and sets *tab, *col to x, y. */
static bool
equated(const cJSON *qual, const char *alias, const char *col, const char **tab, const char **pcol,
        int nth, int *seen)
{
    const cJSON *n;
    if ((n = node(qual, "BoolExpr")) != NULL) {
        if (str(n, "boolop") == NULL || strcmp(str(n, "boolop"), "AND_EXPR") != 0)
            return false;
        const cJSON *arg;
        cJSON_ArrayForEach (arg, cJSON_GetObjectItemCaseSensitive(n, "args"))
            if (equated(arg, alias, col, tab, pcol, nth, seen))
                return true;
        return false;
    }
    if (!equi_quals(qual))
        return false;
    n = node(qual, "A_Expr");
    const cJSON *side[2] = {cJSON_GetObjectItemCaseSensitive(n, "lexpr"),
                            cJSON_GetObjectItemCaseSensitive(n, "rexpr")};
    for (int s = 0; s < 2; s++) {
        const char *t1, *c1, *t2, *c2;
        if (colref(side[s], &t1, &c1) == 2 && colref(side[1 - s], &t2, &c2) == 2 &&
            strcmp(t1, alias) == 0 && strcmp(c1, col) == 0 && strcmp(t2, alias) != 0 &&
            (*seen)++ == nth) {
            *tab = t2;
            *pcol = c2;
            return true;
        }
    }
    return false;
}

/* A column of the subquery named alias that n refers to and that is not
 * one of its key columns dk (written alias.col, or col alone when col is one
 * of its output names dcols), or NULL. */
static const char *
nonkey_ref(const cJSON *n, const char *alias, const char *const *dcols, size_t ndcols,
           const char *const *dk, size_t ndk)
{
    if (n == NULL)
        return NULL;
    if (node(n, "ColumnRef") != NULL) {
        const char *tab, *col;
        int nf = colref(n, &tab, &col);
        bool mine = nf == 2 && strcmp(tab, alias) == 0;
        for (size_t i = 0; nf == 1 && i < ndcols && !mine; i++)
            mine = dcols[i] != NULL && strcmp(dcols[i], col) == 0;
        for (size_t i = 0; mine && i < ndk; i++)
            if (strcmp(dk[i], col) == 0)
                mine = false;
        if (mine)
            return col;
    }
    for (const cJSON *c = n->child; c != NULL; c = c->next) {
        const char *r = nonkey_ref(c, alias, dcols, ndcols, dk, ndk);
        if (r != NULL)
            return r;
    }
    return NULL;
}

/* True when token k is the identifier id (as the parse tree spells it). */
static bool
ident_is(const char *q, const tok_t *k, const char *id)
{
    size_t n = strlen(id), len = (size_t)(k->end - k->start);
    if (len == n + 2 && q[k->start] == '"')
        return strncmp(q + k->start + 1, id, n) == 0 && q[k->end - 1] == '"';
    return len == n && strncasecmp(q + k->start, id, n) == 0;
}

/* Splits the tokens [from, to) of q at depth-0 commas into spans. */
static size_t
split_commas(const char *q, const toks_t *t, int from, int to, int (*spans)[2], size_t max)
{
    size_t n = 0;
    int depth = 0, s = from;
    for (int i = from; i <= to && n < max; i++) {
        bool at_end = i == to;
        if (!at_end && tok_is(q, &t->v[i], "("))
            depth++;
        else if (!at_end && tok_is(q, &t->v[i], ")"))
            depth--;
        if (at_end || (depth == 0 && tok_is(q, &t->v[i], ","))) {
            spans[n][0] = s;
            spans[n][1] = i; /* exclusive */
            n++;
            s = i + 1;
        }
    }
    return n;
}

/* Relation sql with a column "__sluice_m" that is true: after a LEFT
 * JOIN, tells its joined rows from NULL-extended ones whatever its columns
 * hold. NULL: no memory (err is set). */
static char *
marked_rel(const char *sql, sl_err_t *err)
{
    out_t o = {.rc = SL_OK, .err = err};
    outf(&o, "(SELECT \"__sluice_a\".*, true AS \"__sluice_m\" FROM (%s) AS \"__sluice_a\")", sql);
    return out_take(&o);
}

/* The first table's unit column (of rooted, nroot of them, the first table
 * called root) that own, an ON condition, makes equal to key column col of
 * the subquery called alias; NULL when there is none. */
static const char *
equal_unit(const cJSON *own, const char *alias, const char *col, const char *root,
           const keyexpr_t *rooted, size_t nroot)
{
    for (int nth = 0; own != NULL; nth++) {
        const char *pt, *pc;
        int seen = 0;
        if (!equated(own, alias, col, &pt, &pc, nth, &seen))
            return NULL;
        for (size_t k = 0; k < nroot; k++)
            if (strcmp(pt, root) == 0 && strcmp(pc, rooted[k].src) == 0)
                return rooted[k].col;
    }
    return NULL;
}

static const char *const why_grouping_outer =
    "a subquery that groups (GROUP BY or DISTINCT) is joined differentially by inner joins, or "
    "as the right side of a LEFT JOIN, not as the first relation of a chain of LEFT JOINs";

/*
 * A join of tables with one subquery d that groups (GROUP BY or DISTINCT),
 * for example
 *
 *     SELECT c.id, c.name, t.total
 *       FROM customers c
 *       JOIN (SELECT customer_id, sum(amount) AS total FROM orders GROUP BY customer_id) t
 *         ON t.customer_id = c.id
 *
 * The refresh unit is a group of d (unit_columns): every row of the result
 * carries d's key in a selected column (t.customer_id, or c.id, which ON
 * makes equal to it). The units a window touches are
 *   - d's own affected keys (d analysed alone, as in analyze_derived), and
 *   - for every table, the d keys of the join rows that involve one of its
 *     changed rows, over the tables after and before the window (the terms
 *     of gen_affected_inner), with d replaced in both by the keys it can
 *     have: its FROM and WHERE selecting its GROUP BY expressions (for
 *     DISTINCT, its select list), which PostgreSQL flattens into the join
 *     and reaches by index from the changed rows.
 * Those possible keys are read as they are now, also against the tables as
 * they were: a group of d that the window removed is among d's own affected
 * keys already. So the join's ON and WHERE may use only d's key columns
 * (the others are not in that relation), and each key column must be equal
 * to another relation's column there, which keeps NULL keys out of the
 * result's rows. The new rows of the units: the query with d replaced by
 * d's recompute_sql for their keys.
 *
 * With LEFT JOINs (rooted: the first table's key columns as the query
 * selects them, from map_units), d is the right side of one of them, or
 * inner-joined in the chain, and the refresh unit is a row of the first
 * table, as for a chain of tables (gen_affected_rooted). A group that the
 * window removed is not among the keys d can have now, so the tables'
 * terms read d as those keys plus d's affected keys; d's own terms read
 * its affected keys alone. The new rows of the units: the query restricted
 * to them, with d restricted to the groups that the units' rows can meet:
 * the units themselves when d's own ON makes each key column equal to a
 * column of the first table's key, else FROM with d as its possible keys,
 * for the units' first-table rows. Those terms and that FROM read no
 * WHERE, so only the ON conditions are held to d's key columns.
 *
 * Returns SL_OK with *reason set (in why) when it is not differential.
 */
static int
analyze_joined(const sl_analyze_in_t *in, const cJSON *sel, from_t *f, const toks_t *t,
               const clauses_t *c, const keyexpr_t *rooted, sl_analysis_t *a, char *why, size_t n,
               const char **reason, sl_err_t *err)
{
    static const char *const why_keys =
        "the subquery in FROM that groups: every GROUP BY item must be a plain column it "
        "selects, every DISTINCT column must have a name";
    const char *q = in->query;
    rel_t *d = &f->v[f->grouping];
    const char *alias = d->alias;
    if (cJSON_GetObjectItemCaseSensitive(sel, "groupClause") != NULL ||
        cJSON_GetObjectItemCaseSensitive(sel, "havingClause") != NULL ||
        cJSON_GetObjectItemCaseSensitive(sel, "distinctClause") != NULL || in->nkeys == 0) {
        *reason = "a query that groups, aggregates or removes duplicates over a join with a "
                  "subquery that groups is refreshed in full";
        return SL_OK;
    }
    /* Its parentheses: ( SELECT ... ) [AS] alias, once in FROM. */
    int end = clause_end(q, t, c, CL_FROM), found = 0;
    for (int i = c->tok[CL_FROM] + 1; i + 1 < (int)t->n && t->v[i].start < end; i++) {
        if (!tok_is(q, &t->v[i], "(") || !tok_is(q, &t->v[i + 1], "SELECT"))
            continue;
        int depth = 0, close = -1;
        for (int j = i; j < (int)t->n && close < 0; j++) {
            if (tok_is(q, &t->v[j], "("))
                depth++;
            else if (tok_is(q, &t->v[j], ")") && --depth == 0)
                close = j;
        }
        int k = close + 1;
        if (close > 0 && k < (int)t->n && tok_is(q, &t->v[k], "AS"))
            k++;
        if (close > 0 && k < (int)t->n && ident_is(q, &t->v[k], alias)) {
            found++;
            d->open = i;
            d->close = close;
        }
    }
    if (found != 1) {
        *reason = "the subquery in FROM could not be located in the query text";
        return SL_OK;
    }
    d->loc = t->v[d->open].start;
    const char *why_join = check_join(q, t, f, why, n);
    if (why_join != NULL) {
        *reason = why_join;
        return SL_OK;
    }

    /* d's key columns: its GROUP BY columns as it names them, or (DISTINCT)
     * every column. dcols: all its column names (NULL: an unnamed one). */
    const cJSON *targets = cJSON_GetObjectItemCaseSensitive(d->gsel, "targetList");
    const cJSON *group = cJSON_GetObjectItemCaseSensitive(d->gsel, "groupClause");
    const char *dcols[256], *dk[MAX_KEY_COLS];
    size_t ndcols = 0, ndk = 0;
    const cJSON *tgt, *item;
    cJSON_ArrayForEach (tgt, targets) {
        if (ndcols == 256) {
            *reason = "the subquery in FROM selects too many columns";
            return SL_OK;
        }
        const cJSON *rt = node(tgt, "ResTarget");
        dcols[ndcols++] = target_name(rt);
    }
    if (group != NULL) {
        cJSON_ArrayForEach (item, group) {
            const char *gt, *gc, *name = NULL;
            int gn = colref(item, &gt, &gc);
            size_t i = 0;
            cJSON_ArrayForEach (tgt, targets) {
                const char *tt, *tc;
                int tn = colref(cJSON_GetObjectItemCaseSensitive(node(tgt, "ResTarget"), "val"),
                                &tt, &tc);
                if (gn > 0 && tn > 0 && name == NULL && strcmp(tc, gc) == 0 &&
                    (gn == 1 || tn == 1 || strcmp(tt, gt) == 0))
                    name = dcols[i];
                i++;
            }
            if (name == NULL || ndk == MAX_KEY_COLS) {
                *reason = why_keys;
                return SL_OK;
            }
            dk[ndk++] = name;
        }
    } else {
        for (size_t i = 0; i < ndcols; i++) {
            if (dcols[i] == NULL || ndk == MAX_KEY_COLS) {
                *reason = why_keys;
                return SL_OK;
            }
            dk[ndk++] = dcols[i];
        }
    }
    for (size_t i = 0; i < ndk; i++)
        for (size_t j = 0; j < i; j++)
            if (strcmp(dk[i], dk[j]) == 0) {
                *reason = why_keys;
                return SL_OK;
            }

    /* The conditions of the join: WHERE and every ON. With LEFT JOINs
     * (rooted), WHERE may use any column of d: the units' terms and the
     * keys d is recomputed for read FROM alone. */
    const cJSON *quals[MAX_QUALS];
    size_t nq = 0, nwhere = 0;
    if (cJSON_GetObjectItemCaseSensitive(sel, "whereClause") != NULL)
        quals[nq++] = cJSON_GetObjectItemCaseSensitive(sel, "whereClause");
    nwhere = nq;
    cJSON_ArrayForEach (item, cJSON_GetObjectItemCaseSensitive(sel, "fromClause"))
        join_quals(item, quals, &nq);
    for (size_t i = rooted != NULL ? nwhere : 0; i < nq; i++) {
        const char *col = nonkey_ref(quals[i], alias, dcols, ndcols, dk, ndk);
        if (col != NULL) {
            snprintf(why, n,
                     rooted != NULL
                         ? "the subquery %s in FROM groups: the ON conditions may use only its key "
                           "columns, and %s is not one (filter on it in WHERE)"
                         : "the subquery %s in FROM groups: the join's ON and WHERE may use only "
                           "its key columns, and %s is not one (filter on it in a query around "
                           "this one)",
                     alias, col);
            *reason = why;
            return SL_OK;
        }
    }
    /* The unit columns (inner joins): each key column of d as the query
     * selects it, or a column that a condition makes equal to it. */
    keyexpr_t units[MAX_KEY_COLS];
    for (size_t j = 0; j < ndk && rooted == NULL; j++) {
        units[j] = (keyexpr_t){.from = -1, .alias = alias, .src = dk[j]};
        bool equal = false;
        cJSON_ArrayForEach (tgt, cJSON_GetObjectItemCaseSensitive(sel, "targetList"))
            if (units[j].col == NULL)
                units[j].col = target_column(tgt, alias, dk[j], false);
        for (size_t i = 0; i < nq; i++)
            for (int nth = 0;; nth++) {
                const char *pt, *pc;
                int seen = 0;
                if (!equated(quals[i], alias, dk[j], &pt, &pc, nth, &seen))
                    break;
                equal = true;
                cJSON_ArrayForEach (tgt, cJSON_GetObjectItemCaseSensitive(sel, "targetList"))
                    if (units[j].col == NULL)
                        units[j].col = target_column(tgt, pt, pc, false);
            }
        if (!equal || units[j].col == NULL) {
            snprintf(why, n,
                     "the subquery %s in FROM groups: its key column %s must be equal (=) to a "
                     "column of another table in ON or WHERE, and be selected, or that column "
                     "be selected (written %s.%s or table.column)",
                     alias, dk[j], alias, dk[j]);
            *reason = why;
            return SL_OK;
        }
        for (size_t i = 0; i < j; i++)
            if (strcmp(units[i].col, units[j].col) == 0) {
                snprintf(why, n,
                         "the subquery %s in FROM groups: its key columns %s and %s are the "
                         "same column of the result",
                         alias, dk[i], dk[j]);
                *reason = why;
                return SL_OK;
            }
    }
    size_t nroot = rooted != NULL ? f->v[0].src->npk : 0;
    sl_analyze_in_t unit_in = *in; /* rooted: the units as keys, for filter_nonnull */
    unit_in.nkeys = nroot;

    int rc = SL_OK;
    char *inner =
        strndup(q + t->v[d->open].end, (size_t)(t->v[d->close].start - t->v[d->open].end));
    char *superset = NULL, *aff_rel = NULL, *marked = NULL, *extended = NULL, *gaff = NULL;
    toks_t dt = {0};
    sl_analysis_t sa = {0};
    if (inner == NULL) {
        rc = sl_err_nomem(err, "the subquery's analysis");
        goto out;
    }

    /* The keys d can have: its FROM and WHERE, selecting its GROUP BY items
     * (or, for DISTINCT, its select list). */
    if ((rc = scan_tokens(inner, &dt, err)) != SL_OK)
        goto out;
    clauses_t dc;
    find_clauses(inner, &dt, &dc);
    int spans[MAX_KEY_COLS + 1][2];
    int g = dc.tok[CL_GROUP], last = g + 2;
    if (dc.tok[CL_SELECT] != 0 || dc.tok[CL_FROM] < 0 ||
        (group != NULL && (g < 0 || g + 2 >= (int)dt.n || !tok_is(inner, &dt.v[g + 1], "BY"))) ||
        (group == NULL && (dt.n < 3 || !tok_is(inner, &dt.v[1], "DISTINCT")))) {
        *reason = "the subquery in FROM could not be located in the query text";
        goto out;
    }
    if (group != NULL) {
        int gend = clause_end(inner, &dt, &dc, CL_GROUP);
        while (last < (int)dt.n && dt.v[last].start < gend)
            last++;
        if (split_commas(inner, &dt, g + 2, last, spans, MAX_KEY_COLS + 1) != ndk) {
            *reason = "the subquery in FROM: its GROUP BY could not be matched with the parse tree";
            goto out;
        }
    }
    out_t ss = {.rc = SL_OK, .err = err};
    outf(&ss, "(SELECT ");
    if (group != NULL) {
        for (size_t j = 0; j < ndk; j++) {
            outf(&ss, "%s(", j ? ", " : "");
            outq(&ss, inner, dt.v[spans[j][0]].start, dt.v[spans[j][1] - 1].end);
            outf(&ss, ") AS ");
            outid(&ss, dk[j]);
        }
        outf(&ss, " ");
    } else {
        outq(&ss, inner, dt.v[2].start, dt.v[dc.tok[CL_FROM]].start);
    }
    outq(&ss, inner, dt.v[dc.tok[CL_FROM]].start, clause_end(inner, &dt, &dc, CL_WHERE));
    outf(&ss, ")");
    if ((superset = out_take(&ss)) == NULL) {
        rc = sl_err_nomem(err, "the generated SQL");
        goto out;
    }
    d->superset = superset;

    /* The keys d is recomputed for: the units renamed to d's key columns,
     * or (rooted) the keys that the units' first-table rows can meet: when
     * d's own ON makes each of its key columns equal to a column of the
     * first table's key, the units themselves (the common case, read
     * without a join), else the join's FROM for the units' rows. */
    const cJSON *own = NULL;
    cJSON_ArrayForEach (item, cJSON_GetObjectItemCaseSensitive(sel, "fromClause"))
        if (rooted != NULL && own == NULL)
            own = own_quals(item, alias);
    const char *ucols[MAX_KEY_COLS];
    bool direct = true;
    for (size_t j = 0; j < ndk && direct; j++) {
        ucols[j] = rooted == NULL ? units[j].col
                                  : equal_unit(own, alias, dk[j], f->v[0].alias, rooted, nroot);
        direct = ucols[j] != NULL;
    }
    if (direct) {
        aff_rel = renamed_aff(in, ucols, dk, ndk, err);
    } else {
        /* d's possible keys marked, so that a NULL-extended row (which
         * needs no group, and whose NULL key would make d's recompute look
         * for NULL keys) is left out, but a key that has NULLs is not. */
        if ((marked = marked_rel(superset, err)) == NULL) {
            rc = sl_err_nomem(err, "the generated SQL");
            goto out;
        }
        d->superset = marked;
        out_t ar = {.rc = SL_OK, .err = err};
        outf(&ar, "(SELECT DISTINCT ");
        for (size_t j = 0; j < ndk; j++) {
            outf(&ar, "%s", j ? ", " : "");
            outid(&ar, alias);
            outf(&ar, ".");
            outid(&ar, dk[j]);
        }
        outf(&ar, " FROM ");
        out_from(&ar, q, t, c, f, false, NULL);
        outf(&ar, " WHERE ");
        outid(&ar, alias);
        outf(&ar, ".\"__sluice_m\" AND ");
        filter_nonnull(&ar, q, &unit_in, rooted);
        outf(&ar, ") AS \"__sluice_aff\"");
        aff_rel = out_take(&ar);
        d->superset = superset;
    }
    if (aff_rel == NULL) {
        rc = sl_err_nomem(err, "the subquery's analysis");
        goto out;
    }

    /* d alone, reading its affected keys from there. */
    sl_analyze_in_t sin = {.query = inner,
                           .keys = dk,
                           .nkeys = ndk,
                           .has_keys = true,
                           .sources = in->sources,
                           .nsources = in->nsources,
                           .aff_rel = aff_rel,
                           .in_subquery = true};
    sl_err_t e;
    sl_err_clear(&e);
    int src = sl_analyze(&sin, &sa, &e);
    if (src == SL_EUSAGE) {
        snprintf(why, n, "the subquery in FROM: %s", e.msg);
        *reason = why;
        goto out;
    }
    if (src != SL_OK) {
        *err = e;
        rc = src;
        goto out;
    }
    if (strcmp(sa.mode, "differential") != 0) {
        snprintf(why, n, "the subquery in FROM: %s", sa.reason);
        *reason = why;
        goto out;
    }
    if (sa.unit_columns != NULL) {
        *reason = sa.grouped_units
                      ? "the subquery in FROM is refreshed by the groups of a subquery joined in "
                        "it, which is done for a whole query or under a filter, not in a join"
                      : "the subquery in FROM has a LEFT JOIN, which is refreshed differentially "
                        "as a whole query but not inside a subquery";
        goto out;
    }

    out_t o = {.rc = SL_OK, .err = err};
    out_t r = {.rc = SL_OK, .err = err};
    out_t u = {.rc = SL_OK, .err = err};
    if (rooted != NULL) {
        /* The tables' terms read d as its possible keys and its affected
         * ones (same columns, same order); its own terms as the latter. */
        out_t x = {.rc = SL_OK, .err = err};
        outf(&x,
             "(SELECT * FROM %s AS \"__sluice_s\" UNION ALL SELECT * FROM (%s) AS "
             "\"__sluice_a\")",
             superset, sa.affected_sql);
        extended = out_take(&x);
        gaff = marked_rel(sa.affected_sql, err);
        if (extended == NULL || gaff == NULL) {
            rc = sl_err_nomem(err, "the generated SQL");
            goto out;
        }
        d->superset = extended;
        d->gaff = gaff;
        gen_affected_rooted(&o, q, t, c, f, rooted, NULL, 0);
        splice_t sp = {.open = d->open, .close = d->close, .sql = sa.recompute_sql};
        gen_restricted(&r, q, t, c, filter_nonnull, &unit_in, rooted, &sp);
        out_units_literal(&u, rooted, nroot);
    } else {
        outf(&o, "SELECT DISTINCT * FROM (SELECT ");
        for (size_t j = 0; j < ndk; j++) {
            outf(&o, "%s\"__sluice_d\".", j ? ", " : "");
            outid(&o, dk[j]);
        }
        outf(&o, " FROM (%s) AS \"__sluice_d\"", sa.affected_sql);
        for (size_t i = 0; i < f->n; i++)
            for (int old = 0; old < 2 && !f->v[i].grouping; old++) {
                outf(&o, " UNION ALL ");
                out_touched_term(&o, q, t, c, ndk, units, f, i, old);
            }
        outf(&o, ") AS \"__sluice_u\" (");
        for (size_t j = 0; j < ndk; j++) {
            outf(&o, "%s", j ? ", " : "");
            outid(&o, units[j].col);
        }
        outf(&o, ")");
        out_with_subquery(&r, q, t, c, d->open, d->close, sa.recompute_sql);
        out_units_literal(&u, units, ndk);
        a->grouped_units = true;
    }
    a->affected_sql = out_take(&o);
    a->recompute_sql = out_take(&r);
    a->unit_columns = out_take(&u);
    a->mode = strdup("differential");
    if (a->affected_sql == NULL || a->recompute_sql == NULL || a->unit_columns == NULL ||
        a->mode == NULL)
        rc = sl_err_nomem(err, "the generated SQL");
out:
    sl_analysis_free(&sa);
    free(dt.v);
    free(inner);
    free(aff_rel);
    free(superset);
    free(marked);
    free(extended);
    free(gaff);
    d->superset = NULL;
    d->gaff = NULL;
    return rc;
}

/* ------------------------------------------------------------------------ */
/* WITH, written in place                                                    */
/* ------------------------------------------------------------------------ */

/*
 * A WITH of the whole query (not RECURSIVE) names queries that the query
 * reads like tables. Each one read once is the same as its query written
 * where it is read, as a subquery in FROM: `WITH t AS (q) SELECT ... FROM
 * t` is `SELECT ... FROM (q) AS t` (MATERIALIZED changes how PostgreSQL
 * runs it, not its result, and a volatile function is refused anyway).
 * The query is analysed in that form; create_stream_table's check
 * (refresh/sql/0027_with_and_distinct_on.sql) reads PostgreSQL's tree the
 * same way.
 */

#define MAX_CTES 16
#define MAX_CTE_REFS 64

static const char *const why_with_nested =
    "a WITH inside a query that has a WITH of its own is refreshed in full (move its queries "
    "into the outer WITH)";

typedef struct cte {
    const char *name;
    int body, end;          /* the text between its parentheses: [body, end) */
    int name_from, name_to; /* its name as written */
    int refs;
} cte_t;

typedef struct cte_ref {
    int from, to; /* the name's token */
    int cte;      /* index in the cte_t array */
    bool aliased; /* written with an alias (FROM t AS x) */
} cte_ref_t;

typedef struct with {
    const char *q;
    cte_t c[MAX_CTES];
    size_t n;
    cte_ref_t r[MAX_CTE_REFS];
    size_t nr;
} with_t;

/* Collects the RangeVars below n (any depth) that name one of w's queries:
 * no schema, a name of w, and (inside the text of w's query i) a query
 * defined before i, as PostgreSQL resolves a WITH without RECURSIVE.
 * Returns false when there are more than MAX_CTE_REFS, or a name's token
 * is not found. */
static bool
collect_cte_refs(const cJSON *n, with_t *w, const toks_t *t)
{
    if (n == NULL)
        return true;
    if (n->string != NULL && strcmp(n->string, "RangeVar") == 0 && str(n, "schemaname") == NULL &&
        str(n, "relname") != NULL) {
        int at = location(n);
        size_t k = tok_at(t, at);
        size_t lim = w->n; /* the queries this place can read */
        for (size_t i = 0; i < w->n; i++)
            if (at >= w->c[i].body && at < w->c[i].end)
                lim = i;
        for (size_t j = 0; j < lim; j++)
            if (strcmp(w->c[j].name, str(n, "relname")) == 0) {
                if (w->nr == MAX_CTE_REFS || k >= t->n)
                    return false;
                w->r[w->nr++] =
                    (cte_ref_t){.from = t->v[k].start,
                                .to = t->v[k].end,
                                .cte = (int)j,
                                .aliased = cJSON_GetObjectItemCaseSensitive(n, "alias") != NULL};
                w->c[j].refs++;
                break;
            }
    }
    for (const cJSON *c = n->child; c != NULL; c = c->next)
        if (!collect_cte_refs(c, w, t))
            return false;
    return true;
}

/* Appends the text [from, to) of w->q with every reference in it replaced
 * by the query it names, written in place (recursively: a query reads only
 * those defined before it). */
static void
out_inlined(out_t *o, const with_t *w, int from, int to)
{
    int at = from;
    for (size_t i = 0; i < w->nr; i++) {
        const cte_ref_t *r = &w->r[i];
        if (r->from < from || r->to > to)
            continue;
        const cte_t *c = &w->c[r->cte];
        outq(o, w->q, at, r->from);
        outf(o, "(");
        out_inlined(o, w, c->body, c->end);
        outf(o, ")");
        if (!r->aliased) {
            outf(o, " AS ");
            outq(o, w->q, c->name_from, c->name_to);
        }
        at = r->to;
    }
    outq(o, w->q, at, to);
}

static int
ref_order(const void *a, const void *b)
{
    const cte_ref_t *x = a, *y = b;
    return (x->from > y->from) - (x->from < y->from);
}

/* sel's query (q) with its WITH written in place into *out (malloc'ed),
 * or the reason it is refreshed in full (*out NULL). */
static const char *
inline_with(const char *q, const cJSON *sel, char **out, char *why_buf, size_t why_n, int *rc,
            sl_err_t *err)
{
    *out = NULL;
    *rc = SL_OK;
    const cJSON *wc = cJSON_GetObjectItemCaseSensitive(sel, "withClause");
    const cJSON *ctes = cJSON_GetObjectItemCaseSensitive(wc, "ctes");
    const char *op = str(sel, "op");
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(wc, "recursive")))
        return "WITH RECURSIVE is refreshed in full";
    /* (A chain of UNIONs is written in place like any query: its queries
     * are then analysed one by one, analyze_distinct_setop.) */
    if (op != NULL && strcmp(op, "SETOP_NONE") != 0 &&
        !(distinct_setop(sel) != NULL && setop_chain_branches(sel) > 0))
        return "a WITH over a UNION ALL (or a set operation other than a chain of UNIONs, "
               "INTERSECTs or EXCEPTs) is "
               "refreshed in full";
    if (cJSON_GetArraySize(ctes) > MAX_CTES)
        return "a WITH of more than 16 queries is refreshed in full";
    /* One WITH: none in its queries or in the query after it (whose names
     * could hide those of this one). */
    const cJSON *e;
    for (const cJSON *c = sel->child; c != NULL; c = c->next)
        if (strcmp(c->string, "withClause") != 0 && has_node(c, "withClause"))
            return why_with_nested;
    cJSON_ArrayForEach (e, ctes)
        if (has_node(node(e, "CommonTableExpr"), "withClause"))
            return why_with_nested;
    toks_t t = {0};
    with_t *w = calloc(1, sizeof *w);
    if (w == NULL) {
        *rc = sl_err_nomem(err, "the WITH queries");
        return NULL;
    }
    w->q = q;
    const char *why = NULL;
    if ((*rc = scan_tokens(q, &t, err)) != SL_OK)
        goto done;
    int main_from = -1;
    cJSON_ArrayForEach (e, ctes) {
        const cJSON *cte = node(e, "CommonTableExpr");
        cte_t *c = &w->c[w->n];
        c->name = str(cte, "ctename");
        if (c->name == NULL ||
            node(cJSON_GetObjectItemCaseSensitive(cte, "ctequery"), "SelectStmt") == NULL) {
            why = "a WITH query that is not a SELECT is refreshed in full";
            goto done;
        }
        if (cJSON_GetObjectItemCaseSensitive(cte, "aliascolnames") != NULL) {
            snprintf(why_buf, why_n,
                     "the WITH query %s has column names (WITH %s(a, b) AS ...), which is "
                     "refreshed in full; name the columns in its select list instead",
                     c->name, c->name);
            why = why_buf;
            goto done;
        }
        /* Its name, then AS [NOT] MATERIALIZED, then its parenthesis. */
        size_t k = tok_at(&t, location(cte)), open = k + 1;
        while (open < t.n && !tok_is(q, &t.v[open], "("))
            open++;
        int close = open < t.n ? paren_end(q, &t, open) : -1;
        if (k >= t.n || close < 0) {
            why = "the WITH clause's text could not be taken apart";
            goto done;
        }
        c->name_from = t.v[k].start;
        c->name_to = t.v[k].end;
        c->body = t.v[open].end;
        c->end = close - 1;
        main_from = close;
        w->n++;
    }
    if (w->n == 0 || !collect_cte_refs(sel, w, &t)) {
        why = "the WITH clause's text could not be taken apart";
        goto done;
    }
    for (size_t i = 0; i < w->n; i++)
        if (w->c[i].refs > 1) {
            snprintf(why_buf, why_n,
                     "the WITH query %s is read more than once, which is refreshed in full (write "
                     "it as a subquery where it is read)",
                     w->c[i].name);
            why = why_buf;
            goto done;
        }
    qsort(w->r, w->nr, sizeof w->r[0], ref_order);
    out_t o = {.rc = SL_OK, .err = err};
    out_inlined(&o, w, main_from, (int)strlen(q));
    if ((*out = out_take(&o)) == NULL)
        *rc = o.rc != SL_OK ? o.rc : sl_err_nomem(err, "the query with WITH written in place");
done:
    free(t.v);
    free(w);
    return why;
}

/* ------------------------------------------------------------------------ */
/* DISTINCT ON, as the first row of each partition                           */
/* ------------------------------------------------------------------------ */

/*
 * SELECT DISTINCT ON (k) cols FROM ... WHERE ... ORDER BY k, x keeps, of
 * each value of k, the first row in that order: the row numbered 1 by
 * row_number() OVER (PARTITION BY k ORDER BY k, x). So it is analysed as
 *
 *   SELECT "__sluice_on".c1, ... FROM (SELECT cols, row_number() OVER
 *     (PARTITION BY k ORDER BY k, x) AS "__sluice_rn" FROM ... WHERE ...)
 *     AS "__sluice_on" WHERE "__sluice_on"."__sluice_rn" = 1
 *
 * a top-N per group, refreshed by partition (window_units) when the select
 * list has k (columns or expressions). Rows that tie in the order are picked as
 * PostgreSQL picks them, in either form. The stream table is keyed by k
 * (sluice._st_select_keys of migration 27, whose sluice._st_query_fallback
 * refuses the same shapes at creation).
 */

static const char *const why_distinct_on =
    "DISTINCT ON is refreshed differentially (by the values of its expressions) in the stream "
    "table's query itself, when the select list has them as they are, over one table or tables "
    "joined by inner joins, without GROUP BY, aggregates, window functions or subqueries; this "
    "one is refreshed in full";

/* Appends the query's text [from, to) without the white space around it. */
static void
outq_trimmed(out_t *o, const char *q, int from, int to)
{
    while (from < to && isspace((unsigned char)q[from]))
        from++;
    while (to > from && isspace((unsigned char)q[to - 1]))
        to--;
    outq(o, q, from, to);
}

/* True when expression e is, written the same, an entry of sel's select
 * list. */
static bool
selected_as_is(const cJSON *sel, const cJSON *e)
{
    const cJSON *tgt;
    cJSON_ArrayForEach (tgt, cJSON_GetObjectItemCaseSensitive(sel, "targetList"))
        if (same_tree(cJSON_GetObjectItemCaseSensitive(node(tgt, "ResTarget"), "val"), e))
            return true;
    return false;
}

/* sel's query (q) written as the window query above into *out
 * (malloc'ed), or the reason it is refreshed in full (*out NULL). */
static const char *
distinct_on_window(const char *q, const cJSON *sel, char **out, int *rc, sl_err_t *err)
{
    *out = NULL;
    *rc = SL_OK;
    const cJSON *item;
    static const char *const refused[] = {"groupClause", "havingClause", "windowClause",
                                          "withClause"};
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++)
        if (cJSON_GetObjectItemCaseSensitive(sel, refused[i]) != NULL)
            return why_distinct_on;
    if (has_window(sel))
        return why_distinct_on;
    cJSON_ArrayForEach (item, cJSON_GetObjectItemCaseSensitive(sel, "distinctClause"))
        if (!selected_as_is(sel, item))
            return why_distinct_on;
    /* The names of the select list's columns, unique (the outer query
     * selects them by name). */
    const cJSON *tl = cJSON_GetObjectItemCaseSensitive(sel, "targetList");
    int ncols = cJSON_GetArraySize(tl);
    const char **names = calloc(ncols > 0 ? (size_t)ncols : 1, sizeof *names);
    if (names == NULL) {
        *rc = sl_err_nomem(err, "the select list's names");
        return NULL;
    }
    const char *why = NULL;
    int i = 0;
    cJSON_ArrayForEach (item, tl) {
        const cJSON *rt = node(item, "ResTarget");
        const char *name = target_name(rt);
        for (int j = 0; j < i && name != NULL; j++)
            if (strcmp(names[j], name) == 0)
                name = NULL;
        if (name == NULL || strcmp(name, "*") == 0) {
            free(names);
            return "DISTINCT ON is refreshed differentially when every column of the select list "
                   "has a name of its own (AS name); this one is refreshed in full";
        }
        names[i++] = name;
    }
    toks_t t = {0};
    if ((*rc = scan_tokens(q, &t, err)) != SL_OK) {
        free(names);
        return NULL;
    }
    clauses_t c;
    find_clauses(q, &t, &c);
    /* SELECT DISTINCT ON ( ... ) */
    int on_close = t.n > 3 && tok_is(q, &t.v[1], "DISTINCT") && tok_is(q, &t.v[2], "ON") &&
                           tok_is(q, &t.v[3], "(")
                       ? paren_end(q, &t, 3)
                       : -1;
    if (c.tok[CL_SELECT] != 0 || c.tok[CL_FROM] < 0 || on_close < 0 ||
        (c.tok[CL_ORDER] >= 0 &&
         ((size_t)c.tok[CL_ORDER] + 1 >= t.n || !tok_is(q, &t.v[c.tok[CL_ORDER] + 1], "BY")))) {
        why = "the query text does not start with SELECT DISTINCT ON (...) ... FROM";
        goto done;
    }
    int from = t.v[c.tok[CL_FROM]].start;
    int rest_end =
        c.tok[CL_ORDER] >= 0 ? t.v[c.tok[CL_ORDER]].start : clause_end(q, &t, &c, CL_ORDER);
    out_t o = {.rc = SL_OK, .err = err};
    outf(&o, "SELECT ");
    for (int j = 0; j < i; j++) {
        outf(&o, "%s\"__sluice_on\".", j > 0 ? ", " : "");
        outid(&o, names[j]);
    }
    outf(&o, " FROM (SELECT ");
    outq_trimmed(&o, q, on_close, from);
    outf(&o, ", row_number() OVER (PARTITION BY ");
    outq_trimmed(&o, q, t.v[3].end, on_close - 1);
    if (c.tok[CL_ORDER] >= 0) {
        outf(&o, " ORDER BY ");
        outq_trimmed(&o, q, t.v[c.tok[CL_ORDER] + 1].end, clause_end(q, &t, &c, CL_ORDER));
    }
    outf(&o, ") AS \"__sluice_rn\" ");
    outq(&o, q, from, rest_end);
    outf(&o, ") AS \"__sluice_on\" WHERE \"__sluice_on\".\"__sluice_rn\" = 1");
    if ((*out = out_take(&o)) == NULL)
        *rc = o.rc != SL_OK ? o.rc : sl_err_nomem(err, "the query of DISTINCT ON as a window");
done:
    free(t.v);
    free(names);
    return why;
}

/* Puts the line held by head (taken) above a's tree, which moves one
 * level down. */
static int
tree_below(out_t *head, sl_analysis_t *a, sl_err_t *err)
{
    for (const char *l = a->tree; l != NULL && *l != '\0';) {
        const char *nl = strchr(l, '\n');
        size_t len = nl != NULL ? (size_t)(nl - l) + 1 : strlen(l);
        indent(head, 1);
        outf(head, "%.*s", (int)len, l);
        l += len;
    }
    char *tree = out_take(head);
    if (tree == NULL)
        return head->rc != SL_OK ? head->rc : sl_err_nomem(err, "the operator tree");
    free(a->tree);
    a->tree = tree;
    return SL_OK;
}

/* Puts the names of sel's WITH queries above a's tree (the tree of the
 * query with them written in place). */
static int
tree_with(const cJSON *sel, sl_analysis_t *a, sl_err_t *err)
{
    out_t o = {.rc = SL_OK, .err = err};
    const cJSON *e;
    const char *sep = "With ";
    cJSON_ArrayForEach (e, cJSON_GetObjectItemCaseSensitive(
                               cJSON_GetObjectItemCaseSensitive(sel, "withClause"), "ctes")) {
        const char *name = str(node(e, "CommonTableExpr"), "ctename");
        outf(&o, "%s%s", sep, name != NULL ? name : "?");
        sep = ", ";
    }
    outf(&o, " (written in place)\n");
    return tree_below(&o, a, err);
}

void
sl_analysis_free(sl_analysis_t *a)
{
    if (a == NULL)
        return;
    free(a->mode);
    free(a->reason);
    free(a->tree);
    free(a->affected_sql);
    free(a->recompute_sql);
    free(a->unit_columns);
    free(a->branches);
    memset(a, 0, sizeof *a);
}

/* Analyses query (malloc'ed, taken), which stands for in->query, into *a
 * (whose tree, of in->query, is replaced). */
static int
analyze_as(const sl_analyze_in_t *in, char *query, sl_analysis_t *a, sl_err_t *err)
{
    free(a->tree);
    a->tree = NULL;
    sl_analyze_in_t as = *in;
    as.query = query;
    int rc = sl_analyze(&as, a, err);
    free(query);
    return rc;
}

/* The reason a stream table whose query groups its rows by a column of a
 * type with its own = (sl_analyze_keyform_t.own_eq) is refreshed in full,
 * or NULL: a key column under GROUP BY, DISTINCT or a set operation, any
 * such column of a query with windows (their partitions are selected
 * columns). The SQL this file writes compares keys and partitions with a
 * bare =, IN or IS NOT DISTINCT FROM, which under search_path pg_catalog
 * find another type's = (citext's values compared as text,
 * case-sensitively): a group's rows would be looked for under one
 * spelling only. Rows keyed by a primary key are found by their own
 * values, which is exact. */
static const char *
why_own_equality(const sl_analyze_in_t *in, const cJSON *sel, char *why, size_t n)
{
    const sl_analyze_keyform_t *f = NULL;
    bool windows = has_node(sel, "over");
    if (windows) {
        for (size_t i = 0; i < in->nkeyforms && f == NULL; i++)
            if (in->keyforms[i].own_eq != NULL)
                f = &in->keyforms[i];
    } else if (has_node(sel, "groupClause") || has_node(sel, "distinctClause") ||
               has_node(sel, "larg")) {
        for (size_t k = 0; k < in->nkeys && f == NULL; k++) {
            f = keyform(in, in->keys[k]);
            if (f != NULL && f->own_eq == NULL)
                f = NULL;
        }
    }
    if (f == NULL)
        return NULL;
    snprintf(why, n,
             "column %s is of type %s, whose = is not PostgreSQL's built-in one: %s is refreshed "
             "in full (select %s::text or lower(%s::text) instead for a differential refresh)",
             f->col, f->own_eq,
             windows ? "a query with window functions and such a column"
                     : "a GROUP BY, DISTINCT or set operation keyed by it",
             f->col, f->col);
    return why;
}

/*
 * A query over one table and set-returning functions in its FROM (each
 * WITH ORDINALITY; walk_from counted them), joined by inner joins or by
 * LEFT JOINs whose right side is a function (LEFT JOIN LATERAL f(...) ON
 * true keeps a row whose array is empty, with NULL ordinalities, which
 * still tell the rows apart): the rows it gives for a row of
 * the table depend on that row alone, so it is refreshed by the table's
 * rows, as a LEFT JOIN chain by its first table's (units: that table's
 * primary key as the select list has it). Its row identity is that key
 * and the functions' ordinality columns (sluice._st_srf_identity). Fills
 * units (f->v[0].src->npk of them); returns why not, or NULL.
 */
static const char *
srf_units(const cJSON *sel, const sl_analyze_in_t *in, const from_t *f, size_t nsubs,
          keyexpr_t *units)
{
    if (f->n != 1 || f->v[0].subquery || f->grouping >= 0 || f->left_other || nsubs > 0 ||
        has_window(sel) || cJSON_GetObjectItemCaseSensitive(sel, "distinctClause") != NULL)
        return why_srf;
    if (f->nplain > 0)
        return "a set-returning function in FROM is refreshed differentially when it is "
               "written WITH ORDINALITY and the select list has its ordinality column (its "
               "rows' key)";
    if (f->v[0].src->npk == 0 || !map_units(sel, in, &f->v[0], units) ||
        in->nkeys < f->v[0].src->npk + f->nfuncs)
        return "a set-returning function in FROM is refreshed differentially when the row "
               "identity is the table's primary key and each function's ordinality column "
               "(WITH ORDINALITY), all in the select list";
    return NULL;
}

/*
 * A query over one table and set-returning functions in its FROM, joined
 * as for srf_units, that groups their rows (GROUP BY, HAVING, aggregates):
 * keyed by its group keys and refreshed like a GROUP BY over the table
 * alone. The rows a changed row of the table gave, and gives, are the
 * functions called on its images, so the affected groups are those of the
 * images' rows (gen_affected) and, where gen_algebraic can, a group's new
 * row is its stored row plus what those rows add and take away; else the
 * group is recomputed from the query. Its keys are its groups, so the
 * functions need no ordinality and the table no primary key. Returns why
 * not, or NULL.
 */
static const char *
srf_groups(const cJSON *sel, const from_t *f, size_t nsubs)
{
    if (f->n != 1 || f->v[0].subquery || f->grouping >= 0 || f->left_other || nsubs > 0 ||
        has_window(sel) || cJSON_GetObjectItemCaseSensitive(sel, "distinctClause") != NULL)
        return why_srf;
    return NULL;
}

int
sl_analyze(const sl_analyze_in_t *in, sl_analysis_t *a, sl_err_t *err)
{
    memset(a, 0, sizeof *a);
    PgQueryParseResult pr = pg_query_parse(in->query);
    if (pr.error != NULL) {
        sl_err_set(err, SL_EUSAGE, "the query does not parse: %s (at character %d)",
                   pr.error->message, pr.error->cursorpos);
        pg_query_free_parse_result(pr);
        return SL_EUSAGE;
    }
    cJSON *root = cJSON_Parse(pr.parse_tree);
    pg_query_free_parse_result(pr);
    if (root == NULL)
        return sl_err_nomem(err, "the parse tree");
    toks_t t = {0};
    keyexpr_t *keys = NULL, *units = NULL;
    sublink_t subs[MAX_SUBLINKS];
    size_t nsubs = 0;
    char why[256];
    char uwhy[SL_ERR_MSG_MAX + 64]; /* a UNION ALL branch's reason, with its number */
    out_t tree = {.rc = SL_OK, .err = err};
    int rc = SL_OK;
    bool by_keys = false; /* a LEFT JOIN chain refreshed by the row identity */
    const char *reason = NULL;
    const cJSON *stmts = cJSON_GetObjectItemCaseSensitive(root, "stmts");
    const cJSON *sel = NULL;
    if (cJSON_GetArraySize(stmts) != 1 ||
        (sel = node(node(cJSON_GetArrayItem(stmts, 0), "stmt"), "SelectStmt")) == NULL) {
        rc = sl_err_set(err, SL_EUSAGE, "a stream table's query is one SELECT statement");
        goto done;
    }
    tree_select(&tree, sel, 0);
    if ((rc = tree.rc) != SL_OK)
        goto done;
    a->tree = out_take(&tree);
    if (a->tree == NULL) {
        rc = sl_err_nomem(err, "the operator tree");
        goto done;
    }
    if (in->requested_full) {
        reason = "refresh_mode is 'full'";
        goto full;
    }
    if (in->old_rel != NULL && (reason = why_own_equality(in, sel, uwhy, sizeof uwhy)) != NULL)
        goto full;
    if (clock_keyed(sel)) {
        reason = why_clock;
        goto full;
    }
    if (cJSON_GetObjectItemCaseSensitive(sel, "withClause") != NULL) {
        char *inl = NULL;
        reason = inline_with(in->query, sel, &inl, uwhy, sizeof uwhy, &rc, err);
        if (rc != SL_OK)
            goto done;
        if (reason != NULL)
            goto full;
        rc = analyze_as(in, inl, a, err);
        if (rc == SL_OK)
            rc = tree_with(sel, a, err);
        goto done;
    }
    if (is_distinct_on(sel) && cJSON_GetObjectItemCaseSensitive(sel, "limitCount") == NULL &&
        cJSON_GetObjectItemCaseSensitive(sel, "limitOffset") == NULL &&
        cJSON_GetObjectItemCaseSensitive(sel, "lockingClause") == NULL) {
        char *win_q = NULL;
        reason = distinct_on_window(in->query, sel, &win_q, &rc, err);
        if (rc != SL_OK)
            goto done;
        if (reason != NULL)
            goto full;
        rc = analyze_as(in, win_q, a, err);
        if (rc == SL_OK && a->reason != NULL && strstr(a->reason, "window functions") != NULL) {
            /* Said of the window this query is analysed as: say it of
             * DISTINCT ON. */
            free(a->reason);
            if ((a->reason = strdup(why_distinct_on)) == NULL)
                rc = sl_err_nomem(err, "the analysis");
        }
        if (rc == SL_OK) {
            out_t h = {.rc = SL_OK, .err = err};
            outf(&h, "Distinct On (the first row of each, as a window's row number 1)\n");
            rc = tree_below(&h, a, err);
        }
        goto done;
    }
    if (in->nbranches > 0 && str(sel, "op") != NULL && strcmp(str(sel, "op"), "SETOP_UNION") == 0 &&
        cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(sel, "all"))) {
        rc = analyze_union(in, sel, a, uwhy, sizeof uwhy, &reason, err);
        if (rc != SL_OK || reason == NULL)
            goto done;
        goto full;
    }
    if (distinct_setop(sel) != NULL) {
        rc = analyze_distinct_setop(in, sel, a, uwhy, sizeof uwhy, &reason, err);
        if (rc != SL_OK || reason == NULL)
            goto done;
        goto full;
    }
    if ((reason = full_reason(sel, in)) != NULL)
        goto full;
    if ((rc = scan_tokens(in->query, &t, err)) != SL_OK)
        goto done;
    clauses_t c;
    find_clauses(in->query, &t, &c);
    if (c.tok[CL_SELECT] != 0 || c.tok[CL_FROM] < 0) {
        reason = "the query text does not start with SELECT ... FROM";
        goto full;
    }
    if ((reason = find_sublinks(sel, in, in->query, &t, subs, &nsubs)) != NULL)
        goto full;
    keys = calloc(in->nkeys > 0 ? in->nkeys : 1, sizeof *keys);
    if (keys == NULL) {
        rc = sl_err_nomem(err, "the key list");
        goto done;
    }
    const cJSON *fromc = cJSON_GetObjectItemCaseSensitive(sel, "fromClause");
    from_t f = {.n = 0, .left_deep = cJSON_GetArraySize(fromc) == 1, .equi = true, .grouping = -1};
    const cJSON *item;
    cJSON_ArrayForEach (item, fromc)
        if ((reason = walk_from(item, in, &f, false)) != NULL) {
            /* Not a table through a projection: a subquery that the query
             * only filters and projects is analysed as a query of its own. */
            const cJSON *rs = derived_from(sel);
            if (rs == NULL)
                goto full;
            if (nsubs > 0) {
                reason = why_sublink_from;
                goto full;
            }
            reason = NULL;
            rc = analyze_derived(in, sel, rs, &t, &c, a, uwhy, sizeof uwhy, &reason, err);
            if (rc != SL_OK || reason == NULL)
                goto done;
            goto full;
        }
    bool srf = f.nfuncs > 0;
    /* Grouped (srf_groups), or refreshed by its table's rows (srf_units). */
    bool srf_grouped = srf && groups_or_aggregates(sel);
    if (srf_grouped && (reason = srf_groups(sel, &f, nsubs)) != NULL)
        goto full;
    if (srf && !srf_grouped) {
        units = calloc(f.n == 1 && f.v[0].src != NULL && f.v[0].src->npk > 0 ? f.v[0].src->npk : 1,
                       sizeof *units);
        if (units == NULL) {
            rc = sl_err_nomem(err, "the key list");
            goto done;
        }
        if ((reason = srf_units(sel, in, &f, nsubs, units)) != NULL)
            goto full;
    }
    for (size_t i = 0; i < f.n && nsubs > 0; i++)
        if (f.v[i].grouping || f.v[i].subquery) {
            reason = why_sublink_from;
            goto full;
        }
    if (f.grouping >= 0 && f.n == 1) {
        /* The subquery is the whole FROM. */
        const cJSON *rs = derived_from(sel);
        if (rs == NULL) {
            reason = why_shape;
            goto full;
        }
        rc = analyze_derived(in, sel, rs, &t, &c, a, uwhy, sizeof uwhy, &reason, err);
        if (rc != SL_OK || reason == NULL)
            goto done;
        goto full;
    }
    for (size_t k = 0; k < in->nkeys; k++)
        keys[k].alias = f.v[0].alias;
    if ((reason = map_keys(in->query, &t, &c, sel, in, keys)) != NULL)
        goto full;
    /* A join, or a table with subqueries in WHERE: its old state (by key). */
    if (nsubs > 0 && f.n == 1 && f.v[0].src->npk == 0) {
        snprintf(why, sizeof why,
                 "table %s.%s has no primary key: a query over it with a subquery in WHERE or "
                 "in the select list is refreshed in full",
                 f.v[0].src->schema, f.v[0].src->name);
        reason = why;
        goto full;
    }
    if ((f.n > 1 || f.v[0].subquery || nsubs > 0) && f.grouping < 0 &&
        (reason = check_join(in->query, &t, &f, why, sizeof why)) != NULL)
        goto full;
    size_t nwunits = 0; /* window functions: the partition columns that are units */
    if (has_window(sel)) {
        /* Tables, or subqueries that filter and project one (walk_from
         * took them as their table: a WITH query written in place). */
        bool tables = !f.outer && f.grouping < 0 && nsubs == 0;
        if (!tables) {
            reason = why_window;
            goto full;
        }
        if (in->rooted_keys) {
            /* A branch of a UNION ALL or a UNION (or a subquery in one):
             * refreshed by its row identity, never by units. */
            reason = "window functions are refreshed differentially by partition, which a branch "
                     "of a UNION ALL or a UNION cannot be (its rows are refreshed by row "
                     "identity); this one is refreshed in full";
            goto full;
        }
        units = calloc(MAX_WINDOW_UNITS, sizeof *units);
        if (units == NULL) {
            rc = sl_err_nomem(err, "the unit list");
            goto done;
        }
        if ((reason = window_units(in->query, &t, &c, sel, &f, units, &nwunits)) != NULL)
            goto full;
    }
    if (f.outer && !srf) {
        if (!f.left_deep || !f.equi) {
            reason = "a LEFT JOIN is refreshed differentially only in a chain of equi-joins "
                     "whose right sides are tables (a LEFT JOIN b ON b.x = a.y LEFT JOIN c ON "
                     "c.z = b.w ...)";
            goto full;
        }
        if (f.grouping == 0) {
            reason = why_grouping_outer;
            goto full;
        }
        units = calloc(f.v[0].src->npk, sizeof *units);
        if (units == NULL) {
            rc = sl_err_nomem(err, "the key list");
            goto done;
        }
        bool mapped = map_units(sel, in, &f.v[0], units);
        by_keys = f.grouping < 0 && (in->rooted_keys || !mapped);
        if (!mapped && !by_keys) {
            snprintf(why, sizeof why,
                     "with a LEFT JOIN and a subquery that groups, every row (or group) must "
                     "include the primary key of the first table (%s.%s) for differential refresh",
                     f.v[0].src->schema, f.v[0].src->name);
            reason = why;
            goto full;
        }
        if (by_keys)
            /* The first table's key, named as its columns, for
             * gen_affected_rooted_keys (the unit columns of its units). */
            for (size_t k = 0; k < f.v[0].src->npk; k++)
                units[k] = (keyexpr_t){
                    .from = -1, .alias = f.v[0].alias, .src = f.v[0].pk[k], .col = f.v[0].pk[k]};
    }
    if (f.grouping >= 0) {
        rc = analyze_joined(in, sel, &f, &t, &c, f.outer ? units : NULL, a, uwhy, sizeof uwhy,
                            &reason, err);
        if (rc != SL_OK || reason == NULL)
            goto done;
        goto full;
    }
    out_t o = {.rc = SL_OK, .err = err};
    out_t r = {.rc = SL_OK, .err = err};
    out_t u = {.rc = SL_OK, .err = err};
    if (nwunits > 0) {
        /* By partition: the partitions of the changed rows (before and
         * after), recomputed whole; a partition whose columns are NULL is
         * found through filter_null. */
        sl_analyze_in_t unit_in = *in;
        unit_in.nkeys = nwunits;
        if (f.n == 1 && !f.v[0].subquery)
            gen_affected(&o, in->query, &t, &c, &unit_in, units, &f.v[0], false);
        else /* the partitions of the rows that involve a changed row */
            gen_affected_inner(&o, in->query, &t, &c, &unit_in, units, &f);
        outf(&r, "(");
        gen_restricted(&r, in->query, &t, &c, filter_nonnull, &unit_in, units, NULL);
        outf(&r, ") UNION ALL (");
        gen_restricted(&r, in->query, &t, &c, filter_null, &unit_in, units, NULL);
        outf(&r, ")");
        out_units_literal(&u, units, nwunits);
        a->unit_columns = out_take(&u);
        a->window_units = true;
        if (a->unit_columns == NULL)
            rc = sl_err_nomem(err, "the generated SQL");
    } else if (((f.outer && !srf) || (srf && !srf_grouped)) && !by_keys) {
        sl_analyze_in_t unit_in = *in;
        unit_in.nkeys = f.v[0].src->npk;
        gen_affected_rooted(&o, in->query, &t, &c, &f, units, subs, nsubs);
        gen_restricted(&r, in->query, &t, &c, filter_nonnull, &unit_in, units, NULL);
        out_units_literal(&u, units, unit_in.nkeys);
        a->unit_columns = out_take(&u);
        if (a->unit_columns == NULL)
            rc = sl_err_nomem(err, "the generated SQL");
    } else {
        if (by_keys)
            gen_affected_rooted_keys(&o, in->query, &t, &c, in, keys, &f, units, subs, nsubs);
        else if (f.n == 1 && !f.v[0].subquery) {
            outf(&o, "%s", nsubs > 0 ? "(" : "");
            gen_affected(&o, in->query, &t, &c, in, keys, &f.v[0], srf);
            outf(&o, "%s", nsubs > 0 ? ")" : "");
        } else {
            gen_affected_inner(&o, in->query, &t, &c, in, keys, &f);
        }
        if (!by_keys) /* (its units have the subqueries' rows) */
            gen_affected_sublinks(&o, in->query, &t, &c, in, keys, &f, subs, nsubs);
        /* (Not with subqueries in WHERE: their changes move rows between
         * groups without a change of the table.) */
        if (f.n == 1 && !f.v[0].subquery && nsubs == 0 &&
            gen_algebraic(&r, in->query, &t, &c, sel, in, keys, &f.v[0], srf)) {
            /* Aggregates from the stored rows and the changes. */
        } else if (in->nkeys == 0) {
            /* One row (an aggregate without GROUP BY): recomputed when the
             * window's changes reach it, and only then (unchanged, it is
             * not among the old rows, which come from __sluice_aff). */
            outf(&r, "SELECT \"__sluice_g\".* FROM (");
            outq(&r, in->query, 0, c.end);
            outf(&r, ") AS \"__sluice_g\" WHERE EXISTS (SELECT FROM ");
            out_aff(&r, in);
            outf(&r, ")");
        } else {
            outf(&r, "(");
            gen_restricted(&r, in->query, &t, &c, filter_nonnull, in, keys, NULL);
            outf(&r, ") UNION ALL (");
            gen_restricted(&r, in->query, &t, &c, filter_null, in, keys, NULL);
            outf(&r, ")");
        }
    }
    a->affected_sql = out_take(&o);
    a->recompute_sql = out_take(&r);
    a->mode = strdup("differential");
    if (a->affected_sql == NULL || a->recompute_sql == NULL || a->mode == NULL)
        rc = sl_err_nomem(err, "the generated SQL");
    goto done;

full:
    a->mode = strdup("full");
    a->reason = strdup(reason);
    if (a->mode == NULL || a->reason == NULL)
        rc = sl_err_nomem(err, "the analysis");
done:
    if (rc != SL_OK)
        sl_analysis_free(a);
    sl_buf_free(&tree.b);
    free(keys);
    free(units);
    free(t.v);
    cJSON_Delete(root);
    return rc;
}
