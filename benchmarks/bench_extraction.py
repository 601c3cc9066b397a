"""Extraction throughput, three cases (each a ratio against a baseline measured in the same run):

    python benchmarks/bench_extraction.py toy [--n 128] [--batch-size 16] [--repeats 3]
    python benchmarks/bench_extraction.py real-width --device cuda [--n 96] [--batch-size 8] \
        [--models flux,sd3,flux2,qwenimage]
    python benchmarks/bench_extraction.py storage [--n 64] [--maps 3] [--repeats 3]

``toy``: `probekit extract` of the shipped ShapeWorld MM-DiT (64 px) against a bare forward loop over the
same batches, last block and every block stored; and all timesteps in one forward against one per timestep.

``real-width``: a FLUX-width transformer (1.31 B parameters: 2 double + 4 single blocks of
width 3,072) and an SD3-medium-width one (width 1,536), random weights in bf16 with 16-channel VAEs, built on
the fly into a temporary folder (no download), on ShapeWorld val brought to 512 px, timesteps 250/500/750,
one block stored. Against the bare forward (the extractor's own ``model_inputs`` and family forward, stopped
after the same block), `extract_dataset` with plain float16 maps, with ``--pool 8`` and with a 256-channel
random projection; and the disk's own write bandwidth (64 MiB writes, then fsync) measured in the same run
and folder. Targets: extract/bare >= 0.9 when the disk can take the bytes, otherwise achieved MB/s >= 0.8 of
the disk's. ``--tiny`` shrinks both models (to try the script on a CPU).

``storage`` (CPU): the storage path alone. A stand-in extractor returns FLUX-sized maps ((3072, 32, 32)
float16, 6.3 MB each) instantly, so `extract_dataset` is bounded by reducing, copying, checking and writing
them; its achieved MB/s against the disk's write bandwidth (same bytes, same folder, fsync) in the same run.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MemoryDataset, interleaved, write_result  # noqa: E402

from probekit.api import build_extractor  # noqa: E402
from probekit.datasets import load_dataset  # noqa: E402
from probekit.extractors.base import Extractor  # noqa: E402
from probekit.models.hooks import capture_sites  # noqa: E402
from probekit.extractors.runner import _to_tensor, extract_dataset  # noqa: E402
from probekit.extractors.storage import StorageOptions  # noqa: E402

TIMESTEPS = [50, 250, 500, 750]


def batches(ds: MemoryDataset, batch_size: int):
    for start in range(0, len(ds), batch_size):
        samples = ds.samples[start:start + batch_size]
        yield _to_tensor([s.image for s in samples]), [s.caption for s in samples], [s.index for s in samples]


def bare_loop(ex, ds: MemoryDataset, batch_size: int, sync: bool = False) -> None:
    """The extractor's own inputs and forward, stopped after its deepest block, outputs thrown away."""
    requests = [(layer, site) for layer in ex.layers for site in ex.sites]
    with torch.inference_mode():
        for images, captions, indices in batches(ds, batch_size):
            inputs = ex.model_inputs(images, captions, indices)
            capture_sites(ex.family, requests, lambda: ex.run_forward(inputs))
    if sync and torch.cuda.is_available():
        torch.cuda.synchronize()


def disk_write_mb_s(folder: Path, total_mb: int, block_mb: int = 64) -> float:
    """The disk's own write bandwidth: ``total_mb`` in ``block_mb`` writes, then fsync (as a shard commit)."""
    block = os.urandom(block_mb << 20)
    path = folder / "disk-probe.bin"
    start = time.perf_counter()
    with open(path, "wb") as fh:
        for _ in range(max(1, total_mb // block_mb)):
            fh.write(block)
        fh.flush()
        os.fsync(fh.fileno())
    wall = time.perf_counter() - start
    path.unlink()
    return max(1, total_mb // block_mb) * block_mb / wall


def _extract(ex, ds, out: Path, batch_size: int, storage: StorageOptions | None = None) -> float:
    """Wall seconds of one extract_dataset run (a fresh file each time); the file's bytes are left in place."""
    start = time.perf_counter()
    extract_dataset(ex, ds, out, batch_size=batch_size, overwrite=True, progress=False, storage=storage)
    return time.perf_counter() - start


def _bytes(out: Path) -> int:
    parts = Path(f"{out}.parts")
    return sum(p.stat().st_size for p in parts.glob("shard-*.h5")) + out.stat().st_size


# -- toy ------------------------------------------------------------------------------------------
def run_toy(args) -> None:
    ds = MemoryDataset(load_dataset("shapeworld", "val"), args.n)
    work = Path(tempfile.mkdtemp(prefix="probekit-bench-"))
    rows = []
    try:
        for label, layers in (("last block", [5]), ("every block", [0, 1, 2, 3, 4, 5])):
            ex = build_extractor("shapeworld-mmdit", timesteps=TIMESTEPS, layers=layers, device=args.device)
            timing = interleaved({
                "bare forward": lambda: bare_loop(ex, ds, args.batch_size),
                "probekit extract": lambda: _extract(ex, ds, work / "f.h5", args.batch_size),
            }, repeats=args.repeats)
            size_mb = _bytes(work / "f.h5") / 2**20
            ratio = timing["bare forward"]["median_s"] / timing["probekit extract"]["median_s"]
            rows.append({"layers": label, "timing": timing, "file_mb": round(size_mb, 1),
                         "throughput_ratio": round(ratio, 3)})
            print(f"{label}: extract/bare throughput ratio {ratio:.3f} ({size_mb:.0f} MB written)")
        batched = build_extractor("shapeworld-mmdit", timesteps=TIMESTEPS, layers=[2, 5], device=args.device)
        single = [build_extractor("shapeworld-mmdit", timesteps=[t], layers=[2, 5], device=args.device)
                  for t in TIMESTEPS]

        def run_batched():
            for images, captions, indices in batches(ds, args.batch_size):
                batched.extract(images, captions, indices)

        def run_single():
            for images, captions, indices in batches(ds, args.batch_size):
                for ex in single:
                    ex.extract(images, captions, indices)

        timing = interleaved({"one forward per timestep": run_single, "timesteps batched": run_batched},
                             repeats=args.repeats)
        speedup = timing["one forward per timestep"]["median_s"] / timing["timesteps batched"]["median_s"]
        print(f"batched timesteps: {speedup:.3f}x the throughput of one forward per timestep")
        write_result("extraction", {
            "settings": {"n": args.n, "batch_size": args.batch_size, "timesteps": TIMESTEPS, "repeats": args.repeats,
                         "device": args.device, "backbone": "shapeworld-mmdit", "image_size": 64},
            "overhead": rows,
            "batched_timesteps": {"timing": timing, "speedup": round(speedup, 3)},
        })
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- real width -------------------------------------------------------------------------------------
def _vae(tiny: bool):
    from diffusers import AutoencoderKL

    if tiny:
        return AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                             block_out_channels=(8, 8, 8, 8), layers_per_block=1, latent_channels=16,
                             norm_num_groups=4, scaling_factor=0.3611, shift_factor=0.1159)
    return AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=16,
                         scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False)


FLOW = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}
DYNAMIC = {**FLOW, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256,
           "max_image_seq_len": 4096}
#: the block each model's maps are stored from (a single-stream block where the model has them)
STORED_BLOCK = {"flux": 4, "sd3": 3, "flux2": 3, "qwenimage": 3}


def _transformer(kind: str, tiny: bool):
    """Real width, few blocks: FLUX.1 (1.31 B), SD3-medium, FLUX.2-dev (6144 wide, 15,360-wide text), Qwen-Image."""
    from diffusers import (Flux2Transformer2DModel, FluxTransformer2DModel, QwenImageTransformer2DModel,
                           SD3Transformer2DModel)

    heads = 2 if tiny else {"flux": 24, "sd3": 24, "flux2": 48, "qwenimage": 24}[kind]
    head_dim = 16 if tiny else {"flux": 128, "sd3": 64, "flux2": 128, "qwenimage": 128}[kind]
    text = 64 if tiny else {"flux": 4096, "sd3": 4096, "flux2": 15360, "qwenimage": 3584}[kind]
    if kind == "flux":
        return FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=2, num_single_layers=4,
                                      attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=text,
                                      pooled_projection_dim=32 if tiny else 768, guidance_embeds=True,
                                      axes_dims_rope=(4, 6, 6) if tiny else (16, 56, 56)), DYNAMIC
    if kind == "sd3":
        return SD3Transformer2DModel(sample_size=64, patch_size=2, in_channels=16, out_channels=16, num_layers=6,
                                     attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=text,
                                     caption_projection_dim=heads * head_dim, pooled_projection_dim=32 if tiny else 2048,
                                     pos_embed_max_size=96, qk_norm="rms_norm"), FLOW
    if kind == "flux2":
        return Flux2Transformer2DModel(in_channels=128, num_layers=2, num_single_layers=4, attention_head_dim=head_dim,
                                       num_attention_heads=heads, joint_attention_dim=text,
                                       axes_dims_rope=(4, 4, 4, 4) if tiny else (32, 32, 32, 32)), DYNAMIC
    return QwenImageTransformer2DModel(patch_size=2, in_channels=64, out_channels=16, num_layers=4,
                                       attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=text,
                                       axes_dims_rope=(4, 6, 6) if tiny else (16, 56, 56)), DYNAMIC


def _family_vae(kind: str, tiny: bool):
    from diffusers import AutoencoderKLFlux2, AutoencoderKLQwenImage

    if kind == "flux2":
        return AutoencoderKLFlux2(block_out_channels=(8, 8, 8, 8) if tiny else (128, 256, 512, 512),
                                  layers_per_block=1 if tiny else 2, norm_num_groups=4 if tiny else 32,
                                  use_quant_conv=False, use_post_quant_conv=False)
    if kind == "qwenimage":
        return AutoencoderKLQwenImage(base_dim=8 if tiny else 96, num_res_blocks=1 if tiny else 2)
    return _vae(tiny)


def build_folder(kind: str, folder: Path, device: str, tiny: bool) -> Path:
    """A random-weight model folder of a real model's width (transformer/, vae/, scheduler/)."""
    with torch.device(device):
        torch.manual_seed(0)
        model, scheduler = _transformer(kind, tiny)
        vae = _family_vae(kind, tiny)
    dtype = torch.float32 if tiny else torch.bfloat16
    model.to(dtype).save_pretrained(folder / "transformer")
    vae.to(dtype).save_pretrained(folder / "vae")
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    params = sum(p.numel() for p in model.parameters())
    del model, vae
    gc.collect()
    return folder, params


def run_real_width(args) -> None:
    from diffusers.utils import logging as dlog

    dlog.set_verbosity_error()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="probekit-bench-real-"))
    work.mkdir(parents=True, exist_ok=True)
    size = 64 if args.tiny else 512
    ds = MemoryDataset(load_dataset("shapeworld", "val", image_size=size), args.n)
    timesteps, results = [250, 500, 750], []
    try:
        for kind in args.models.split(","):
            folder, params = build_folder(kind, work / kind, args.device, args.tiny)
            layer = STORED_BLOCK[kind]
            ex = build_extractor("dit", weights=str(folder), timesteps=timesteps, layers=[layer], device=args.device)
            shapes = ex.feature_shapes((size, size))
            per_image_mb = sum(c * h * w * 2 for c, h, w in shapes.values()) / 2**20
            disk = disk_write_mb_s(work, int(min(2048, max(256, per_image_mb * args.n))))
            pool, channels = (2, 16) if args.tiny else (8, 256)
            names = ("extract float16", f"extract --pool {pool}", f"extract --channels {channels} (random)")
            variants = {
                "bare forward": lambda: bare_loop(ex, ds, args.batch_size, sync=True),
                names[0]: lambda: _extract(ex, ds, work / "a.h5", args.batch_size),
                names[1]: lambda: _extract(ex, ds, work / "b.h5", args.batch_size, StorageOptions(pool=pool)),
                names[2]: lambda: _extract(ex, ds, work / "c.h5", args.batch_size,
                                           StorageOptions(channels=channels, projection="random")),
            }
            timing = interleaved(variants, repeats=args.repeats)
            bare = timing["bare forward"]["median_s"]
            row = {"model": kind, "parameters": params, "feature_shape": list(next(iter(shapes.values()))),
                   "map_mb": round(per_image_mb / len(shapes), 2), "disk_write_mb_s": round(disk, 1),
                   "bare_img_s": round(args.n / bare, 2), "timing": timing, "variants": {}}
            for name, out in zip(names, ("a.h5", "b.h5", "c.h5")):
                wall = timing[name]["median_s"]
                written = _bytes(work / out) / 2**20
                row["variants"][name] = {"img_s": round(args.n / wall, 2), "written_mb": round(written, 1),
                                         "mb_s": round(written / wall, 1), "vs_bare": round(bare / wall, 3),
                                         "vs_disk": round(written / wall / disk, 3),
                                         "disk_bound": written / disk > 0.9 * bare}
            if kind == "flux":
                row["probe"] = probe_check(ex, work, size, args)
            results.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "timing"}, indent=1), flush=True)
            ex = None  # the model goes before the next one loads
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            shutil.rmtree(folder, ignore_errors=True)
        write_result("extraction_real_width" + ("_tiny" if args.tiny else ""), {
            "settings": {"n": args.n, "batch_size": args.batch_size, "timesteps": timesteps, "image_size": size,
                         "repeats": args.repeats, "device": args.device, "models": args.models, "tiny": args.tiny},
            "rows": results})
    finally:
        shutil.rmtree(work, ignore_errors=True)


def probe_check(ex, work: Path, size: int, args) -> dict:
    """Probing at this width: train and test files of FLUX-width maps, a linear probe with --device auto."""
    from probekit.probes.trainer import train_probe

    files = {}
    for split, n in (("train", args.n), ("test", args.n // 2)):
        files[split] = work / f"probe-{split}.h5"
        extract_dataset(ex, load_dataset("shapeworld", split, image_size=size), files[split], limit=n,
                        batch_size=args.batch_size, overwrite=True, progress=False)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    rec = train_probe(files["train"], files["test"], key=ex.feature_keys()[0], out=work / "probe-run",
                      overwrite="overwrite", progress=False, device="auto", epochs=10, lrs=[1e-3, 1e-2])
    wall = time.perf_counter() - start
    out = {"wall_s": round(wall, 2), "data": rec["config"]["data"], "mIoU": round(rec["main_score"], 4),
           "samples_per_s": round(rec["config"]["data"]["rows"]["train"] * 10 * 2 / wall, 1)}
    if torch.cuda.is_available():
        out["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


# -- storage path -----------------------------------------------------------------------------------
class FluxSizedMaps(Extractor):
    """Returns the same FLUX-sized random float16 maps for every batch, at once: only storage costs time."""

    name = "flux-sized-maps"

    def __init__(self, maps: int, shape=(3072, 32, 32)):
        g = torch.Generator().manual_seed(0)
        self.shape = shape
        self._maps = {f"t={t}/layer=4": torch.randn(64, *shape, generator=g).to(torch.float16)
                      for t in (250, 500, 750, 100, 900, 50)[:maps]}

    def feature_keys(self):
        return list(self._maps)

    def feature_shapes(self, image_size):
        return {k: self.shape for k in self._maps}

    def extract(self, images, captions, indices):
        return {k: v[: len(images)] for k, v in self._maps.items()}

    def config(self):
        return {"extractor": self.name, "shape": list(self.shape), "maps": len(self._maps)}


def run_storage(args) -> None:
    work = Path(args.workdir or tempfile.mkdtemp(prefix="probekit-bench-storage-"))
    work.mkdir(parents=True, exist_ok=True)
    ds = MemoryDataset(load_dataset("shapeworld", "val"), args.n)
    ex = FluxSizedMaps(args.maps)
    feature_mb = args.n * args.maps * 3072 * 32 * 32 * 2 / 2**20
    try:
        timing = interleaved({
            "disk write + fsync": lambda: disk_write_mb_s(work, int(feature_mb)),
            "extract_dataset": lambda: _extract(ex, ds, work / "f.h5", args.batch_size),
        }, repeats=args.repeats)
        disk_mb_s = int(feature_mb) // 64 * 64 / timing["disk write + fsync"]["median_s"]
        written = _bytes(work / "f.h5") / 2**20
        got = written / timing["extract_dataset"]["median_s"]
        print(f"storage path: {got:.0f} MB/s written, disk {disk_mb_s:.0f} MB/s: {got / disk_mb_s:.3f}x")
        write_result("extraction_storage", {
            "settings": {"n": args.n, "maps": args.maps, "map_shape": [3072, 32, 32], "batch_size": args.batch_size,
                         "repeats": args.repeats},
            "timing": timing, "written_mb": round(written, 1), "disk_mb_s": round(disk_mb_s, 1),
            "extract_mb_s": round(got, 1), "ratio": round(got / disk_mb_s, 3)})
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("case", nargs="?", default="toy", choices=["toy", "real-width", "storage"],
                    help="toy (default): the shipped backbone on CPU; storage: the write path at FLUX size; "
                         "real-width: FLUX.1, SD3-medium, FLUX.2 and Qwen-Image widths on a GPU")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", default="flux,sd3,flux2,qwenimage")
    ap.add_argument("--maps", type=int, default=3)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--workdir", default=None, help="Folder for the temporary files (default: a new temp folder).")
    args = ap.parse_args()
    defaults = {"toy": (128, 16), "real-width": (96, 8), "storage": (64, 8)}[args.case]
    args.n = args.n or defaults[0]
    args.batch_size = args.batch_size or defaults[1]
    {"toy": run_toy, "real-width": run_real_width, "storage": run_storage}[args.case](args)


if __name__ == "__main__":
    main()
