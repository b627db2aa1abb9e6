/*
 * inbox/inbox.h - idempotent inbox tables: their catalog (SQL functions
 * sluice.create_inbox, inbox_claim, inbox_ack, ...), installed by `sluice init`.
 */
#ifndef SL_INBOX_H
#define SL_INBOX_H

#include "core/core.h"

/* Migrations of schema sluice owned by inbox/ (embedded from inbox/sql). Their
 * versions are unique across folders; `sluice init` merges them with the
 * outbox's. */
extern const sl_sql_file_t sl_inbox_migrations[];
extern const size_t sl_inbox_migrations_count;

#endif /* SL_INBOX_H */
