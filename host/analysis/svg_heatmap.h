/* What the HTML pages (report.html, patterns.html) share: HTML escaping,
 * the colour scales, the heatmaps' SVG styles, and the script that makes
 * each figure downloadable as a standalone SVG or a PNG. */
#ifndef PB_SVG_HEATMAP_H
#define PB_SVG_HEATMAP_H

#include <stdio.h>

typedef enum pb_html_escape {
    PB_HTML_TEXT, /* keeps newlines and tabs (for <pre> and pre-wrap) */
    PB_HTML_LABEL /* shows whitespace: space "·", newline "↵", tab "⇥", CR "\r" */
} pb_html_escape;

/* Writes text HTML-escaped (&, <, >, both quotes), so it is safe in text and
 * in attribute values. Invalid UTF-8 and control bytes become a visible
 * "\xNN". max_chars > 0 cuts after that many characters with "…". NULL
 * writes nothing. */
void pb_html_put_escaped(FILE *f, const char *text, pb_html_escape mode, int max_chars);

/* The colour of cells without a value. */
extern const char *const pb_colour_nan;
/* Diverging scale for value in [-range, range]: blue, white (0), red;
 * pb_colour_nan for NaN. out: "#rrggbb". */
void pb_colour_diverging(double value, double range, char out[8]);
/* Sequential scale for value in [0, 1] (clamped): white (0) to blue (1),
 * the diverging scale's blue half; pb_colour_nan for NaN. */
void pb_colour_sequential(double value, char out[8]);

/* The heatmaps' own styles: in a page's <style id="svg-style">, from where
 * pb_svg_page_script copies them into every exported SVG. */
extern const char *const pb_svg_heatmap_style;
/* The page's optional script: each a.export-svg (data-for = an <svg> id)
 * gets that SVG standalone as a data: URL, each a.export-png renders it on
 * a canvas at twice its size when clicked (all at once with #export-all in
 * the address; body data-png counts them), a hovered rect.cell's <title>
 * goes to its figure's .cell-info, and body data-script="ok" at its end. */
extern const char *const pb_svg_page_script;
/* <p class="export"> with the SVG and PNG download links of the <svg
 * id="svg_id">, downloaded as file_stem.svg and file_stem.png. */
void pb_svg_put_export_links(FILE *f, const char *svg_id, const char *file_stem);

#endif
