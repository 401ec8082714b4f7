// kernels/cuda/prof.cu: kernel timing by CUDA events (SL_CUDA_PROFILE=1; see
// cuda_common.cuh). Pairs of events are recorded around each launch into a
// pool; when it is full (and at the end) the pool is synchronized and each
// pair's time added to its kernel's row. Rows are keyed by the kernel's
// function pointer (named by cudaFuncGetName, demangled) or, for library
// calls, by the name given.
#include <cxxabi.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_common.cuh"
extern "C" {
#include "sl_log.h"
}

#define CU_PROF_PAIRS 4096
#define CU_PROF_ROWS 256

typedef struct cu_prof_row {
    const void *fn;
    const char *name; // library calls (fn NULL): a static string
    double ms;
    long n;
} cu_prof_row;

struct cu_prof {
    cudaEvent_t ev[CU_PROF_PAIRS][2];
    const void *fn[CU_PROF_PAIRS];
    const char *name[CU_PROF_PAIRS];
    int used; // pairs complete
    int open; // pair `used` has its start recorded
    cu_prof_row row[CU_PROF_ROWS];
    int n_rows;
    long dropped; // launches past CU_PROF_ROWS kinds
};

void cu_prof_init(cu_backend *b)
{
    cu_prof *p = (cu_prof *)calloc(1, sizeof *p);
    SL_ASSERT(p);
    for (int i = 0; i < CU_PROF_PAIRS; i++)
        for (int j = 0; j < 2; j++) CU_CHECK(cudaEventCreate(&p->ev[i][j]));
    b->prof = p;
    SL_LOGI("cuda", "SL_CUDA_PROFILE=1: every kernel is timed by events (slower; graphs are not timed)");
}

static cu_prof_row *prof_row(cu_prof *p, const void *fn, const char *name)
{
    for (int i = 0; i < p->n_rows; i++)
        if (fn ? p->row[i].fn == fn : (!p->row[i].fn && !strcmp(p->row[i].name, name))) return &p->row[i];
    if (p->n_rows == CU_PROF_ROWS) return NULL;
    cu_prof_row *r = &p->row[p->n_rows++];
    r->fn = fn;
    r->name = name;
    return r;
}

static void prof_flush(cu_prof *p)
{
    if (!p->used) return;
    CU_CHECK(cudaEventSynchronize(p->ev[p->used - 1][1]));
    for (int i = 0; i < p->used; i++) {
        float ms = 0.0f;
        CU_CHECK(cudaEventElapsedTime(&ms, p->ev[i][0], p->ev[i][1]));
        cu_prof_row *r = prof_row(p, p->fn[i], p->name[i]);
        if (!r) {
            p->dropped++;
            continue;
        }
        r->ms += ms;
        r->n++;
    }
    p->used = 0;
}

void cu_prof_begin(cu_backend *b)
{
    cu_prof *p = b->prof;
    cudaStreamCaptureStatus cap;
    CU_CHECK(cudaStreamIsCapturing(b->stream, &cap));
    p->open = cap == cudaStreamCaptureStatusNone;
    if (p->open) CU_CHECK(cudaEventRecord(p->ev[p->used][0], b->stream));
}

void cu_prof_end(cu_backend *b, const void *fn, const char *name)
{
    cu_prof *p = b->prof;
    if (!p->open) return;
    CU_CHECK(cudaEventRecord(p->ev[p->used][1], b->stream));
    p->fn[p->used] = fn;
    p->name[p->used] = name;
    p->open = 0;
    if (++p->used == CU_PROF_PAIRS) prof_flush(p);
}

static int row_cmp(const void *a, const void *b)
{
    double x = ((const cu_prof_row *)a)->ms, y = ((const cu_prof_row *)b)->ms;
    return x < y ? 1 : x > y ? -1 : 0;
}

// "k_fp8_gemv_tc<1>" out of the mangled symbol of fn (into buf)
static const char *kernel_name(const void *fn, char *buf, size_t cap)
{
    const char *mangled = NULL;
    if (cudaFuncGetName(&mangled, fn) != cudaSuccess || !mangled) {
        cudaGetLastError();
        snprintf(buf, cap, "kernel %p", fn);
        return buf;
    }
    int st = 0;
    char *dem = abi::__cxa_demangle(mangled, NULL, NULL, &st);
    const char *full = st == 0 && dem ? dem : mangled;
    if (!strncmp(full, "void ", 5)) full += 5;
    size_t n = strcspn(full, "(");
    snprintf(buf, cap, "%.*s", (int)(n < cap ? n : cap - 1), full);
    free(dem);
    return buf;
}

void cu_prof_free(cu_backend *b)
{
    cu_prof *p = b->prof;
    if (!p) return;
    prof_flush(p);
    qsort(p->row, (size_t)p->n_rows, sizeof p->row[0], row_cmp);
    double total = 0.0;
    long n = 0;
    for (int i = 0; i < p->n_rows; i++) {
        total += p->row[i].ms;
        n += p->row[i].n;
    }
    SL_LOGI("cuda", "profile: %d kernels, %ld launches, %.1f ms timed%s", p->n_rows, n, total,
            p->dropped ? " (some launches of kinds past the table dropped)" : "");
    for (int i = 0; i < p->n_rows; i++) {
        char buf[160];
        const cu_prof_row *r = &p->row[i];
        SL_LOGI("cuda", "profile: %5.1f%% %10.2f ms %8ld x %8.2f us  %s", total > 0 ? 100.0 * r->ms / total : 0.0,
                r->ms, r->n, 1e3 * r->ms / (double)r->n, r->fn ? kernel_name(r->fn, buf, sizeof buf) : r->name);
    }
    for (int i = 0; i < CU_PROF_PAIRS; i++)
        for (int j = 0; j < 2; j++) cudaEventDestroy(p->ev[i][j]);
    free(p);
    b->prof = NULL;
}
