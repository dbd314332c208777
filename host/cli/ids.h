/* Token ids given on the command line or in files: "1, 2 3" text (commas,
 * whitespace and brackets separate; '#' starts a comment) or an int32 .npy. */
#ifndef PB_IDS_H
#define PB_IDS_H

#include <stdint.h>

#include "patchbay.h"

/* Parses text; where names the source in messages. *ids malloc'd. */
pb_status pb_ids_parse(const char *text, const char *where, int32_t **ids, int *n_ids);
/* Reads a .npy (1-d, int32/int64) or a text file of ids. */
pb_status pb_ids_read_file(const char *path, int32_t **ids, int *n_ids);

#endif
