#!/usr/bin/env python3
"""Golden fixtures (head dims 64: the smallest the CUDA attention and GDN kernels take) from the reference implementation (Hugging Face transformers).

Run on a machine with PyTorch and transformers (the GPU machine has 5.17):

    python3 tests/golden/make_golden.py --out tests/golden/data

For each of qwen3, qwen3_moe and qwen3_next it builds a tiny random model, saves
it as bf16 safetensors (model/), reloads those bf16 weights upcast to fp32 and
records, on the CPU in fp32 (no TF32), the logits of every position of several
prompts (logits.f32: float32 [total_tokens, vocab], prompts concatenated in
order) and greedy continuations (golden.json). The tests compare sluice with
these files (tests/py/test_golden.py).

Every parameter is re-drawn from explicit distributions (norm weights too, so a
w versus 1+w mix-up shows), large enough that logits are well separated and
greedy argmax is not decided by rounding.

With --fp8 it makes the FP8 fixtures from those bf16 models instead (transformers'
own FP8 path fetches its kernel from a hub at run time, so the arithmetic is
emulated around its fp32 forward): each projection sluice serves in FP8 (q, k, v,
o, gate, up, down, experts, in_proj_qkvz, out_proj) is quantized in 128 x 128
blocks (scale_inv = max|block| / 448, codes e4m3(w / scale_inv), round to nearest
even) into model_fp8/ (F8_E4M3 weights, F32 weight_scale_inv, the
quantization_config of the official releases); the reference then runs in fp32
with those weights dequantized (code x scale) and every FP8 projection's input
quantized per token and 128-group the same way (s = max|x_g| / 448, x -> e4m3(x /
s) x s): logits_fp8.f32 and golden_fp8.json (tests/py/test_fp8.py).
"""
import argparse
import json
import os
import random
import shutil

import torch
import transformers
from safetensors.torch import load_file, save_file

VOCAB = 512
PROMPT_LENS = [1, 9, 64, 70, 100]  # 64/70/100 cross the GDN chunk (64)
GREEDY_PROMPTS = [1, 3, 4]          # indices into the prompts
GREEDY_NEW = 24


def config_for(arch):
    common = dict(vocab_size=VOCAB, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                  rms_norm_eps=1e-6, max_position_embeddings=4096, bos_token_id=0,
                  eos_token_id=VOCAB - 1, attn_implementation="eager")
    if arch == "qwen3":
        return transformers.Qwen3Config(num_hidden_layers=2, head_dim=64, intermediate_size=128,
                                        tie_word_embeddings=True, rope_theta=10000.0, **common)
    if arch == "qwen3_moe":
        return transformers.Qwen3MoeConfig(num_hidden_layers=3, head_dim=64, intermediate_size=96,
                                           num_experts=8, num_experts_per_tok=2,
                                           moe_intermediate_size=32, mlp_only_layers=[1],
                                           tie_word_embeddings=False, rope_theta=1000000.0, **common)
    if arch == "qwen3_next":
        return transformers.Qwen3NextConfig(
            num_hidden_layers=4, head_dim=64, partial_rotary_factor=0.25, intermediate_size=96,
            layer_types=["linear_attention", "full_attention", "linear_attention", "full_attention"],
            linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=64,
            linear_value_head_dim=64, linear_conv_kernel_dim=4, num_experts=8, num_experts_per_tok=2,
            moe_intermediate_size=32, shared_expert_intermediate_size=32, norm_topk_prob=True,
            mlp_only_layers=[2], tie_word_embeddings=False, rope_theta=10000.0, **common)
    raise ValueError(arch)


def randomize(model, arch, gen):
    """Explicit distributions for every parameter (see module docstring)."""
    zero_centred = arch == "qwen3_next"
    with torch.no_grad():
        for name, p in model.named_parameters():
            n = lambda std: torch.randn(p.shape, generator=gen) * std  # noqa: E731
            if name.endswith("A_log"):
                p.copy_(torch.rand(p.shape, generator=gen) * 2 - 1)
            elif name.endswith("dt_bias"):
                p.copy_(n(0.5))
            elif "conv1d" in name:
                p.copy_(n(0.3))
            elif "linear_attn.norm" in name:       # gated RMSNorm: plain w
                p.copy_(1 + n(0.1))
            elif "norm" in name:                   # input/post/final/q/k norms
                p.copy_(n(0.1) if zero_centred else 1 + n(0.1))
            elif "embed_tokens" in name:
                p.copy_(n(1.0))
            elif p.dim() >= 2:                     # linear layers, fused experts [E, out, in]
                p.copy_(n(p.shape[-1] ** -0.5))
            else:
                p.copy_(n(0.1))


def unfuse_experts(path):
    """If this transformers saved fused expert tensors, rewrite them per expert (the
    layout of released checkpoints, which sluice reads)."""
    sd = load_file(path)
    out, changed = {}, False
    for k, v in sd.items():
        if k.endswith("mlp.experts.gate_up_proj"):
            pfx = k[: -len("gate_up_proj")]
            inter = v.shape[1] // 2
            for e in range(v.shape[0]):
                out[f"{pfx}{e}.gate_proj.weight"] = v[e, :inter].contiguous()
                out[f"{pfx}{e}.up_proj.weight"] = v[e, inter:].contiguous()
            changed = True
        elif k.endswith("mlp.experts.down_proj"):
            pfx = k[: -len("down_proj")]
            for e in range(v.shape[0]):
                out[f"{pfx}{e}.down_proj.weight"] = v[e].contiguous()
            changed = True
        else:
            out[k] = v
    if changed:
        save_file(out, path, metadata={"format": "pt"})
    return changed


FP8_TARGETS = (".q_proj.weight", ".k_proj.weight", ".v_proj.weight", ".o_proj.weight", ".gate_proj.weight",
               ".up_proj.weight", ".down_proj.weight", ".in_proj_qkvz.weight", ".out_proj.weight")
F8 = torch.float8_e4m3fn


def fp8_blocks(w):
    """w [R, C] fp32 -> e4m3 codes [R, C] and scale_inv [ceil(R/128), ceil(C/128)] fp32."""
    R, C = w.shape
    s = torch.zeros((R + 127) // 128, (C + 127) // 128)
    q = torch.zeros(R, C, dtype=F8)
    for i in range(s.shape[0]):
        for j in range(s.shape[1]):
            blk = w[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128]
            s[i, j] = blk.abs().max() / 448
            if s[i, j] > 0:
                q[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128] = (blk / s[i, j]).to(F8)
    return q, s


def fp8_dequant(q, s):
    R, C = q.shape
    return q.float() * s.repeat_interleave(128, 0)[:R].repeat_interleave(128, 1)[:, :C]


def fp8_act(x):
    """x [..., K] quantized per row and 128-group and back: e4m3(x / s) * s, s = max|x_g| / 448."""
    K = x.shape[-1]
    G = (K + 127) // 128
    xp = torch.nn.functional.pad(x, (0, G * 128 - K)).reshape(*x.shape[:-1], G, 128)
    s = xp.abs().amax(-1, keepdim=True) / 448
    q = torch.where(s > 0, (xp / torch.where(s > 0, s, 1)).to(F8).float() * s, 0)
    return q.reshape(*x.shape[:-1], G * 128)[..., :K]


def fp8_experts_forward(self, hidden_states, top_k_index, top_k_weights):
    """transformers' eager experts with both products' inputs through fp8_act."""
    out = torch.zeros_like(hidden_states)
    for e in range(self.num_experts):
        tok, pos = torch.where(top_k_index == e)
        if tok.numel() == 0:
            continue
        gate, up = torch.nn.functional.linear(fp8_act(hidden_states[tok]), self.gate_up_proj[e]).chunk(2, dim=-1)
        h = torch.nn.functional.linear(fp8_act(self.act_fn(gate) * up), self.down_proj[e])
        out.index_add_(0, tok, h * top_k_weights[tok, pos, None])
    return out


def make_fp8(d, prompts):
    """The FP8 fixtures of the bf16 golden model in d (see the module docstring)."""
    sd = load_file(os.path.join(d, "model", "model.safetensors"))
    fp8, deq = {}, {}
    for k, v in sd.items():
        if k.endswith(FP8_TARGETS) and v.dim() == 2:
            q, s = fp8_blocks(v.float())
            fp8[k], fp8[k + "_scale_inv"] = q, s
            deq[k] = fp8_dequant(q, s)
        else:
            fp8[k] = v
    mdir = os.path.join(d, "model_fp8")
    shutil.rmtree(mdir, ignore_errors=True)
    os.makedirs(mdir)
    save_file(fp8, os.path.join(mdir, "model.safetensors"), metadata={"format": "pt"})
    cfg = json.load(open(os.path.join(d, "model", "config.json")))
    kept = sorted(k[:-7] for k, v in sd.items() if k.endswith(".weight") and v.dim() == 2
                  and not k.endswith(FP8_TARGETS) and "embed_tokens" not in k)
    cfg["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                  "weight_block_size": [128, 128], "modules_to_not_convert": kept}
    json.dump(cfg, open(os.path.join(mdir, "config.json"), "w"), indent=2)
    shutil.copy(os.path.join(d, "model", "generation_config.json"), mdir)
    # the reference: the bf16 model in fp32, FP8 weights dequantized, FP8 inputs quantized
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.join(d, "model"), dtype=torch.float32, attn_implementation="eager").eval()
    n_lin = n_exp = 0
    with torch.no_grad():
        for name, mod in ref.named_modules():
            if isinstance(mod, torch.nn.Linear) and (name + ".weight").endswith(FP8_TARGETS):
                mod.weight.copy_(deq[name + ".weight"])
                mod.register_forward_pre_hook(lambda m, a: (fp8_act(a[0]),) + tuple(a[1:]))
                n_lin += 1
            elif hasattr(mod, "gate_up_proj") and hasattr(mod, "down_proj") and hasattr(mod, "num_experts"):
                for e in range(mod.num_experts):
                    g, u = deq[f"{name}.{e}.gate_proj.weight"], deq[f"{name}.{e}.up_proj.weight"]
                    mod.gate_up_proj[e].copy_(torch.cat([g, u]))
                    mod.down_proj[e].copy_(deq[f"{name}.{e}.down_proj.weight"])
                mod.forward = fp8_experts_forward.__get__(mod)
                n_exp += 1
        n_exp_w = sum(3 * m.num_experts for m in ref.modules() if m.forward.__func__ is fp8_experts_forward)
        assert len(deq) == n_lin + n_exp_w, "every quantized weight must be in the reference"
        logits = torch.cat([ref(torch.tensor([p]), use_cache=False).logits[0].float() for p in prompts])
        greedy = []
        for i in GREEDY_PROMPTS:
            g = ref.generate(torch.tensor([prompts[i]]), max_new_tokens=GREEDY_NEW, do_sample=False,
                             pad_token_id=0, eos_token_id=VOCAB - 1)
            greedy.append({"prompt": prompts[i], "output": g[0, len(prompts[i]):].tolist()})
    logits.numpy().astype("<f4").tofile(os.path.join(d, "logits_fp8.f32"))
    meta = {"transformers": transformers.__version__, "torch": torch.__version__, "vocab_size": VOCAB,
            "prompts": prompts, "greedy": greedy, "fp8_linear_layers": n_lin, "fp8_expert_blocks": n_exp}
    json.dump(meta, open(os.path.join(d, "golden_fp8.json"), "w"), indent=1)
    print(f"{os.path.basename(d)} fp8: {n_lin} linear layers, {n_exp} expert blocks, "
          f"greedy {[g['output'][:6] for g in greedy]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/golden/data")
    ap.add_argument("--arch", nargs="*", default=["qwen3", "qwen3_moe", "qwen3_next"])
    ap.add_argument("--fp8", action="store_true", help="the FP8 fixtures of the bf16 models already in --out")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_num_threads(min(8, os.cpu_count() or 1))
    rnd = random.Random(1234)
    prompts = [[rnd.randrange(1, VOCAB - 1) for _ in range(n)] for n in PROMPT_LENS]
    if args.fp8:
        for arch in args.arch:
            make_fp8(os.path.join(args.out, arch), prompts)
        return
    for arch in args.arch:
        d = os.path.join(args.out, arch)
        shutil.rmtree(d, ignore_errors=True)
        mdir = os.path.join(d, "model")
        gen = torch.Generator().manual_seed(42)
        cfg = config_for(arch)
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        randomize(model, arch, gen)
        model.to(torch.bfloat16).save_pretrained(mdir, safe_serialization=True)
        fused = unfuse_experts(os.path.join(mdir, "model.safetensors"))
        # the golden runs in fp32 from the saved bf16 weights
        ref = transformers.AutoModelForCausalLM.from_pretrained(
            mdir, dtype=torch.float32, attn_implementation="eager").eval()
        rows = []
        with torch.no_grad():
            for p in prompts:
                out = ref(torch.tensor([p]), use_cache=False).logits[0].float()
                rows.append(out)
            logits = torch.cat(rows).contiguous()
            greedy = []
            for i in GREEDY_PROMPTS:
                ids = torch.tensor([prompts[i]])
                g = ref.generate(ids, max_new_tokens=GREEDY_NEW, do_sample=False,
                                 pad_token_id=0, eos_token_id=VOCAB - 1)
                greedy.append({"prompt": prompts[i], "output": g[0, len(prompts[i]):].tolist()})
            # incremental decode in HF itself must match its full forward (sanity)
            p = prompts[3]
            o = ref(torch.tensor([p[:40]]), use_cache=True)
            cache = o.past_key_values
            steps = [o.logits[0, -1]]
            for t in p[40:45]:
                o = ref(torch.tensor([[t]]), past_key_values=cache, use_cache=True)
                cache = o.past_key_values
                steps.append(o.logits[0, -1])
            full = ref(torch.tensor([p[:45]]), use_cache=False).logits[0, 39:45]
            hf_inc_err = float((torch.stack(steps) - full).norm() / full.norm())
        logits.numpy().astype("<f4").tofile(os.path.join(d, "logits.f32"))
        meta = {"arch": arch, "transformers": transformers.__version__, "torch": torch.__version__,
                "vocab_size": VOCAB, "prompts": prompts, "greedy": greedy,
                "experts_unfused_by_script": fused, "hf_incremental_rel_err": hf_inc_err}
        with open(os.path.join(d, "golden.json"), "w") as f:
            json.dump(meta, f, indent=1)
        print(f"{arch}: {logits.shape[0]} positions, greedy {[g['output'][:6] for g in greedy]}, "
              f"hf incremental err {hf_inc_err:.2e}, unfused {fused}")


if __name__ == "__main__":
    main()
