/* common/sl_deadline.c: see sl_deadline.h. */
#include "sl_deadline.h"

#include <signal.h>
#include <string.h>
#include <unistd.h>

static const char *volatile deadline_msg;
static volatile sig_atomic_t deadline_status;

static void on_deadline(int sig)
{
    (void)sig;
    const char *m = deadline_msg;
    ssize_t w = write(STDERR_FILENO, m, strlen(m));
    (void)w;
    _exit(deadline_status);
}

void sl_deadline_arm(unsigned seconds, const char *msg, int status)
{
    deadline_msg = msg;
    deadline_status = status;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_deadline;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGALRM, &sa, NULL);
    alarm(seconds);
}

void sl_deadline_disarm(void) { alarm(0); }
