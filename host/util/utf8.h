/* The one UTF-8 validator: what a lead byte announces and the length of one
 * well-formed sequence (no overlongs, surrogates or code points above
 * U+10FFFF). Used by the tokenizer and the HTML report. */
#ifndef PB_UTF8_H
#define PB_UTF8_H

#include <stddef.h>

/* The length a lead byte c announces (1 for ASCII, 2 to 4) and the range
 * [*lo, *hi] the second byte must fall in; 0 when c starts no well-formed
 * sequence (a continuation byte, 0xC0, 0xC1, 0xF5 and above). */
int pb_utf8_lead(unsigned c, unsigned *lo, unsigned *hi);
/* Length of the well-formed sequence at s (n bytes left), 0 when it is
 * ill-formed or cut short. */
size_t pb_utf8_length(const unsigned char *s, size_t n);

#endif
