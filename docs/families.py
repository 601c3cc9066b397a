"""Regenerate docs/families.md: every DiT family probekit extracts, what it supports, and the check that proves it.

    python docs/families.py            # runs the pipeline checks (tests/test_family_*.py), then writes the page
    python docs/families.py --no-run   # rewrites the page from the last checks' log

Each family's check extracts a tiny random pipeline folder with probekit and compares every stored map with the
block outputs of the family's own diffusers pipeline at its first denoising step (tests/pipeline_check.py). The
numbers in the table are the largest relative differences those checks measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LOG = ROOT / "build" / "family-checks.jsonl"


def run_checks(log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    log.unlink(missing_ok=True)
    tests = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_family_*.py"))
    env = {**os.environ, "PROBEKIT_PIPELINE_CHECK_LOG": str(log)}
    subprocess.run([sys.executable, "-m", "pytest", "-q", *tests], cwd=ROOT, env=env, check=True)


def checks(log: Path) -> dict[str, dict[str, float]]:
    """transformer class -> pipeline class -> conditioning -> worst relative difference."""
    out: dict[str, dict] = {}
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        per = out.setdefault(rec["transformer_class"], {}).setdefault(rec["pipeline_class"], {})
        per[rec["conditioning"]] = max(per.get(rec["conditioning"], 0.0), rec["worst"])
    return out


def family_rows(measured: dict) -> list[str]:
    from probekit.registries import DIT_FAMILIES

    rows = ["| family | transformer class | pipeline check (worst relative difference: empty / caption) | captions "
            "| concept attention | sites | blocks |", "|---|---|---|---|---|---|---|"]
    for entry in DIT_FAMILIES.entries():
        cls = entry.load()
        caps = cls.capabilities()
        per = measured.get(entry.name, {})
        check = "; ".join(f"`{p}` {_fmt(c.get('empty'))} / {_fmt(c.get('caption'))}" for p, c in sorted(per.items()))
        if not check:
            check = "plain forward (tests/test_extractors_dit.py): its pipeline takes no `latents=`"
        concepts = ("yes" if caps["concept_attention"] else
                    "not yet (joint stream)" if caps["joint_stream"] else "no (cross-attention only)")
        rows.append(f"| {cls.name} | `{entry.name}` | {check} | {'yes' if caps['captions'] else 'no'} | {concepts} "
                    f"| {', '.join(caps['sites'])} | {' then '.join(caps['block_kinds'])} |")
    return rows


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1e}"


def site_notes() -> list[str]:
    """Where a family's site departs from the common meaning, and why a site is missing."""
    from probekit.extractors.dit_family import SITE_MEANINGS
    from probekit.registries import DIT_FAMILIES

    lines = ["## Capture sites", "", "Every family reads the same four sites where its blocks have them "
             "(`--sites output,norm1,attn,mlp`; `probekit probe --site` picks one, fused probes span them):", ""]
    lines += [f"- **{name}**: {meaning}" for name, meaning in SITE_MEANINGS.items()]
    lines += ["", "Per family, where a site differs from that meaning or is missing:", ""]
    for entry in DIT_FAMILIES.entries():
        cls = entry.load()
        kinds: dict[tuple[str, str], list[str]] = {}  # (site, note) -> the block kinds it holds for
        for kind, sites in cls.sites.items():
            for site, spec in sites.items():
                if spec.note:
                    kinds.setdefault((site, spec.note), []).append(kind)
        notes = [f"{site} ({', '.join(k)} blocks): {note}" for (site, note), k in kinds.items()]
        notes += [f"no {site}: {why}" for site, why in cls.missing_sites.items()]
        if notes:
            lines.append(f"- **{cls.name}**: " + "; ".join(dict.fromkeys(notes)) + ".")
    return lines + [""]


def concept_definitions() -> list[str]:
    from dataclasses import asdict

    from probekit.registries import DIT_FAMILIES

    lines = ["## Concept attention: the definition each family follows", "",
             "ConceptAttention's reference implementation (github helblazer811/ConceptAttention) computes its maps "
             "differently for each model; probekit follows, per family, the file named below, and records the "
             "definition in every concept feature file (`concept_definition`). Shared by all: the concept tokens "
             "go through the text stream's own weights in every joint block, attend to [concepts; image] only, "
             "and never change the image or text streams (tests check the features bit for bit); a concept of "
             "several sub-tokens is the mean of them (the references take one position; for one-token concepts "
             "the two agree), and the number of sub-tokens is recorded.", "",
             "| family | reference | tokens | modulation | vectors | image side | concepts L2-normalised | softmax "
             "| temperature | default blocks |", "|---|---|---|---|---|---|---|---|---|---|"]
    for entry in DIT_FAMILIES.entries():
        cls = entry.load()
        if not cls.concept_attention:
            continue
        d = asdict(cls.concept_definition)
        blocks = f"last {d['last_blocks']}" if d["last_blocks"] else "every joint block"
        lines.append(f"| {cls.name} | {d['reference']} | {d['tokens']} | {d['modulation']} | {d['vectors']} | "
                     f"{d['image_vectors']} | {'yes' if d['normalise_concepts'] else 'no'} | {d['softmax']} | "
                     f"{d['temperature']:g} | {blocks} |")
    return lines + [""]


def render(measured: dict) -> str:
    lines = [
        "# DiT families",
        "",
        f"Generated by `python docs/families.py` ({time.strftime('%Y-%m-%d')}). `probekit extract --extractor dit "
        "--weights FOLDER` reads any folder whose transformer class is below (`probekit ls families` lists the "
        "same). One module per family in `extractors/families/` owns what differs: latent encoding and "
        "normalisation, packing and position ids, the noise level of a timestep, the timestep input, text "
        "conditioning, the forward, and where image tokens sit in each block's outputs; it calls its diffusers "
        "pipeline's own helpers for them.",
        "",
        "**The proof of a family** (tests/test_family_*.py, in the default test run): a tiny random pipeline folder "
        "of the family's own pipeline class (real text encoder classes with tokenizers written in the test), "
        "saved and loaded back offline; probekit extracts two blocks (of different kinds where the model has "
        "several) at three timesteps into float16; the pipeline then runs its first denoising step from the same "
        "noised latent (`latents=`, a one-step scheduler at probekit's noise level, `output_type=\"latent\"`), "
        "encoding the prompt itself, empty or the sample's caption, and forward hooks on the same blocks give the "
        "reference. The table gives the largest relative difference seen (float16 storage rounds at about 5e-4; "
        "the tests fail above 1e-3). Every check was also shown to fail when the family is broken on purpose "
        "(the timestep input, the token layout, the conditioning).",
        "",
        *family_rows(measured),
        "",
        "Not covered yet (no module; a folder of these classes is refused with the list above): "
        "BriaTransformer2DModel, BriaFiboTransformer2DModel, BriaFibo2Transformer2DModel, "
        "CogView3PlusTransformer2DModel, DreamLiteTransformer2DModel, ErnieImageTransformer2DModel, "
        "GlmImageTransformer2DModel, LongCatImageTransformer2DModel, NucleusMoEImageTransformer2DModel, "
        "OmniGenTransformer2DModel, OvisImageTransformer2DModel, PRXTransformer2DModel and the generic "
        "Transformer2DModel. None was found impossible; they were not attempted in this version.",
        "",
        "## What each family's check does not cover",
        "",
        "- The noising itself (x_t = (1 - s) x0 + s eps with the family's noise level; DDPM's add_noise) is checked "
        "in tests/test_extractors_dit.py by re-deriving it; the noise level of a timestep against hand-computed "
        "values or the pipeline's own schedule in each family's test.",
        "- The VAE encoding is checked against the pipeline's own helper (where diffusers has one, e.g. "
        "`Flux2Pipeline._encode_vae_image`) or the pipeline's normalisation by hand, with non-trivial factors.",
        "- `shift_terminal` (Qwen-Image's scheduler) stretches an N-step sampling schedule so that its last step "
        "lands there; one timestep has no schedule to stretch: it is recorded and not applied.",
        "- FLUX.2's `mu` depends on the number of sampling steps: the pipeline's default (50) is used and recorded.",
        "",
        "## Memory at real size",
        "",
        "FLUX.2-dev's 32 B transformer and 24 B text encoder do not fit one 80 GB GPU together (bf16: ~64 + ~48 GB). "
        "Nothing but configs is read when an extractor is built; every distinct prompt (the empty prompt is one) is "
        "encoded once before the first forward, the embeddings are kept on the host, the text encoders are freed, "
        "and only then does the transformer load (tests/test_extractors_dit.py). `probekit extract --dry-run` prints "
        "the memory plan (weights per component in the compute dtype, from the safetensors headers, and what is "
        "resident when) beside the byte plan.",
        "",
        "## Real-width benchmarks",
        "",
        "docs/benchmarks.md holds the measured real-width rows (a FLUX.1-width and an SD3-medium-width transformer on "
        "one H200). FLUX.2 and Qwen-Image widths have not been measured: no GPU was available when these families "
        "were added; `benchmarks/bench_extraction.py real-width` is where their rows go.",
        "",
        *site_notes(),
        *concept_definitions(),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-run", action="store_true", help="Use the last checks' log instead of running them.")
    ap.add_argument("--log", type=Path, default=LOG)
    args = ap.parse_args()
    if not args.no_run:
        run_checks(args.log)
    (HERE / "families.md").write_text(render(checks(args.log)))
    print(f"wrote {HERE / 'families.md'}")


if __name__ == "__main__":
    main()
