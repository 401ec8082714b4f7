/* The JSON field readers every dialect's decoder shares (api.h): a bad
 * value fills err naming the field. */
#include <stdlib.h>
#include <string.h>

#include "job.h"

int sl_api_get_bool(const json_t *o, const char *k, int *out, sl_api_err *err)
{
    json_t *v = json_object_get(o, k);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_boolean(v))
        return sl_api_fail(err, SL_API_STATUS_INVALID, "%s: expected a boolean", k);
    *out = json_is_true(v);
    return 0;
}

int sl_api_get_int(const json_t *o, const char *k, long lo, long hi, int *out, sl_api_err *err)
{
    json_t *v = json_object_get(o, k);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_integer(v))
        return sl_api_fail(err, SL_API_STATUS_INVALID, "%s: expected an integer", k);
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi)
        return sl_api_fail(err, SL_API_STATUS_INVALID, "%s: %lld is outside [%ld, %ld]", k,
                           (long long)x, lo, hi);
    *out = (int)x;
    return 0;
}

int sl_api_get_num(const json_t *o, const char *k, double lo, double hi, float *out,
                   sl_api_err *err)
{
    json_t *v = json_object_get(o, k);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_number(v))
        return sl_api_fail(err, SL_API_STATUS_INVALID, "%s: expected a number", k);
    double x = json_number_value(v);
    if (x < lo || x > hi)
        return sl_api_fail(err, SL_API_STATUS_INVALID, "%s: %g is outside [%g, %g]", k, x,
                           lo, hi);
    *out = (float)x;
    return 0;
}

int sl_api_check_count(const json_t *a, const char *k, size_t max, sl_api_err *err)
{
    if (json_is_array(a) && json_array_size(a) > max)
        return sl_api_fail(err, SL_API_STATUS_INVALID, "%s: at most %zu entries, got %zu", k, max,
                           json_array_size(a));
    return 0;
}

int sl_api_get_stops(const json_t *o, const char *k, sl_job_params *p, sl_api_err *err)
{
    json_t *v = json_object_get(o, k);
    if (!v || json_is_null(v)) return 0;
    json_t *one = json_is_string(v) ? v : NULL;
    if (!one && !json_is_array(v))
        return sl_api_fail(err, SL_API_STATUS_INVALID, "%s: expected a string or an array of strings", k);
    size_t n = one ? 1 : json_array_size(v);
    if (n > SL_JOB_MAX_STOPS)
        return sl_api_fail(err, SL_API_STATUS_INVALID, "%s: at most %d stop strings", k,
                           SL_JOB_MAX_STOPS);
    for (size_t i = 0; i < n; i++) {
        json_t *s = one ? one : json_array_get(v, i);
        if (!json_is_string(s) || !json_string_length(s))
            return sl_api_fail(err, SL_API_STATUS_INVALID, "%s[%zu]: expected a non-empty string", k, i);
        if (json_string_length(s) > SL_JOB_MAX_STOP_BYTES)
            return sl_api_fail(err, SL_API_STATUS_INVALID, "%s[%zu]: at most %d bytes", k,
                               i, SL_JOB_MAX_STOP_BYTES);
        p->stops[p->n_stops++] = strdup(json_string_value(s));
    }
    return 0;
}
