"""Prefill/decode disaggregation with tensor-parallel groups on either side
(docs/disaggregation.md, "Different TP sizes"), CPU backend, real processes.

What travels is the whole model's cache of a request: the prefill group's
ranks send their shards to rank 0, which assembles them (KV heads, the conv
state's q | k | v channel blocks each from its rank, the SSM heads); the
decode group's rank 0 cuts the whole into its ranks' shards. So a prefill TP 2
feeds a decode TP 1 (and the reverse), and greedy outputs equal a TP 1
unified worker's. qwen3 with prefill TP 4 replicates its 2 KV heads over the
ranks (rank r holds head r/2) and feeds a decode TP 2 that splits them."""
import subprocess

import pytest

from router_harness import BIN, Procs, cmdline, descendants, make_tiny, reserve_port, start_router
from test_pd import MEM, complete, pools_empty, prompts, start_pair


def tp_args(tp):
    return ["--tp-size", tp, "--dist-init-addr", f"127.0.0.1:{reserve_port()}"] if tp > 1 else []


@pytest.mark.parametrize("arch,pre_tp,dec_tp", [("qwen3_next", 2, 1), ("qwen3_next", 1, 2),
                                                ("qwen3", 4, 2)])
def test_pd_tp_equals_tp1_unified(tmp_path, arch, pre_tp, dec_tp):
    procs = Procs()
    try:
        model = make_tiny(tmp_path / "m", arch=arch)
        extra = ["--mamba-scheduler-strategy", "extra_buffer"] if arch == "qwen3_next" else []
        up, pp, pre, dec = start_pair(procs, model, extra, tp_args(pre_tp), tp_args(dec_tp))
        ps = prompts()
        want = [complete(up, p) for p in ps]
        # one after the other: the shared-prefix prompts hit the prefill side's cache
        # (a branch point on qwen3_next), so fewer tokens travel for them
        got = [complete(pp, p) for p in ps]
        for w, g in zip(want, got):
            assert g[0] == w[0]
            # TP sums the row-parallel products per rank, then over ranks
            assert g[1] == pytest.approx(w[1], abs=1e-3)
        # a follow-up turn on the decode side: its cache kept the received prefix
        first = ps[1] + [7, 8]
        complete(pp, first, max_tokens=4)
        text, _, usage = complete(pp, first + [300, 301], max_tokens=6)
        assert text == complete(up, first + [300, 301], max_tokens=6)[0]
        assert usage["prompt_tokens_details"]["cached_tokens"] >= len(first)
        n = len(ps) + 2
        m = pools_empty(pp, [pre, dec], until=lambda m: (
            m[f'sluice_worker_pd_transfers{{worker="{dec}"}}'] == n and
            m[f'sluice_worker_pd_transfers{{worker="{pre}"}}'] == n))
        # the same whole-model bytes left one group and entered the other
        assert m[f'sluice_worker_pd_transfer_bytes{{worker="{pre}"}}'] == \
            m[f'sluice_worker_pd_transfer_bytes{{worker="{dec}"}}'] > 0
        assert m[f'sluice_worker_pd_failures{{worker="{dec}"}}'] == 0
        assert m["sluice_pd_fallbacks_total"] == 0
    finally:
        procs.stop()


def test_serve_pd_tp_layout(tmp_path):
    """`sluice serve --pd-prefill 1 --pd-decode 1 --pd-prefill-tp 2` starts a prefill
    group of two ranks beside a one-rank decode worker; the TP flags need a PD layout."""
    procs = Procs()
    try:
        model = make_tiny(tmp_path / "m")
        srv, port = start_router(procs, model, [], "--pd-prefill", 1, "--pd-decode", 1,
                                 "--pd-prefill-tp", 2, "--mem-bytes", MEM, command="serve",
                                 alive=2)
        ranks = [c for c in descendants(srv.pid) if "--tp-rank" in cmdline(c)]
        assert len(ranks) == 1 and "prefill" in cmdline(ranks[0]), [cmdline(c) for c in ranks]
        _, _, usage = complete(port, prompts()[1], max_tokens=5)
        assert usage["completion_tokens"] == 5
        m = pools_empty(port, [], until=lambda m: m["sluice_pd_prefill_done_total"] == 1)
        assert m["sluice_pd_pairs_total"] == 1
    finally:
        procs.stop()
    r = subprocess.run([BIN, "serve", "--model-path", model, "--pd-decode-tp", "2"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2 and "need a PD layout" in r.stderr, r.stderr
