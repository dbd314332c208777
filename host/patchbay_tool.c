/* Compiles host/patchbay_tool.h beside the library headers it restates, so
 * that a prototype changed in one place and not the other fails the build. */
#include "patchbay_tool.h"

#include "attribution/atp.h"
#include "backend/backend_cuda.h"
#include "distributed/rank_device.h"
#include "formats/npy.h"
#include "model/model_random.h"
#include "text/model_text.h"
#include "util/array.h"
#include "util/clock.h"
#include "util/internal.h"
#include "util/outdir.h"
#include "util/utf8.h"
