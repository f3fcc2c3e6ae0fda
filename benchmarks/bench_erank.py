"""Benchmark: diff_erank.erank against the authors' float32 d x d SVD, on the same matrices.

Prints, per (N, d): wall time of each, the speed ratio, their relative difference, and the
relative error of each against a float64 d x d eigendecomposition (the definition).

    python benchmarks/bench_erank.py [--reps 3] [--shapes 128x768,512x2048]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from authors_method import authors_erank

from diff_erank.erank import erank

DEFAULT_SHAPES = [(128, 768), (512, 2048), (256, 4096), (2048, 1024)]


def float64_definition(hidden: torch.Tensor) -> float:
    """The definition in float64 with the full d x d matrix (slow, exact)."""
    r = hidden.double()
    z = r - r.mean(0)
    z = z / z.norm(dim=1, keepdim=True)
    a = z.T @ z
    lam = torch.linalg.eigvalsh(a / torch.trace(a)).clamp_min(0)
    lam = lam[lam > 0]
    return math.exp(float(-(lam * lam.log()).sum()))


def timed(fn, x: torch.Tensor, reps: int) -> tuple[float, float]:
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        value = fn(x)
        best = min(best, time.perf_counter() - t0)
    return best, value


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--shapes", default=",".join(f"{n}x{d}" for n, d in DEFAULT_SHAPES))
    args = p.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, best of {args.reps}")
    header = f"{'N':>5} {'d':>5} {'ours s':>9} {'authors s':>10} {'speedup':>8} {'rel diff':>9} "
    print(header + f"{'ours err':>9} {'authors err':>11}")
    for n, d in shapes:
        # hidden states of a trained LM are anisotropic: give the matrix a decaying spectrum
        g = torch.Generator().manual_seed(n + d)
        x = torch.randn(n, d, generator=g) * torch.logspace(0, -3, d)
        x = x.float()
        t_ours, ours = timed(erank, x, args.reps)
        t_auth, auth = timed(authors_erank, x, args.reps)
        exact = float64_definition(x)
        print(
            f"{n:>5} {d:>5} {t_ours:>9.4f} {t_auth:>10.4f} {t_auth / t_ours:>7.0f}x "
            f"{abs(ours - auth) / exact:>9.1e} {abs(ours - exact) / exact:>9.1e} "
            f"{abs(auth - exact) / exact:>11.1e}"
        )


if __name__ == "__main__":
    main()
