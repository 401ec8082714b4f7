#include "sl_log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int g_level = -1; /* -1: read SLUICE_LOG on first use */

static int level_now(void)
{
    if (g_level < 0) {
        const char *s = getenv("SLUICE_LOG");
        int l = SL_LOG_INFO;
        if (s && !strcmp(s, "error")) l = SL_LOG_ERROR;
        else if (s && !strcmp(s, "warn")) l = SL_LOG_WARN;
        else if (s && !strcmp(s, "debug")) l = SL_LOG_DEBUG;
        g_level = l;
    }
    return g_level;
}

void sl_log_set_level(sl_log_level lvl) { g_level = (int)lvl; }
int sl_log_enabled(sl_log_level lvl) { return (int)lvl <= level_now(); }

void sl_log_write(sl_log_level lvl, const char *mod, const char *fmt, ...)
{
    if (!sl_log_enabled(lvl)) return;
    static const char tag[] = "EWID";
    char line[2048];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "%c %02d:%02d:%02d.%03ld %s[%d] ", tag[lvl], tm.tm_hour,
                     tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000, mod, (int)getpid());
    va_list ap;
    va_start(ap, fmt);
    if (n < (int)sizeof line) n += vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    if (n >= (int)sizeof line - 1) n = (int)sizeof line - 2;
    line[n++] = '\n';
    /* one write(2) per line keeps lines from different threads whole */
    ssize_t w = write(STDERR_FILENO, line, (size_t)n);
    (void)w;
}
