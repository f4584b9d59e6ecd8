/* commands.h - entry points of the `coemu` subcommands, one per line of
 * commands.def. A failed command reports with cli_fail() (common/cli.h). */
#ifndef COEMU_COMMANDS_H
#define COEMU_COMMANDS_H

#define COEMU_CMD(name, summary) int cmd_##name(int argc, char **argv);
#include "pipeline/cmd/commands.def"
#undef COEMU_CMD

#endif
