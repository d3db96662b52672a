"""Regenerate the bundled sample data set from scikit-image's photo of Chelsea the cat.

    python data/sample/make_sample.py

Writes ``img/5_chelsea cat/`` beside this script: six crops of different aspect ratios (so
that several aspect-ratio buckets are used), each at most 128 px on its long side, saved as
small JPEGs with a tag caption each. ``skimage.data.chelsea()`` is bundled with
scikit-image (no download); its docstring states "No copyright restrictions. CC0 by the
photographer (Stefan van der Walt)".
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from skimage import data

FOLDER = Path(__file__).resolve().parent / "img" / "5_chelsea cat"
LONG_SIDE = 128
JPEG_QUALITY = 90

# name: (crop box (left, top, right, bottom) in the 451 x 300 photo, caption)
CROPS = {
    "chelsea_full": (
        (0, 0, 451, 300),
        "chelsea cat, cat, tabby, close-up, green eyes, whiskers, indoors",
    ),
    "chelsea_face": (
        (90, 0, 390, 300),
        "chelsea cat, cat, face, green eyes, pink nose, whiskers, looking to the side",
    ),
    "chelsea_eyes": (
        (110, 70, 370, 180),
        "chelsea cat, cat, eyes, green eyes, striped fur, close-up",
    ),
    "chelsea_nose": (
        (180, 100, 330, 300),
        "chelsea cat, cat, nose, pink nose, whiskers, white chin",
    ),
    "chelsea_eye": (
        (130, 80, 220, 160),
        "chelsea cat, green eye, extreme close-up",
    ),
    "chelsea_ear": (
        (300, 0, 400, 200),
        "chelsea cat, cat, ear, green eye, fur, blurry background",
    ),
}


def fit_long_side(image: Image.Image, long_side: int) -> Image.Image:
    scale = long_side / max(image.size)
    if scale >= 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def main() -> None:
    photo = Image.fromarray(data.chelsea())
    FOLDER.mkdir(parents=True, exist_ok=True)
    for name, (box, caption) in CROPS.items():
        crop = fit_long_side(photo.crop(box), LONG_SIDE)
        crop.save(FOLDER / f"{name}.jpg", quality=JPEG_QUALITY, optimize=True)
        (FOLDER / f"{name}.txt").write_text(caption + "\n", encoding="utf-8")
        print(f"{name}.jpg {crop.width}x{crop.height}")


if __name__ == "__main__":
    main()
