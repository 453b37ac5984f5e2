"""Build calibration_data/efficientnet_lite0_{eval,calib}.npz: unlabelled photo crops under lighting conditions.

For the EfficientNet-Lite0 reference model (models/efficientnet_lite0.py). The photographs are the
colour images bundled inside scikit-image's wheel (`skimage.data`, no download; scikit-image is
needed only to rebuild, not to run the recipe). Each row is one random square crop of one
photograph, block-averaged down to 56 x 56 (the crop side is a whole multiple of 56, so the
reduction is an exact numpy mean), maybe mirrored, then put through one capture condition:

- `sensor`: `colour` (as photographed) or `grey` (luminance 0.299 R + 0.587 G + 0.114 B in all
  three channels, as from a monochrome or night camera);
- `lighting`: `normal` (unchanged), `dark` (x times 0.15-0.30 plus Gaussian sensor noise of 1.5
  levels: under-exposure), `bright` (x times 1.7-2.3 plus 0.05, clipped: over-exposure with blown
  highlights), `low_contrast` (x times 0.25-0.4, pulled towards 0.7: haze or fog).

Rows are balanced: every photograph x sensor x lighting cell gets the same number of rows
(eval: 7, so 56 per sensor x lighting cell, 112 per lighting, 224 per sensor; calibration: 2).
Eval and calibration rows are different random crops (independent generators; no crop box is in
both), but of the same eight photographs: they are not independent images. There are no labels:
the model is judged label-free (agreement with its own fp32 predictions).

Deterministic (numpy.random.default_rng with fixed seeds) and written with fixed zip timestamps
(byte-reproducible, like build_adult_data.py). Keys: `pixels` uint8 (N, 3, 56, 56) RGB,
`lighting` <U12 (N,), `sensor` <U6 (N,).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_adult_data import save_npz_reproducible  # noqa: E402  (one writer for every npz)

SIZE = 56  # stored side; the model resizes to 224 in its graph
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle", "hubble_deep_field", "immunohistochemistry", "retina")
SENSORS = ("colour", "grey")
LIGHTING = ("normal", "dark", "bright", "low_contrast")
SPLITS = {"eval": (7, 1), "calib": (2, 2)}  # rows per photo x sensor x lighting cell, seed
MIN_FACTOR, MAX_FACTOR = 2, 7  # crop side = k * SIZE (112 .. 392 px), within the photograph


def load_photos() -> dict[str, np.ndarray]:
    """The bundled colour photographs, uint8 (H, W, 3). Only files shipped in the wheel (no pooch)."""
    import skimage.data as d

    out = {}
    for name in PHOTOS:
        img = d.stereo_motorcycle()[0] if name == "motorcycle" else getattr(d, name)()  # left view of the stereo pair
        out[name] = np.ascontiguousarray(img[..., :3], dtype=np.uint8)
    return out


def crop(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int, int, bool]]:
    """A random square crop, block-averaged to SIZE x SIZE, maybe mirrored: float (SIZE, SIZE, 3) in [0, 1]."""
    h, w = img.shape[:2]
    k = int(rng.integers(MIN_FACTOR, min(MAX_FACTOR, min(h, w) // SIZE) + 1))
    side = k * SIZE
    y = int(rng.integers(0, h - side + 1))
    x = int(rng.integers(0, w - side + 1))
    flip = bool(rng.random() < 0.5)
    patch = img[y : y + side, x : x + side].astype(np.float64) / 255.0
    small = patch.reshape(SIZE, k, SIZE, k, 3).mean(axis=(1, 3))
    if flip:
        small = small[:, ::-1]
    return small, (y, x, side, flip)


def apply_sensor(x: np.ndarray, sensor: str) -> np.ndarray:
    if sensor == "colour":
        return x
    luma = x @ np.array([0.299, 0.587, 0.114])
    return np.repeat(luma[..., None], 3, axis=-1)


def apply_lighting(x: np.ndarray, lighting: str, rng: np.random.Generator, sensor: str) -> np.ndarray:
    if lighting == "normal":
        return x
    if lighting == "dark":
        # a monochrome sensor's noise is one value per pixel, the same in the three channels
        noise_shape = x.shape if sensor == "colour" else x.shape[:2] + (1,)
        return x * rng.uniform(0.15, 0.30) + rng.normal(0.0, 1.5 / 255.0, size=noise_shape)
    if lighting == "bright":
        return x * rng.uniform(1.7, 2.3) + 0.05
    if lighting == "low_contrast":
        c = rng.uniform(0.25, 0.40)
        return x * c + (1.0 - c) * 0.7
    raise ValueError(lighting)


def to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def make_split(photos: dict[str, np.ndarray], per_cell: int, seed: int) -> tuple[dict[str, np.ndarray], set]:
    rng = np.random.default_rng(seed)
    pixels, lighting, sensor, boxes = [], [], [], set()
    for name in PHOTOS:
        for s in SENSORS:
            for light in LIGHTING:
                for _ in range(per_cell):
                    small, box = crop(photos[name], rng)
                    img = apply_lighting(apply_sensor(small, s), light, rng, s)
                    pixels.append(to_uint8(img).transpose(2, 0, 1))  # (3, SIZE, SIZE)
                    lighting.append(light)
                    sensor.append(s)
                    boxes.add((name, *box))
    order = rng.permutation(len(pixels))  # mixed order: the first rows (the exporter's example) span groups
    arrays = {
        "pixels": np.stack(pixels)[order],
        "lighting": np.array(lighting, dtype="<U12")[order],
        "sensor": np.array(sensor, dtype="<U6")[order],
    }
    return arrays, boxes


def build(out_dir: Path) -> dict[str, dict]:
    photos = load_photos()
    out_dir.mkdir(parents=True, exist_ok=True)
    info, boxes = {}, {}
    for split, (per_cell, seed) in SPLITS.items():
        arrays, boxes[split] = make_split(photos, per_cell, seed)
        path = out_dir / f"efficientnet_lite0_{split}.npz"
        save_npz_reproducible(path, arrays)
        info[split] = {"rows": len(arrays["pixels"]), "bytes": path.stat().st_size,
                       "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    shared = boxes["eval"] & boxes["calib"]
    if shared:
        raise RuntimeError(f"{len(shared)} crop boxes are in both eval and calibration rows")
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "calibration_data")
    p.add_argument("--preview", type=Path, help="also write a PNG grid of the first eval rows (needs matplotlib or imageio)")
    args = p.parse_args(argv)
    info = build(args.out)
    for split, d in info.items():
        print(f"{split}: {d['rows']} rows, {d['bytes']:,} bytes, sha256 {d['sha256']}")
    if args.preview:
        import imageio.v3 as iio

        with np.load(args.out / "efficientnet_lite0_eval.npz", allow_pickle=False) as d:
            px = d["pixels"][:32].transpose(0, 2, 3, 1)
        grid = px.reshape(4, 8, SIZE, SIZE, 3).transpose(0, 2, 1, 3, 4).reshape(4 * SIZE, 8 * SIZE, 3)
        iio.imwrite(args.preview, np.kron(grid, np.ones((2, 2, 1), dtype=np.uint8)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
