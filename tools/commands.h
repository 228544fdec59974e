/* commands.h — the subcommands that live in tools/ (the others are declared by their layer). */
#ifndef MOEPPC_COMMANDS_H
#define MOEPPC_COMMANDS_H
int cmd_compile(int argc, char **argv);
int cmd_run(int argc, char **argv);
#endif
