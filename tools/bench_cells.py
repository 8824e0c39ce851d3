"""Micro-benchmarks of a cell against torch's own LSTM, the two sides interleaved in one run.

    python tools/bench_cells.py [--cell fused-lstm] [--threads 2] [--repeats 30]
        [--case all|stepping|sequence] [--sequence-hidden 256]

1. decoder-style stepping: B=64, input 768, hidden 512, 20 steps of `step`, forward+backward,
   vs torch.nn.LSTMCell looped over the same steps; float32, and bf16 autocast where the CPU
   computes bf16 natively (`--bf16` forces it where it is emulated).
2. whole sequence: B=64, T=20, input 256, hidden 256, `forward` + backward, vs torch.nn.LSTM
   (4 x --repeats pairs).
Prints one JSON line per case with median milliseconds and the speed-up (torch / cell), the
CPU kind, the GEMM backend and the fused kernels' product path.
Both sides run in one process set up as s2s sets up training and translation
(`s2s.ops.runtime.tune_allocator`); `--system-malloc` leaves the allocator alone.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import torch


def _time(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", default="fused-lstm")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--system-malloc", action="store_true")
    parser.add_argument("--bf16", action="store_true",
                        help="also time bf16 stepping where bf16 is only emulated")
    parser.add_argument("--case", choices=["all", "stepping", "sequence"], default="all")
    parser.add_argument("--sequence-hidden", type=int, default=256,
                        help="hidden size of the sequence case (256 is the issue's case)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.system_malloc:
        from s2s.ops.runtime import tune_allocator

        tune_allocator()
    torch.manual_seed(0)
    from s2s.cells import registry
    from s2s.ops.deferred import deferred_weight_grads

    cls, _ = registry.load(args.cell)
    from s2s.cells.fused import kernels
    from s2s.ops import gemm
    from s2s.ops.runtime import cpu_kind
    from s2s.precision import native_bf16

    where = {"cpu": cpu_kind(), "gemm": gemm.backend(), "fused_products": kernels.panel_path()}

    def stepping(cell_step, params, x, h0, c0, context=contextlib.nullcontext):
        def run():
            h, c = h0, c0
            total = 0
            with context():  # s2s's decoder defers weight gradients the same way
                for t in range(x.shape[0]):
                    h, c = cell_step(x[t], (h, c))
                    total = total + h.float().sum()
            total.backward()
            for p in params:
                p.grad = None
        return run

    batch, steps, inp, hid = 64, 20, 768, 512
    ours = cls(inp, hid)
    ref = torch.nn.LSTMCell(inp, hid)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(steps, batch, inp)
    h0, c0 = torch.zeros(batch, hid), torch.zeros(batch, hid)
    ours_step = lambda xt, s: ours.step(xt, s)[1]  # noqa: E731
    ref_step = lambda xt, s: ref(xt, s)  # noqa: E731
    precisions = ("fp32", "bf16") if native_bf16()[0] or args.bf16 else ("fp32",)
    for precision in precisions if args.case != "sequence" else ():
        a = stepping(ours_step, list(ours.parameters()), x, h0, c0, deferred_weight_grads)
        b = stepping(ref_step, list(ref.parameters()), x, h0, c0)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            for _ in range(3):
                a(), b()
            ta, tb = [], []
            for _ in range(args.repeats):  # interleaved
                ta += _time(a, 1)
                tb += _time(b, 1)
        ma, mb = statistics.median(ta) * 1e3, statistics.median(tb) * 1e3
        print(json.dumps({"case": "decoder_step_B64_I768_H512_T20_fwd_bwd", "precision": precision,
                          "cell": args.cell, "cell_ms": round(ma, 2),
                          "torch_LSTMCell_ms": round(mb, 2),
                          "speedup": round(mb / ma, 3), "threads": args.threads, **where}))

    if args.case == "stepping":
        return
    batch, steps, inp, hid = 64, 20, 256, args.sequence_hidden
    ours = cls(inp, hid)
    ref = torch.nn.LSTM(inp, hid, batch_first=True)
    ours.load_state_dict({k.removesuffix("_l0"): v for k, v in ref.state_dict().items()})
    x = torch.randn(batch, steps, inp, requires_grad=True)
    lengths = torch.full((batch,), steps)

    def seq_ours():
        out, (h, c) = ours(x, lengths)
        (out.sum() + h.sum()).backward()
        x.grad = None
        for p in ours.parameters():
            p.grad = None

    def seq_ref():
        out, (h, c) = ref(x)
        (out.sum() + h.sum()).backward()
        x.grad = None
        for p in ref.parameters():
            p.grad = None

    for _ in range(3):
        seq_ours(), seq_ref()
    ta, tb = [], []
    for _ in range(4 * args.repeats):  # ~20 ms a call: more pairs for a steadier median
        ta += _time(seq_ours, 1)
        tb += _time(seq_ref, 1)
    ma, mb = statistics.median(ta) * 1e3, statistics.median(tb) * 1e3
    print(json.dumps({"case": f"sequence_B64_T20_I256_H{hid}_fwd_bwd", "precision": "fp32",
                      "cell": args.cell, "cell_ms": round(ma, 2), "torch_LSTM_ms": round(mb, 2),
                      "speedup": round(mb / ma, 3), "threads": args.threads, **where}))


if __name__ == "__main__":
    main()
