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

#endif /* SL_REFRESH_H */
