/* worker/quantize.h: block-wise FP8 checkpoints written from bf16 ones
 * (`sluice quantize --fp8-block IN OUT`, `sluice make-tiny --quantization fp8`).
 *
 * The codes and scales are those --quantization fp8 computes at load
 * (sl_fp8_quantize_blocks on each sl_model_fp8_target projection as stored),
 * so serving the written checkpoint equals quantizing its source at load. */
#ifndef SL_QUANTIZE_H
#define SL_QUANTIZE_H

#include <jansson.h>

#include "safetensors.h"
#include "sl_err.h"

/* t (2-D BF16, F16 or F32 [rows, cols]) -> out[0]: its F8_E4M3 codes under
 * t's name, out[1]: "<name>_scale_inv" F32 [ceil(rows/128), ceil(cols/128)].
 * Names and data are malloc'd (sl_quantize_free). */
sl_status sl_quantize_fp8_tensor(const sl_safetensors_tensor *t, sl_safetensors_tensor out[2], sl_err *e);
void sl_quantize_free(sl_safetensors_tensor *t);

/* Whether checkpoint tensor `name` (ndim dims) is the weight of a linear layer
 * an FP8 checkpoint keeps in bf16: 2-D ".weight", not an sl_model_fp8_target
 * projection, not the embeddings (the LM head, MoE routers, shared-expert
 * gates, Qwen3-Next's in_proj_ba). */
int sl_quantize_kept_linear(const char *name, int ndim);
/* The FP8 quantization_config: fp8 / e4m3 / dynamic / [128, 128] and
 * modules_to_not_convert, the module names (less ".weight") of the n kept
 * weights, sorted: the official releases list theirs so, and SGLang and vLLM
 * read it to keep those layers in bf16. NULL when out of memory. */
json_t *sl_quantize_fp8_config(const char *const *kept, int n);

typedef struct sl_quantize_report {
    int quantized;           /* projections written as FP8 */
    int tensors;             /* tensors written, scales included */
    int64_t in_bytes, out_bytes; /* tensor data read and written */
} sl_quantize_report;

/* Writes the checkpoint in in_dir (model.safetensors or indexed shards) to
 * out_dir (created; refused if it holds a config.json) with the same shard
 * files, every sl_model_fp8_target projection quantized, config.json's
 * quantization_config set (sl_quantize_fp8_config), and the
 * other files of in_dir (tokenizer, generation config, template) copied.
 * A checkpoint that already has a quantization_config is refused. A
 * shard's projections are quantized on up to 16 threads and held in memory
 * until the shard is written. */
sl_status sl_quantize_fp8_checkpoint(const char *in_dir, const char *out_dir, sl_quantize_report *r, sl_err *e);

#endif
