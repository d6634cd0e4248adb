/* parse.h — numbers given as text (command-line flags, REPL commands).
 *
 * The whole string must be the number (strtoll/strtoull/strtod syntax,
 * base 10; leading white space allowed, nothing after), in [min, max];
 * unsigned values take no minus sign (strtoull would wrap "-1"), floats
 * must be finite. False otherwise, with *out untouched: the caller words
 * the message, naming its flag.
 *
 * The _flag forms are for a command's int and float flags: on a bad value
 * they print "PROG: FLAG needs an integer in MIN..MAX, got 'S'" (or "a
 * number") to stderr and return -1; 0 on success. */
#ifndef DS4_PARSE_H
#define DS4_PARSE_H

#include <stdbool.h>
#include <stdint.h>

bool ds4_parse_i64(const char *s, int64_t min, int64_t max, int64_t *out);
bool ds4_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out);
bool ds4_parse_f64(const char *s, double min, double max, double *out);

int ds4_parse_int_flag(const char *prog, const char *flag, const char *s, int min, int max, int *out);
int ds4_parse_float_flag(const char *prog, const char *flag, const char *s, float min, float max, float *out);

#endif
