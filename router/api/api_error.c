/* The status table of api.h: every error path of the API layer reads its
 * HTTP code and error type here, and errors before any header went out are
 * answered here. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"

static const sl_api_status_info status_info[SL_API_STATUS_COUNT] = {
    [SL_API_STATUS_INVALID] = {400, "invalid_request_error", "invalid_request_error"},
    [SL_API_STATUS_UNAUTHORIZED] = {401, "authentication_error", "authentication_error"},
    [SL_API_STATUS_NOT_FOUND] = {404, "invalid_request_error", "not_found_error"},
    [SL_API_STATUS_METHOD] = {405, "invalid_request_error", "invalid_request_error"},
    [SL_API_STATUS_CLIENT_GONE] = {499, "invalid_request_error", "invalid_request_error"},
    [SL_API_STATUS_SERVER] = {500, "server_error", "api_error"},
    [SL_API_STATUS_WORKER_LOST] = {502, "server_error", "api_error"},
    [SL_API_STATUS_UNAVAILABLE] = {503, "server_error", "api_error"},
};

const sl_api_status_info *sl_api_status_get(sl_api_status st) { return &status_info[st]; }

int sl_api_fail(sl_api_err *err, sl_api_status st, const char *fmt, ...)
{
    err->st = st;
    err->status = status_info[st].http;
    err->type = status_info[st].openai_type;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    return -1;
}

void sl_api_respond_error(sl_http_req *r, const sl_api_dialect *d, sl_api_status st,
                          const char *msg)
{
    json_t *o = d->error_body(st, msg);
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    sl_http_respond(r, sl_api_status_get(st)->http, "application/json", s ? s : "{}",
                    s ? strlen(s) : 2, NULL);
    free(s);
}
