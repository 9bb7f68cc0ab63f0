"""Op-level speed of the delta-rule ops: rnnzoo's chunk op vs its recurrent op vs
flash-linear-attention's naive reference, on the same tensors (float32, CPU by default).

    PYTHONPATH=src python benchmarks/chunk_delta.py --lengths 512,2048 --batch 4 --heads 4 --dim 64

Prints forward and forward+backward milliseconds (median of --repeat) and the ratios
recurrent / chunk and fla naive / chunk. fla-core 0.6.0 is optional (see .ci/install-peers);
without it its column reads "-". --max-slow-length skips the slow loops beyond that length.

--step-memory T: instead, decode T tokens one by one with each delta layer's `step`
(d_model = heads * dim, no grad) and print the state's size and the process's resident
memory after 1/16 of the steps and after all of them: constant in T.
"""

from __future__ import annotations

import argparse
import importlib
import time

import torch
import torch.nn.functional as F

from rnnzoo.bench import median_time, resident_memory
from rnnzoo.ops.chunk.delta import (
    delta_product,
    delta_product_recurrent,
    delta_rule,
    delta_rule_recurrent,
    rwkv7,
    rwkv7_recurrent,
)


def fla(module, name):
    try:
        return getattr(importlib.import_module(f"fla.ops.{module}.naive"), name)
    except ImportError:
        return None


def bhtd(t):
    return t.transpose(1, 2).contiguous()


def make_cases(B, T, H, D, n_h, device):
    """name -> (inputs, chunk(inputs), recurrent(inputs), fla naive(inputs) or None)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g).to(device)  # noqa: E731
    q, k, v = r(B, T, H, D), F.normalize(r(B, T, H, D), dim=-1), r(B, T, H, D)
    beta, gate = torch.sigmoid(r(B, T, H)), -F.softplus(r(B, T, H)) * 0.1
    kp, vp = F.normalize(r(B, T, n_h, H, D), dim=-1), r(B, T, n_h, H, D)
    bp = torch.sigmoid(r(B, T, n_h, H))
    w = -0.6065 * torch.sigmoid(r(B, T, H, D))
    kappa, lr = F.normalize(r(B, T, H, D), dim=-1), torch.sigmoid(r(B, T, H, D))
    a, b = -kappa, kappa * lr
    s = D ** -0.5
    f_delta = fla("delta_rule", "delta_rule_recurrence")
    f_gated = fla("gated_delta_rule", "naive_recurrent_gated_delta_rule")
    f_gated_chunk = fla("gated_delta_rule", "naive_chunk_gated_delta_rule")
    f_prod = fla("gated_delta_product", "naive_recurrent_gated_delta_product")
    f_dplr = fla("generalized_delta_rule.dplr", "dplr_recurrence")
    return {
        "delta_rule": ((q, k, v, beta), lambda q, k, v, b: delta_rule(q, k, v, b)[0],
                       lambda q, k, v, b: delta_rule_recurrent(q, k, v, b)[0],
                       f_delta and (lambda q, k, v, b: f_delta(bhtd(q), bhtd(k), bhtd(v), bhtd(b))[0])),
        "gated_delta_rule": ((q, k, v, beta, gate),
                             lambda q, k, v, b, g: delta_rule(q, k, v, b, g)[0],
                             lambda q, k, v, b, g: delta_rule_recurrent(q, k, v, b, g)[0],
                             f_gated and (lambda q, k, v, b, g: f_gated(q, k, v, b, g, scale=s)[0])),
        "gated_delta_rule (fla naive chunk)": (
            (q, k, v, beta, gate), lambda q, k, v, b, g: delta_rule(q, k, v, b, g)[0], None,
            f_gated_chunk and (lambda q, k, v, b, g: f_gated_chunk(q, k, v, g, b, scale=s)[0])),
        f"delta_product n_h={n_h}": (
            (q, kp, vp, bp, gate), lambda q, k, v, b, g: delta_product(q, k, v, b, g)[0],
            lambda q, k, v, b, g: delta_product_recurrent(q, k, v, b, g)[0],
            f_prod and (lambda q, k, v, b, g: f_prod(q, k.flatten(1, 2), v.flatten(1, 2), g,
                                                     b.flatten(1, 2), scale=s,
                                                     num_householder=n_h)[0])),
        "rwkv7": ((q, w, k, v, a, b), lambda *x: rwkv7(*x)[0], lambda *x: rwkv7_recurrent(*x)[0],
                  f_dplr and (lambda q, w, k, v, a, b: f_dplr(bhtd(q * D ** 0.5), bhtd(k), bhtd(v),
                                                              bhtd(a), bhtd(b), bhtd(w))[0])),
    }


def median_ms(fn, inputs, backward, repeat, device):
    leaves = [t.detach().clone().requires_grad_(backward) for t in inputs]

    def once():
        if backward:
            fn(*leaves).float().sum().backward()
        else:
            with torch.no_grad():
                fn(*leaves)

    return 1e3 * median_time(once, device, repeat)


def step_memory(T, B, H, D):
    import rnnzoo
    print(f"step decoding: B={B} H={H} head_dim={D} d_model={H * D}, {T} steps, float32, no grad")
    print(f"{'layer':<16}{'state MB':>10}{'RSS MB @T/16':>14}{'RSS MB @T':>11}{'ms/step':>9}")
    for name in ("deltanet", "gated_deltanet", "deltaproduct", "rwkv7"):
        layer = rnnzoo.create(name, d_model=H * D, num_heads=H, head_dim=D)
        state = layer.init_state(B)
        state_mb = sum(t.numel() * t.element_size() for t in state) / 2**20
        x_t = torch.randn(B, H * D)
        t0 = time.perf_counter()
        with torch.no_grad():
            for t in range(T):
                y_t, state = layer.step(x_t, state)
                if t + 1 == T // 16:
                    rss_early = resident_memory(peak=False) / 2**20
        ms = 1e3 * (time.perf_counter() - t0) / T
        print(f"{name:<16}{state_mb:>10.2f}{rss_early:>14.1f}{resident_memory(peak=False) / 2**20:>11.1f}{ms:>9.3f}", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", default="512,2048")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--n-h", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--ops", help="comma-separated subset of the op names")
    p.add_argument("--max-slow-length", type=int, default=2048,
                   help="skip the recurrent op and fla's naive loops beyond this length")
    p.add_argument("--device", default="cpu")
    p.add_argument("--step-memory", type=int, metavar="T", help="measure step decoding instead")
    args = p.parse_args()
    if args.step_memory:
        return step_memory(args.step_memory, args.batch, args.heads, args.dim)
    print(f"delta-rule ops: B={args.batch} H={args.heads} K=V={args.dim} float32 on {args.device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}; ms = median of {args.repeat}")
    head = (f"{'op':<36}{'T':>6}{'pass':>9}{'chunk ms':>10}{'recur ms':>10}{'fla ms':>10}"
            f"{'recur/chunk':>13}{'fla/chunk':>11}")
    print(head)
    print("-" * len(head))
    for T in (int(t) for t in args.lengths.split(",")):
        cases = make_cases(args.batch, T, args.heads, args.dim, args.n_h, args.device)
        for name, (inputs, chunk, recur, peer) in cases.items():
            if args.ops and name.split(" ")[0] not in args.ops.split(","):
                continue
            slow_ok = T <= args.max_slow_length or "chunk" in name
            for backward in (False, True):
                c = median_ms(chunk, inputs, backward, args.repeat, args.device)
                rr = median_ms(recur, inputs, backward, args.repeat, args.device) \
                    if recur and slow_ok else float("nan")
                f = median_ms(peer, inputs, backward, args.repeat, args.device) \
                    if peer and slow_ok else float("nan")
                fmt = lambda x: f"{x:10.1f}" if x == x else f"{'-':>10}"  # noqa: E731
                ratio = lambda x: f"{x / c:.1f}x" if x == x else "-"  # noqa: E731
                print(f"{name:<36}{T:>6}{'fwd+bwd' if backward else 'fwd':>9}{fmt(c)}{fmt(rr)}"
                      f"{fmt(f)}{ratio(rr):>13}{ratio(f):>11}", flush=True)


if __name__ == "__main__":
    main()
