/* placeholder: being written */
#include "tools/commands.h"
#include <stdio.h>
int cmd_compile(int argc, char **argv) { fprintf(stderr, "moeppc compile: not built yet\n"); return 2; }
int cmd_run(int argc, char **argv) { fprintf(stderr, "moeppc run: not built yet\n"); return 2; }
