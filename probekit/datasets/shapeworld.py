"""ShapeWorld: procedural perspective scenes with exact dense labels.

A pinhole camera at height ``h`` looks horizontally over a ground plane. A ground point at
distance Z projects to row ``y = y_horizon + f*h/Z``; an object of world size S standing at
distance Z has its base on that row and a projected size ``f*S/Z``. So nearer objects stand
lower and larger, and a z-buffer over flat (fronto-parallel) objects gives occlusion and a
metric depth map that agree with the image by construction.

Every sample is a pure function of (seed, split, index): nothing is stored, any number of
samples can be drawn, and two machines draw the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from probekit.datasets.base import Sample, as_uint8_image, load_manifest, params_hash
from probekit.errors import ProbekitError

_SPLIT_CODES = {"train": 0, "val": 1, "test": 2, "pretrain": 3}
_TEXTURE_WORDS = {"solid": "", "striped": "striped", "dotted": "dotted"}
SKY_TOP_RGB = np.array([110.0, 160.0, 235.0])
HAZE_RGB = np.array([200.0, 210.0, 225.0])
GROUND_RGB = (np.array([105.0, 120.0, 80.0]), np.array([135.0, 150.0, 100.0]))
# Scene ranges a caller may override (e.g. nearer, fewer objects for training a backbone); each a [low, high].
SCENE_KEYS = ("objects_per_image", "object_distance_m", "object_size_m")


def with_article(phrase: str) -> str:
    """The captions' article: "red circle" -> "a red circle", "orange star" -> "an orange star"."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


@dataclass(frozen=True)
class ShapeObject:
    cls: int  # index into classes (1..)
    shape: str
    colour: str
    texture: str
    distance: float  # metres along the optical axis
    size: float  # world size in metres
    column: float  # centre column in pixels
    stripe_angle: float


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test in object coordinates: u right, v down, the object fills [-1, 1]^2 and rests on v = 1."""
    r = np.hypot(u, v)
    if shape == "circle":
        return r <= 1.0
    if shape == "square":
        return (np.abs(u) <= 0.85) & (v >= -0.7) & (v <= 1.0)
    if shape == "triangle":
        return (v >= -1.0) & (v <= 1.0) & (np.abs(u) <= (v + 1.0) / 2.0)
    if shape == "ring":
        return (r <= 1.0) & (r >= 0.55)
    if shape == "cross":
        return ((np.abs(u) <= 0.33) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.33) & (np.abs(u) <= 1.0))
    if shape == "star":
        theta = np.arctan2(u, -v)  # 0 points straight up
        phase = np.mod(theta, 2 * np.pi / 5) / (2 * np.pi / 5)  # 0 and 1 at the five points
        spike = np.abs(1.0 - 2.0 * phase)  # 1 at a point, 0 half-way between
        return r <= 0.42 + 0.58 * spike**1.5
    raise ValueError(f"unknown ShapeWorld shape {shape!r}")


def checked_scene(scene: dict[str, Any]) -> dict[str, list]:
    """Scene overrides as ``{key: [low, high]}``; unknown keys or bad ranges are refused by name."""
    unknown = sorted(set(scene) - set(SCENE_KEYS))
    if unknown:
        raise ProbekitError(f"ShapeWorld scene has no setting {', '.join(unknown)}; settings: {', '.join(SCENE_KEYS)}")
    out = {}
    for key in SCENE_KEYS:
        if key not in scene:
            continue
        value = scene[key]
        try:
            low, high = (float(x) for x in value)
        except (TypeError, ValueError):
            raise ProbekitError(f"ShapeWorld scene {key} must be two numbers [low, high], got {value!r}") from None
        if not 0 < low <= high:
            raise ProbekitError(f"ShapeWorld scene {key} must satisfy 0 < low <= high, got {value!r}")
        if key == "objects_per_image":
            if low != int(low) or high != int(high):
                raise ProbekitError(f"ShapeWorld scene objects_per_image must be whole numbers, got {value!r}")
            low, high = int(low), int(high)
        out[key] = [low, high]
    return out


class ShapeWorld:
    """Procedural dataset; ``ShapeWorld(split="train")[i]`` is a `Sample`."""

    name = "shapeworld"

    def __init__(self, split: str = "train", manifest: str = "shapeworld.yaml", seed: int | None = None,
                 image_size: int | None = None, size: int | None = None, scene: dict[str, Any] | None = None):
        self.manifest, self.manifest_sha256 = load_manifest(manifest)
        self.scene = checked_scene(scene or {})
        self.manifest = m = {**self.manifest, **self.scene}
        if split not in m["splits"]:
            raise ProbekitError(f"ShapeWorld has no split {split!r}; splits: {', '.join(m['splits'])}")
        self.split = split
        self.seed = int(m["seed"] if seed is None else seed)
        self.image_size = int(m["image_size"] if image_size is None else image_size)
        if self.image_size < 32:
            raise ProbekitError(f"ShapeWorld image_size must be >= 32, got {self.image_size}")
        self.size = int(m["splits"][split] if size is None else size)
        self.classes: list[str] = list(m["classes"])
        self.ignore_index = int(m["ignore_index"])
        self.tasks = list(m["tasks"])
        self.colours = {k: np.asarray(v, dtype=np.float64) for k, v in m["colours"].items()}
        self.textures = list(m["textures"])
        self.depth_range = tuple(float(x) for x in m["depth_range_m"])

    # -- contract ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.size:
            raise IndexError(f"ShapeWorld {self.split} has {self.size} samples; index {index} is out of range")
        return self.render(index)

    def sample_id(self, index: int) -> str:
        return f"shapeworld/{self.split}/{index:06d}"

    def reference(self) -> dict[str, Any]:
        """What a feature file needs to point back at these exact samples."""
        params = {"seed": self.seed, "image_size": self.image_size, **({"scene": self.scene} if self.scene else {})}
        return {
            "dataset": self.name, "split": self.split, "manifest_sha256": self.manifest_sha256,
            "params": params, "params_hash": params_hash(params), "size": self.size,
            "classes": self.classes, "ignore_index": self.ignore_index, "depth_range": list(self.depth_range),
        }

    # -- rendering --------------------------------------------------------------------------
    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, _SPLIT_CODES.get(self.split, 9), index]))

    def _draw_objects(self, rng: np.random.Generator, focal: float) -> list[ShapeObject]:
        m, n = self.manifest, self.image_size
        lo, hi = m["objects_per_image"]
        count = int(rng.integers(lo, hi + 1))
        objects = []
        for _ in range(count):
            cls = int(rng.integers(1, len(self.classes)))
            distance = float(rng.uniform(*m["object_distance_m"]))
            size = float(rng.uniform(*m["object_size_m"]))
            half = 0.5 * focal * size / distance
            column = float(rng.uniform(max(half * 0.5, 0.08 * n), min(n - half * 0.5, 0.92 * n)))
            objects.append(ShapeObject(
                cls=cls, shape=self.classes[cls],
                colour=str(rng.choice(list(self.colours))),  # independent of the class
                texture=str(rng.choice(self.textures)),
                distance=distance, size=size, column=column,
                stripe_angle=float(rng.uniform(0, np.pi)),
            ))
        return objects

    def _scene(self, index: int) -> tuple[float, float, float, list[ShapeObject]]:
        """(horizon row, focal length in px, camera height in m, objects): every random draw of a sample."""
        rng = self._rng(index)
        cam = self.manifest["camera"]
        focal = float(cam["focal_px_per_image_width"]) * self.image_size
        horizon = float(rng.uniform(*cam["horizon_row_fraction"])) * self.image_size
        return horizon, focal, float(cam["height_m"]), self._draw_objects(rng, focal)

    def render(self, index: int) -> Sample:
        horizon, focal, cam_h, objects = self._scene(index)
        rgb, depth = self._background(horizon, focal, cam_h)
        n = self.image_size
        seg = np.zeros((n, n), dtype=np.uint8)
        instance = np.full((n, n), -1, dtype=np.int16)
        # Objects, z-buffered: a pixel shows whichever surface is nearest.
        for k, (obj, inside) in enumerate(zip(objects, self._object_masks(objects, horizon, focal, cam_h))):
            visible = inside & (obj.distance < depth)
            if not visible.any():
                continue
            rgb = np.where(visible[..., None], self._object_rgb(obj, horizon, focal, cam_h), rgb)
            depth = np.where(visible, obj.distance, depth)
            seg[visible] = obj.cls
            instance[visible] = k
        # Haze grows with distance.
        fog = 1.0 - np.exp(-depth / float(self.manifest["haze_length_m"]))
        rgb = rgb * (1 - fog[..., None]) + HAZE_RGB * fog[..., None]
        visible_objects = [(k, obj, int((instance == k).sum())) for k, obj in enumerate(objects)]
        visible_objects = [t for t in visible_objects if t[2] > 0]
        saliency = np.zeros((n, n), dtype=np.uint8)
        salient = self._salient(visible_objects)
        if salient is not None:
            saliency[instance == salient] = 1
        meta = {"horizon_row": horizon, "salient_object": salient, "instance": instance,
                "objects": [{"shape": o.shape, "class": o.cls, "colour": o.colour, "texture": o.texture,
                             "distance_m": o.distance, "size_m": o.size, "visible_px": int((instance == k).sum()),
                             "base_row_px": horizon + focal * cam_h / o.distance,
                             "size_px": focal * o.size / o.distance} for k, o in enumerate(objects)]}
        return Sample(id=self.sample_id(index), index=index, image=as_uint8_image(rgb), seg=seg,
                      depth=depth.astype(np.float32), saliency=saliency, caption=self._caption(visible_objects),
                      meta=meta)

    def _background(self, horizon: float, focal: float, cam_h: float) -> tuple[np.ndarray, np.ndarray]:
        """(rgb, depth) of the empty scene: sky above the horizon, a ground plane with a 1 m checkerboard below."""
        n = self.image_size
        rows_full = np.broadcast_to(np.arange(n, dtype=np.float64)[:, None] + 0.5, (n, n))
        cols = np.arange(n, dtype=np.float64)[None, :] + 0.5
        below = rows_full > horizon
        with np.errstate(divide="ignore"):
            ground_depth = np.where(below, focal * cam_h / np.maximum(rows_full - horizon, 1e-6), np.inf)
        depth = np.minimum(ground_depth, float(self.manifest["max_depth_m"])).astype(np.float64)
        lateral = (cols - n / 2) * depth / focal
        checker = ((np.floor(lateral) + np.floor(depth)) % 2 == 0)[..., None]
        ground_rgb = np.where(checker, GROUND_RGB[0], GROUND_RGB[1])
        sky_t = np.clip(rows_full / max(horizon, 1.0), 0, 1)[..., None]
        sky_rgb = SKY_TOP_RGB * (1 - sky_t) + HAZE_RGB * sky_t
        return np.where(below[..., None], ground_rgb, sky_rgb), depth

    def _object_rgb(self, obj: ShapeObject, horizon: float, focal: float, cam_h: float) -> np.ndarray:
        """The object's colour, shaded and textured, at every pixel (the caller keeps the visible ones)."""
        n = self.image_size
        u, v = self._object_coords(obj, horizon, focal, cam_h)
        shade = 1.0 - 0.18 * (v + 1.0) / 2.0  # lit from above
        tex = np.ones((n, n))
        if obj.texture == "striped":
            axis = u * np.cos(obj.stripe_angle) + v * np.sin(obj.stripe_angle)
            tex = np.where(np.sin(axis * 2.5 * np.pi) > 0, 1.0, 0.45)
        elif obj.texture == "dotted":
            du, dv = np.mod(u * 2.0, 1.0) - 0.5, np.mod(v * 2.0, 1.0) - 0.5
            tex = np.where(du**2 + dv**2 < 0.07, 0.4, 1.0)
        return self.colours[obj.colour] * (shade * tex)[..., None]

    def _object_coords(self, obj: ShapeObject, horizon: float, focal: float, cam_h: float):
        """Object coordinates (u right, v down, [-1, 1] over the object's box) of every pixel."""
        n = self.image_size
        half = 0.5 * focal * obj.size / obj.distance
        base = horizon + focal * cam_h / obj.distance  # the ground row at the object's distance
        grid = np.arange(n, dtype=np.float64) + 0.5
        u = np.broadcast_to((grid[None, :] - obj.column) / half, (n, n))
        v = np.broadcast_to((grid[:, None] - (base - half)) / half, (n, n))
        return u, v

    def _object_masks(self, objects: list[ShapeObject], horizon: float, focal: float, cam_h: float):
        return [shape_mask(o.shape, *self._object_coords(o, horizon, focal, cam_h)) for o in objects]

    def full_masks(self, index: int) -> np.ndarray:
        """(K, H, W) silhouettes of every object before occlusion, in the order of meta["objects"]."""
        horizon, focal, cam_h, objects = self._scene(index)
        masks = self._object_masks(objects, horizon, focal, cam_h)
        return np.stack(masks) if masks else np.zeros((0, self.image_size, self.image_size), dtype=bool)

    @staticmethod
    def _salient(visible: list[tuple[int, ShapeObject, int]]) -> int | None:
        """The dominant object: the nearest among those with at least half the largest visible area."""
        if not visible:
            return None
        largest = max(area for _, _, area in visible)
        large = [(obj.distance, k) for k, obj, area in visible if area >= 0.5 * largest]
        return min(large)[1]

    @staticmethod
    def _caption(visible: list[tuple[int, ShapeObject, int]]) -> str:
        if not visible:
            return "an empty field"
        phrases = []
        for _, obj, _ in sorted(visible, key=lambda t: t[1].distance):  # nearest first
            words = [obj.colour, _TEXTURE_WORDS[obj.texture], obj.shape]
            phrases.append(with_article(" ".join(w for w in words if w)))
        if len(phrases) == 1:
            return phrases[0]
        return f"{phrases[0]} in front of " + " and ".join(phrases[1:])
