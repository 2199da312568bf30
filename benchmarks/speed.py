"""Training and sampling speed of a model shape, eager and compiled side by side.

    python benchmarks/speed.py                                   # CPU, the small shape, eager
    python benchmarks/speed.py --device cuda --shape ear-b       # eager and compiled, bf16
    python benchmarks/speed.py --device cuda --shape mar-b --modes compiled
    python benchmarks/speed.py --shape mnist --modes eager,compiled     # the CPU ratio compiled / eager
    python benchmarks/speed.py --recipe mnist-ear --set model.backbone.width=256 --threads 2
    python benchmarks/speed.py --recipe mnist-ear --variants eager:fp32,compiled:fp32,eager:bf16 --repeats 8

Shapes (tokens are random, so no tokenizer or data set is needed; the backbone, order and head
are the recipe's):

- ``small`` (default): width 256, depth 4, 4 heads, 64 condition tokens, 64 tokens of 16, energy
  head 3 x 256; train batch 16 (masked); sampling batch 8, 64 steps, CFG 3, masked and causal (KV cache).
- ``ear-b``: the ``ear-b-in256`` recipe (205.6M parameters, 256 tokens of 16); train micro-batch 64;
  sampling batch 128, 64 steps, CFG 3 linear, temperature 0.7.
- ``mar-b``: MAR-B (12 + 12 blocks of width 768, diffusion head 6 x 1024, batch x 4); train
  micro-batch 64; sampling batch 64, 64 steps, CFG 3 linear, 100 diffusion steps.
- ``mnist``: the ``mnist-ear`` recipe's AR model (49 latent tokens of 4, generator width 64); train batch 64;
  sampling batch 100, 32 steps, CFG 3.5 (the tokenizer is left out: it is a frozen encoder and decoder).
- ``mnist-pixels``: ``mnist-ear-pixels`` (49 patches of 16, generator width 128); 16 steps, CFG 4.
- ``--recipe NAME [--set key=value ...]``: a recipe's conditioner, order, backbone and head over
  random tokens of its tokenizer's shape; its global batch for training, its sampling settings
  and a sampling batch of 100.

A train step is forward (under bf16 autocast with ``--dtype bf16``), backward and the AdamW step
(fused on CUDA), as in ``carl.train``; the EMA update is timed on its own row. ``compiled`` runs
``carl.training.accel.compile_model`` (backbone and head; the KV-cache loop of causal sampling stays eager).
FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on the real calls (matmuls,
attention and convolutions; elementwise work is not counted), a training step as 3x its forward.
MFU is FLOP/s over the peak: ``--peak-tflops`` if given, else the measured throughput of a large
matmul in the same dtype. Peak memory is ``torch.cuda.max_memory_allocated`` per row (CUDA only).
"""

from __future__ import annotations

import argparse
import copy
import resource
import statistics
import time
from dataclasses import dataclass, field

import torch
from torch.utils.flop_counter import FlopCounterMode

from carl.training.accel import DeviceEMA, compile_model, optimizer_options
from carl.config import ModelConfig, from_dict, load_recipe, to_dict
from carl.model import ContinuousAR


@dataclass
class Shape:
    model: dict  # the ModelConfig, order included
    train_batch: int
    sample_batch: int
    sample: dict  # generate() keyword arguments
    sample_orders: tuple[str, ...] = ("masked",)
    num_classes: int = 1000
    extra: dict = field(default_factory=dict)


def _model(tokens: int, dim: int, classes: int, buffer: int, backbone: dict, score: dict, order: dict | None = None) -> dict:
    side = int(tokens**0.5)
    return {
        "tokenizer": {"name": "patch", "shape": [dim, side, side], "patch": [1, 1], "normalize": False},
        "conditioner": {"name": "class", "num_classes": classes, "buffer": buffer},
        "order": order or {"name": "masked"},
        "backbone": backbone,
        "score": score,
    }


SHAPES = {
    "small": Shape(
        _model(64, 16, 10, 64, {"width": 256, "depth": 4, "heads": 4, "dropout": 0.1, "attn_dropout": 0.1},
               {"name": "energy", "depth": 3, "width": 256, "batch_mul": 2}),
        train_batch=16, sample_batch=8, sample={"num_steps": 64, "cfg": 3.0}, sample_orders=("masked", "causal"), num_classes=10,
    ),
    "ear-b": Shape(
        _model(256, 16, 1000, 64, {"width": 768, "depth": 24, "heads": 12, "dropout": 0.1, "attn_dropout": 0.1},
               {"name": "energy", "alpha": 1.0, "num_samples": 2, "batch_mul": 2, "depth": 6, "width": 1024, "noise_dim": 64}),
        train_batch=64, sample_batch=128, sample={"num_steps": 64, "cfg": 3.0, "temperature": 0.7},
    ),
    "mar-b": Shape(
        _model(256, 16, 1000, 64, {"width": 768, "encoder_depth": 12, "depth": 12, "heads": 12, "dropout": 0.1, "attn_dropout": 0.1},
               {"name": "diffusion", "depth": 6, "width": 1024, "batch_mul": 4, "sample_steps": 100}),
        train_batch=64, sample_batch=64, sample={"num_steps": 64, "cfg": 3.0},
    ),
    "mnist": Shape(
        _model(49, 4, 10, 4, {"width": 128, "encoder_depth": 3, "depth": 2, "heads": 4, "dropout": 0.0, "attn_dropout": 0.0},
               {"name": "energy", "alpha": 1.0, "num_samples": 4, "batch_mul": 1, "depth": 3, "width": 64, "noise_dim": 64},
               {"name": "masked", "mask_ratio_min": 0.4}),
        train_batch=64, sample_batch=100, sample={"num_steps": 32, "cfg": 3.5, "temperature": 0.7}, num_classes=10,
    ),
    "mnist-pixels": Shape(
        _model(49, 16, 10, 4, {"width": 128, "encoder_depth": 3, "depth": 2, "heads": 4, "dropout": 0.0, "attn_dropout": 0.0},
               {"name": "energy", "alpha": 1.0, "num_samples": 4, "batch_mul": 1, "depth": 3, "width": 128, "noise_dim": 64},
               {"name": "masked", "mask_ratio_min": 0.4}),
        train_batch=64, sample_batch=100, sample={"num_steps": 16, "cfg": 4.0, "temperature": 0.7}, num_classes=10,
    ),
}


def recipe_shape(recipe: str, overrides: list[str]) -> Shape:
    """A recipe's model over random tokens of its tokenizer's shape (the tokenizer itself is left out)."""
    cfg = load_recipe(recipe, overrides)
    model = ContinuousAR(cfg.model)
    n, d = model.tokenizer.num_tokens, model.tokenizer.token_dim
    conditioner = to_dict(cfg.model)["conditioner"]
    classes = conditioner.get("num_classes", 10)
    spec = _model(n, d, classes, conditioner.get("buffer", 1), to_dict(cfg.model.backbone),
                  to_dict(cfg.model)["score"], to_dict(cfg.model)["order"])
    spec["conditioner"] = conditioner
    s = cfg.sample
    return Shape(spec, train_batch=cfg.train.global_batch, sample_batch=100, num_classes=classes,
                 sample_orders=(cfg.model.order.name,),
                 sample={"num_steps": s.num_steps, "cfg": s.cfg, "cfg_schedule": s.cfg_schedule, "temperature": s.temperature})


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
    n = 8192 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    times = timed(lambda: a @ b, device, repeats=10)
    return 2 * n**3 / statistics.median(times)


@dataclass
class Row:
    what: str
    mode: str
    seconds: float
    items: int  # images per call
    flops: int | None
    memory: int | None


def measure(device, fn, repeats: int, warmup: int) -> tuple[float, int | None]:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = statistics.median(timed(fn, device, repeats, warmup))
    return seconds, torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def bench_mode(shape: Shape, mode: str, args, device, autocast) -> list[Row]:
    compiled = mode == "compiled"
    warmup = 5 if compiled else 2  # compiled: the first calls compile (static, then dynamic shapes)
    torch.manual_seed(0)
    model = ContinuousAR(from_dict(ModelConfig, shape.model)).to(device)
    ema = DeviceEMA(model, 0.9999, device=device)
    if compiled:
        compile_model(model, args.compile_mode)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), **optimizer_options(device))
    n, d = model.tokenizer.num_tokens, model.tokenizer.token_dim
    b = shape.train_batch
    batch = {"tokens": torch.randn(b, n, d, device=device), "condition": torch.randint(0, shape.num_classes, (b,), device=device)}

    def train_step() -> None:
        with autocast:
            loss = model(batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    rows = []
    start = time.perf_counter()
    for _ in range(warmup):  # compiled: these calls compile (static, then dynamic shapes)
        train_step()
    sync(device)
    print(f"{mode}: the first {warmup} train steps took {time.perf_counter() - start:.1f} s", flush=True)
    seconds, memory = measure(device, train_step, args.repeats, 0)
    with autocast:
        train_flops = 3 * flops_of(lambda: model(batch))  # backward ~ 2x forward
    rows.append(Row(f"train step, {shape.model['order']['name']}, batch {b}", mode, seconds, b, train_flops, memory))
    seconds, memory = measure(device, lambda: ema.update_parameters(model), args.repeats, 2)
    rows.append(Row("EMA update", mode, seconds, 0, None, memory))
    del opt, ema

    labels = torch.arange(shape.sample_batch, device=device) % shape.num_classes
    for order in shape.sample_orders if args.sampling else ():
        config = {**shape.model, "order": {**shape.model["order"], "name": order}}
        torch.manual_seed(0)
        sampler = ContinuousAR(from_dict(ModelConfig, config)).to(device).eval()
        if compiled:  # a KV cache changes length every step: the causal loop's backbone stays eager
            compile_model(sampler, args.compile_mode, backbone=order != "causal")

        def sample() -> None:
            with autocast:
                sampler.generate(labels, generator=torch.Generator(device).manual_seed(0), return_tokens=True, **shape.sample)

        seconds, memory = measure(device, sample, max(2, args.repeats // 3), 2 if compiled else 1)
        flops = flops_of(sample) if args.count_sampling_flops else None
        steps = shape.sample["num_steps"] if order != "causal" else n
        cfg = shape.sample.get("cfg", 1.0)
        rows.append(Row(f"sample, {order}, batch {shape.sample_batch}, {steps} steps, CFG {cfg:g}", mode, seconds,
                        shape.sample_batch, flops, memory))
    return rows


def interleaved(shape: Shape, args, device) -> None:
    """Train-step time of several ``mode:dtype`` variants, timed in alternating rounds in one
    process, so that a machine whose load drifts (other jobs on the same cores) slows every
    variant alike; prints each variant's median step time and its ratio to the first one."""
    steps = {}
    for variant in args.variants.split(","):
        mode, dtype = variant.split(":")
        torch.manual_seed(0)
        model = ContinuousAR(from_dict(ModelConfig, shape.model)).to(device)
        if mode == "compiled":
            compile_model(model, args.compile_mode)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), **optimizer_options(device))
        n, d = model.tokenizer.num_tokens, model.tokenizer.token_dim
        b = shape.train_batch
        batch = {"tokens": torch.randn(b, n, d, device=device), "condition": torch.randint(0, shape.num_classes, (b,), device=device)}
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")

        def train_step(model=model, opt=opt, batch=batch, autocast=autocast) -> None:
            with autocast:
                loss = model(batch)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        start = time.perf_counter()
        for _ in range(5 if mode == "compiled" else 2):
            train_step()
        sync(device)
        print(f"{variant}: first steps (compilation) {time.perf_counter() - start:.1f} s", flush=True)
        steps[variant] = train_step
    times: dict[str, list[float]] = {v: [] for v in steps}
    for _ in range(args.repeats):
        for variant, step in steps.items():
            times[variant] += timed(step, device, repeats=3, warmup=0)
    first = statistics.median(next(iter(times.values())))
    print(f"| train step, batch {shape.train_batch} ({torch.get_num_threads()} threads) | median | relative to the first |")
    print("|---|---|---|")
    for variant, values in times.items():
        median = statistics.median(values)
        print(f"| {variant} | {median * 1e3:,.1f} ms | {median / first:.2f} ({first / median:.2f}x speed) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", default="small", choices=sorted(SHAPES))
    parser.add_argument("--recipe", default=None, help="a recipe's model instead of --shape")
    parser.add_argument("--set", nargs="*", default=[], help="with --recipe: dotted overrides")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--dtype", default=None, choices=["fp32", "bf16"], help="default: bf16 on CUDA, fp32 elsewhere")
    parser.add_argument("--modes", default=None, help="eager, compiled or both (eager,compiled; the default on CUDA)")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode: default, reduce-overhead, max-autotune")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak for MFU (default: measured)")
    parser.add_argument("--no-sampling", dest="sampling", action="store_false", help="time training only")
    parser.add_argument("--variants", default=None,
                        help="mode:dtype list (eager:fp32,compiled:fp32,eager:bf16): train steps timed in alternating "
                             "rounds, robust to a machine whose load drifts; replaces the table")
    parser.add_argument("--no-sampling-flops", dest="count_sampling_flops", action="store_false",
                        help="skip counting sampling FLOPs (one extra eager generation per row)")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype_name = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
    modes = (args.modes or ("eager,compiled" if device.type == "cuda" else "eager")).split(",")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype_name == "bf16")
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = recipe_shape(args.recipe, args.set) if args.recipe else SHAPES[args.shape]
    if args.variants:
        print(f"shape {args.recipe + ' ' + ' '.join(args.set) if args.recipe else args.shape}, device {device}, "
              f"torch {torch.__version__}, matmul {matmul_peak(device, torch.float32) / 1e9:.0f} GFLOP/s (fp32)")
        interleaved(shape, args, device)
        return

    rows = [row for mode in modes for row in bench_mode(shape, mode.strip(), args, device, autocast)]
    peak = args.peak_tflops * 1e12 if args.peak_tflops else matmul_peak(device, dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"shape {args.recipe + ' ' + ' '.join(args.set) if args.recipe else args.shape}, device {device} ({name}), dtype {dtype_name}, torch {torch.__version__}")
    print(f"peak for MFU ({dtype_name}): {peak / 1e12:.3g} TFLOP/s ({'given' if args.peak_tflops else 'measured matmul'})")
    print("| what | mode | median time | per image | samples/s | GFLOP | TFLOP/s | MFU | peak memory |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        per_image = f"{r.seconds / r.items * 1e3:.2f} ms" if r.items else ""
        rate = f"{r.items / r.seconds:,.0f}" if r.items else ""
        flops = f"{r.flops / 1e9:.1f} | {r.flops / r.seconds / 1e12:.3g} | {r.flops / r.seconds / peak:.1%}" if r.flops else " | | "
        memory = f"{r.memory / 2**30:.2f} GiB" if r.memory is not None else ""
        print(f"| {r.what} | {r.mode} | {r.seconds * 1e3:,.1f} ms | {per_image} | {rate} | {flops} | {memory} |")
    for line in compiled_ratios(rows):
        print(line)
    if device.type != "cuda":
        print(f"process peak resident memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


def compiled_ratios(rows: list[Row]) -> list[str]:
    """``compiled / eager`` time of each row measured both ways (below 1: compiling pays)."""
    eager = {r.what: r.seconds for r in rows if r.mode == "eager"}
    return [f"{r.what}: compiled / eager time {r.seconds / eager[r.what]:.2f} ({eager[r.what] / r.seconds:.2f}x speed)"
            for r in rows if r.mode == "compiled" and r.what in eager]


if __name__ == "__main__":
    main()
