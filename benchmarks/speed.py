"""Training and sampling speed of one fixed model shape, and its share of the machine's matmul peak.

    python benchmarks/speed.py [--device cuda] [--dtype bf16] [--compile]

Shape: width 256, depth 4, 4 heads, 64 condition tokens, 64 tokens of 16 channels, energy head
of 3 blocks x 256. Training: batch 16, masked order. Sampling: batch 8, 64 steps, CFG 3.0, for
the masked order (full recompute per step) and the causal order (KV cache), side by side.
FLOPs are counted by ``torch.utils.flop_counter`` on the real calls (a training step as 3x its
forward); the peak is the measured throughput of a large matmul in the same dtype.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from carl.config import ModelConfig, from_dict
from carl.model import ContinuousAR


def model_config(order: str) -> ModelConfig:
    return from_dict(ModelConfig, {
        "tokenizer": {"name": "patch", "shape": [16, 8, 8], "patch": [1, 1], "normalize": False},
        "conditioner": {"name": "class", "num_classes": 10, "buffer": 64},
        "order": {"name": order},
        "backbone": {"width": 256, "depth": 4, "heads": 4, "dropout": 0.1, "attn_dropout": 0.1},
        "score": {"name": "energy", "depth": 3, "width": 256, "batch_mul": 2},
    })


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def flops_of(fn) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    n = 4096 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    times = timed(lambda: a @ b, device, repeats=10)
    return 2 * n**3 / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone and head (training)")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")
    torch.manual_seed(0)

    model = ContinuousAR(model_config("masked")).to(device)
    if args.compile:
        model.backbone.compile()
        model.score.net.compile()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))
    batch = {"tokens": torch.randn(16, 64, 16, device=device), "condition": torch.randint(0, 10, (16,), device=device)}

    def train_step() -> None:
        with autocast:
            loss = model(batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    train_times = timed(train_step, device, args.repeats, warmup=3 if args.compile else 2)
    # forward FLOPs x 3 (backward costs about twice the forward): the usual training-FLOP count
    train_flops = 3 * flops_of(lambda: model(batch))

    labels = torch.arange(8, device=device) % 10
    rows = []
    for order in ("masked", "causal"):
        sampler = ContinuousAR(model_config(order)).to(device).eval()

        def sample() -> None:
            with autocast:
                sampler.generate(labels, num_steps=64, cfg=3.0, generator=torch.Generator().manual_seed(0), return_tokens=True)

        times = timed(sample, device, max(2, args.repeats // 3), warmup=1)
        rows.append((order, statistics.median(times), flops_of(sample)))

    peak = matmul_peak(device, dtype)
    step = statistics.median(train_times)
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} threads'}), "
          f"dtype {args.dtype}, compile {args.compile}, torch {torch.__version__}")
    print(f"matmul peak ({args.dtype}): {peak / 1e9:.1f} GFLOP/s")
    print("| what | median time | per image | GFLOP | GFLOP/s | share of matmul peak |")
    print("|---|---|---|---|---|---|")
    print(f"| train step, masked, batch 16 | {step * 1e3:.1f} ms | {step / 16 * 1e3:.2f} ms | {train_flops / 1e9:.2f} | "
          f"{train_flops / step / 1e9:.1f} | {train_flops / step / peak:.1%} |")
    for order, seconds, flops in rows:
        print(f"| sample, {order}, batch 8, 64 steps, CFG 3 | {seconds * 1e3:.0f} ms | {seconds / 8 * 1e3:.1f} ms | "
              f"{flops / 1e9:.2f} | {flops / seconds / 1e9:.1f} | {flops / seconds / peak:.1%} |")
    (_, masked_s, _), (_, causal_s, _) = rows
    print(f"sampling time ratio masked / causal (KV cache): {masked_s / causal_s:.2f}")


if __name__ == "__main__":
    main()
