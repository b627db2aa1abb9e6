/*
 * refresh/refresh.c - anchors the embedded migrations of refresh/sql in the
 * sl_refresh library.
 */
#include "refresh/refresh.h"
