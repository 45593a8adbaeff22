// The symbols that anyctx/ctx/config.h makes every including file reference:
// the ones named for the values this library is built with. A file built
// with other values references a name defined nowhere, and the linker's
// "undefined reference to `anyctx_built_with_..._but_this_file_has_...'"
// says which switch differs (config.h, contract).
#include "anyctx/ctx/config.h"

extern "C" {
const char ANYCTX_CONFIG_DEBUG_SYMBOL = 0;
const char ANYCTX_CONFIG_SITES_SYMBOL = 0;
const char ANYCTX_CONFIG_MAX_CPUS_SYMBOL = 0;
}
