/* patchbay attribute: a sweep whose rows attribution patching estimates
 * (the spec's "method" set to "atp"), with --verify top:K[,control:N]
 * [,seed:S] written into its "verify" (docs/patching.md). */
#ifndef PB_CLI_ATTRIBUTE_H
#define PB_CLI_ATTRIBUTE_H

/* The command's flags. */
typedef struct pb_cli_attribute {
    const char *method; /* "atp", "atp*", "atp-star" or NULL (the spec's, else atp) */
    const char *verify; /* "top:K[,control:N][,seed:S]" or NULL */
    int no_qk_fix, no_grad_drop;
} pb_cli_attribute;

/* The spec's method for a --method value: "atp-star" (a spelling the
 * shell leaves alone) is "atp*"; every other value is itself. */
const char *pb_cli_method_name(const char *flag_value);

/* Rewrites the spec's JSON text: its "method" from --method, else "atp"
 * unless it names an estimate already (a spec asking for "exact" is
 * refused); "atp_star" from --no-qk-fix / --no-grad-drop (refused without
 * atp*); "verify" from the flag's text when given. 0, or 2 after printing
 * why (a usage error). */
int pb_cli_spec_attribute(char **spec_text, const pb_cli_attribute *how);

#endif
