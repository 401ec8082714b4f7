/* Built when nvcc is absent: the CUDA backend reports itself unavailable. */
#include "backend.h"

sl_backend *sl_backend_cuda_new(int device, sl_err *e)
{
    sl_err_set(e, SL_ERR_UNSUPPORTED, "this sluice was built without CUDA (device %d)", device);
    return NULL;
}
