/* placeholder: being written by the frontend work */
#include "frontend/frontend.h"
int cmd_check(int argc, char **argv) { fprintf(stderr, "moeppc check: not built yet\n"); return 2; }
int cmd_import_hf(int argc, char **argv) { fprintf(stderr, "moeppc import-hf: not built yet\n"); return 2; }
