"""Training step of the ShapeWorld MM-DiT: float32 vs bfloat16 autocast vs bfloat16 + torch.compile.

    python benchmarks/bench_train_step.py [--steps 10] [--repeats 3] [--batch-size 32] [--device cpu]

Each variant trains its own copy of the shipped architecture (random init, seed 0) on the same pre-rendered
batches, with train-backbone's loss, AdamW and gradient clipping; one timed run is ``--steps`` steps.
Speed-up = float32 median / variant median. torch.compile's first call (the compilation) is timed apart and
is not in the medians. Rendering one batch of ShapeWorld images, which train-backbone does in the same
process unless given ``--workers``, is timed too, as a share of the float32 step. On CPU the parts of one
bfloat16 step (text, transformer, clipping and AdamW, EMA) are also timed at batch 1, 4 and 32: what does not
shrink with the batch is the step's fixed cost. The image cache's build is timed in this process and in
``--cache-workers`` processes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, write_result  # noqa: E402

from probekit.datasets.shapeworld import ShapeWorld  # noqa: E402
from probekit.backbone.model import build_models  # noqa: E402
from probekit.models.text_conditioning import TextConditioner  # noqa: E402
from probekit.backbone.cache import Rendered  # noqa: E402
from probekit.backbone.train import _batch, flow_loss  # noqa: E402
from probekit.models.noise import static_shift  # noqa: E402


def make_variant(batches, device: str, bf16: bool, compiled: bool):
    dataset = ShapeWorld("pretrain")
    transformer, text_encoder, tokenizer = build_models(dataset.manifest, seed=0)
    transformer, text_encoder = transformer.to(device), text_encoder.to(device)
    conditioner = TextConditioner(tokenizer, text_encoder)
    params = list(transformer.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.99))
    model = torch.compile(transformer) if compiled else transformer
    dev = torch.device(device)

    def run_steps():
        for x0, prompts, u, eps in batches:
            x0, u, eps = x0.to(dev), u.to(dev), eps.to(dev)
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=bf16):
                loss = flow_loss(model, conditioner, x0, prompts, static_shift(u, 3.0), eps).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    return run_steps


def step_parts(dataset, batch_sizes=(1, 4, 32), steps: int = 6) -> dict:
    """Milliseconds per part of a bfloat16 step (eager) at several batch sizes: what does not shrink with the
    batch is the step's fixed cost, the part a GPU cannot speed up (a small model's step is bound by it)."""
    transformer, text_encoder, tokenizer = build_models(dataset.manifest, seed=0)
    conditioner = TextConditioner(tokenizer, text_encoder)
    params = list(transformer.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.99))
    ema = [p.detach().clone() for p in params]
    out = {}
    for bs in batch_sizes:
        batches = [_batch(Rendered(dataset), dataset.image_size, s, bs, 0.1, 0) for s in range(steps + 2)]
        parts = {"text": [], "transformer_forward_backward": [], "clip_and_adamw": [], "ema": []}
        for i, (x0, prompts, u, eps) in enumerate(batches):
            t0 = time.perf_counter()
            with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
                cond = conditioner(prompts)
                t1 = time.perf_counter()
                sigma = static_shift(u, 3.0)
                s = sigma.view(-1, 1, 1, 1)
                pred = transformer(hidden_states=(1 - s) * x0 + s * eps, timestep=sigma * 1000.0,
                                   return_dict=False, **cond)[0].float()
                loss = ((pred - (eps - x0)) ** 2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            t2 = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            t3 = time.perf_counter()
            torch._foreach_lerp_(ema, [p.detach() for p in params], 0.001)
            t4 = time.perf_counter()
            if i >= 2:  # the first two steps warm up
                for key, seconds in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                    parts[key].append(1000 * seconds)
        out[bs] = {key: round(sorted(v)[len(v) // 2], 2) for key, v in parts.items()}
        print(f"batch {bs}: " + ", ".join(f"{k} {v} ms" for k, v in out[bs].items()), flush=True)
    return out


def data_path(dataset, args) -> dict:
    """Images per second of the training batches (noise and captions included), rendered on demand against read
    from the image cache, in this process; and the cache's build rate."""
    import tempfile

    from probekit.backbone.cache import ImageCache

    n_batches = 40
    with tempfile.TemporaryDirectory() as root:
        cache = ImageCache(dataset, root=root)
        start = time.perf_counter()
        cache.build(rows=n_batches * args.batch_size, progress=False)
        build_s = time.perf_counter() - start
        sources = {"rendered": Rendered(dataset), "cached": cache}
        timing = interleaved({name: (lambda src=src: [_batch(src, dataset.image_size, step, args.batch_size, 0.1, 0)
                                                      for step in range(n_batches)])
                              for name, src in sources.items()}, repeats=args.repeats)
    images = n_batches * args.batch_size
    out = {name: round(images / t["median_s"], 1) for name, t in timing.items()}
    out.update({"speedup": round(timing["rendered"]["median_s"] / timing["cached"]["median_s"], 2),
                "build_images_s": round(images / build_s, 1), "timing": timing})
    print(f"training batches: rendered {out['rendered']} img/s, cached {out['cached']} img/s "
          f"({out['speedup']}x); the cache builds at {out['build_images_s']} img/s")
    # Building the cache in worker processes (`train-backbone --cache --workers N`): the same rows, N at a time.
    rows, build = 4096, {}
    for workers in (0, args.cache_workers):
        with tempfile.TemporaryDirectory() as root:
            start = time.perf_counter()
            ImageCache(dataset, root=root).build(rows=rows, progress=False, workers=workers)
            build[workers] = rows / (time.perf_counter() - start)
    out["build_rows"], out["build_workers"] = rows, args.cache_workers
    out["build_images_s_serial"] = round(build[0], 1)
    out["build_images_s_workers"] = round(build[args.cache_workers], 1)
    out["build_speedup"] = round(build[args.cache_workers] / build[0], 2)
    print(f"building {rows} rows of the cache: {out['build_images_s_serial']} img/s in this process, "
          f"{out['build_images_s_workers']} img/s in {args.cache_workers} workers ({out['build_speedup']}x)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile variant")
    parser.add_argument("--cache-workers", type=int, default=os.cpu_count() or 1,
                        help="worker processes of the parallel cache build (default: every core)")
    args = parser.parse_args()

    dataset = ShapeWorld("pretrain")
    data = data_path(dataset, args)
    start = time.perf_counter()
    batches = [_batch(Rendered(dataset), dataset.image_size, step, args.batch_size, 0.1, 0) for step in range(args.steps)]
    render_s = (time.perf_counter() - start) / args.steps
    variants = {"fp32": make_variant(batches, args.device, bf16=False, compiled=False),
                "bf16": make_variant(batches, args.device, bf16=True, compiled=False)}
    compile_s = None
    if not args.no_compile:
        variants["bf16+compile"] = make_variant(batches, args.device, bf16=True, compiled=True)
        start = time.perf_counter()
        variants["bf16+compile"]()  # compiles (and warms up) outside the timed runs
        compile_s = time.perf_counter() - start
    timings = interleaved(variants, repeats=args.repeats)
    base = timings["fp32"]["median_s"]
    for name, t in timings.items():
        t["s_per_step"] = t["median_s"] / args.steps
        t["speedup_vs_fp32"] = base / t["median_s"]
        print(f"{name:>13}: {t['s_per_step']:.3f} s/step, x{t['speedup_vs_fp32']:.2f} vs fp32")
    print(f"rendering one batch: {render_s:.3f} s ({render_s / (base / args.steps):.0%} of a float32 step)")
    parts = step_parts(dataset) if args.device == "cpu" else None
    write_result(f"train_step_{args.device.split(':')[0]}", {
        "settings": vars(args), "timings": timings, "render_batch_s": render_s, "compile_first_call_s": compile_s,
        "data_path": data, "step_parts_ms": parts})


if __name__ == "__main__":
    main()
