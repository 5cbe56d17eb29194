"""Sampling throughput of the MiniCanvas model: float32 vs bfloat16, batch sizes, thread layouts.

Prints pictures/s (20 DDIM steps, CFG) per precision and batch size, measured interleaved, and
the share of the machine's measured matmul peak that sampling reaches (FLOPs of one UNet call
from torch.utils.flop_counter, against a 2048 x 2048 matmul in the same precision and threads).
Then the two ways of using 2 cores: one worker with 2 torch threads, or two workers (threads,
each with its own model copy, as the stages run them) with 1 torch thread each, in the
precision `auto` resolves to. On a CPU without native bfloat16 kernels (AVX2 only) bfloat16
is measured once, on `--slow-pictures` pictures at the smallest batch: it is many times slower
there.

    .venv/bin/python bench/sampling.py [--repeats 3] [--pictures 128] [--batches 12 32 128]
        [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import torch
from torch.utils.flop_counter import FlopCounterMode

from saeuron.minicanvas import MODEL_DIR
from saeuron.minicanvas.data import cells
from saeuron.minicanvas.prompts import prompt_for
from saeuron.diffusion import load_pipeline
from saeuron.sampling import initial_latents, resolve_precision, sample
from saeuron.threads import torch_threads

STEPS = 20
PRECISIONS = ("float32", "bfloat16")


def matmul_peak(dtype: torch.dtype, threads: int, n: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of an n x n matmul, the best of `repeats`."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    with torch_threads(threads):
        a @ b
        best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def unet_flops(pipe) -> float:
    """FLOPs of one picture's UNet evaluations at one step (the CFG pair)."""
    latents = initial_latents(pipe, [0, 0])
    context = pipe.encode_prompts(["", "a star in neon style"])
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        pipe.unet(latents, 500, encoder_hidden_states=context)
    return counter.get_total_flops()


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def prompts(n: int) -> tuple[list[str], list[int]]:
    grid = cells()
    chosen = [grid[i % len(grid)] for i in range(n)]
    return [prompt_for(*c) for c in chosen], list(range(n))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pictures", type=int, default=128, help="pictures per measurement")
    parser.add_argument("--batches", type=int, nargs="+", default=[12, 32, 128])
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads of the precision x batch table and its matmul peak")
    parser.add_argument("--slow-pictures", type=int, default=2,
                        help="pictures per bfloat16 measurement where it is not native")
    args = parser.parse_args()
    pipe = load_pipeline(MODEL_DIR)
    texts, seeds = prompts(args.pictures)
    native = resolve_precision("auto") == "bfloat16"
    print(f"CPU: {torch.backends.cpu.get_cpu_capability()}, native bfloat16 kernels: {native}")
    count = {"float32": args.pictures, "bfloat16": args.pictures if native else args.slow_pictures}
    flops = unet_flops(pipe) * STEPS
    peaks = {p: matmul_peak(getattr(torch, p), threads=args.threads,
                            **({} if native or p == "float32" else {"n": 512, "repeats": 2}))
             for p in PRECISIONS}
    print(f"UNet: {flops / STEPS / 1e6:.1f} MFLOP per picture and step (CFG pair); matmul peak "
          f"{args.threads} threads: " + ", ".join(f"{p} {v:.0f} GFLOP/s" for p, v in peaks.items()))

    def rate(precision: str, batch: int, threads: int = args.threads) -> float:
        n = count[precision]
        with torch_threads(threads):
            seconds = _timed(lambda: sample(pipe, texts[:n], seeds[:n], num_steps=STEPS,
                                            batch_size=batch, precision=precision))
        return n / seconds

    rate("float32", max(args.batches))  # warm-up
    results: dict[tuple[str, int], list[float]] = {}
    for repeat in range(args.repeats):
        for batch in args.batches:
            for precision in PRECISIONS:
                if native or precision == "float32" or (repeat, batch) == (0, min(args.batches)):
                    results.setdefault((precision, batch), []).append(rate(precision, batch))
    print("\n| precision | batch | pictures/s | GFLOP/s | share of its matmul peak |")
    print("|---|---|---|---|---|")
    for (precision, batch), values in results.items():
        pics = statistics.median(values)
        print(f"| {precision} | {batch} | {pics:.2f} | {pics * flops / 1e9:.0f} | "
              f"{pics * flops / 1e9 / peaks[precision]:.0%} |")
    for batch in args.batches:
        if ("bfloat16", batch) not in results:
            continue
        ratio = (statistics.median(results[("bfloat16", batch)])
                 / statistics.median(results[("float32", batch)]))
        print(f"batch {batch}: bfloat16 / float32 = {ratio:.2f}x")

    copies = [pipe, load_pipeline(MODEL_DIR)]
    half = len(texts) // 2

    best = resolve_precision("auto")

    def two_workers() -> float:
        def work(i: int) -> None:
            with torch_threads(1):
                sample(copies[i], texts[i * half:(i + 1) * half], seeds[i * half:(i + 1) * half],
                       num_steps=STEPS, batch_size=max(args.batches), precision=best)
        with ThreadPoolExecutor(2) as pool:
            seconds = _timed(lambda: list(pool.map(work, range(2))))
        return 2 * half / seconds

    layouts: dict[str, list[float]] = {"1 worker x 2 threads": [], "2 workers x 1 thread": []}
    for _ in range(args.repeats):
        layouts["1 worker x 2 threads"].append(rate(best, max(args.batches), threads=2))
        layouts["2 workers x 1 thread"].append(two_workers())
    print(f"\nthread layouts ({best}, batch {max(args.batches)}):")
    for name, values in layouts.items():
        print(f"  {name}: {statistics.median(values):.2f} pictures/s")


if __name__ == "__main__":
    main()
