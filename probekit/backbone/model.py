"""The ShapeWorld MM-DiT: a small SD3-architecture denoiser probekit trains on ShapeWorld and ships.

Its model side: configurations, the caption tokenizer, building, saving and loading the folder, the shipped
weights and the random-init control's folder. The extractors that read it are in
``probekit.extractors.shapeworld``.

Folder layout (loaded with ``from_pretrained`` like any hub model)::

    transformer/   diffusers SD3Transformer2DModel, pixel space (3 channels, 64x64, patch 4 -> 16x16 tokens)
    text_encoder/  transformers CLIPTextModel over the ShapeWorld caption vocabulary
    tokenizer/     word-level tokenizer (tokenizer.json), local files
    scheduler/     FlowMatchEulerDiscreteScheduler config (the shift the model was trained with)
    prediction.json  present when the transformer predicts the clean image rather than the velocity

Pixel space, not a VAE: ShapeWorld images are 64x64 flat-shaded scenes, so a 4x4 patch embedding already
gives a 256-token sequence that trains at ~25 img/s on 2 CPU cores, and no autoencoder has to be trained,
shipped or trusted.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

GLUE_WORDS = ["a", "an", "in", "front", "of", "and", "empty", "field", "solid"]
# EOS must not get id 2: CLIPTextModel treats eos_token_id == 2 as a legacy config and pools at argmax(ids).
SPECIAL = {"pad": "[PAD]", "bos": "[BOS]", "unk": "[UNK]", "eos": "[EOS]"}
MAX_TOKENS = 32

TRANSFORMER_CONFIG: dict[str, Any] = {
    "sample_size": 64, "patch_size": 4, "in_channels": 3, "out_channels": 3, "num_layers": 6,
    "attention_head_dim": 32, "num_attention_heads": 4, "joint_attention_dim": 64,
    "caption_projection_dim": 128, "pooled_projection_dim": 64, "pos_embed_max_size": 16,
    "qk_norm": "rms_norm",
}
TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
    "max_position_embeddings": MAX_TOKENS, "projection_dim": 64,
}
# What the transformer outputs: SD3's velocity eps - x0, or the clean image ("sample"); recorded in the
# folder's prediction.json (absent means velocity, the convention of every diffusers flow-matching model).
VELOCITY, SAMPLE = "velocity", "sample"
PREDICTIONS = (VELOCITY, SAMPLE)
PREDICTION_FILE = "prediction.json"
SCHEDULER_CONFIG = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 1.0}


HEAD_DIM = TRANSFORMER_CONFIG["attention_head_dim"]


def architecture(width: int | None = None, depth: int | None = None, patch_size: int | None = None,
                 image_size: int = 64) -> dict[str, Any]:
    """Transformer config overrides for another width (a multiple of the 32-wide heads), depth (joint blocks)
    or patch size (a divisor of the image size; the positional table covers the token grid); ``{}`` when all
    are the shipped ones' defaults (None)."""
    overrides: dict[str, Any] = {}
    if width is not None:
        if width < HEAD_DIM or width % HEAD_DIM:
            raise ValueError(f"width must be a positive multiple of the head size {HEAD_DIM}, not {width}")
        overrides.update(num_attention_heads=width // HEAD_DIM, caption_projection_dim=width)
    if depth is not None:
        if depth < 1:
            raise ValueError(f"depth must be at least 1, not {depth}")
        overrides["num_layers"] = depth
    if patch_size is not None:
        if patch_size < 1 or image_size % patch_size:
            raise ValueError(f"patch size must divide the image size {image_size}, not {patch_size}")
        overrides.update(patch_size=patch_size, pos_embed_max_size=image_size // patch_size)
    return overrides


def config_overrides(transformer_config: dict[str, Any]) -> dict[str, Any]:
    """The entries of a saved transformer config that differ from the default architecture (so a control can be
    built with the architecture of whatever model is shipped)."""
    return {k: v for k, v in transformer_config.items() if k in TRANSFORMER_CONFIG and v != TRANSFORMER_CONFIG[k]}


def scheduler_config(shift: float) -> dict[str, Any]:
    """The scheduler must sample with the shift the model was trained with."""
    return {**SCHEDULER_CONFIG, "shift": float(shift)}


def prediction_type(folder: str | Path) -> str:
    path = Path(folder) / PREDICTION_FILE
    if not path.is_file():
        return VELOCITY
    value = json.loads(path.read_text()).get("prediction", VELOCITY)
    if value not in PREDICTIONS:
        raise ValueError(f"{path}: prediction must be one of {PREDICTIONS}, not {value!r}")
    return value


def load_denoiser(folder: str | Path):
    """(transformer, text conditioner, prediction type) of a model folder, for scoring denoising offline
    (safetensors only, eval mode, CPU)."""
    from diffusers import SD3Transformer2DModel

    from probekit.models.loading import load_pretrained
    from probekit.models.text_conditioning import TextConditioner

    folder = Path(folder)
    transformer = load_pretrained(SD3Transformer2DModel, folder / "transformer", "transformer").eval()
    return transformer, TextConditioner.from_folder(folder), prediction_type(folder)


def shipped_weights() -> Path:
    """The shipped folder, package data of ``probekit.backbone`` (found the same way in a checkout and a wheel)."""
    from importlib import resources

    return Path(str(resources.files("probekit.backbone").joinpath("weights", "shapeworld-mmdit")))


def vocabulary(manifest: dict[str, Any]) -> list[str]:
    words = list(SPECIAL.values()) + GLUE_WORDS + list(manifest["colours"]) + ["striped", "dotted"]
    words += [c for c in manifest["classes"] if c != "background"]
    return list(dict.fromkeys(words))


def build_tokenizer(manifest: dict[str, Any]):
    """A word-level tokenizer over the caption vocabulary: "[BOS] words [EOS]", padded with [PAD]."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary(manifest))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL["unk"]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SPECIAL['bos']} $A {SPECIAL['eos']}",
        special_tokens=[(SPECIAL["bos"], vocab[SPECIAL["bos"]]), (SPECIAL["eos"], vocab[SPECIAL["eos"]])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=MAX_TOKENS, pad_token=SPECIAL["pad"],
                                   bos_token=SPECIAL["bos"], eos_token=SPECIAL["eos"], unk_token=SPECIAL["unk"])


def build_models(manifest: dict[str, Any], seed: int = 0, overrides: dict[str, Any] | None = None):
    """(transformer, text_encoder, tokenizer), randomly initialised from ``seed``.

    ``overrides`` change the transformer config (tests use a tinier one); the shipped model uses none.
    """
    import torch
    from diffusers import SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_tokenizer(manifest)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(**{**TRANSFORMER_CONFIG, **(overrides or {})})
        text_config = CLIPTextConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                     bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                     **TEXT_CONFIG)
        text_encoder = CLIPTextModel(text_config)
    return transformer, text_encoder, tokenizer


def save_folder(folder: str | Path, transformer, text_encoder, tokenizer, extra: dict[str, Any] | None = None,
                shift: float = SCHEDULER_CONFIG["shift"], prediction: str = VELOCITY) -> Path:
    """Write the diffusers-style folder atomically (safetensors only)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".saving-"))
    try:
        transformer.save_pretrained(tmp / "transformer", safe_serialization=True)
        text_encoder.save_pretrained(tmp / "text_encoder", safe_serialization=True)
        tokenizer.save_pretrained(tmp / "tokenizer")
        (tmp / "scheduler").mkdir()
        (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler_config(shift), indent=2) + "\n")
        if prediction != VELOCITY:
            (tmp / PREDICTION_FILE).write_text(json.dumps({"prediction": prediction}) + "\n")
        if extra:
            (tmp / "training_info.json").write_text(json.dumps(extra, indent=2) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        tmp.chmod(0o755)  # mkdtemp makes it private
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def shipped_shift() -> float:
    """The noise-schedule shift the shipped model was trained with (its scheduler config)."""
    path = shipped_weights() / "scheduler" / "scheduler_config.json"
    return float(json.loads(path.read_text()).get("shift", 1.0)) if path.is_file() else SCHEDULER_CONFIG["shift"]


def random_folder(init_seed: int = 0) -> Path:
    """The random-init control: same architecture (read from the shipped config), vocabulary, noise schedule and
    output parameterisation as the shipped model, never trained (built once into the cache; shift, prediction and
    any architecture other than the default are in the name, so a retrained model never meets a stale one)."""
    from probekit.datasets import load_manifest
    from probekit.provenance import cache_dir

    shift, prediction = shipped_shift(), prediction_type(shipped_weights())
    overrides = config_overrides(json.loads((shipped_weights() / "transformer" / "config.json").read_text()))
    arch = "".join(f"-{k}{v}" for k, v in sorted(overrides.items()))  # the shipped architecture, if not the default
    folder = cache_dir() / f"shapeworld-mmdit-random-seed{init_seed}-shift{shift:g}-{prediction}{arch}"
    if not (folder / "transformer" / "config.json").is_file():
        manifest, _ = load_manifest("shapeworld")
        save_folder(folder, *build_models(manifest, seed=init_seed, overrides=overrides), shift=shift,
                    prediction=prediction,
                    extra={"note": f"random initialisation, seed {init_seed}; never trained"})
    return folder
