#ifndef ECHOKIT_REPLAYCLI_H
#define ECHOKIT_REPLAYCLI_H
/* `echokit replay ...` (argv after "replay"): the client-side replay tool.
 * Returns the exit status: 0 all matched, 1 a mismatch, 2 usage or file. */
int replaycli_main(int argc, char **argv);
#endif
