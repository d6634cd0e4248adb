/* parse.c — whole-string numbers in a range (see parse.h). */
#include "parse.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool ds4_parse_i64(const char *s, int64_t min, int64_t max, int64_t *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max) return false;
    *out = v;
    return true;
}

bool ds4_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out) {
    char *end;
    if (strchr(s, '-')) return false;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max) return false;
    *out = v;
    return true;
}

bool ds4_parse_f64(const char *s, double min, double max, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || !(v >= min && v <= max)) return false;
    *out = v;
    return true;
}

int ds4_parse_int_flag(const char *prog, const char *flag, const char *s, int min, int max, int *out) {
    int64_t v;
    if (!ds4_parse_i64(s, min, max, &v)) {
        fprintf(stderr, "%s: %s needs an integer in %d..%d, got '%s'\n", prog, flag, min, max, s);
        return -1;
    }
    *out = (int)v;
    return 0;
}

int ds4_parse_float_flag(const char *prog, const char *flag, const char *s, float min, float max, float *out) {
    double v;
    if (!ds4_parse_f64(s, min, max, &v)) {
        fprintf(stderr, "%s: %s needs a number in %g..%g, got '%s'\n", prog, flag, min, max, s);
        return -1;
    }
    *out = (float)v;
    return 0;
}
