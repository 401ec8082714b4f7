/* sl_log: leveled logging to stderr, thread-safe (one write per line).
 * Level from SLUICE_LOG (error|warn|info|debug) or sl_log_set_level(). */
#ifndef SL_LOG_H
#define SL_LOG_H

typedef enum sl_log_level {
    SL_LOG_ERROR = 0,
    SL_LOG_WARN = 1,
    SL_LOG_INFO = 2,
    SL_LOG_DEBUG = 3,
} sl_log_level;

void sl_log_set_level(sl_log_level lvl);
int sl_log_enabled(sl_log_level lvl);
void sl_log_write(sl_log_level lvl, const char *mod, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define SL_LOGE(mod, ...) sl_log_write(SL_LOG_ERROR, mod, __VA_ARGS__)
#define SL_LOGW(mod, ...) sl_log_write(SL_LOG_WARN, mod, __VA_ARGS__)
#define SL_LOGI(mod, ...) sl_log_write(SL_LOG_INFO, mod, __VA_ARGS__)
#define SL_LOGD(mod, ...)                                                                          \
    do {                                                                                           \
        if (sl_log_enabled(SL_LOG_DEBUG)) sl_log_write(SL_LOG_DEBUG, mod, __VA_ARGS__);            \
    } while (0)

#endif
