/* ds4-plot — turns a ds4-bench CSV into an SVG line chart.
 *
 *   ds4-plot bench.csv -o chart.svg [--title TEXT]
 *
 * Prefill and decode throughput against context length: prefill tok/s on
 * the left axis, decode tok/s on the right one (they differ by one to two
 * orders of magnitude, so one shared axis would flatten the decode line),
 * all three axes from zero; tok/s ticks at 1-2-5 steps, context ticks at
 * power-of-two steps; a legend and the title. Plain SVG 1.1 text, no
 * scripts, no external fonts or stylesheets.
 *
 * The CSV must be what ds4-bench writes (server-spec §7.1): the header
 * ctx_tokens,prefill_tokens,prefill_tps,gen_tokens,gen_tps,kvcache_bytes and
 * one row of six numbers per frontier. Anything else is an error naming the
 * line (exit 1); bad options exit 2. */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CSV_HEADER "ctx_tokens,prefill_tokens,prefill_tps,gen_tokens,gen_tps,kvcache_bytes"
#define MAX_ROWS 100000

/* Canvas and plot area, in SVG user units (pixels). */
enum { WIDTH = 800, HEIGHT = 480, LEFT = 80, RIGHT = 80, TOP = 56, BOTTOM = 64 };
#define PREFILL_COLOR "#1f77b4"
#define DECODE_COLOR "#d62728"

typedef struct row {
    double ctx, prefill_tps, gen_tps;
} row;

static void usage(FILE *out) {
    fprintf(out, "usage: ds4-plot IN.csv -o OUT.svg [--title TEXT]\n"
                 "  Draws prefill and decode tok/s against context from a ds4-bench CSV.\n");
}

/* ---- reading the CSV ---- */

/* Parses exactly six comma-separated finite numbers >= 0. */
static bool parse_row(char *line, double v[6]) {
    char *p = line;
    for (int i = 0; i < 6; i++) {
        char *end;
        errno = 0;
        v[i] = strtod(p, &end);
        if (end == p || errno || !isfinite(v[i]) || v[i] < 0) return false;
        p = end;
        if (i < 5) {
            if (*p != ',') return false;
            p++;
        }
    }
    return *p == '\0';
}

static void chomp(char *s) {
    size_t n = strlen(s);
    while (n && (s[n - 1] == '\n' || s[n - 1] == '\r')) s[--n] = '\0';
}

/* Reads the rows; on error prints why and returns -1. */
static int read_csv(const char *path, row **rows, int *n_rows) {
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "ds4-plot: cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    char line[1024];
    int lineno = 0, n = 0, cap = 0, rc = 0;
    row *r = NULL;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        if (!strchr(line, '\n') && !feof(f)) {
            fprintf(stderr, "ds4-plot: %s:%d: line too long\n", path, lineno);
            rc = -1;
            break;
        }
        chomp(line);
        if (lineno == 1) {
            if (strcmp(line, CSV_HEADER) != 0) {
                fprintf(stderr, "ds4-plot: %s:1: expected the ds4-bench header '%s'\n", path, CSV_HEADER);
                rc = -1;
                break;
            }
            continue;
        }
        if (!line[0]) continue;
        double v[6];
        if (!parse_row(line, v)) {
            fprintf(stderr, "ds4-plot: %s:%d: expected six non-negative numbers, got '%s'\n", path, lineno, line);
            rc = -1;
            break;
        }
        if (n && v[0] <= r[n - 1].ctx) {
            fprintf(stderr, "ds4-plot: %s:%d: ctx_tokens %.0f does not increase\n", path, lineno, v[0]);
            rc = -1;
            break;
        }
        if (n == MAX_ROWS) {
            fprintf(stderr, "ds4-plot: %s: more than %d rows\n", path, MAX_ROWS);
            rc = -1;
            break;
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            row *nr = realloc(r, sizeof *r * (size_t)cap);
            if (!nr) {
                fprintf(stderr, "ds4-plot: out of memory\n");
                rc = -1;
                break;
            }
            r = nr;
        }
        r[n++] = (row){v[0], v[2], v[4]};
    }
    if (rc == 0 && ferror(f)) {
        fprintf(stderr, "ds4-plot: cannot read %s: %s\n", path, strerror(errno));
        rc = -1;
    }
    if (rc == 0 && lineno == 0) {
        fprintf(stderr, "ds4-plot: %s is empty\n", path);
        rc = -1;
    }
    if (rc == 0 && n == 0) {
        fprintf(stderr, "ds4-plot: %s has no data rows\n", path);
        rc = -1;
    }
    fclose(f);
    if (rc) {
        free(r);
        return -1;
    }
    *rows = r;
    *n_rows = n;
    return 0;
}

/* ---- axes ---- */

typedef struct axis {
    double lo, hi, step; /* range and tick spacing */
} axis;

/* A 1-2-5 tick step giving about `ticks` intervals over [0, max]; hi is the
 * first tick at or above max. */
static axis nice_axis(double lo, double max, int ticks) {
    if (max <= lo) max = lo + 1;
    double raw = (max - lo) / ticks, mag = pow(10, floor(log10(raw))), f = raw / mag;
    double step = (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * mag;
    axis a = {floor(lo / step) * step, ceil(max / step) * step, step};
    if (a.hi <= a.lo) a.hi = a.lo + step;
    return a;
}

/* Context ticks at a power-of-two step (frontiers are usually multiples of
 * 512 or 2048), about `ticks` intervals over [0, max]. */
static axis ctx_axis(double max, int ticks) {
    double step = 1;
    while (step * ticks < max) step *= 2;
    axis a = {0, ceil(max / step) * step, step};
    if (a.hi <= 0) a.hi = step;
    return a;
}

/* Tick labels: "512", "1.25k", "2k", "32k", "1M" for contexts; plain numbers
 * with as many decimals as the step needs for tok/s. */
static void ctx_label(double v, char *buf, size_t n) {
    if (v >= 1048576 && fmod(v, 1048576) == 0) snprintf(buf, n, "%.0fM", v / 1048576);
    else if (v >= 1024 && fmod(v, 256) == 0) snprintf(buf, n, "%gk", v / 1024);
    else snprintf(buf, n, "%.0f", v);
}

static void value_label(double v, double step, char *buf, size_t n) {
    int decimals = step >= 1 ? 0 : (int)ceil(-log10(step) - 1e-9);
    snprintf(buf, n, "%.*f", decimals, v);
}

static double map(double v, axis a, double p0, double p1) {
    return p0 + (v - a.lo) / (a.hi - a.lo) * (p1 - p0);
}

/* Text content: escapes the five XML specials. */
static void put_text(FILE *o, const char *s) {
    for (; *s; s++) {
        switch (*s) {
        case '&': fputs("&amp;", o); break;
        case '<': fputs("&lt;", o); break;
        case '>': fputs("&gt;", o); break;
        case '"': fputs("&quot;", o); break;
        case '\'': fputs("&apos;", o); break;
        default:
            if ((unsigned char)*s >= 0x20 || *s == '\t') fputc(*s, o);
        }
    }
}

static void series(FILE *o, const row *r, int n, axis x, axis y, bool decode, const char *color) {
    double x0 = LEFT, x1 = WIDTH - RIGHT, y0 = HEIGHT - BOTTOM, y1 = TOP;
    fprintf(o, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"", color);
    for (int i = 0; i < n; i++)
        fprintf(o, "%s%.1f,%.1f", i ? " " : "", map(r[i].ctx, x, x0, x1),
                map(decode ? r[i].gen_tps : r[i].prefill_tps, y, y0, y1));
    fprintf(o, "\"/>\n");
    for (int i = 0; i < n; i++)
        fprintf(o, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n", map(r[i].ctx, x, x0, x1),
                map(decode ? r[i].gen_tps : r[i].prefill_tps, y, y0, y1), color);
}

static void y_axis(FILE *o, axis a, bool right, const char *color, const char *title) {
    double x = right ? WIDTH - RIGHT : LEFT, y0 = HEIGHT - BOTTOM, y1 = TOP;
    char lab[32];
    fprintf(o, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\"/>\n", x, y0, x, y1, color);
    for (int i = 0; a.lo + i * a.step <= a.hi + a.step * 1e-9; i++) {
        double v = a.lo + i * a.step, y = map(v, a, y0, y1);
        value_label(v, a.step, lab, sizeof lab);
        fprintf(o, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\"/>\n", x, y,
                right ? x + 5 : x - 5, y, color);
        fprintf(o, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"%s\" fill=\"%s\">%s</text>\n",
                right ? x + 8 : x - 8, y + 4, right ? "start" : "end", color, lab);
    }
    double tx = right ? WIDTH - 18 : 18, ty = (y0 + y1) / 2;
    fprintf(o, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" fill=\"%s\" transform=\"rotate(%d %.1f %.1f)\">",
            tx, ty, color, right ? 90 : -90, tx, ty);
    put_text(o, title);
    fprintf(o, "</text>\n");
}

static void write_svg(FILE *o, const row *r, int n, const char *title) {
    double pmax = 0, gmax = 0;
    for (int i = 0; i < n; i++) {
        if (r[i].prefill_tps > pmax) pmax = r[i].prefill_tps;
        if (r[i].gen_tps > gmax) gmax = r[i].gen_tps;
    }
    axis x = ctx_axis(r[n - 1].ctx, 8), yp = nice_axis(0, pmax, 5), yg = nice_axis(0, gmax, 5);
    double x0 = LEFT, x1 = WIDTH - RIGHT, y0 = HEIGHT - BOTTOM, y1 = TOP;
    char lab[32];

    fprintf(o, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
               "<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"%d\" height=\"%d\" "
               "viewBox=\"0 0 %d %d\" font-family=\"sans-serif\" font-size=\"12\">\n",
            WIDTH, HEIGHT, WIDTH, HEIGHT);
    fprintf(o, "<rect x=\"0\" y=\"0\" width=\"%d\" height=\"%d\" fill=\"white\"/>\n", WIDTH, HEIGHT);
    fprintf(o, "<text x=\"%d\" y=\"28\" text-anchor=\"middle\" font-size=\"16\">", WIDTH / 2);
    put_text(o, title);
    fprintf(o, "</text>\n");

    /* x axis with vertical grid lines */
    fprintf(o, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"black\"/>\n", x0, y0, x1, y0);
    for (int i = 0; x.lo + i * x.step <= x.hi + x.step * 1e-9; i++) {
        double v = x.lo + i * x.step, px = map(v, x, x0, x1);
        ctx_label(v, lab, sizeof lab);
        fprintf(o, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#e0e0e0\"/>\n", px, y0, px, y1);
        fprintf(o, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"black\"/>\n", px, y0, px, y0 + 5);
        fprintf(o, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n", px, y0 + 18, lab);
    }
    fprintf(o, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">context (tokens)</text>\n", (x0 + x1) / 2,
            HEIGHT - 16);

    y_axis(o, yp, false, PREFILL_COLOR, "prefill (tok/s)");
    y_axis(o, yg, true, DECODE_COLOR, "decode (tok/s)");
    series(o, r, n, x, yp, false, PREFILL_COLOR);
    series(o, r, n, x, yg, true, DECODE_COLOR);

    /* legend: between the title and the plot, so it never covers a line */
    double lx = (x0 + x1) / 2 - 130, ly = TOP - 14;
    fprintf(o, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"2\"/>\n",
            lx, ly - 4, lx + 24, ly - 4, PREFILL_COLOR);
    fprintf(o, "<text x=\"%.1f\" y=\"%.1f\">prefill tok/s (left)</text>\n", lx + 30, ly);
    fprintf(o, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"2\"/>\n",
            lx + 150, ly - 4, lx + 174, ly - 4, DECODE_COLOR);
    fprintf(o, "<text x=\"%.1f\" y=\"%.1f\">decode tok/s (right)</text>\n", lx + 180, ly);
    fprintf(o, "</svg>\n");
}

int main(int argc, char **argv) {
    const char *in = NULL, *out = NULL, *title = "ds4 throughput by context";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        if (!strcmp(a, "-o") || !strcmp(a, "--title")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "ds4-plot: %s needs a value\n", a);
                return 2;
            }
            if (!strcmp(a, "-o")) out = argv[++i];
            else title = argv[++i];
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "ds4-plot: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        } else if (!in) {
            in = a;
        } else {
            fprintf(stderr, "ds4-plot: one input file only ('%s')\n", a);
            return 2;
        }
    }
    if (!in || !out) {
        fprintf(stderr, "ds4-plot: an input CSV and -o OUT.svg are required\n");
        usage(stderr);
        return 2;
    }
    row *rows;
    int n;
    if (read_csv(in, &rows, &n)) return 1;
    FILE *o = fopen(out, "w");
    if (!o) {
        fprintf(stderr, "ds4-plot: cannot create %s: %s\n", out, strerror(errno));
        free(rows);
        return 1;
    }
    write_svg(o, rows, n, title);
    free(rows);
    bool failed = ferror(o) != 0;
    if (fclose(o) != 0) failed = true;
    if (failed) {
        fprintf(stderr, "ds4-plot: cannot write %s\n", out);
        return 1;
    }
    return 0;
}
