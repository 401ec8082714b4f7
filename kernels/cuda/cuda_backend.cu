// CUDA backend entry point. The kernels land in this folder one op family per
// file; until then the backend reports itself unavailable.
#include <cuda_runtime.h>

extern "C" {
#include "../backend_impl.h"
}

extern "C" sl_backend *sl_backend_cuda_new(int device, sl_err *e)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n <= device) {
        sl_err_set(e, SL_ERR_DEVICE, "no CUDA device %d", device);
        return NULL;
    }
    sl_err_set(e, SL_ERR_UNSUPPORTED, "the CUDA backend has no ops yet");
    return NULL;
}
