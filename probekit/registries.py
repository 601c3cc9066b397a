"""The project's registries. Adding a backbone, dataset, task, head or fusion is one line here.

Targets are strings, resolved only when an entry is built (see probekit.lazy_registry). What an entry can do is
said by its class (a fusion's ``reads_one_map``, ``learns_weights``, ``spatial``, ``mixes_predictions``,
``min_maps``; a head's ``multi_layer``, ``prediction_level``; a task's ``name``, ``main_metric``, ``metrics``,
``higher_is_better``, ``secondary_metrics``, ``title``, ``order``): every other place asks the class
(``capability``), never the name.
"""

from __future__ import annotations

from typing import Any

from probekit.lazy_registry import Registry

EXTRACTORS = Registry("extractor")
DATASETS = Registry("dataset")
TASKS = Registry("task")
HEADS = Registry("head")
FUSIONS = Registry("fusion")
DIT_FAMILIES = Registry("DiT family")  # keyed by the diffusers transformer class a folder's config names

_DIT = "probekit.extractors.diffusers_dit:DiffusersDiTExtractor"

EXTRACTORS.register(
    "dit", _DIT,
    "any diffusers DiT-family transformer (see `probekit ls families`); give --weights DIR_OR_HUB_ID",
)
EXTRACTORS.register(
    "shapeworld-mmdit", "probekit.extractors.shapeworld:shapeworld_mmdit",
    "the shipped ShapeWorld MM-DiT (SD3 architecture, pixel space, trained by probekit; the default backbone)",
)
EXTRACTORS.register(
    "shapeworld-mmdit-random", "probekit.extractors.shapeworld:shapeworld_mmdit_random",
    "same architecture as shapeworld-mmdit, randomly initialised (a control)",
)
EXTRACTORS.register(
    "pixels", "probekit.extractors.pixels:PixelsExtractor",
    "raw RGB patches + Fourier positional encoding: the floor every backbone must beat",
)
_TIMM = "probekit.extractors.timm_vit:TimmViTExtractor"
EXTRACTORS.register("timm", _TIMM, "any timm ViT: --extractor timm:MODEL_NAME, weights from a local file (--weights)")
for _name, _model, _tag in (
    ("dinov3-vits16", "vit_small_patch16_dinov3", "lvd1689m"),
    ("dinov3-vitb16", "vit_base_patch16_dinov3", "lvd1689m"),
    ("dinov3-vitl16", "vit_large_patch16_dinov3", "lvd1689m"),
    ("dinov2-vits14", "vit_small_patch14_dinov2", "lvd142m"),
    ("dinov2-vitb14", "vit_base_patch14_dinov2", "lvd142m"),
):
    EXTRACTORS.register(_name, _TIMM, f"{_model}.{_tag} (timm); --weights FILE.safetensors offline",
                        model=_model, weights=f"{_model}.{_tag}", name=_name)
EXTRACTORS.register(
    "tiny-mmdit-random", "probekit.extractors.shapeworld:tiny_random_mmdit",
    "randomly initialised small pixel-space SD3 MM-DiT (a control; no training)",
)
EXTRACTORS.register(
    "sd3-medium", _DIT, "Stable Diffusion 3 Medium (MM-DiT), diffusers layout",
    weights="stabilityai/stable-diffusion-3-medium-diffusers", name="sd3-medium",
)
EXTRACTORS.register(
    "flux-dev", _DIT, "FLUX.1-dev (MM-DiT with single-stream blocks), diffusers layout",
    weights="black-forest-labs/FLUX.1-dev", name="flux-dev",
)
EXTRACTORS.register(
    "pixart-alpha", _DIT, "PixArt-alpha 512px (cross-attention DiT), diffusers layout",
    weights="PixArt-alpha/PixArt-XL-2-512x512", name="pixart-alpha",
)
EXTRACTORS.register(
    "dit-xl-2-256", _DIT, "DiT-XL/2 256px, class-conditional (null class used), diffusers layout",
    weights="facebook/DiT-XL-2-256", name="dit-xl-2-256",
)

DATASETS.register(
    "shapeworld", "probekit.datasets.shapeworld:ShapeWorld",
    "procedural scenes with segmentation, depth, saliency and captions (embedded, no download)",
    manifest="shapeworld.yaml",
)

_FOLDER = "probekit.datasets.files:FolderDataset"
for _name, _summary in [
    ("ade20k", "ADE20K SceneParsing, 150 classes (your copy: --data-root or $PROBEKIT_DATA/ade20k)"),
    ("voc2012", "PASCAL VOC 2012 segmentation, 21 classes, 255 ignored"),
    ("cityscapes", "Cityscapes gtFine, 19 train-id classes"),
    ("nyuv2", "NYU Depth V2, Eigen split (654 test images, Eigen crop)"),
    ("duts", "DUTS saliency: train = DUTS-TR, test = DUTS-TE"),
    ("ecssd", "ECSSD saliency (test, 1,000 images)"),
    ("dut-omron", "DUT-OMRON saliency (test, 5,168 images)"),
    ("hku-is", "HKU-IS saliency (test, 4,447 images)"),
]:
    DATASETS.register(_name, _FOLDER, _summary, manifest=f"{_name}.yaml")

DATASETS.register(
    "generated", "probekit.datasets.generated:GeneratedDataset",
    "a folder written by `probekit generate` (pass the folder as --dataset, or root=...)",
)

TASKS.register(
    "seg", "probekit.probes.tasks:SegmentationTask",
    "semantic segmentation: cross-entropy with ignore; mIoU (dataset-level), pixel accuracy, per-class IoU",
)
TASKS.register(
    "saliency", "probekit.probes.tasks:SaliencyTask",
    "salient object detection: BCE + soft IoU; MAE, max/mean/adaptive F (beta^2 0.3), S-measure, E-measure",
)
TASKS.register(
    "depth", "probekit.probes.tasks:DepthTask",
    "monocular depth: bins over the depth range (or regression), SigLoss; AbsRel, RMSE, delta<1.25^k, raw and aligned",
)

HEADS.register("linear", "probekit.probes.heads:LinearHead", "BatchNorm + 1x1 conv")
HEADS.register("conv", "probekit.probes.heads:ConvHead", "two 3x3 conv + BN + ReLU layers, then 1x1")
HEADS.register("deeplab", "probekit.probes.heads:DeepLabHead", "DeepLabV3+-lite: ASPP + light decoder with skip")
HEADS.register("dpt", "probekit.probes.heads:DPTHead", "DPT-lite: reassemble up to 4 layers + residual fusion blocks")

FUSIONS.register("single", "probekit.probes.fusion:SingleFusion", "one (timestep, layer) map, untouched")
FUSIONS.register("concat", "probekit.probes.fusion:ConcatFusion",
                 "every map standardised (projected when widths differ), concatenated")
FUSIONS.register("global", "probekit.probes.fusion:GlobalFusion",
                 "one learned softmax weight per (timestep, layer): each map's share of what the head reads")
FUSIONS.register("spatial", "probekit.probes.fusion:SpatialFusion",
                 "per-location softmax weights over the maps, predicted from the features themselves")

_FAMILY = "probekit.extractors.families"
for _cls, _target, _summary in (
    ("SD3Transformer2DModel", "sd3:SD3Family", "Stable Diffusion 3 / 3.5 (MM-DiT), StableDiffusion3Pipeline"),
    ("FluxTransformer2DModel", "flux:FluxFamily", "FLUX.1 dev / schnell (MM-DiT + single blocks), FluxPipeline"),
    ("PixArtTransformer2DModel", "pixart:PixArtFamily", "PixArt-alpha / sigma (cross-attention DiT, DDPM)"),
    ("DiTTransformer2DModel", "dit:DiTClassFamily", "DiT (class-conditional, DDPM; the null class by default)"),
    ("Flux2Transformer2DModel", "flux2:Flux2Family", "FLUX.2 dev and Klein, Flux2Pipeline / Flux2KleinPipeline"),
    ("QwenImageTransformer2DModel", "qwenimage:QwenImageFamily", "Qwen-Image, QwenImagePipeline"),
    ("ZImageTransformer2DModel", "zimage:ZImageFamily", "Z-Image, ZImagePipeline"),
    ("SanaTransformer2DModel", "sana:SanaFamily", "Sana (linear-attention DiT, DC-AE), SanaPipeline"),
    ("Lumina2Transformer2DModel", "lumina2:Lumina2Family", "Lumina-Image 2.0, Lumina2Pipeline"),
    ("ChromaTransformer2DModel", "chroma:ChromaFamily", "Chroma, ChromaPipeline"),
    ("HiDreamImageTransformer2DModel", "hidream:HiDreamFamily", "HiDream-I1, HiDreamImagePipeline"),
    ("CogView4Transformer2DModel", "cogview4:CogView4Family", "CogView4, CogView4Pipeline"),
    ("AuraFlowTransformer2DModel", "auraflow:AuraFlowFamily", "AuraFlow, AuraFlowPipeline"),
    ("HunyuanImageTransformer2DModel", "hunyuanimage:HunyuanImageFamily", "HunyuanImage 2.1, HunyuanImagePipeline"),
    ("Flux3Transformer2DModel", "flux3:Flux3Family", "FLUX.3, Flux3ModularPipeline"),
    ("QwenImage21Transformer2DModel", "qwenimage21:QwenImage21Family", "Qwen-Image 2.1, QwenImage21Pipeline"),
    ("Krea2Transformer2DModel", "krea2:Krea2Family", "Krea 2, Krea2Pipeline"),
    ("Ideogram4Transformer2DModel", "ideogram4:Ideogram4Family", "Ideogram 4, Ideogram4Pipeline"),
):
    DIT_FAMILIES.register(_cls, f"{_FAMILY}.{_target}", _summary)

ALL = {"extractors": EXTRACTORS, "datasets": DATASETS, "tasks": TASKS, "heads": HEADS, "fusions": FUSIONS,
       "families": DIT_FAMILIES}


def registered_class(registry: Registry, name: str | None) -> Any:
    """The class registered under ``name`` (imported now: torch comes with most), or None for a name not
    registered (a record of a removed or toy entry: readers fall back)."""
    if not name or name not in registry:
        return None
    return registry.get(name).load()


def capability(registry: Registry, name: str | None, attr: str, default: Any = None) -> Any:
    """What the class registered under ``name`` says of itself (``attr``); ``default`` for a name not registered."""
    return getattr(registered_class(registry, name), attr, default)
