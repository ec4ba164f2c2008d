"""Where an int4 layer's time goes on the CPU under ``compute=bf16`` (issue 11), timed in one run per projection shape
of SmolLM2-135M: RankStack's path (the groups decoded to float32, cast to bf16, one bf16 GEMM), the decode alone, a
plain bf16 layer (the floor: the same GEMM with the weight already decoded), and PyTorch's fused int4 CPU kernel
(``torch._weight_int4pack_mm_for_cpu``, tinygemm's layout, the one torchao's CPU int4 uses) on the same codes with
the zero point moved to the float domain. Each fused result is checked against our decode (relative error printed).

    python benchmarks/int4_cpu.py [--tokens 2400 1] [--threads 1]

Weights are random (timing depends on the shapes, not the values); ``--group`` sets the int4 group (32).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from torch import nn

from _table import markdown
from rankstack.rerank.llm.quant import Int4Linear

SHAPES = {"q_proj / o_proj": (576, 576), "k_proj / v_proj": (192, 576), "gate_proj / up_proj": (1536, 576),
          "down_proj": (576, 1536)}  # (out, in)


def median_ms(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def cpu_flags() -> str:
    try:
        flags = open("/proc/cpuinfo").read().split("flags")[1].split("\n")[0].split()
    except (OSError, IndexError):
        return platform.processor()
    return " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8") if f in flags)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, nargs="+", default=[2400, 1])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--group", type=int, default=32)
    p.add_argument("--repeat", type=int, default=20)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for name, (out_f, in_f) in SHAPES.items():
        layer = Int4Linear(nn.Linear(in_f, out_f, bias=False), args.group)
        dense = layer.dequantized().to(torch.bfloat16)
        if not layer.prepare_fused():  # the layer's own copy of its codes in the fused kernel's layout
            raise SystemExit("this PyTorch has no fused int4 CPU kernel")
        for n in args.tokens:
            x = torch.randn(n, in_f).to(torch.bfloat16)
            ref = x.float() @ layer.dequantized().T

            def ours():  # the decode path, whatever the row count (forward() sends small bf16 inputs to the kernel)
                return torch.nn.functional.linear(x, layer.dequantized().to(x.dtype))

            row = {"projection": name, "out x in": f"{out_f} x {in_f}", "tokens": n,
                   "bf16 layer ms": median_ms(lambda: x @ dense.T, args.repeat),
                   "ours ms (decode + bf16 GEMM)": median_ms(ours, args.repeat),
                   "decode ms": median_ms(lambda: layer.dequantized().to(torch.bfloat16), args.repeat),
                   "torch int4pack ms": median_ms(lambda: layer.fused_matmul(x), args.repeat),
                   "int4pack rel. err": float((layer.fused_matmul(x).float() - ref).norm() / ref.norm()),
                   "ours rel. err": float((ours().float() - ref).norm() / ref.norm())}
            row["decode share"] = row["decode ms"] / row["ours ms (decode + bf16 GEMM)"]
            row["int4pack vs ours"] = row["ours ms (decode + bf16 GEMM)"] / row["torch int4pack ms"]
            rows.append(row)
    print(f"CPU: {platform.machine()}, flags {cpu_flags()}, torch {torch.__version__}, {args.threads} thread(s)")
    print(markdown(rows, list(rows[0])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
