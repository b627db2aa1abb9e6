/*
 * inbox/inbox.c - the inbox folder's C side. Everything an inbox does runs
 * in PostgreSQL (inbox/sql); this file only anchors the embedded migrations
 * in the sl_inbox library.
 */
#include "inbox/inbox.h"
