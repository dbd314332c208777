/* report.html: a finished sweep as one self-contained HTML5 page (inline CSS
 * and SVG, no external resources; a few lines of optional JavaScript) with
 * the run's summary, a heatmap per component, the top sites, and what the
 * caller adds: refusal rates, generated texts, the direction summary. */
#ifndef PB_REPORT_HTML_H
#define PB_REPORT_HTML_H

#include "patchbay.h"

/* pb_report_extras and pb_report_html_write are public: include/patchbay.h. */

#endif
