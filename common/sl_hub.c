/* sl_hub: the Hugging Face cache and downloads from the Hub; see sl_hub.h.
 *
 * libcurl's types and option numbers come from its own header (Debian's
 * libcurl4-openssl-dev, needed at build time only) rather than prototypes
 * declared here, so no option number can drift from what the library
 * expects; libcurl.so.4 keeps that ABI across its versions. The library
 * itself is dlopen()ed at the first download (sl_hub.h says why). */
#include "sl_hub.h"

#include <curl/curl.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "sl_buf.h"
#include "sl_file.h"
#include "sl_log.h"
#include "sl_version.h"

#define PROGRESS_NS 2000000000LL /* a progress line every 2 s */
#define FILE_ATTEMPTS 6          /* a cut connection resumes where it stopped */
#define API_ATTEMPTS 3
#define API_MAX_BYTES (64u << 20) /* the file list of a very large repository */
#define ERROR_BODY_MAX 4096       /* of an error page: enough for the Hub's JSON "error" */

/* ---- libcurl, loaded once per process ------------------------------------ */

typedef struct hub_curl {
    CURL *(*easy_init)(void);
    CURLcode (*setopt)(CURL *, CURLoption, ...);
    CURLcode (*perform)(CURL *);
    void (*cleanup)(CURL *);
    const char *(*strerror)(CURLcode);
    struct curl_slist *(*slist_append)(struct curl_slist *, const char *);
    void (*slist_free_all)(struct curl_slist *);
    char why[300]; /* why it is not usable; empty when it is */
} hub_curl;

/* dlopen and curl_global_init act on the whole process (and curl_global_init
 * must run once, before any other thread uses libcurl), so the loaded library
 * is the one piece of state that outlives a call. */
static hub_curl g_curl;
static pthread_once_t g_curl_once = PTHREAD_ONCE_INIT;

static void curl_load(void)
{
    /* libcurl-gnutls.so.4: Debian's GnuTLS build of the same ABI, present
     * wherever git is installed */
    void *lib = dlopen("libcurl.so.4", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        snprintf(g_curl.why, sizeof g_curl.why, "cannot load libcurl.so.4 (%s)", dlerror());
        if (!(lib = dlopen("libcurl-gnutls.so.4", RTLD_NOW | RTLD_LOCAL))) return;
    }
    CURLcode (*global_init)(long) = (CURLcode(*)(long))dlsym(lib, "curl_global_init");
#define SYM(field, name) (g_curl.field = (__typeof__(g_curl.field))dlsym(lib, name))
    if (!global_init || !SYM(easy_init, "curl_easy_init") || !SYM(setopt, "curl_easy_setopt") ||
        !SYM(perform, "curl_easy_perform") || !SYM(cleanup, "curl_easy_cleanup") ||
        !SYM(strerror, "curl_easy_strerror") || !SYM(slist_append, "curl_slist_append") ||
        !SYM(slist_free_all, "curl_slist_free_all")) {
        snprintf(g_curl.why, sizeof g_curl.why, "the libcurl found lacks curl_easy_* functions");
        return;
    }
#undef SYM
    if (global_init(CURL_GLOBAL_DEFAULT)) {
        snprintf(g_curl.why, sizeof g_curl.why, "curl_global_init failed");
        return;
    }
    g_curl.why[0] = 0;
}

/* ---- names, paths, environment ------------------------------------------- */

/* snprintf into a path buffer; a path that does not fit is an error. */
__attribute__((format(printf, 4, 5))) static sl_status pathf(char *out, size_t cap, sl_err *e,
                                                             const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, cap, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= cap)
        return sl_err_set(e, SL_ERR_LIMIT, "path too long: %.200s...", out);
    return SL_OK;
}

static const char *env(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

/* huggingface_hub's reading of a boolean variable: 1, ON, YES or TRUE. */
static int env_true(const char *name)
{
    const char *v = env(name);
    return v && (!strcmp(v, "1") || !strcasecmp(v, "on") || !strcasecmp(v, "yes") ||
                 !strcasecmp(v, "true"));
}

static int name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_' || c == '.';
}

/* One side of ORG/NAME: the Hub's rules for user, organisation and repository names. */
static int id_part_ok(const char *s, size_t n)
{
    if (n < 1 || n > 96 || strchr(".-", s[0]) || strchr(".-", s[n - 1])) return 0;
    for (size_t i = 0; i < n; i++) {
        if (!name_char(s[i])) return 0;
        if (i && (s[i] == '-' || s[i] == '.') && s[i - 1] == s[i]) return 0; /* "--", ".." */
    }
    return 1;
}

int sl_hub_is_model_id(const char *s)
{
    const char *slash = s ? strchr(s, '/') : NULL;
    return slash && id_part_ok(s, (size_t)(slash - s)) && id_part_ok(slash + 1, strlen(slash + 1));
}

/* A branch or tag name (it becomes a path under refs/) or a commit. */
static int rev_ok(const char *r)
{
    size_t n = strlen(r);
    if (!n || n > 200 || r[0] == '/' || r[n - 1] == '/' || strstr(r, "..") || strstr(r, "//"))
        return 0;
    for (const char *p = r; *p; p++)
        if (!name_char(*p) && *p != '/') return 0;
    return 1;
}

static int is_hex(const char *s, size_t min, size_t max)
{
    size_t n = strlen(s);
    if (n < min || n > max) return 0;
    for (; *s; s++)
        if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f'))) return 0;
    return 1;
}

static int is_commit(const char *s)
{
    return is_hex(s, 40, 40);
}

static int exists_in(const char *dir, const char *name)
{
    char p[SL_HUB_PATH_MAX];
    struct stat st;
    return !pathf(p, sizeof p, NULL, "%s/%s", dir, name) && !stat(p, &st); /* follows links */
}

static int is_dir(const char *p)
{
    struct stat st;
    return !stat(p, &st) && S_ISDIR(st.st_mode);
}

/* "3.9 GB" */
static const char *human(char out[16], uint64_t n)
{
    if (n >= 1000000000ull)
        snprintf(out, 16, "%.1f GB", (double)n / 1e9);
    else if (n >= 1000000ull)
        snprintf(out, 16, "%.1f MB", (double)n / 1e6);
    else if (n >= 1000ull)
        snprintf(out, 16, "%.1f kB", (double)n / 1e3);
    else
        snprintf(out, 16, "%u B", (unsigned)n);
    return out;
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Percent-encodes all but RFC 3986's unreserved characters (a revision's '/' too). */
static void url_escape(char *out, size_t cap, const char *s)
{
    size_t n = 0;
    for (; *s && n + 4 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (name_char((char)c) || c == '~')
            out[n++] = (char)c;
        else
            n += (size_t)snprintf(out + n, cap - n, "%%%02X", c);
    }
    out[n] = 0;
}

/* ---- one resolution ------------------------------------------------------ */

typedef struct hub {
    const char *id, *rev;
    sl_hub_files files;
    char cache[SL_HUB_PATH_MAX]; /* the hub cache */
    char repo[SL_HUB_PATH_MAX];  /* cache/models--ORG--NAME */
    char locks[SL_HUB_PATH_MAX]; /* cache/.locks/models--ORG--NAME */
    char endpoint[1024];
    char auth[1100];                  /* "Authorization: Bearer TOKEN", or "" */
    char token_from[SL_HUB_PATH_MAX]; /* where the token came from, for messages */
    CURL *curl;                       /* during a download (curl_open) */
    struct curl_slist *headers;
    char curl_err[CURL_ERROR_SIZE];
} hub;

/* huggingface_hub's HF_HOME: $HF_HOME, else $XDG_CACHE_HOME/huggingface, else ~/.cache/huggingface.
 */
static sl_status hf_home(char *out, size_t cap, sl_err *e)
{
    const char *v;
    if ((v = env("HF_HOME"))) return pathf(out, cap, e, "%s", v);
    if ((v = env("XDG_CACHE_HOME"))) return pathf(out, cap, e, "%s/huggingface", v);
    return pathf(out, cap, e, "%s/.cache/huggingface", env("HOME") ? env("HOME") : "");
}

/* The token: $HF_TOKEN, $HUGGING_FACE_HUB_TOKEN, else the file `huggingface-cli
 * login` writes ($HF_TOKEN_PATH, else $HF_HOME/token). None is not an error:
 * public models need none. */
static sl_status load_token(hub *h, sl_err *e)
{
    char buf[1024] = "";
    const char *t = env("HF_TOKEN");
    snprintf(h->token_from, sizeof h->token_from, "HF_TOKEN");
    if (!t && (t = env("HUGGING_FACE_HUB_TOKEN")))
        snprintf(h->token_from, sizeof h->token_from, "HUGGING_FACE_HUB_TOKEN");
    if (!t) {
        char home[SL_HUB_PATH_MAX];
        if (env("HF_TOKEN_PATH"))
            snprintf(h->token_from, sizeof h->token_from, "%s", env("HF_TOKEN_PATH"));
        else if (hf_home(home, sizeof home, e) ||
                 pathf(h->token_from, sizeof h->token_from, e, "%s/token", home))
            return SL_ERR_LIMIT;
        FILE *f = fopen(h->token_from, "r");
        if (!f) return SL_OK;
        if (fgets(buf, sizeof buf, f)) t = buf;
        fclose(f);
        if (!t) return SL_OK;
    }
    size_t n = strlen(t);
    while (n && (t[n - 1] == '\n' || t[n - 1] == '\r' || t[n - 1] == ' '))
        n--;
    if (!n) return SL_OK;
    for (size_t i = 0; i < n; i++)
        if (t[i] <= ' ' || t[i] > '~')
            return sl_err_set(e, SL_ERR_INVALID,
                              "the Hugging Face token in %s holds a character "
                              "an HTTP header cannot carry",
                              h->token_from);
    return pathf(h->auth, sizeof h->auth, e, "Authorization: Bearer %.*s", (int)n, t);
}

static sl_status hub_init(hub *h, sl_err *e)
{
    const char *v;
    char home[SL_HUB_PATH_MAX];
    sl_status s = SL_OK;
    if ((v = env("HF_HUB_CACHE")))
        s = pathf(h->cache, sizeof h->cache, e, "%s", v);
    else if (!(s = hf_home(home, sizeof home, e)))
        s = pathf(h->cache, sizeof h->cache, e, "%s/hub", home);
    if (s) return s;
    const char *slash = strchr(h->id, '/');
    int org = (int)(slash - h->id);
    if ((s = pathf(h->repo, sizeof h->repo, e, "%s/models--%.*s--%s", h->cache, org, h->id,
                   slash + 1)) ||
        (s = pathf(h->locks, sizeof h->locks, e, "%s/.locks/models--%.*s--%s", h->cache, org, h->id,
                   slash + 1)))
        return s;
    snprintf(h->endpoint, sizeof h->endpoint, "%s",
             env("HF_ENDPOINT") ? env("HF_ENDPOINT") : "https://huggingface.co");
    for (size_t n = strlen(h->endpoint); n && h->endpoint[n - 1] == '/'; n--)
        h->endpoint[n - 1] = 0;
    return SL_OK;
}

/* ---- the cache ----------------------------------------------------------- */

/* The commit the cache holds for h->rev (the revision itself when it is
 * one, else refs/REV); 0 when it holds none. */
static int cached_commit(const hub *h, char commit[41])
{
    if (is_commit(h->rev)) {
        memcpy(commit, h->rev, 41);
        return 1;
    }
    char ref[SL_HUB_PATH_MAX], line[64] = "";
    if (pathf(ref, sizeof ref, NULL, "%s/refs/%s", h->repo, h->rev)) return 0;
    FILE *f = fopen(ref, "r");
    if (!f) return 0;
    if (!fgets(line, sizeof line, f)) line[0] = 0;
    fclose(f);
    line[strcspn(line, " \r\n")] = 0;
    if (!is_commit(line)) return 0;
    memcpy(commit, line, 41);
    return 1;
}

/* Whether snapshot dir holds what the caller reads: config.json, and for
 * weights model.safetensors or the index with every shard it names (what the
 * loader opens). A download cut short leaves a snapshot that is not ready. */
static int snapshot_ready(const char *snap, sl_hub_files files)
{
    if (!exists_in(snap, "config.json")) return 0;
    if (files == SL_HUB_TEXT || exists_in(snap, "model.safetensors")) return 1;
    char p[SL_HUB_PATH_MAX];
    if (pathf(p, sizeof p, NULL, "%s/model.safetensors.index.json", snap)) return 0;
    json_t *idx = json_load_file(p, 0, NULL);
    json_t *map = json_object_get(idx, "weight_map");
    int ok = json_object_size(map) > 0;
    const char *k;
    json_t *v;
    json_object_foreach(map, k, v) ok =
        ok && json_is_string(v) && exists_in(snap, json_string_value(v));
    json_decref(idx);
    return ok;
}

/* Files a server reads, at the top level (where sluice looks); weights only
 * for SL_HUB_WEIGHTS. Everything else (*.bin, *.pt, *.gguf, *.onnx, images,
 * README, subfolders) stays on the Hub. */
static int wanted(const char *name, sl_hub_files files)
{
    static const char *const text[] = {"config.json",
                                       "generation_config.json",
                                       "tokenizer.json",
                                       "tokenizer_config.json",
                                       "special_tokens_map.json",
                                       "added_tokens.json",
                                       "vocab.json",
                                       "merges.txt",
                                       "chat_template.json"};
    if (strchr(name, '/') || name[0] == '.') return 0;
    for (size_t i = 0; i < sizeof text / sizeof *text; i++)
        if (!strcmp(name, text[i])) return 1;
    size_t n = strlen(name);
#define ENDS(suffix) (n > sizeof suffix - 1 && !strcmp(name + n - (sizeof suffix - 1), suffix))
    if (ENDS(".jinja")) return 1;
    return files == SL_HUB_WEIGHTS && (ENDS(".safetensors") || ENDS(".safetensors.index.json"));
#undef ENDS
}

/* ---- HTTP ---------------------------------------------------------------- */

/* One GET: its state, shared with libcurl's callbacks. */
typedef struct xfer {
    const char *what;      /* the file, in progress lines */
    long status;           /* of the latest response: a redirect's, then the final one's */
    long long range_start; /* where a 206 says its bytes start; -1 without Content-Range */
    char server_msg[160];  /* X-Error-Message */
    sl_buf body;           /* the API's JSON, or the start of an error page */
    int fd;                /* a file download's .incomplete, or -1 */
    uint64_t off;          /* the part's size when the request started (the Range start) */
    uint64_t got;          /* bytes this request wrote */
    uint64_t total;        /* the file's size */
    int64_t t_last;        /* the last progress line: when, and how far */
    uint64_t at_last;
    int write_errno; /* writing the part failed (not worth a retry) */
    int bad_range;   /* a 206 that does not start where asked (start over) */
    int retry;       /* a file download's attempt failed in a way another may not */
    CURLcode rc;
} xfer;

static size_t on_header(char *p, size_t sz, size_t n, void *ud)
{
    xfer *x = ud;
    size_t len = sz * n;
    char line[512];
    size_t k = len < sizeof line - 1 ? len : sizeof line - 1;
    memcpy(line, p, k);
    line[k] = 0;
    line[strcspn(line, "\r\n")] = 0;
    char *colon = strchr(line, ':'), *val = colon ? colon + 1 : NULL;
    while (val && *val == ' ')
        val++;
    if (!strncmp(line, "HTTP/", 5)) {
        const char *sp = strchr(line, ' ');
        x->status = sp ? strtol(sp + 1, NULL, 10) : 0;
        x->server_msg[0] = 0;
        x->range_start = -1;
    } else if (colon && !strncasecmp(line, "x-error-message:", 16)) {
        snprintf(x->server_msg, sizeof x->server_msg, "%s", val);
    } else if (colon && !strncasecmp(line, "content-range:", 14) && !strncmp(val, "bytes ", 6)) {
        x->range_start = strtoll(val + 6, NULL, 10);
    }
    return len;
}

static void progress(xfer *x)
{
    int64_t t = now_ns();
    if (t - x->t_last < PROGRESS_NS) return;
    uint64_t done = x->off + x->got;
    double mbs = (double)(done - x->at_last) / 1e6 / ((double)(t - x->t_last) / 1e9);
    char a[16], b[16];
    SL_LOGI("hub", "%s: %s / %s (%.0f%%), %.1f MB/s", x->what, human(a, done), human(b, x->total),
            x->total ? 100.0 * (double)done / (double)x->total : 100.0, mbs);
    x->t_last = t;
    x->at_last = done;
}

static size_t on_body(char *p, size_t sz, size_t n, void *ud)
{
    xfer *x = ud;
    size_t len = sz * n;
    int ok = x->status == 200 || x->status == 206;
    if (x->fd < 0 || !ok) {
        if (x->body.len + len > (ok ? API_MAX_BYTES : ERROR_BODY_MAX)) return ok ? 0 : len;
        return sl_buf_append(&x->body, p, len) ? 0 : len;
    }
    if (!x->got) {                        /* this response's first bytes */
        if (x->status == 200 && x->off) { /* the whole file, not the range asked for */
            if (ftruncate(x->fd, 0)) {
                x->write_errno = errno;
                return 0;
            }
            x->off = x->at_last = 0;
        } else if (x->status == 206 && x->range_start != (long long)x->off) {
            x->bad_range = 1;
            return 0;
        }
    }
    for (size_t w = 0; w < len;) {
        ssize_t k = pwrite(x->fd, p + w, len - w, (off_t)(x->off + x->got + w));
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            x->write_errno = k < 0 ? errno : EIO;
            return 0;
        }
        w += (size_t)k;
    }
    x->got += len;
    progress(x);
    return len;
}

/* The handle every request of one resolution uses, so that connections (and
 * TLS sessions) to the hub and its CDN carry over from file to file. */
static sl_status curl_open(hub *h, sl_err *e)
{
    if (!(h->curl = g_curl.easy_init()) ||
        (h->auth[0] && !(h->headers = g_curl.slist_append(NULL, h->auth))))
        return sl_err_set(e, SL_ERR_NOMEM, "%s: cannot set up libcurl", h->id);
    CURL *c = h->curl;
    g_curl.setopt(c, CURLOPT_USERAGENT, "sluice/" SLUICE_VERSION);
    /* libcurl sends this header to the endpoint's host only, not to the CDN
     * a redirect leads to (unless CURLOPT_UNRESTRICTED_AUTH, never set) */
    if (h->headers) g_curl.setopt(c, CURLOPT_HTTPHEADER, h->headers);
    g_curl.setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
    g_curl.setopt(c, CURLOPT_MAXREDIRS, 10L);
    g_curl.setopt(c, CURLOPT_NOSIGNAL, 1L);
    g_curl.setopt(c, CURLOPT_CONNECTTIMEOUT, 30L);
    /* a connection that stalls (under 1 kB/s for a minute) is cut and resumed */
    g_curl.setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1024L);
    g_curl.setopt(c, CURLOPT_LOW_SPEED_TIME, 60L);
    g_curl.setopt(c, CURLOPT_BUFFERSIZE, 512L * 1024); /* fewer, larger writes of weights */
    g_curl.setopt(c, CURLOPT_ERRORBUFFER, h->curl_err);
    g_curl.setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    g_curl.setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    return SL_OK;
}

static void curl_close(hub *h)
{
    if (h->curl) g_curl.cleanup(h->curl);
    g_curl.slist_free_all(h->headers);
    h->curl = NULL;
    h->headers = NULL;
}

/* GETs url into x (range: "START-" or NULL). SL_OK when an answer came,
 * whatever its status (x->status); else SL_ERR_IO with libcurl's reason. */
static sl_status http_get(hub *h, const char *url, const char *range, xfer *x, sl_err *e)
{
    x->status = 0;
    x->got = 0;
    x->t_last = now_ns();
    x->at_last = x->off;
    x->server_msg[0] = 0;
    x->bad_range = x->write_errno = 0;
    sl_buf_clear(&x->body);
    h->curl_err[0] = 0;
    g_curl.setopt(h->curl, CURLOPT_URL, url);
    g_curl.setopt(h->curl, CURLOPT_RANGE, range);
    g_curl.setopt(h->curl, CURLOPT_HEADERDATA, x);
    g_curl.setopt(h->curl, CURLOPT_WRITEDATA, x);
    x->rc = g_curl.perform(h->curl);
    if (x->rc == CURLE_OK) return SL_OK;
    if (x->write_errno)
        return sl_err_set(e, SL_ERR_IO, "GET %s: writing the file: %s", url,
                          strerror(x->write_errno));
    return sl_err_set(e, SL_ERR_IO, "GET %s: %s", url,
                      h->curl_err[0] ? h->curl_err : g_curl.strerror(x->rc));
}

/* Whether an attempt that failed may succeed when repeated: the network, a
 * cut connection, a server error or throttling; never a refusal (4xx other
 * than 408 and 429), a bad URL or a full disk. */
static int transient(const xfer *x)
{
    if (x->rc != CURLE_OK)
        return !x->write_errno && x->rc != CURLE_URL_MALFORMAT &&
               x->rc != CURLE_UNSUPPORTED_PROTOCOL && x->rc != CURLE_OUT_OF_MEMORY &&
               (x->rc != CURLE_WRITE_ERROR || x->bad_range);
    return x->status >= 500 || x->status == 408 || x->status == 429;
}

/* Before attempt `next` (2..): none after a cut that had delivered bytes
 * (resume at once), else 1 s, 2 s, 4 s ... */
static void pause_before(int next, int attempts, int progressed, const sl_err *e)
{
    int secs = progressed ? 0 : 1 << (next - 2);
    SL_LOGW("hub", "%s; %s (attempt %d of %d)", e->msg, secs ? "retrying" : "resuming", next,
            attempts);
    struct timespec ts = {secs, 0};
    while (secs && nanosleep(&ts, &ts) && errno == EINTR) {
    }
}

/* The error of an answer that is not a success, with what to do about it. */
static sl_status http_error(const hub *h, const xfer *x, const char *url, sl_err *e)
{
    char server[200] = "";
    if (x->server_msg[0]) {
        snprintf(server, sizeof server, " (server: %.120s)", x->server_msg);
    } else if (x->body.len) {
        json_t *j = json_loads(x->body.data, 0, NULL);
        if (json_is_string(json_object_get(j, "error")))
            snprintf(server, sizeof server, " (server: %.120s)",
                     json_string_value(json_object_get(j, "error")));
        json_decref(j);
    }
    char hint[300];
    sl_status code = SL_ERR_IO;
    if (x->status == 401 && h->auth[0]) {
        snprintf(hint, sizeof hint,
                 "the token from %.150s was refused (or the model does not "
                 "exist): set HF_TOKEN to a valid token",
                 h->token_from);
        code = SL_ERR_INVALID;
    } else if (x->status == 401) {
        snprintf(hint, sizeof hint,
                 "the model is gated or private, or does not exist: set "
                 "HF_TOKEN to a token that can read it");
        code = SL_ERR_INVALID;
    } else if (x->status == 403) {
        snprintf(hint, sizeof hint, "access denied: %s",
                 h->auth[0] ? "for a gated model, accept its conditions on its Hub page with the "
                              "account of the token"
                            : "set HF_TOKEN to a token that can read the model");
        code = SL_ERR_INVALID;
    } else if (x->status == 404) {
        snprintf(hint, sizeof hint, "no such model or revision");
        code = SL_ERR_NOTFOUND;
    } else {
        snprintf(hint, sizeof hint, "unexpected answer");
    }
    return sl_err_set(e, code, "%s: HTTP %ld from %s: %s%s", h->id, x->status, url, hint, server);
}

/* ---- the download -------------------------------------------------------- */

typedef struct hub_file {
    const char *name; /* in the API's JSON, which outlives the download */
    const char *blob; /* git blob id, or the LFS file's sha256: its name in blobs/ */
    uint64_t size;
} hub_file;

/* GET /api/models/ID/revision/REV?blobs=true: the commit REV names and the
 * wanted files. *json keeps the strings alive (caller json_decref()s it). */
static sl_status list_files(hub *h, char commit[41], hub_file **files, int *nfiles, json_t **json,
                            sl_err *e)
{
    char rev[600], url[2048];
    url_escape(rev, sizeof rev, h->rev);
    sl_status s = pathf(url, sizeof url, e, "%s/api/models/%s/revision/%s?blobs=true", h->endpoint,
                        h->id, rev);
    xfer x = {.what = "file list", .fd = -1};
    for (int a = 1; !s; a++) {
        s = http_get(h, url, NULL, &x, e);
        if (!s && x.status == 200) break;
        if (!s) s = http_error(h, &x, url, e);
        if (!transient(&x) || a == API_ATTEMPTS) break;
        pause_before(a + 1, API_ATTEMPTS, 0, e);
        s = SL_OK;
    }
    if (s && x.rc != CURLE_OK) sl_err_wrap(e, "%s: the Hub cannot be reached", h->id);
    json_t *j = NULL;
    if (!s && !(j = json_loads(x.body.data ? x.body.data : "", 0, NULL)))
        s = sl_err_set(e, SL_ERR_PARSE, "%s: GET %s: the answer is not JSON", h->id, url);
    sl_buf_free(&x.body);
    if (s) return s;
    *json = j;
    const char *sha = json_string_value(json_object_get(j, "sha"));
    json_t *sib = json_object_get(j, "siblings");
    if (!sha || !is_commit(sha) || !json_is_array(sib))
        return sl_err_set(e, SL_ERR_PARSE,
                          "%s: GET %s: no commit \"sha\" and \"siblings\" list in "
                          "the answer",
                          h->id, url);
    memcpy(commit, sha, 41);
    *files = calloc(json_array_size(sib) + 1, sizeof **files);
    if (!*files) return sl_err_set(e, SL_ERR_NOMEM, "%s: out of memory", h->id);
    *nfiles = 0;
    size_t i;
    json_t *f;
    json_array_foreach(sib, i, f)
    {
        const char *name = json_string_value(json_object_get(f, "rfilename"));
        if (!name || !wanted(name, h->files)) continue;
        json_t *lfs = json_object_get(f, "lfs");
        const char *blob =
            json_string_value(json_object_get(lfs ? lfs : f, lfs ? "sha256" : "blobId"));
        json_t *size = json_object_get(lfs ? lfs : f, "size");
        /* a blob id names a file under blobs/: hex only, never a path */
        if (!blob || !is_hex(blob, 40, 64) || !json_is_integer(size) ||
            json_integer_value(size) < 0)
            return sl_err_set(e, SL_ERR_PARSE,
                              "%s: GET %s: %s has no blob id and size (an endpoint "
                              "without ?blobs=true, which sluice needs to name cache files)",
                              h->id, url, name);
        (*files)[(*nfiles)++] = (hub_file){name, blob, (uint64_t)json_integer_value(size)};
    }
    return SL_OK;
}

/* flock(2) on the blob's lock file, waiting (and saying so) while another
 * process, sluice or huggingface_hub, downloads it. Returns the fd, or -1. */
static int lock_blob(const hub *h, const hub_file *f, sl_err *e)
{
    char p[SL_HUB_PATH_MAX];
    if (sl_mkdirs(h->locks, e) || pathf(p, sizeof p, e, "%s/%s.lock", h->locks, f->blob)) return -1;
    int fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        sl_err_set(e, SL_ERR_IO, "cannot create %s: %s", p, strerror(errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB)) {
        SL_LOGI("hub", "%s: another process is downloading it (%s held); waiting", f->name, p);
        while (flock(fd, LOCK_EX) && errno == EINTR) {
        }
    }
    return fd;
}

/* The blob is there, complete. One of another size is removed (a copy that
 * went wrong) and downloaded again. */
static int blob_done(const char *blob, const hub_file *f)
{
    struct stat st;
    if (stat(blob, &st)) return 0;
    if ((uint64_t)st.st_size == f->size) return 1;
    SL_LOGW("hub", "%s: %s holds %lld bytes, not %llu: downloading it again", f->name, blob,
            (long long)st.st_size, (unsigned long long)f->size);
    unlink(blob);
    return 0;
}

/* Empties a part that is no prefix of the file: the next attempt starts at byte 0. */
static void restart_part(const xfer *x)
{
    if (ftruncate(x->fd, 0))
        SL_LOGW("hub", "%s: cannot empty its partial download: %s", x->what, strerror(errno));
}

/* One request for the rest of the file (a Range request when the part holds
 * some of it). SL_OK once the part holds all of it; else x->retry says
 * whether another attempt may do better. */
static sl_status fetch_rest(hub *h, const char *url, const hub_file *f, xfer *x, sl_err *e)
{
    struct stat st;
    x->retry = 0;
    if (fstat(x->fd, &st))
        return sl_err_set(e, SL_ERR_IO, "%s: fstat: %s", f->name, strerror(errno));
    x->off = (uint64_t)st.st_size;
    if (x->off > f->size) {
        restart_part(x);
        x->off = 0;
    }
    if (x->off == f->size) return SL_OK;
    char range[32], a1[16], a2[16];
    snprintf(range, sizeof range, "%llu-", (unsigned long long)x->off);
    if (x->off)
        SL_LOGI("hub", "%s: resuming at %s of %s", f->name, human(a1, x->off), human(a2, f->size));
    sl_status s = http_get(h, url, x->off ? range : NULL, x, e);
    if (s) {
        if (x->bad_range) restart_part(x);
        x->retry = transient(x);
        return s;
    }
    if (x->status != 200 && x->status != 206 && x->status != 416) {
        s = http_error(h, x, url, e);
        x->retry = transient(x);
        return s;
    }
    if (x->status != 416 && !fstat(x->fd, &st) && (uint64_t)st.st_size == f->size) return SL_OK;
    x->retry = 1;
    if (x->status == 416) { /* the part is no prefix of the file on the server */
        restart_part(x);
        return sl_err_set(e, SL_ERR_IO, "%s: GET %s: HTTP 416 for bytes %s", h->id, url, range);
    }
    if ((uint64_t)st.st_size > f->size) restart_part(x);
    return sl_err_set(e, SL_ERR_IO, "%s: GET %s: %llu bytes, where the file list says %llu", h->id,
                      url, (unsigned long long)st.st_size, (unsigned long long)f->size);
}

/* Downloads url into part until it holds f->size bytes, resuming after a
 * cut; *fetched counts the bytes that came. */
static sl_status download(hub *h, const char *url, const char *part, const hub_file *f,
                          uint64_t *fetched, sl_err *e)
{
    int fd = open(part, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return sl_err_set(e, SL_ERR_IO, "cannot create %s: %s", part, strerror(errno));
    xfer x = {.what = f->name, .fd = fd, .total = f->size};
    sl_status s;
    for (int a = 1;; a++) {
        s = fetch_rest(h, url, f, &x, e);
        *fetched += x.got;
        if (!s || !x.retry || a == FILE_ATTEMPTS) break;
        pause_before(a + 1, FILE_ATTEMPTS, x.got > 0, e);
    }
    close(fd);
    sl_buf_free(&x.body);
    return s;
}

/* snapshots/COMMIT/NAME -> ../../blobs/BLOB, replaced atomically. */
static sl_status link_file(const char *snap, const hub_file *f, sl_err *e)
{
    char link[SL_HUB_PATH_MAX], tmp[SL_HUB_PATH_MAX], target[128], have[128];
    snprintf(target, sizeof target, "../../blobs/%s", f->blob);
    sl_status s;
    if ((s = pathf(link, sizeof link, e, "%s/%s", snap, f->name)) ||
        (s = pathf(tmp, sizeof tmp, e, "%s/.%s.%d.tmp", snap, f->name, (int)getpid())))
        return s;
    ssize_t n = readlink(link, have, sizeof have - 1);
    if (n > 0) {
        have[n] = 0;
        if (!strcmp(have, target)) return SL_OK;
    }
    unlink(tmp);
    if (symlink(target, tmp) || rename(tmp, link)) {
        s = sl_err_set(e, SL_ERR_IO, "cannot link %s to %s: %s", link, target, strerror(errno));
        unlink(tmp);
    }
    return s;
}

/* refs/REV holds the commit (no newline, as huggingface_hub writes it). */
static sl_status write_ref(const hub *h, const char *commit, sl_err *e)
{
    if (is_commit(h->rev)) return SL_OK;
    char ref[SL_HUB_PATH_MAX], tmp[SL_HUB_PATH_MAX], dir[SL_HUB_PATH_MAX];
    sl_status s;
    if ((s = pathf(ref, sizeof ref, e, "%s/refs/%s", h->repo, h->rev)) ||
        (s = pathf(tmp, sizeof tmp, e, "%s.%d.tmp", ref, (int)getpid())))
        return s;
    snprintf(dir, sizeof dir, "%s", ref);
    *strrchr(dir, '/') = 0;
    if ((s = sl_mkdirs(dir, e)) || (s = sl_file_write(tmp, commit, 40, e))) return s;
    if (rename(tmp, ref)) {
        unlink(tmp);
        return sl_err_set(e, SL_ERR_IO, "cannot write %s: %s", ref, strerror(errno));
    }
    return SL_OK;
}

/* Whether f's blob is missing; *need grows by the bytes still to come (less
 * a part already there). */
static int blob_missing(const hub *h, const hub_file *f, uint64_t *need)
{
    char p[SL_HUB_PATH_MAX];
    struct stat st;
    if (pathf(p, sizeof p, NULL, "%s/blobs/%s", h->repo, f->blob) || !stat(p, &st)) return 0;
    if (pathf(p, sizeof p, NULL, "%s/blobs/%s.incomplete", h->repo, f->blob) || stat(p, &st) ||
        (uint64_t)st.st_size > f->size)
        *need += f->size;
    else
        *need += f->size - (uint64_t)st.st_size;
    return 1;
}

/* Lists the revision's files and downloads the missing ones into the cache;
 * snap receives the snapshot directory. */
static sl_status download_all(hub *h, char *snap, size_t cap, sl_err *e)
{
    pthread_once(&g_curl_once, curl_load);
    if (g_curl.why[0])
        return sl_err_set(e, SL_ERR_UNSUPPORTED,
                          "%s is not in the Hugging Face cache (%s), and downloading it needs "
                          "libcurl: %s. Install libcurl (Debian/Ubuntu: libcurl4), or download the "
                          "model elsewhere and copy the cache (or pass its directory)",
                          h->id, h->cache, g_curl.why);
    char commit[41], blobs[SL_HUB_PATH_MAX];
    hub_file *files = NULL;
    int n = 0;
    json_t *json = NULL;
    sl_status s = curl_open(h, e);
    if (!s) s = list_files(h, commit, &files, &n, &json, e);
    if (!s && !n)
        s = sl_err_set(e, SL_ERR_NOTFOUND,
                       "%s (revision %s) has no config, tokenizer or "
                       "safetensors files at its top level",
                       h->id, h->rev);
    if (!s) s = pathf(snap, cap, e, "%s/snapshots/%s", h->repo, commit);
    if (!s) s = pathf(blobs, sizeof blobs, e, "%s/blobs", h->repo);
    if (!s && !(s = sl_mkdirs(blobs, e))) s = sl_mkdirs(snap, e);
    uint64_t need = 0, fetched = 0;
    int missing = 0;
    for (int i = 0; !s && i < n; i++)
        missing += blob_missing(h, &files[i], &need);
    char a[16], b[16];
    struct statvfs vfs;
    if (!s && !statvfs(blobs, &vfs) && (uint64_t)vfs.f_bavail * vfs.f_frsize < need)
        SL_LOGW("hub", "%s: %s to download but %s free in %s", h->id, human(a, need),
                human(b, (uint64_t)vfs.f_bavail * vfs.f_frsize), blobs);
    if (!s)
        SL_LOGI("hub",
                "%s: revision %s is commit %s; %d of its %d files to download (%s) from %s "
                "into %s",
                h->id, h->rev, commit, missing, n, human(a, need), h->endpoint, snap);
    int64_t t0 = now_ns();
    for (int i = 0, k = 0; !s && i < n; i++) {
        const hub_file *f = &files[i];
        char blob[SL_HUB_PATH_MAX], part[SL_HUB_PATH_MAX], url[2048], name[600];
        url_escape(name, sizeof name, f->name);
        if ((s = pathf(blob, sizeof blob, e, "%s/%s", blobs, f->blob)) ||
            (s = pathf(part, sizeof part, e, "%s.incomplete", blob)) ||
            (s = pathf(url, sizeof url, e, "%s/%s/resolve/%s/%s", h->endpoint, h->id, commit,
                       name)))
            break;
        if (!blob_done(blob, f)) {
            int lk = lock_blob(h, f, e);
            if (lk < 0) {
                s = e->code;
                break;
            }
            if (!blob_done(blob, f)) { /* not fetched meanwhile by whoever held the lock */
                SL_LOGI("hub", "%s (%d/%d): %s from %s", f->name, ++k, missing, human(a, f->size),
                        url);
                s = download(h, url, part, f, &fetched, e);
                if (s == SL_ERR_IO)
                    sl_err_wrap(e, "%s: %s not downloaded (the next start resumes it)", h->id,
                                f->name);
                if (!s && rename(part, blob))
                    s = sl_err_set(e, SL_ERR_IO, "cannot rename %s: %s", part, strerror(errno));
            }
            close(lk); /* the lock file stays, as huggingface_hub leaves its own */
        }
        if (!s) s = link_file(snap, f, e);
    }
    if (!s) s = write_ref(h, commit, e);
    double secs = (double)(now_ns() - t0) / 1e9;
    if (!s)
        SL_LOGI("hub", "%s: %s downloaded in %.1f s (%.1f MB/s); snapshot %s", h->id,
                human(a, fetched), secs, secs > 0 ? (double)fetched / 1e6 / secs : 0.0, snap);
    curl_close(h);
    free(files);
    json_decref(json);
    return s;
}

sl_status sl_hub_resolve(const char *path, const char *revision, sl_hub_files files, char *dir,
                         size_t cap, sl_err *e)
{
    struct stat st;
    if (!sl_hub_is_model_id(path) || !stat(path, &st)) return pathf(dir, cap, e, "%s", path);
    hub h = {.id = path, .rev = revision ? revision : "main", .files = files};
    if (!rev_ok(h.rev))
        return sl_err_set(e, SL_ERR_INVALID, "--revision %.200s: not a branch, tag or commit name",
                          h.rev);
    sl_status s = hub_init(&h, e);
    if (s) return s;
    char commit[41], snap[SL_HUB_PATH_MAX];
    int have = cached_commit(&h, commit) &&
               !pathf(snap, sizeof snap, NULL, "%s/snapshots/%s", h.repo, commit) && is_dir(snap);
    if (have && snapshot_ready(snap, files)) {
        SL_LOGI("hub", "%s (revision %s): cached snapshot %s", path, h.rev, snap);
        return pathf(dir, cap, e, "%s", snap);
    }
    if (env_true("HF_HUB_OFFLINE")) {
        if (!have)
            return sl_err_set(e, SL_ERR_NOTFOUND,
                              "%s (revision %s) is not in the Hugging Face cache (%s/snapshots) "
                              "and HF_HUB_OFFLINE is set: download it where the Hub can be "
                              "reached and copy the cache, or pass the model's directory",
                              path, h.rev, h.repo);
        SL_LOGW("hub",
                "%s (revision %s): HF_HUB_OFFLINE: the cached snapshot %s lacks files a "
                "download would add",
                path, h.rev, snap);
        return pathf(dir, cap, e, "%s", snap);
    }
    if ((s = load_token(&h, e)) || (s = download_all(&h, snap, sizeof snap, e))) return s;
    return pathf(dir, cap, e, "%s", snap);
}
