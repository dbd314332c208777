/* patchbay attribute: a sweep whose rows attribution patching estimates
 * (the spec's "method" set to "atp"), with --verify top:K[,control:N]
 * [,seed:S] written into its "verify" (docs/patching.md). */
#ifndef PB_CLI_ATTRIBUTE_H
#define PB_CLI_ATTRIBUTE_H

/* Rewrites the spec's JSON text: "method": "atp" unless it says so already
 * (a spec asking for "exact" is refused), and "verify" from the flag's
 * text when given. 0, or 2 after printing why (a usage error). */
int pb_cli_spec_attribute(char **spec_text, const char *verify);

#endif
