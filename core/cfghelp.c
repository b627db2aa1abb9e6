/*
 * core/cfghelp.c - renders configuration key tables as reference text.
 * The same tables that drive parsing drive `--help-config`, so the help can
 * never drift from what the parser accepts.
 */
#include "core/core.h"

#include <stdio.h>

static const char *const cfg_type_names[] = {
    [SL_CFG_STRING] = "string",           [SL_CFG_INT] = "integer",   [SL_CFG_BOOL] = "boolean",
    [SL_CFG_STRLIST] = "list of strings", [SL_CFG_OBJECT] = "object", [SL_CFG_ARRAY] = "array",
};

void
sl_cfg_keys_help(FILE *out, const sl_cfg_key_t *keys, size_t nkeys, const char *indent)
{
    for (size_t i = 0; i < nkeys; i++) {
        const sl_cfg_key_t *k = &keys[i];
        fprintf(out, "%s%-22s %-15s %s", indent, k->name, cfg_type_names[k->type],
                k->required ? "required" : "optional");
        if (k->def != NULL)
            fprintf(out, ", default %s", k->def);
        if (k->choices != NULL) {
            fprintf(out, ", one of");
            for (const char *const *c = k->choices; *c != NULL; c++)
                fprintf(out, "%s%s", c == k->choices ? " " : "|", *c);
        }
        if (k->type == SL_CFG_INT)
            fprintf(out, ", %lld..%lld", (long long)k->min, (long long)k->max);
        if (k->secret)
            fprintf(out, ", secret");
        fprintf(out, "\n%s    %s\n", indent, k->doc != NULL ? k->doc : "");
    }
}
