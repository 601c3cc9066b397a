"""Render docs/benchmarks.md from benchmarks/results/*.json (run the benchmarks first).

    python benchmarks/report.py
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
DOC = HERE.parent / "docs" / "benchmarks.md"


def _load(name: str) -> dict | None:
    path = HERE / "results" / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _machine(result: dict) -> str:
    m = result["machine"]
    git = m.get("git") or {}
    return (f"{m['platform']}, {m['cpus']} CPUs, torch {m['packages'].get('torch')} ({m['torch_threads']} threads), "
            f"{'GPU ' + m['cuda'] if m.get('cuda') else 'no GPU'}; probekit {m['probekit_version']} at "
            f"{str(git.get('commit'))[:10]}{' (dirty)' if git.get('dirty') else ''}")


def _timing(timing: dict) -> str:
    rows = ["| variant | median wall (s) | runs (s) |", "|---|---|---|"]
    rows += [f"| {name} | {t['median_s']:.2f} | {', '.join(f'{x:.2f}' for x in t['runs_s'])} |"
             for name, t in timing.items()]
    return "\n".join(rows)


def _real_width_table(result: dict) -> list[str]:
    rows = ["| model | map | bare forward | variant | written | img/s | vs bare | MB/s | vs disk |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        for name, v in r["variants"].items():
            rows.append(f"| {r['model']} ({r['parameters'] / 1e9:.2f} B) | {tuple(r['feature_shape'])}, "
                        f"{r['map_mb']} MB | {r['bare_img_s']} img/s | {name} | {v['written_mb']} MB | "
                        f"{v['img_s']} | {v['vs_bare']:.3f} | {v['mb_s']} | {v['vs_disk']:.3f} "
                        f"(disk {r['disk_write_mb_s']} MB/s) |")
    return rows


def target(value: float, goal: float) -> str:
    return f"**{value:.3f}** (target >= {goal}: {'met' if value >= goal else 'not met'})"


def render() -> str:
    out = ["# Benchmarks", "",
           "Every number is a ratio between two variants timed in the same run, on the same machine, round-robin "
           "(`benchmarks/common.py: interleaved`), so that load drifting during the run hits both alike. Scripts "
           "and method: [`benchmarks/`](../benchmarks/README.md). Regenerate this page with "
           "`python benchmarks/report.py` after running the benchmarks.", ""]
    ext = _load("extraction")
    if ext:
        s = ext["settings"]
        out += ["## Extraction overhead and batched timesteps", "",
                f"`python benchmarks/bench_extraction.py --n {s['n']} --batch-size {s['batch_size']} --repeats "
                f"{s['repeats']}`: {s['backbone']} at {s['image_size']} px, timesteps {s['timesteps']}, "
                f"{s['n']} ShapeWorld images held in RAM. Machine: {_machine(ext)}.", "",
                "Throughput of `probekit extract` (hooks, float16 copies, sharded HDF5 writes with fsync, merge) "
                "relative to a bare forward loop over the same batches:", "",
                "| layers stored | file | extract / bare throughput |", "|---|---|---|"]
        out += [f"| {r['layers']} | {r['file_mb']} MB | {target(r['throughput_ratio'], 0.97)} |" for r in ext["overhead"]]
        for r in ext["overhead"]:
            out += ["", f"Timing, {r['layers']}:", "", _timing(r["timing"])]
        b = ext["batched_timesteps"]
        out += ["", f"All {len(s['timesteps'])} timesteps of a batch in one forward (B x T rows) against one "
                f"forward per timestep (layers 2 and 5, no storage): **{b['speedup']:.3f}x** the throughput.", "",
                _timing(b["timing"]), ""]
    real = _load("extraction_real_width")
    if real:
        s = real["settings"]
        out += ["## Extraction at real width (GPU)", "",
                f"`python benchmarks/bench_extraction.py real-width --device cuda --n {s['n']} --batch-size "
                f"{s['batch_size']} --repeats {s['repeats']}` (the whole call: `benchmarks/gpu_real_width.sh`): "
                f"random-weight transformers of FLUX and SD3-medium width in bf16 with 16-channel VAEs, built on "
                f"the fly; {s['n']} ShapeWorld val images at {s['image_size']} px in RAM; timesteps "
                f"{s['timesteps']}, one block stored. Against the bare forward (the extractor's own inputs and "
                "forward, stopped after the same block) and the disk's own write bandwidth (64 MiB writes, then "
                f"fsync), both measured in the same run. Machine: {_machine(real)}.", ""]
        out += _real_width_table(real)
        after = _load("extraction_real_width_sd3_loader_thread")
        if after:
            out += ["", f"SD3-medium width again after moving image and label stacking to the loader thread "
                    f"(probekit at {str(after['machine']['git'].get('commit'))[:7]}, same kind of machine, a "
                    "fresh one):", ""] + _real_width_table(after)
        flux = next((r for r in real["rows"] if r.get("probe")), None)
        if flux:
            p = flux["probe"]
            out += ["", f"Probing at FLUX width (`probe --device auto`, {p['data']['rows']['train']} training maps "
                    f"of {tuple(flux['feature_shape'])}): {p['data']['mode']} on {p['data']['device']}, "
                    f"{p['samples_per_s']} samples/s, peak GPU memory {p.get('peak_gpu_gb')} GB.", ""]
    store = _load("extraction_storage")
    if store:
        s = store["settings"]
        out += ["## Storage path (CPU)", "",
                f"`python benchmarks/bench_extraction.py storage --n {s['n']} --repeats {s['repeats']}`: a stand-in "
                f"extractor returns {s['maps']} FLUX-sized maps ({tuple(s['map_shape'])}, float16) per image at "
                f"once, so `extract_dataset` is bounded by reducing, checking, copying and writing them "
                f"({store['written_mb']} MB). Machine: {_machine(store)}.", "",
                f"Achieved {store['extract_mb_s']} MB/s against the disk's {store['disk_mb_s']} MB/s measured in "
                f"the same run: {target(store['ratio'], 0.8)}.", "", _timing(store["timing"]), ""]
    probe = _load("probe")
    if probe:
        s, t = probe["settings"], probe["throughput"]
        out += ["## Probe training throughput", "",
                f"`python benchmarks/bench_probe.py --n {s['n_train']} --epochs {s['epochs']} --repeats "
                f"{s['repeats']}`: {s['probe']}, on the demo's features of the shipped backbone ({t['training_rows']} "
                f"training rows of (128, 16, 16) after the validation slice). Machine: {_machine(probe)}.", "",
                "| | samples/s |", "|---|---|",
                f"| `train_probe`, training | {t['probekit_training_samples_s']} |",
                f"| bare loop, same head, tensors in RAM | {t['bare_loop_samples_s']} |",
                f"| `train_probe`, whole call (reading, validation, test scoring, writing the run) | "
                f"{t['probekit_whole_run_samples_s']} ({t['whole_run_s']} s) |", "",
                f"probekit / bare loop: {target(t['ratio'], 0.8)}; training at "
                f"{t['probekit_training_samples_s']} samples/s (target >= 2,000).", "",
                _timing(probe["timing"]), "",
                "## Peak memory against feature-file size", "",
                f"Synthetic files, probed in a fresh process each ({s['memory_probe']}). *Added* is the peak "
                "resident set size during probing minus the process's size after its imports. *Resident*: the "
                "features held in memory (what a file that fits gets); *streamed*: read batch by batch "
                "(`resident_bytes=0`, what a file larger than memory gets).", "",
                "| file | samples | size | added, resident | ratio to 1x | added, streamed | ratio to 1x |",
                "|---|---|---|---|---|---|---|"]
        out += [f"| {r['factor']}x | {r['samples']} | {r['file_mb']} MB | {r['added_mb_resident']} MB | "
                f"{r['added_ratio_resident']:.2f} | {r['added_mb_streamed']} MB | {r['added_ratio_streamed']:.2f} |"
                for r in probe["peak_memory"]]
        out += [""]
    load = _load("load")
    if load:
        s = load["settings"]
        out += ["## Two processes at once on a small machine", "",
                f"`python benchmarks/bench_load.py`: A = `{s['commands']['A demo']}`, B = `"
                f"{s['commands']['B probe']}`, each alone, then both started together, on {s['cores']} cores. "
                f"Slowdown = wall time together / alone (target <= 2.5). Machine: {_machine(load)}.", "",
                "| setting | A alone | B alone | A together | B together | A slowdown | B slowdown |",
                "|---|---|---|---|---|---|---|"]
        out += [f"| {r['setting']} | {r['alone_s']['A demo']} s | {r['alone_s']['B probe']} s | "
                f"{r['together_s']['A demo']} s | {r['together_s']['B probe']} s | {r['slowdown']['A demo']:.2f} | "
                f"{r['slowdown']['B probe']:.2f} |" for r in load["rows"]]
        out += [""]
    ranks = _load("ranks")
    if ranks:
        s = ranks["settings"]
        out += ["## 2 ranks against 1 process", "",
                f"`python benchmarks/bench_ranks.py --n {s['n']} --repeats {s['repeats']}`: `probekit extract "
                f"{' '.join(s['args'])} --limit {s['n']}` as one process and under `torchrun --nproc-per-node 2` "
                f"(gloo), the {s['cores']} cores split between the ranks. Wall time of the whole command (start-up, "
                f"model loading, shards, merge). Machine: {_machine(ranks)}.", "",
                f"2-rank / 1-process throughput: **{ranks['speedup']:.3f}x**; features identical: "
                f"{ranks['identical_features']}.", "", _timing(ranks["timing"]), ""]
    train = _load("train_step_cpu")
    if train:
        s = train["settings"]
        out += ["## Training step of the ShapeWorld MM-DiT", "",
                f"`python benchmarks/bench_train_step.py --steps {s['steps']} --repeats {s['repeats']} --batch-size "
                f"{s['batch_size']}`: forward, backward and AdamW update of the shipped architecture, the same "
                f"pre-rendered batches for every variant. Machine: {_machine(train)}.", "",
                "| variant | s per step | speed-up vs float32 |", "|---|---|---|"]
        out += [f"| {name} | {t['s_per_step']:.3f} | {t['speedup_vs_fp32']:.2f}x |" for name, t in train["timings"].items()]
        data = train.get("data_path")
        if data:
            out += ["", f"Training batches (images, captions, noise) produced in the training process: rendered on "
                    f"demand {data['rendered']} images/s, read from the image cache (`train-backbone --cache`) "
                    f"{data['cached']} images/s (**{data['speedup']}x**); building the cache renders "
                    f"{data['build_images_s']} images/s, once."]
            if "build_speedup" in data:
                out[-1] += (f" Building {data['build_rows']} rows in this process: {data['build_images_s_serial']} "
                            f"images/s; in {data['build_workers']} worker processes (`train-backbone --cache "
                            f"--workers {data['build_workers']}`): {data['build_images_s_workers']} images/s "
                            f"(**{data['build_speedup']}x**).")
        parts = train.get("step_parts_ms")
        if parts:
            names = list(next(iter(parts.values())))
            out += ["", "Median milliseconds per part of a bfloat16 step (eager), by batch size: what does not shrink "
                    "with the batch is the fixed cost a GPU cannot take over.", "",
                    "| batch | " + " | ".join(n.replace("_", " ") for n in names) + " |", "|---" * (len(names) + 1) + "|"]
            out += [f"| {bs} | " + " | ".join(f"{v[n]:.1f}" for n in names) + " |" for bs, v in parts.items()]
        out += ["", f"Rendering one batch of ShapeWorld images: {train['render_batch_s']:.3f} s."
                + (f" torch.compile's first call (compilation): {train['compile_first_call_s']:.0f} s."
                   if train.get("compile_first_call_s") else ""), "", _timing(train["timings"]), ""]
    findings = HERE / "findings.md"  # the written reading of the numbers, kept beside the scripts
    if findings.is_file():
        out += [findings.read_text().strip(), ""]
    return "\n".join(out).rstrip() + "\n"


def main() -> None:
    DOC.write_text(render())
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
