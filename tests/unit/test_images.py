"""Decoding every image mode Pillow reads into the RGB the model sees, each checked against the
conversion written out in numpy (or the standard library / scikit-image for colour spaces)."""

from __future__ import annotations

import colorsys
import warnings

import numpy as np
import pytest
from PIL import Image
from skimage.color import lab2rgb

from trainer.data.images import load_rgb, to_rgb

RNG = np.random.default_rng(0)
SHAPE = (6, 7)


def u8(channels: int = 0) -> np.ndarray:
    shape = (*SHAPE, channels) if channels else SHAPE
    return RNG.integers(0, 256, shape, dtype=np.uint8)


def gray(values: np.ndarray) -> np.ndarray:
    """An 8-bit gray reference as RGB."""
    return np.repeat(np.clip(np.rint(values), 0, 255)[..., None], 3, axis=-1)


def over_white(color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None].astype(np.float64) / 255
    return color.astype(np.float64) * a + 255 * (1 - a)


def palette_image(with_alpha: bool):
    palette = u8(3).reshape(-1, 3)[:16]
    index = RNG.integers(0, 16, SHAPE, dtype=np.uint8)
    img = Image.fromarray(index, "P")
    img.putpalette(palette.flatten().tolist())
    color = palette[index]
    if not with_alpha:
        return img, color
    alpha = u8()
    pa = img.convert("PA")
    pa.putalpha(Image.fromarray(alpha, "L"))
    return pa, over_white(color, alpha)


def case_1():
    bits = RNG.integers(0, 2, SHAPE).astype(bool)
    return Image.fromarray(bits), gray(bits * 255.0)


def case_l():
    values = u8()
    return Image.fromarray(values, "L"), gray(values)


def case_la():
    la = u8(2)
    return Image.fromarray(la, "LA"), over_white(np.repeat(la[..., :1], 3, -1), la[..., 1])


def case_la_premultiplied():
    alpha = u8()
    value = (u8().astype(np.uint16) * alpha // 255).astype(np.uint8)  # premultiplied
    img = Image.fromarray(np.stack([value, alpha], -1), "LA")
    img = Image.frombytes("La", img.size, img.tobytes())
    return img, gray(value.astype(np.float64) + 255 - alpha)


def case_rgb():
    rgb = u8(3)
    return Image.fromarray(rgb, "RGB"), rgb


def case_rgba():
    rgba = u8(4)
    return Image.fromarray(rgba, "RGBA"), over_white(rgba[..., :3], rgba[..., 3])


def case_rgba_premultiplied():
    alpha = u8()
    color = (u8(3).astype(np.uint16) * alpha[..., None] // 255).astype(np.uint8)
    rgba = np.concatenate([color, alpha[..., None]], -1)
    img = Image.frombytes("RGBa", (SHAPE[1], SHAPE[0]), rgba.tobytes())
    return img, color.astype(np.float64) + 255 - alpha[..., None]


def case_cmyk():
    cmyk = u8(4).astype(np.float64)
    img = Image.fromarray(cmyk.astype(np.uint8), "CMYK")
    return img, (255 - cmyk[..., :3]) * (255 - cmyk[..., 3:]) / 255


def case_ycbcr():
    ycc = u8(3)
    y, cb, cr = (ycc[..., i].astype(np.float64) for i in range(3))
    rgb = np.stack(
        [
            y + 1.402 * (cr - 128),
            y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128),
            y + 1.772 * (cb - 128),
        ],
        -1,
    )
    return Image.fromarray(ycc, "YCbCr"), np.clip(rgb, 0, 255)


def case_hsv():
    hsv = u8(3)
    rgb = [[colorsys.hsv_to_rgb(*(px / 255)) for px in row] for row in hsv]
    return Image.fromarray(hsv, "HSV"), np.array(rgb) * 255


def case_lab():
    # Colours well inside the sRGB gamut (|a|, |b| < 10 at mid lightness): out of it, each
    # library clips its own way.
    lightness = RNG.uniform(40, 80, SHAPE)
    a, b = RNG.integers(-10, 10, SHAPE), RNG.integers(-10, 10, SHAPE)
    stored = np.stack([np.rint(lightness * 255 / 100), a % 256, b % 256], -1).astype(np.uint8)
    exact = np.stack([stored[..., 0] / 255 * 100, a, b], -1).astype(np.float64)
    return Image.fromarray(stored, "LAB"), lab2rgb(exact) * 255


def sixteen_bit(mode: str):
    values = RNG.integers(0, 65536, SHAPE).astype(np.uint16)
    dtype = ">u2" if mode == "I;16B" else "<u2"
    img = Image.frombytes(mode, (SHAPE[1], SHAPE[0]), values.astype(dtype).tobytes())
    return img, gray(values / 257)


def case_i32():
    values = RNG.integers(0, 65536, SHAPE).astype(np.int32)
    return Image.fromarray(values, "I"), gray(values / 257)


def case_float_unit():
    values = RNG.uniform(0, 1, SHAPE).astype(np.float32)
    return Image.fromarray(values, "F"), gray(values * 255.0)


def case_float_bytes():
    values = RNG.uniform(-10, 300, SHAPE).astype(np.float32)
    return Image.fromarray(values, "F"), gray(values)


CASES = {
    "1": case_1,
    "L": case_l,
    "LA": case_la,
    "La": case_la_premultiplied,
    "P": lambda: palette_image(False),
    "PA": lambda: palette_image(True),
    "RGB": case_rgb,
    "RGBA": case_rgba,
    "RGBa": case_rgba_premultiplied,
    "CMYK": case_cmyk,
    "YCbCr": case_ycbcr,
    "HSV": case_hsv,
    "LAB": case_lab,
    "I;16": lambda: sixteen_bit("I;16"),
    "I;16L": lambda: sixteen_bit("I;16L"),
    "I;16B": lambda: sixteen_bit("I;16B"),
    "I": case_i32,
    "F 0..1": case_float_unit,
    "F 0..255": case_float_bytes,
}
# Rounding of the reference vs Pillow's integer arithmetic (premultiplied alpha is rounded
# twice); LAB goes through LittleCMS (a D50 connection space adapted to sRGB's D65) and
# scikit-image (D65 directly), which differ by up to ~1.5% in red.
TOLERANCE = {"LAB": 4.0, "La": 2.0, "RGBa": 2.0}


@pytest.mark.parametrize("mode", sorted(CASES))
def test_every_mode_decodes_like_its_reference_conversion(mode):
    img, expected = CASES[mode]()
    assert img.mode == mode.split()[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rgb = to_rgb(img)
    assert rgb.mode == "RGB" and rgb.size == img.size
    diff = np.abs(np.asarray(rgb, dtype=np.float64) - expected)
    assert diff.max() <= TOLERANCE.get(mode, 1.0), (mode, diff.max())


def test_a_16_bit_grayscale_png_is_not_a_white_square(tmp_path):
    gradient = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    path = tmp_path / "depth.png"
    Image.fromarray(gradient).save(path)
    with Image.open(path) as img:
        assert img.mode.startswith("I")  # what Pillow makes of it
    pixels = np.asarray(load_rgb(path), dtype=np.float64)
    assert (pixels == 255).mean() < 0.01  # was 99.6% before
    assert np.abs(pixels - gray(gradient / 257)).max() <= 1


def test_a_transparent_colour_in_a_grayscale_png_becomes_white(tmp_path):
    values = u8()
    values[0, 0] = 7
    path = tmp_path / "trns.png"
    Image.fromarray(values, "L").save(path, transparency=7)
    pixels = np.asarray(load_rgb(path))
    expected = gray(np.where(values == 7, 255, values))
    assert np.array_equal(pixels, expected)
