/* placeholder: being written by the weights work */
#include "runtime/runtime.h"
int cmd_init_weights(int argc, char **argv) { fprintf(stderr, "moeppc init-weights: not built yet\n"); return 2; }
