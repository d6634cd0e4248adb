/* byte_level.h — the GPT-2 byte-level alphabet (model-spec.md §9), written
 * here from the spec for the tokenizer test and fuzz target, independently
 * of src/tok: bytes 33..126, 161..172 and 174..255 stand for themselves;
 * the others, in order, for U+0100, U+0101, ... */
#ifndef DS4_TESTS_BYTE_LEVEL_H
#define DS4_TESTS_BYTE_LEVEL_H

#include <stdbool.h>

static inline bool byte_level_is_printable(int b) {
    return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
}

/* The UTF-8 string (1 or 2 bytes, NUL-terminated) that stands for byte b. */
static inline void byte_level_str(int b, char out[3]) {
    int cp = b;
    if (!byte_level_is_printable(b)) {
        cp = 256;
        for (int i = 0; i < b; i++)
            if (!byte_level_is_printable(i)) cp++;
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        out[1] = 0;
    } else {
        out[0] = (char)(0xC0 | cp >> 6);
        out[1] = (char)(0x80 | (cp & 0x3F));
        out[2] = 0;
    }
}

#endif
