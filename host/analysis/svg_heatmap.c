/* The pieces report.html and patterns.html share (svg_heatmap.h). */
#include "analysis/svg_heatmap.h"

#include <math.h>
#include <string.h>

#include "util/utf8.h"

/* ---- text ----------------------------------------------------------------- */

void pb_html_put_escaped(FILE *f, const char *text, pb_html_escape mode, int max_chars) {
    if (!text)
        return;
    const unsigned char *s = (const unsigned char *)text;
    size_t n = strlen(text);
    int chars = 0;
    for (size_t i = 0; i < n;) {
        if (max_chars > 0 && chars == max_chars) {
            fputs("…", f);
            return;
        }
        unsigned c = s[i];
        int len = (int)pb_utf8_length(s + i, n - i);
        chars++;
        if (len > 1) {
            fwrite(s + i, 1, (size_t)len, f);
            i += (size_t)len;
            continue;
        }
        i++;
        if (len == 0) {
            fprintf(f, "\\x%02X", c);
            continue;
        }
        switch (c) {
        case '&': fputs("&amp;", f); continue;
        case '<': fputs("&lt;", f); continue;
        case '>': fputs("&gt;", f); continue;
        case '"': fputs("&quot;", f); continue;
        case '\'': fputs("&#39;", f); continue;
        default: break;
        }
        if (mode == PB_HTML_LABEL) {
            const char *shown = c == ' ' ? "·" : c == '\n' ? "↵" : c == '\t' ? "⇥" : c == '\r' ? "\\r" : NULL;
            if (shown) {
                fputs(shown, f);
                continue;
            }
        } else if (c == '\n' || c == '\t') {
            fputc((int)c, f);
            continue;
        }
        if (c < 0x20 || c == 0x7F)
            fprintf(f, "\\x%02X", c);
        else
            fputc((int)c, f);
    }
}

/* ---- colours -------------------------------------------------------------- */

/* Diverging scale: blue (negative), white (0), red (positive); stops at |t| = 0, 0.5, 1. */
static const unsigned char scale_red[3][3] = {{255, 255, 255}, {244, 165, 130}, {178, 24, 43}};
static const unsigned char scale_blue[3][3] = {{255, 255, 255}, {146, 197, 222}, {33, 102, 172}};
const char *const pb_colour_nan = "#c8c8c8";

void pb_colour_diverging(double value, double range, char out[8]) {
    if (isnan(value)) {
        snprintf(out, 8, "%s", pb_colour_nan);
        return;
    }
    double t = value / range;
    t = t > 1 ? 1 : t < -1 ? -1 : t;
    const unsigned char(*stops)[3] = t >= 0 ? scale_red : scale_blue;
    double a = fabs(t) * 2;
    int k = a >= 1 ? 1 : 0;
    double u = a - k;
    int rgb[3];
    for (int i = 0; i < 3; i++)
        rgb[i] = (int)lround(stops[k][i] + (stops[k + 1][i] - stops[k][i]) * u);
    snprintf(out, 8, "#%02x%02x%02x", rgb[0] & 255, rgb[1] & 255, rgb[2] & 255);
}

void pb_colour_sequential(double value, char out[8]) {
    if (isnan(value)) {
        snprintf(out, 8, "%s", pb_colour_nan);
        return;
    }
    pb_colour_diverging(value > 1 ? -1 : value < 0 ? 0 : -value, 1, out);
}

/* ---- SVG figures ---------------------------------------------------------- */

const char *const pb_svg_heatmap_style =
    "svg.heatmap{display:block;font-family:'DejaVu Sans',sans-serif}\n"
    "svg .row-label,svg .col-label{font-size:11px;fill:#333}svg .token{font-family:'DejaVu Sans Mono',monospace}\n"
    "svg .token.differs{font-weight:700;fill:#b35806}\n"
    "svg .axis-title{font-size:12px;fill:#555;font-weight:600}svg .tick{font-size:11px;fill:#333}\n"
    "svg .value{font-size:10px;fill:#222;pointer-events:none}svg .value.light{fill:#fff}\n"
    "svg rect.cell{stroke:#e4e4e4;stroke-width:1}svg rect.cell:hover{stroke:#111;stroke-width:2}\n";

const char *const pb_svg_page_script =
    "(function () {\n"
    "  var css = document.getElementById('svg-style').textContent;\n"
    "  function standalone(svg) {\n"
    "    var copy = svg.cloneNode(true);\n"
    "    var style = document.createElementNS(svg.namespaceURI, 'style');\n"
    "    style.textContent = css;\n"
    "    copy.insertBefore(style, copy.firstChild);\n"
    "    return new XMLSerializer().serializeToString(copy);\n"
    "  }\n"
    "  function svgUrl(svg) {\n"
    "    return 'data:image/svg+xml;charset=utf-8,' + encodeURIComponent(standalone(svg));\n"
    "  }\n"
    "  function renderPng(link, done) {\n"
    "    var svg = document.getElementById(link.getAttribute('data-for'));\n"
    "    var w = +svg.getAttribute('width') * 2, h = +svg.getAttribute('height') * 2, image = new Image();\n"
    "    image.onload = function () {\n"
    "      var canvas = document.createElement('canvas');\n"
    "      canvas.width = w;\n"
    "      canvas.height = h;\n"
    "      var context = canvas.getContext('2d');\n"
    "      context.fillStyle = '#fff';\n"
    "      context.fillRect(0, 0, w, h);\n"
    "      context.drawImage(image, 0, 0, w, h);\n"
    "      link.href = canvas.toDataURL('image/png');\n"
    "      link.setAttribute('data-ready', '1');\n"
    "      done();\n"
    "    };\n"
    "    image.src = svgUrl(svg);\n"
    "  }\n"
    "  document.querySelectorAll('a.export-svg').forEach(function (link) {\n"
    "    link.href = svgUrl(document.getElementById(link.getAttribute('data-for')));\n"
    "  });\n"
    "  var pngs = document.querySelectorAll('a.export-png');\n"
    "  pngs.forEach(function (link) {\n"
    "    link.addEventListener('click', function (event) {\n"
    "      if (link.getAttribute('data-ready')) return;\n"
    "      event.preventDefault();\n"
    "      renderPng(link, function () { link.click(); });\n"
    "    });\n"
    "  });\n"
    "  if (location.hash === '#export-all') {\n"
    "    var left = pngs.length;\n"
    "    pngs.forEach(function (link) {\n"
    "      renderPng(link, function () {\n"
    "        if (--left === 0) document.body.setAttribute('data-png', String(pngs.length));\n"
    "      });\n"
    "    });\n"
    "  }\n"
    "  document.addEventListener('mouseover', function (event) {\n"
    "    var target = event.target;\n"
    "    if (!target.classList || !target.classList.contains('cell')) return;\n"
    "    var figure = target.closest('figure'), title = target.querySelector('title');\n"
    "    var info = figure && figure.querySelector('.cell-info');\n"
    "    if (info && title) info.textContent = title.textContent;\n"
    "  });\n"
    "  document.body.setAttribute('data-script', 'ok'); /* for tests: the script ran to its end */\n"
    "})();\n";

void pb_svg_put_export_links(FILE *f, const char *svg_id, const char *file_stem) {
    fprintf(f,
            "<p class=\"export\">download <a class=\"export-svg\" data-for=\"%s\" download=\"%s.svg\" "
            "href=\"#%s\">SVG</a> · <a class=\"export-png\" data-for=\"%s\" download=\"%s.png\" "
            "href=\"#%s\">PNG</a></p>",
            svg_id, file_stem, svg_id, svg_id, file_stem, svg_id);
}
