/* GPU smoke check of the NCCL communicator (one GPU): world 1 collectives,
 * all-gather reorder inside a CUDA graph, sync; then two ranks on one GPU
 * (NCCL refuses duplicate GPUs: must fail cleanly, not hang; with 2 GPUs,
 * set SMOKE_DEV1=1 so rank 1 uses device 1 and the all-reduce is checked). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include "comm.h"
#include "sl_test.h"

static void world1(void)
{
    sl_err e = {0};
    sl_backend *be = sl_backend_cuda_new(0, &e);
    CHECK_MSG(be, "%s", e.msg);
    if (!be) return;
    sl_comm_config cfg = {.rank = 0, .world_size = 1, .timeout_ms = 20000, .be = be};
    sl_comm *c;
    CHECK_MSG(sl_comm_new(&c, &cfg, &e) == SL_OK, "%s", e.msg);
    CHECK(sl_comm_kind_of(c) == SL_COMM_KIND_NCCL);
    sl_tensor in, out, red;
    float h[6] = {1, 2, 3, 4, 5, 6}, o[6] = {0};
    CHECK(sl_be_alloc(be, &in, SL_DTYPE_F32, 2, (int64_t[]){2, 3}, &e) == SL_OK);
    CHECK(sl_be_alloc(be, &out, SL_DTYPE_F32, 2, (int64_t[]){2, 3}, &e) == SL_OK);
    CHECK(sl_be_alloc(be, &red, SL_DTYPE_BF16, 1, (int64_t[]){6}, &e) == SL_OK);
    CHECK(sl_be_upload(be, &in, h, SL_DTYPE_F32, &e) == SL_OK);
    CHECK(sl_be_upload(be, &red, h, SL_DTYPE_F32, &e) == SL_OK);
    for (int dim = 0; dim < 2; dim++) {
        CHECK_MSG(sl_comm_all_gather(c, &out, &in, dim, &e) == SL_OK, "%s", e.msg);
        CHECK_MSG(sl_comm_sync(c, &e) == SL_OK, "%s", e.msg);
        CHECK(sl_be_download(be, &out, o, &e) == SL_OK);
        CHECK(!memcmp(o, h, sizeof h));
    }
    CHECK_MSG(sl_comm_all_reduce(c, &red, &e) == SL_OK, "%s", e.msg);
    CHECK_MSG(sl_comm_broadcast(c, &in, 0, &e) == SL_OK, "%s", e.msg);
    sl_be_graph *g = NULL;
    float z[6] = {0};
    CHECK(sl_be_upload(be, &out, z, SL_DTYPE_F32, &e) == SL_OK);
    CHECK_MSG(sl_be_capture_begin(be, &e) == SL_OK, "%s", e.msg);
    CHECK_MSG(sl_comm_all_gather(c, &out, &in, 1, &e) == SL_OK, "%s", e.msg);
    CHECK(sl_comm_sync(c, &e) == SL_ERR_INVALID); /* not inside a capture */
    CHECK_MSG(sl_be_capture_end(be, &g, &e) == SL_OK, "%s", e.msg);
    if (g) CHECK_MSG(sl_be_graph_launch(be, g, &e) == SL_OK, "%s", e.msg);
    CHECK_MSG(sl_comm_sync(c, &e) == SL_OK, "%s", e.msg);
    CHECK(sl_be_download(be, &out, o, &e) == SL_OK);
    CHECK(!memcmp(o, h, sizeof h));
    if (g) sl_be_graph_free(be, g);
    sl_comm_free(c);
    sl_be_release(be, &in);
    sl_be_release(be, &out);
    sl_be_release(be, &red);
    sl_backend_free(be);
}

static void two_ranks(const char *addr)
{
    pid_t p[2];
    for (int r = 0; r < 2; r++) {
        if ((p[r] = fork()) == 0) {
            sl_err e = {0};
            sl_backend *be = sl_backend_cuda_new(getenv("SMOKE_DEV1") ? r : 0, &e);
            sl_comm_config cfg = {.rank = r, .world_size = 2, .init_addr = addr,
                                  .timeout_ms = 15000, .be = be};
            sl_comm *c = NULL;
            sl_status st = sl_comm_new(&c, &cfg, &e);
            printf("two ranks, rank %d: new -> %d %s\n", r, st, e.msg);
            if (st == SL_OK) {
                sl_tensor t;
                float v[4] = {1, 2, 3, 4 + r}, o[4] = {0};
                sl_be_alloc(be, &t, SL_DTYPE_F32, 1, (int64_t[]){4}, &e);
                sl_be_upload(be, &t, v, SL_DTYPE_F32, &e);
                st = sl_comm_all_reduce(c, &t, &e);
                if (st == SL_OK) st = sl_comm_sync(c, &e);
                sl_be_download(be, &t, o, &e);
                printf("rank %d all-reduce %d (%s): %g %g %g %g (want 2 4 6 9)\n", r, st,
                       st ? e.msg : "", o[0], o[1], o[2], o[3]);
            }
            sl_comm_free(c);
            fflush(stdout);
            _exit(0);
        }
    }
    for (int r = 0; r < 2; r++) waitpid(p[r], NULL, 0);
}

int main(int argc, char **argv)
{
    world1();
    two_ranks(argc > 1 ? argv[1] : "127.0.0.1:29517");
    return sl_test_done("nccl_smoke");
}
