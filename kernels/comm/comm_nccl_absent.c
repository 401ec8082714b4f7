/* Built without CUDA: there is no NCCL communicator to make. */
#include "comm_impl.h"

sl_status comm_nccl_init(sl_comm *c, const sl_comm_config *cfg, sl_err *e)
{
    return sl_err_set(e, SL_ERR_UNSUPPORTED, "this sluice was built without CUDA: no NCCL");
}
