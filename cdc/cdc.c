/*
 * cdc/cdc.c - the cdc folder's C side. Capture runs in PostgreSQL (cdc/sql);
 * this file only anchors the embedded migrations in the sl_cdc library.
 */
#include "cdc/cdc.h"
