"""Op-level speed of the chunkwise gated-linear-attention and mLSTM ops (rnnzoo.ops.chunk.linear)
against their recurrent references and the peers' PyTorch references on the same tensors.

    PYTHONPATH=src python benchmarks/chunk_linear.py --batch 4 --heads 4 --head-dim 64 \
        --lengths 512,2048,8192 --recurrent-max 2048

Forward+backward, float32, median of --repeat runs. Peers (skipped when not installed):
flash-linear-attention's naive references (gla: naive_recurrent_gla; scalar decay:
naive_chunk_simple_gla, the chunked reference; retention-style; no decay:
naive_recurrent_linear_attn; rwkv6: naive_recurrent_rwkv6), xLSTM's native chunkwise_simple
for mLSTM, mamba_ssm's ssd_minimal_discrete for the scalar (SSD) decay.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from rnnzoo.bench import median_time, resident_memory
from rnnzoo.ops.chunk.linear import (
    gated_linear_attention,
    gated_linear_attention_recurrent,
    mlstm,
    mlstm_recurrent,
)


def fwd_bwd(run, inputs):
    def go():
        for t in inputs:
            t.grad = None
        out = run()
        out = out[0] if isinstance(out, tuple) else out
        out.sum().backward()
    return go


def ssd_minimal():
    spec = importlib.util.find_spec("mamba_ssm")
    if spec is None:
        raise ImportError("mamba_ssm not installed")
    path = Path(spec.submodule_search_locations[0]) / "modules" / "ssd_minimal.py"
    src = path.read_text().replace(
        "from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined", "")
    ns: dict = {}
    exec(compile(src, str(path), "exec"), ns)
    return ns["ssd_minimal_discrete"]


def cases(B, T, H, D, chunk):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    q, k, v = (r(B, T, H, D) * 0.5 for _ in range(3))
    g_scalar = F.logsigmoid(r(B, T, H) + 4)
    g_vector = F.logsigmoid(r(B, T, H, D) + 4) / 16
    w = -(r(B, T, H, D) - 3).exp()
    u = r(H, D)
    log_i, log_f = r(B, T, H), F.logsigmoid(r(B, T, H) + 3)
    for t in (q, k, v, g_scalar, g_vector, w, u, log_i, log_f):
        t.requires_grad_()
    bh = lambda t: t.transpose(1, 2)  # noqa: E731
    out = {}
    gla = dict(chunk=lambda: gated_linear_attention(q, k, v, g_vector, chunk_size=chunk),
               recurrent=lambda: gated_linear_attention_recurrent(q, k, v, g_vector))

    def fla_gla():
        from fla.ops.gla.naive import naive_recurrent_gla
        return lambda: naive_recurrent_gla(q, k, v, g_vector)
    out["gla (vector decay)"] = (gla, {"fla naive_recurrent_gla": fla_gla})

    scalar = dict(chunk=lambda: gated_linear_attention(q, k, v, g_scalar, chunk_size=chunk),
                  recurrent=lambda: gated_linear_attention_recurrent(q, k, v, g_scalar))

    def fla_simple():
        from fla.ops.simple_gla.naive import naive_recurrent_simple_gla
        return lambda: naive_recurrent_simple_gla(q, k, v, g_scalar)

    def fla_simple_chunk():
        from fla.ops.simple_gla.naive import naive_chunk_simple_gla
        return lambda: naive_chunk_simple_gla(q, k, v, g_scalar, chunk_size=chunk)

    def mamba_ssd():
        ssd = ssd_minimal()
        return lambda: ssd(v, g_scalar, k, q, block_len=chunk)
    out["simple_gla (scalar decay)"] = (scalar, {
        "fla naive_recurrent_simple_gla": fla_simple, "fla naive_chunk_simple_gla": fla_simple_chunk,
        "mamba_ssm ssd_minimal_discrete": mamba_ssd})

    none = dict(chunk=lambda: gated_linear_attention(q, k, v, chunk_size=chunk),
                recurrent=lambda: gated_linear_attention_recurrent(q, k, v))

    def fla_linear():
        from fla.ops.linear_attn.naive import naive_recurrent_linear_attn
        return lambda: naive_recurrent_linear_attn(q, k, v)
    out["linear_attn (no decay)"] = (none, {"fla naive_recurrent_linear_attn": fla_linear})

    rwkv = dict(chunk=lambda: gated_linear_attention(q, k, v, w, bonus=u, chunk_size=chunk),
                recurrent=lambda: gated_linear_attention_recurrent(q, k, v, w, bonus=u))

    def fla_rwkv6():
        from fla.ops.rwkv6.recurrent_naive import naive_recurrent_rwkv6
        return lambda: naive_recurrent_rwkv6(bh(q), bh(k), bh(v), bh(w), u)
    out["rwkv6 (vector + bonus)"] = (rwkv, {"fla naive_recurrent_rwkv6": fla_rwkv6})

    ml = dict(chunk=lambda: mlstm(q, k, v, log_i, log_f, chunk_size=chunk),
              recurrent=lambda: mlstm_recurrent(q, k, v, log_i, log_f))

    def xlstm_chunk():
        from xlstm.blocks.mlstm.backends import chunkwise_simple
        return lambda: chunkwise_simple(bh(q), bh(k), bh(v), bh(log_i),  # forget pre-activation:
                                        bh(torch.logit(log_f.exp())), chunk_size=chunk)
    out["mlstm"] = (ml, {"xlstm chunkwise_simple": xlstm_chunk})
    return out, [q, k, v, g_scalar, g_vector, w, u, log_i, log_f]


BENCH_LAYERS = {  # options giving H = 4 heads of dimension 64
    "linear_attention": dict(d_model=256, num_heads=4),
    "retnet": dict(d_model=256, num_heads=4),
    "gla": dict(d_model=256, num_heads=4, expand_k=1.0),
    "hgrn2": dict(d_model=256, num_heads=4, d_state=64),
    "mamba2": dict(d_model=128, d_state=64, head_dim=64),
    "mlstm": dict(d_model=128, num_heads=4),
    "rwkv6": dict(d_model=256, head_dim=64),
}


def step_memory(T: int, layers) -> None:
    """Decode T tokens one `step` at a time (B = 1, no grad): the state's size and the
    process's peak resident memory after T / 16 and after T steps (constant in T)."""
    import rnnzoo
    print(f"step decoding, B=1, float32, no grad, {torch.get_num_threads()} threads")
    print(f"{'layer':<18}{'state KB':>10}{'peak MB @' + str(T // 16):>16}{'peak MB @' + str(T):>16}"
          f"{'us/step':>10}")
    for name in layers:
        opts = dict(BENCH_LAYERS[name])
        torch.manual_seed(0)
        layer = rnnzoo.create(name, **opts)
        x = torch.randn(1, opts["d_model"])
        state = layer.init_state(1)
        flat = state if isinstance(state, tuple) else (state,)
        kb = sum(t.numel() * t.element_size() for t in flat) / 1024
        with torch.no_grad():
            t0 = time.perf_counter()
            for t in range(T):
                y, state = layer.step(x, state)
                if t == T // 16 - 1:
                    early = resident_memory() / 2**20
            per_step = (time.perf_counter() - t0) / T * 1e6
        print(f"{name:<18}{kb:>10.1f}{early:>16.1f}{resident_memory() / 2**20:>16.1f}{per_step:>10.0f}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--lengths", default="512,2048,8192")
    p.add_argument("--chunk-size", type=int, default=64)
    p.add_argument("--recurrent-max", type=int, default=2048,
                   help="skip the recurrent loops (ours and the peers') above this length")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--ops", default=None, help="comma-separated subset of the op names")
    p.add_argument("--step-memory", type=int, default=0, metavar="T",
                   help="instead: decode T steps with each layer and print its memory")
    p.add_argument("--layers", default=",".join(BENCH_LAYERS), help="layers for --step-memory")
    a = p.parse_args()
    if a.step_memory:
        return step_memory(a.step_memory, a.layers.split(","))
    print(f"fwd+bwd float32, B={a.batch} H={a.heads} head_dim={a.head_dim} chunk={a.chunk_size}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'op':<28}{'T':>6}  {'impl':<34}{'ms':>10}  chunk speedup")
    for T in (int(s) for s in a.lengths.split(",")):
        ops, inputs = cases(a.batch, T, a.heads, a.head_dim, a.chunk_size)
        for name, (ours, peers) in ops.items():
            if a.ops and not any(s in name for s in a.ops.split(",")):
                continue
            t_chunk = median_time(fwd_bwd(ours["chunk"], inputs), "cpu", a.repeat)
            print(f"{name:<28}{T:>6}  {'rnnzoo chunk':<34}{t_chunk * 1e3:>10.1f}")
            rows = [("rnnzoo recurrent", lambda: ours["recurrent"])] + list(peers.items())
            for label, make in rows:
                slow_loop = "recurrent" in label or label.startswith("fla naive_recurrent")
                if slow_loop and T > a.recurrent_max:
                    print(f"{'':<28}{T:>6}  {label:<34}{'skipped':>10}  (T > --recurrent-max)")
                    continue
                try:
                    run = make()
                except ImportError as e:
                    print(f"{'':<28}{T:>6}  {label:<34}{'skipped':>10}  ({e})")
                    continue
                t = median_time(fwd_bwd(run, inputs), "cpu", a.repeat)
                print(f"{'':<28}{T:>6}  {label:<34}{t * 1e3:>10.1f}  {t / t_chunk:6.1f}x")


if __name__ == "__main__":
    main()
