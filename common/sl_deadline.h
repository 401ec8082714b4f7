/* common/sl_deadline.h: a bound on a teardown that may hang inside a library
 * (nng 1.5's socket close can deadlock: nanomsg/nng#1543), so a stopping
 * process never waits for SIGKILL. One deadline a process (SIGALRM). */
#ifndef SL_DEADLINE_H
#define SL_DEADLINE_H

/* Unless sl_deadline_disarm() comes first, `seconds` from now the process
 * writes msg (static storage, a whole line) to stderr and _exits with
 * status. Async-signal-safe: a stop signal's handler may arm it. Arming
 * again moves the deadline. */
void sl_deadline_arm(unsigned seconds, const char *msg, int status);
/* A deadline's seconds (a macro) as a string literal, for its message. */
#define SL_DEADLINE_STR(x) SL_DEADLINE_STR_(x)
#define SL_DEADLINE_STR_(x) #x
void sl_deadline_disarm(void);

#endif
