/* report.html: a finished sweep as one self-contained HTML5 page (inline CSS
 * and SVG, no external resources; a few lines of optional JavaScript) with
 * the run's summary, a heatmap per component, the top sites, and what the
 * caller adds: refusal rates, generated texts, the direction summary. */
#ifndef PB_REPORT_HTML_H
#define PB_REPORT_HTML_H

#include "patchbay.h"

/* One generated text: a harmful/harmless baseline, with ablation, with addition... */
typedef struct pb_report_generation {
    const char *label;
    const char *prompt;
    const char *text;
    int refused; /* 1 refused, 0 complied, < 0 not judged */
} pb_report_generation;

/* `refused` of `n` generations under `label` refused. */
typedef struct pb_report_rate {
    const char *label;
    int n;
    int refused;
} pb_report_rate;

/* Everything the sweep itself does not know. Every pointer may be NULL (counts 0). */
typedef struct pb_report_extras {
    const char *title;                   /* e.g. "Refusal analysis: SmolLM2-135M-Instruct"; NULL: from the model path */
    /* Column labels of the position heatmaps: the decoded tokens of the
     * reference prompt. Position p >= 0 reads label p; a negative
     * (end-aligned) p reads label n_position_labels + p. NULL: the tokens
     * of pair 0's base prompt, as the model decodes them. */
    const char *const *position_labels;
    int n_position_labels;
    const pb_report_generation *generations;
    int n_generations;
    const pb_report_rate *rates;
    int n_rates;
    const char *direction_summary;       /* free text (selected layer/position and scores) */
    const char *notes;                   /* free text */
    double wall_seconds;                 /* total run time; <= 0 to omit */
} pb_report_extras;

/* Writes the report to path (a temporary name, then renamed). Reads the
 * sweep only; extras may be NULL. A missing directory is PB_ERR_IO and
 * leaves no file. */
pb_status pb_report_html_write(const pb_sweep *sweep, const char *path, const pb_report_extras *extras);

#endif
