/* The status table of api.h: every error path of the API layer reads its
 * HTTP code and error type here. */
#include <stdarg.h>
#include <stdio.h>

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

const sl_api_dialect *sl_api_dialect_of(sl_api_kind kind)
{
    return kind == SL_API_CHAT          ? &sl_openai_chat
         : kind == SL_API_COMPLETIONS ? &sl_openai_completions
                                      : &sl_anthropic_messages;
}
