/*
 * core/main.c - the `sluice` command line.
 *
 * One table of subcommands drives dispatch and --help. This is the only place
 * that turns errors into exit codes (docs/operations.md):
 *   0  success
 *   1  runtime failure (database unreachable, a pipeline failed, ...)
 *   2  usage or configuration error (bad flag, bad config, missing env var)
 * Errors print as
 *   sluice <command>: error: <what, with context>
 *   hint: <how to fix it>
 */
#include "cdc/cdc.h"
#include "core/core.h"
#include "inbox/inbox.h"
#include "outbox/outbox.h"
#include "refresh/refresh.h"
#include "relay/relay.h"

#include <getopt.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct sl_cmd {
    const char *name;
    int (*run)(int argc, char **argv, sl_err_t *err);
    const char *summary;
    const char *usage;
} sl_cmd_t;

static int cmd_init(int argc, char **argv, sl_err_t *err);
static int cmd_relay(int argc, char **argv, sl_err_t *err);
static int cmd_check_config(int argc, char **argv, sl_err_t *err);
static int cmd_engine(int argc, char **argv, sl_err_t *err);

static const sl_cmd_t commands[] = {
    {"init", cmd_init, "install or upgrade the sluice schema in a database",
     "usage: sluice init --db CONNINFO\n"
     "\n"
     "Installs schema \"sluice\" (outbox, publish(), checkpoints, inbox tables) or\n"
     "upgrades it to this binary's version. Safe to run repeatedly and concurrently.\n"
     "\n"
     "  --db CONNINFO   PostgreSQL URI or key=value string (default: $SLUICE_DB)\n"
     "  -h, --help      show this help\n"},
    {"relay", cmd_relay, "run the relay: outbox -> Kafka / stdout / file",
     "usage: sluice relay --config FILE [--log-level LEVEL]\n"
     "\n"
     "Runs every pipeline of the config file until SIGTERM or SIGINT, then drains\n"
     "in-flight messages, writes checkpoints and exits 0.\n"
     "\n"
     "  -c, --config FILE     relay config (JSON with comments)\n"
     "  -l, --log-level LEVEL debug, info, warn or error (overrides the file)\n"
     "      --help-config     print every config key with type and default\n"
     "  -h, --help            show this help\n"},
    {"check-config", cmd_check_config, "validate a relay config and print it resolved",
     "usage: sluice check-config --config FILE\n"
     "\n"
     "Loads and validates the config like `sluice relay` would, then prints it\n"
     "with every ${ENV:..}/${FILE:..} substitution shown as [redacted].\n"
     "Exit 0 when valid, 2 when not.\n"
     "\n"
     "  -c, --config FILE   relay config\n"
     "  -h, --help          show this help\n"},
    {"engine", cmd_engine, "keep the stream tables of a database current",
     "usage: sluice engine --db CONNINFO [--workers N] [--safety-poll-ms MS]\n"
     "                     [--notify-coalesce-ms MS] [--once]\n"
     "\n"
     "Analyses every stream table's query (libpg_query) and refreshes each one when\n"
     "its sources changed (capture wakes it) and its schedule allows, readers after\n"
     "what they read, on a pool of connections, until SIGTERM or SIGINT.\n"
     "\n"
     "  --db CONNINFO             PostgreSQL URI or key=value string (default: $SLUICE_DB)\n"
     "  --workers N               refresh connections, 1 to 64 (default 4): one slow\n"
     "                            stream table occupies one of them\n"
     "  --safety-poll-ms MS       re-check every stream table this often even when no\n"
     "                            change woke the engine (default 1000)\n"
     "  --notify-coalesce-ms MS   window for coalescing subscription notifications\n"
     "                            (default 250; 0 sends one per refresh)\n"
     "  --once                    one pass on one connection (analyse, refresh what\n"
     "                            is due, in dependency order), then exit\n"
     "  -l, --log-level LEVEL     debug, info, warn or error (default info)\n"
     "  -h, --help                show this help\n"},
};

#define NCOMMANDS (sizeof commands / sizeof commands[0])

static void
print_help(FILE *out)
{
    fprintf(out,
            "sluice %s - PostgreSQL changes to reliable event streams\n\n"
            "usage: sluice [--version] [--help] <command> [options]\n\ncommands:\n",
            SL_VERSION);
    for (size_t i = 0; i < NCOMMANDS; i++)
        fprintf(out, "  %-14s %s\n", commands[i].name, commands[i].summary);
    fprintf(out, "\nRun `sluice <command> --help` for a command's options.\n"
                 "Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error.\n");
}

/* Shared parsing of the common flags; returns 1 when --help was printed. */
static int
usage_error(sl_err_t *err, const char *cmd, const char *what)
{
    sl_err_set(err, SL_EUSAGE, "%s", what);
    return sl_err_hint(err, "run `sluice %s --help`", cmd);
}

/* Orders embedded migrations by their numeric prefix (names start with digits). */
static int
migration_cmp(const void *a, const void *b)
{
    long va = strtol(((const sl_sql_file_t *)a)->name, NULL, 10);
    long vb = strtol(((const sl_sql_file_t *)b)->name, NULL, 10);
    return (va > vb) - (va < vb);
}

/* The migrations of every folder; returns how many folders. */
typedef struct {
    const sl_sql_file_t *files;
    size_t count;
} folder_t;

static size_t
migration_folders(folder_t out[4])
{
    out[0] = (folder_t){sl_outbox_migrations, sl_outbox_migrations_count};
    out[1] = (folder_t){sl_inbox_migrations, sl_inbox_migrations_count};
    out[2] = (folder_t){sl_cdc_migrations, sl_cdc_migrations_count};
    out[3] = (folder_t){sl_refresh_migrations, sl_refresh_migrations_count};
    return 4;
}

/* The catalog version `sluice init` of this binary brings a database to. */
static int
newest_migration(void)
{
    folder_t folders[4];
    size_t nf = migration_folders(folders);
    long newest = 0;
    for (size_t i = 0; i < nf; i++)
        for (size_t j = 0; j < folders[i].count; j++) {
            long v = strtol(folders[i].files[j].name, NULL, 10);
            if (v > newest)
                newest = v;
        }
    return (int)newest;
}

static int
cmd_init(int argc, char **argv, sl_err_t *err)
{
    static const struct option opts[] = {
        {"db", required_argument, NULL, 'd'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *db = getenv("SLUICE_DB");
    int c;
    while ((c = getopt_long(argc, argv, "d:h", opts, NULL)) != -1) {
        switch (c) {
        case 'd': db = optarg; break;
        case 'h': fputs(commands[0].usage, stdout); return SL_DONE;
        default: return usage_error(err, "init", "invalid option");
        }
    }
    if (optind < argc)
        return usage_error(err, "init", "unexpected argument");
    if (db == NULL || db[0] == '\0')
        return usage_error(err, "init", "missing --db CONNINFO");
    PGconn *conn = NULL;
    int rc = sl_pg_connect(db, "sluice-init", &conn, err);
    if (rc != SL_OK)
        return rc;
    /* Migrations of every folder, merged by version. */
    folder_t folders[4];
    size_t nf = migration_folders(folders);
    size_t n = 0;
    for (size_t i = 0; i < nf; i++)
        n += folders[i].count;
    sl_sql_file_t *all = calloc(n > 0 ? n : 1, sizeof *all);
    if (all == NULL) {
        PQfinish(conn);
        return sl_err_nomem(err, "the migration list");
    }
    size_t at = 0;
    for (size_t i = 0; i < nf; i++) {
        memcpy(all + at, folders[i].files, folders[i].count * sizeof *all);
        at += folders[i].count;
    }
    qsort(all, n, sizeof *all, migration_cmp);
    int applied = 0;
    rc = sl_migrate(conn, all, n, &applied, err);
    free(all);
    if (rc == SL_OK) {
        PGresult *res = PQexec(conn, "SELECT max(version) FROM sluice.schema_version");
        const char *v = PQresultStatus(res) == PGRES_TUPLES_OK ? PQgetvalue(res, 0, 0) : "?";
        printf("sluice init: schema sluice is at version %s (%d migration%s applied)\n", v, applied,
               applied == 1 ? "" : "s");
        PQclear(res);
    }
    PQfinish(conn);
    return rc;
}

static int
cmd_engine(int argc, char **argv, sl_err_t *err)
{
    static const struct option opts[] = {
        {"db", required_argument, NULL, 'd'},
        {"notify-coalesce-ms", required_argument, NULL, 'n'},
        {"workers", required_argument, NULL, 'w'},
        {"safety-poll-ms", required_argument, NULL, 'p'},
        {"once", no_argument, NULL, 'o'},
        {"log-level", required_argument, NULL, 'l'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    sl_engine_opts_t o = {.db = getenv("SLUICE_DB"),
                          .catalog_version = newest_migration(),
                          .notify_coalesce_ms = 250,
                          .workers = SL_ENGINE_WORKERS_DEFAULT,
                          .safety_poll_ms = SL_ENGINE_SAFETY_POLL_MS_DEFAULT};
    int c;
    while ((c = getopt_long(argc, argv, "d:l:h", opts, NULL)) != -1) {
        switch (c) {
        case 'd': o.db = optarg; break;
        case 'n': {
            char *end = NULL;
            long v = strtol(optarg, &end, 10);
            if (end == optarg || *end != '\0' || v < 0 || v > 3600000)
                return usage_error(err, "engine",
                                   "--notify-coalesce-ms: expected milliseconds, 0 to 3600000");
            o.notify_coalesce_ms = (int)v;
            break;
        }
        case 'w': {
            char *end = NULL;
            long v = strtol(optarg, &end, 10);
            if (end == optarg || *end != '\0' || v < 1 || v > SL_ENGINE_WORKERS_MAX)
                return usage_error(err, "engine", "--workers: expected a number, 1 to 64");
            o.workers = (int)v;
            break;
        }
        case 'p': {
            char *end = NULL;
            long v = strtol(optarg, &end, 10);
            if (end == optarg || *end != '\0' || v < 10 || v > 3600000)
                return usage_error(err, "engine",
                                   "--safety-poll-ms: expected milliseconds, 10 to 3600000");
            o.safety_poll_ms = (int)v;
            break;
        }
        case 'o': o.once = true; break;
        case 'l': {
            sl_log_level_t lv;
            if (sl_log_level_parse(optarg, &lv, err) != SL_OK)
                return usage_error(err, "engine", "--log-level: use debug, info, warn or error");
            sl_log_set_level(lv);
            break;
        }
        case 'h': fputs(commands[3].usage, stdout); return SL_DONE;
        default: return usage_error(err, "engine", "invalid option");
        }
    }
    if (optind < argc)
        return usage_error(err, "engine", "unexpected argument");
    if (o.db == NULL || o.db[0] == '\0')
        return usage_error(err, "engine", "missing --db CONNINFO");
    return sl_engine_run(&o, err);
}

static int
relay_common_opts(int argc, char **argv, const char *cmd, const char *usage, const char **config,
                  const char **level, bool *help_config, sl_err_t *err)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"log-level", required_argument, NULL, 'l'},
        {"help-config", no_argument, NULL, 'H'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "c:l:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c': *config = optarg; break;
        case 'l':
            if (level == NULL)
                return usage_error(err, cmd, "--log-level is not an option of this command");
            *level = optarg;
            break;
        case 'H': *help_config = true; break;
        case 'h': fputs(usage, stdout); return SL_DONE;
        default: return usage_error(err, cmd, "invalid option");
        }
    }
    if (*help_config) {
        sl_relay_cfg_help(stdout);
        return SL_DONE;
    }
    if (optind < argc)
        return usage_error(err, cmd, "unexpected argument");
    if (*config == NULL)
        return usage_error(err, cmd, "missing --config FILE");
    return SL_OK;
}

static int
cmd_relay(int argc, char **argv, sl_err_t *err)
{
    const char *config = NULL, *level = NULL;
    bool help_config = false;
    int rc = relay_common_opts(argc, argv, "relay", commands[1].usage, &config, &level,
                               &help_config, err);
    if (rc != SL_OK)
        return rc;
    sl_relay_cfg_t *cfg = NULL;
    if ((rc = sl_relay_cfg_load(config, &cfg, err)) != SL_OK)
        return rc;
    sl_log_level_t lv;
    if ((rc = sl_log_level_parse(level != NULL ? level : cfg->log_level, &lv, err)) != SL_OK) {
        sl_relay_cfg_free(cfg);
        return rc;
    }
    sl_log_set_level(lv);
    rc = sl_relay_run(cfg, err);
    sl_relay_cfg_free(cfg);
    return rc;
}

static int
cmd_check_config(int argc, char **argv, sl_err_t *err)
{
    const char *config = NULL;
    bool help_config = false;
    int rc = relay_common_opts(argc, argv, "check-config", commands[2].usage, &config, NULL,
                               &help_config, err);
    if (rc != SL_OK)
        return rc;
    sl_relay_cfg_t *cfg = NULL;
    if ((rc = sl_relay_cfg_load(config, &cfg, err)) != SL_OK)
        return rc;
    sl_relay_cfg_print(cfg, stdout);
    fprintf(stderr, "%s: configuration is valid (%zu pipeline%s)\n", config, cfg->npl,
            cfg->npl == 1 ? "" : "s");
    sl_relay_cfg_free(cfg);
    return SL_OK;
}

int
main(int argc, char **argv)
{
    if (argc < 2) {
        print_help(stderr);
        return SL_EXIT_USAGE;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        print_help(stdout);
        return SL_EXIT_OK;
    }
    if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "-V") == 0) {
        printf("sluice %s\n", SL_VERSION);
        return SL_EXIT_OK;
    }
    const sl_cmd_t *cmd = NULL;
    for (size_t i = 0; i < NCOMMANDS; i++)
        if (strcmp(argv[1], commands[i].name) == 0)
            cmd = &commands[i];
    if (cmd == NULL) {
        fprintf(stderr,
                "sluice: error: unknown command \"%s\"\nhint: run `sluice --help` for "
                "the list of commands\n",
                argv[1]);
        return SL_EXIT_USAGE;
    }
    sl_err_t err;
    sl_err_clear(&err);
    int rc = cmd->run(argc - 1, argv + 1, &err);
    if (rc >= 0)
        return SL_EXIT_OK;
    fprintf(stderr, "sluice %s: error: %s\n", cmd->name, err.msg);
    if (err.hint[0] != '\0')
        fprintf(stderr, "hint: %s\n", err.hint);
    return rc == SL_EUSAGE ? SL_EXIT_USAGE : SL_EXIT_RUNTIME;
}
