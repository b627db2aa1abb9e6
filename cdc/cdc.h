/*
 * cdc/cdc.h - change capture for stream tables: statement-level triggers
 * that copy every change of a source table into its change buffer
 * (cdc/sql), installed by `sluice init`. Stream-table refreshes read the
 * buffers; see docs/stream-tables.md. Buffer format, the window predicate
 * and the DDL behaviour are described at the top of cdc/sql/0004_cdc.sql and
 * in docs/cdc.md.
 */
#ifndef SL_CDC_H
#define SL_CDC_H

#include "core/core.h"

/* Migrations of schema sluice owned by cdc/ (embedded from cdc/sql). Their
 * versions are unique across folders; `sluice init` merges them by version. */
extern const sl_sql_file_t sl_cdc_migrations[];
extern const size_t sl_cdc_migrations_count;

#endif /* SL_CDC_H */
