"""Triton kernels against their PyTorch references, timed in the same run (meant for a CUDA GPU).

For each kernel (Hamming scan + top-k, PQ asymmetric scan + top-k, candidate rescoring) it checks that the kernel
agrees with the reference on the benchmark data, then prints the median time of each and the speed-up.

    python benchmarks/kernels.py                      # CUDA: 1M x 256-bit codes, 1M x 48-byte PQ codes
    TRITON_INTERPRET=1 python benchmarks/kernels.py --n 20000 --queries 4   # CPU interpreter: agreement only

Interpreter timings measure Python emulation, not the kernel: the script says so rather than print a ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

from _table import markdown  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from rankstack import kernels as K


def _median_ms(fn, device: str, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--queries", type=int, default=64)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    interp = os.environ.get("TRITON_INTERPRET") == "1"
    device = "cuda" if torch.cuda.is_available() and not interp else "cpu"
    if device == "cpu" and not interp:
        print("no CUDA device: run on a GPU, or with TRITON_INTERPRET=1 for an agreement check", file=sys.stderr)
        return 2
    g = torch.Generator().manual_seed(0)
    n, nq, k = args.n, args.queries, args.k
    codes = torch.randint(0, 256, (n, 32), dtype=torch.uint8, generator=g).to(device)
    q = torch.randint(0, 256, (nq, 32), dtype=torch.uint8, generator=g).to(device)
    pq = torch.randint(0, 256, (n, 48), dtype=torch.uint8, generator=g).to(device)
    lut = torch.randn(nq, 48, 256, generator=g).to(device)
    vec = torch.randn(n, 384, generator=g).to(device, torch.float16)
    fq = torch.randn(nq, 384, generator=g).to(device)
    ids = torch.randint(0, n, (nq, 1000), generator=g).to(device)
    cases = {
        "hamming 256-bit top-k": (lambda: K.hamming_topk(q, codes, k, triton=True),
                                  lambda: K.hamming_topk_ref(q, codes, k)),
        "PQ48 ADC top-k": (lambda: K.pq_adc_topk(lut, pq, k, triton=True), lambda: K.pq_adc_topk_ref(lut, pq, k)),
        "rescore 1000 fp16 rows": (lambda: K.rescore(fq, vec, ids, triton=True), lambda: K.rescore_ref(fq, vec, ids)),
    }
    rows = []
    for name, (kern, ref) in cases.items():
        a, b = kern(), ref()
        if isinstance(a, tuple):
            same = torch.equal(a[1].cpu(), b[1].cpu())
        else:
            same = bool(torch.allclose(a.cpu(), b.cpu(), rtol=1e-3, atol=1e-3))
        t_k = _median_ms(kern, device, args.repeat)
        t_r = _median_ms(ref, device, args.repeat)
        rows.append({"kernel": name, "n": n, "queries": nq, "agrees": same, "triton_ms": t_k, "torch_ms": t_r,
                     "speedup": None if interp else t_r / t_k})
    where = torch.cuda.get_device_name() if device == "cuda" else "CPU, Triton interpreter (timings not meaningful)"
    print(f"\ndevice: {where}; torch {torch.__version__}")
    print(markdown(rows, ["kernel", "n", "queries", "agrees", "triton_ms", "torch_ms", "speedup"]))
    return 0 if all(r["agrees"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
