"""The demo domains: flat-coloured shapes (A) -> the same family of shapes with zebra stripes (B).

Everything is drawn procedurally from a seed, so the demo and the tests need no download. Each image is one
smooth shape (ellipse, rounded box, triangle or blob) on a landscape-like background: a gradient from a sky
colour to a ground colour (each jittered per image, the gradient's direction within ~35 degrees of vertical)
with low-frequency mottling. Domain A fills the shape with one flat, saturated colour of any hue; domain B
fills it with black/white stripes of a random orientation and period. For the test split, every A image also
gets its ground truth: the same scene (same background, same shape) with the stripes, so translation quality
can be measured.

Why the backgrounds share a palette (renderer version 2): the paper's ResNet generator instance-normalises
right after its first convolution, which removes every image's mean colour and contrast; what it outputs in
their place comes from what it learned to expect, as for photos (sky is blue). Version 1 drew both background
colours uniformly at random, which no such generator can reproduce: trained only to copy its input (an L1
auto-encoder, 1,200 steps) the demo's G still missed the low-frequency colours by 0.12; with this palette
0.07, and the demo's CUT halves its paired error (README, "What the demo ends with").

The renderers here are pure numpy; writing them as shards is ``write_synth_dataset`` below.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

SUPERSAMPLE = 2   # render at 2x and downsample for smooth edges
RENDERER_VERSION = 2   # bump when the same seed draws different images; demo shards record it in SYNTH_RECORD
SYNTH_RECORD = "synth.json"
SKY, GROUND, PALETTE_JITTER = np.array([0.55, 0.72, 0.92]), np.array([0.42, 0.62, 0.30]), 0.07


@dataclass
class Scene:
    """Everything that defines one image, drawn from an rng; rendering is deterministic given the scene."""
    size: int
    bg_a: np.ndarray          # two background colours, float RGB in [0, 1]
    bg_b: np.ndarray
    bg_angle: float
    mottle: np.ndarray        # low-res noise field upsampled for mottling
    shape: str
    cx: float
    cy: float
    radius: float
    aspect: float
    rotation: float
    wobble: np.ndarray        # blob harmonics
    fill: np.ndarray          # flat colour of domain A
    stripe_angle: float
    stripe_period: float      # in pixels at the output size
    stripe_phase: float


SHAPES = ("ellipse", "box", "triangle", "blob")


def draw_scene(rng: np.random.Generator, size: int, renderer: int = RENDERER_VERSION) -> Scene:
    """``renderer`` 1 (random background colours, any gradient direction) is kept to reproduce the README's trials."""
    if renderer == 1:
        bg_a, bg_b = rng.uniform(0.25, 0.95, size=(2, 3))
        fill = _saturated_colour(rng)
        bg_angle = float(rng.uniform(0, 2 * np.pi))
    elif renderer == 2:
        bg_a = np.clip(SKY + rng.uniform(-PALETTE_JITTER, PALETTE_JITTER, 3), 0, 1)
        bg_b = np.clip(GROUND + rng.uniform(-PALETTE_JITTER, PALETTE_JITTER, 3), 0, 1)
        fill = _saturated_colour(rng)
        bg_angle = float(np.pi / 2 + rng.uniform(-0.6, 0.6))   # pi/2: sky on top
    else:
        raise ValueError(f"renderer: 1 or 2, got {renderer!r}")
    return Scene(
        size=size,
        bg_a=bg_a, bg_b=bg_b, bg_angle=bg_angle,
        mottle=rng.normal(0, 0.06, size=(4, 4, 3)),
        shape=str(rng.choice(SHAPES)),
        cx=float(rng.uniform(0.35, 0.65)), cy=float(rng.uniform(0.35, 0.65)),
        radius=float(rng.uniform(0.2, 0.32)), aspect=float(rng.uniform(0.7, 1.3)),
        rotation=float(rng.uniform(0, np.pi)),
        wobble=rng.normal(0, 0.12, size=(3, 2)),
        fill=fill,
        stripe_angle=float(rng.uniform(0, np.pi)),
        stripe_period=float(rng.uniform(0.09, 0.14) * size),
        stripe_phase=float(rng.uniform(0, 1)),
    )


def _saturated_colour(rng: np.random.Generator) -> np.ndarray:
    import colorsys
    h, s, v = rng.uniform(0, 1), rng.uniform(0.6, 1.0), rng.uniform(0.45, 0.9)
    return np.array(colorsys.hsv_to_rgb(h, s, v))


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    coords = (np.arange(n) + 0.5) / n
    return np.meshgrid(coords, coords)   # x, y in [0, 1]


def _background(scene: Scene, n: int) -> np.ndarray:
    x, y = _grid(n)
    t = (np.cos(scene.bg_angle) * (x - 0.5) + np.sin(scene.bg_angle) * (y - 0.5)) + 0.5
    t = np.clip(t, 0, 1)[..., None]
    img = scene.bg_a * (1 - t) + scene.bg_b * t
    mottle = np.asarray(Image.fromarray(((scene.mottle + 0.5) * 255).clip(0, 255).astype(np.uint8))
                        .resize((n, n), Image.BICUBIC), dtype=np.float64) / 255 - 0.5
    return img + mottle


def _mask(scene: Scene, n: int) -> np.ndarray:
    x, y = _grid(n)
    dx, dy = x - scene.cx, y - scene.cy
    c, s = np.cos(scene.rotation), np.sin(scene.rotation)
    u, v = (c * dx + s * dy) / scene.aspect, (-s * dx + c * dy) * scene.aspect
    r = scene.radius
    if scene.shape == "ellipse":
        return (u ** 2 + v ** 2) <= r ** 2
    if scene.shape == "box":
        p = 4.0   # a superellipse: a box with rounded corners
        return (np.abs(u / (0.85 * r)) ** p + np.abs(v / (0.85 * r)) ** p) <= 1
    if scene.shape == "triangle":
        inside = np.ones_like(u, dtype=bool)
        for k in range(3):
            a = 2 * np.pi * k / 3 + np.pi / 2
            inside &= (np.cos(a) * u + np.sin(a) * v) <= 0.55 * r
        return inside
    theta = np.arctan2(v, u)
    radius = r * (1 + sum(w[0] * np.cos((k + 2) * theta) + w[1] * np.sin((k + 2) * theta)
                          for k, w in enumerate(scene.wobble)))
    return np.hypot(u, v) <= radius


def _stripes(scene: Scene, n: int) -> np.ndarray:
    x, y = _grid(n)
    period = scene.stripe_period / scene.size
    t = (np.cos(scene.stripe_angle) * x + np.sin(scene.stripe_angle) * y) / period + scene.stripe_phase
    on = (t % 1.0) < 0.5
    return np.where(on, 0.93, 0.07)[..., None] * np.ones(3)


def render(scene: Scene, domain: str) -> np.ndarray:
    """The scene as an ``H x W x 3`` uint8 image; ``domain`` is ``"A"`` (flat fill) or ``"B"`` (stripes)."""
    n = scene.size * SUPERSAMPLE
    img = _background(scene, n)
    mask = _mask(scene, n)[..., None]
    fill = scene.fill * np.ones((n, n, 3)) if domain == "A" else _stripes(scene, n)
    img = np.where(mask, fill, img)
    big = Image.fromarray((img.clip(0, 1) * 255 + 0.5).astype(np.uint8))
    return np.asarray(big.resize((scene.size, scene.size), Image.LANCZOS))


def render_mask(scene: Scene) -> np.ndarray:
    """The shape's mask at the output size (bool, H x W)."""
    return _mask(scene, scene.size)


def scene_rng(seed: int, split: str, domain: str, index: int) -> np.random.Generator:
    """Independent, reproducible stream per image: unpaired training domains never share scenes."""
    tag = sum(ord(ch) * 31 ** i for i, ch in enumerate(f"{split}/{domain}")) % (2 ** 31)
    return np.random.default_rng([seed, tag, index])


def synth_image(seed: int, split: str, domain: str, index: int, size: int,
                renderer: int = RENDERER_VERSION) -> np.ndarray:
    return render(draw_scene(scene_rng(seed, split, domain, index), size, renderer), domain)


def synth_test_pair(seed: int, index: int, size: int,
                    renderer: int = RENDERER_VERSION) -> tuple[np.ndarray, np.ndarray]:
    """A test image of domain A and its ground-truth translation (same scene, striped)."""
    scene = draw_scene(scene_rng(seed, "test", "A", index), size, renderer)
    return render(scene, "A"), render(scene, "B")


# ------------------------------------------------------------------------------------------ the dataset

def _png(image: np.ndarray) -> bytes:
    import io
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _render_job(job: tuple[int, str, int, int]) -> list[tuple[str, bytes]]:
    """One job of the dataset: (seed, split, index, size) -> [(split, png bytes), ...] (runs in workers)."""
    seed, split, index, size = job
    if split == "testA":   # the test image and its ground truth share one scene
        image_a, truth = synth_test_pair(seed, index, size)
        return [("testA", _png(image_a)), ("testGT", _png(truth))]
    phase, domain = split[:-1], split[-1]
    return [(split, _png(synth_image(seed, phase, domain, index, size)))]


def write_synth_dataset(out_dir, *, size: int = 64, count: int = 400, test_count: int = 64, seed: int = 0,
                        max_count: int = 50, workers: int = 1, progress: bool = False):
    """Write the demo dataset as shards + manifest in ``out_dir`` and return its Path.

    Splits trainA/trainB (``count`` images each), testA/testB (``test_count`` each) and testGT (the striped
    ground truth of each testA image, under the same key ``%06d``), PNG bytes, through the same shard writer
    as real data. Deterministic for a seed: the same images, bytes and manifest sha256 every time.
    """
    from tqdm import tqdm

    from cutdist.data.manifest import DataError
    from cutdist.data.writer import EncodedImage, ShardSetWriter, _ordered_map

    if size < 8:
        raise DataError(f"--size: must be >= 8, got {size}")
    if count < 1 or test_count < 1:
        raise DataError(f"--count and --test-count: must be >= 1, got {count} and {test_count}")
    jobs = ([(seed, "trainA", i, size) for i in range(count)] + [(seed, "trainB", i, size) for i in range(count)]
            + [(seed, "testA", i, size) for i in range(test_count)]
            + [(seed, "testB", i, size) for i in range(test_count)])
    writer = ShardSetWriter(out_dir, max_count=max_count)
    writer.check_new(["trainA", "trainB", "testA", "testB", "testGT"])
    with writer, tqdm(total=len(jobs), unit="img", desc="synth", disable=not progress) as bar:
        for (_, _, index, _), rendered in zip(jobs, _ordered_map(_render_job, jobs, workers)):
            for split, data in rendered:
                writer.add(split, EncodedImage(f"{index:06d}", "png", data, size, size))
            bar.update(1)
    (writer.out_dir / SYNTH_RECORD).write_text(json.dumps(
        {"renderer_version": RENDERER_VERSION, "seed": seed, "size": size, "count": count, "test_count": test_count}))
    return writer.out_dir


def stale_demo_shards(root) -> str | None:
    """Why the demo shards in ``root`` (a local directory with a manifest) were drawn by another renderer, or None.

    Demo shards are recognised by their testGT split; ones written before ``synth.json`` existed are version 1.
    """
    from cutdist.data.manifest import read_manifest

    record = Path(root) / SYNTH_RECORD
    if record.is_file():
        try:
            version = json.loads(record.read_text()).get("renderer_version")
        except (ValueError, AttributeError):
            version = None
    elif "testGT" in set(read_manifest(str(root)).column("split").to_pylist()):
        version = 1
    else:
        return None   # not demo shards: someone's own data
    if version == RENDERER_VERSION:
        return None
    return (f"data.root: {root} holds demo shards drawn by synthetic renderer version {version}, this cutdist draws "
            f"version {RENDERER_VERSION} (other images: README, 'What the demo ends with'); delete the directory to "
            "have them drawn again")
