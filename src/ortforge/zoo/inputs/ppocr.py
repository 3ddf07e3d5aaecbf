"""PP-OCR's realistic inputs: text rendered with Pillow, preprocessed as rapidocr does.

The detector gets pages with a few lines of text; the direction classifier and the recogniser get
single text lines cut as a detector box would, at the input sizes rapidocr uses.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ortforge.core.errors import UserError
from ortforge.zoo.inputs.realistic import Realistic
from ortforge.zoo.registry import ZooEntry

_WORDS = (
    "invoice", "total", "date", "order", "customer", "shipping", "address", "street", "payment", "due",
    "amount", "tax", "subtotal", "phone", "email", "account", "balance", "receipt", "store", "item",
    "quantity", "price", "discount", "reference", "meeting", "room", "floor", "north", "open", "daily",
    "hours", "exit", "parking", "station", "platform", "ticket", "welcome", "menu", "coffee", "bread",
    "fresh", "sale", "model", "version", "report", "summary", "delivery", "service", "office", "main",
    "market", "garden", "river", "bridge", "city", "center", "hotel", "library", "museum", "closed",
)  # fmt: skip
# rapidocr's settings (config.yaml): detector short side 736, classifier 3x48x192, recogniser 3x48x320.
_DET_SHORT_SIDE = 736
_DET_MULTIPLE = 32
_DET_PAGE = (480, 320)  # width, height of the rendered page before the detector's resize
_LINE_HEIGHT = 48
_CLS_WIDTH = 192
_REC_WIDTH = 320


def _pillow() -> Any:
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        raise UserError("zoo: rendering text for the OCR models needs Pillow: pip install 'ortforge[zoo]'") from None
    return Image, ImageDraw, ImageFont


def _text_line(rng: np.random.Generator, max_tokens: int) -> str:
    """A short line like those on receipts, signs and forms: words mixed with numbers."""
    tokens = []
    for _ in range(int(rng.integers(1, max_tokens + 1))):
        kind = rng.random()
        if kind < 0.65:
            word = str(rng.choice(_WORDS))
            tokens.append(word.capitalize() if rng.random() < 0.4 else word)
        elif kind < 0.75:
            tokens.append(f"${rng.integers(1, 500)}.{rng.integers(0, 100):02d}")
        elif kind < 0.85:
            tokens.append(f"{rng.integers(2019, 2026)}-{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d}")
        elif kind < 0.93:
            tokens.append(f"{rng.integers(6, 23)}:{rng.integers(0, 60):02d}")
        else:
            tokens.append(f"No.{rng.integers(10, 9999)}")
    tokens[0] = tokens[0][:1].upper() + tokens[0][1:]
    return " ".join(tokens)


def _paper(rng: np.random.Generator) -> tuple[int, ...]:
    return tuple(int(value) for value in rng.integers(215, 256, size=3))


def _ink(rng: np.random.Generator) -> tuple[int, ...]:
    return tuple(int(value) for value in rng.integers(0, 90, size=3))


def _text_crop(rng: np.random.Generator, text: str, size: int) -> Any:
    """One text line on tinted paper with a small margin, as a detector box would cut it."""
    Image, ImageDraw, ImageFont = _pillow()
    font = ImageFont.load_default(size=size)
    left, top, right, bottom = font.getbbox(text)
    margin_x = int(rng.integers(2, size // 2 + 3))
    margin_y = int(rng.integers(2, size // 4 + 3))
    image = Image.new("RGB", (right - left + 2 * margin_x, bottom - top + 2 * margin_y), _paper(rng))
    ImageDraw.Draw(image).text((margin_x - left, margin_y - top), text, font=font, fill=_ink(rng))
    return image


def _fitting_crop(rng: np.random.Generator, max_ratio: float) -> tuple[Any, str, int]:
    """A text-line crop no wider than max_ratio x its height (so batches keep one shape)."""
    size = int(rng.integers(18, 40))
    words = _text_line(rng, 4).split()
    while True:
        text = " ".join(words)
        crop = _text_crop(rng, text, size)
        if crop.width <= max_ratio * crop.height or len(words) == 1:
            return crop, text, size
        words.pop()


def _bgr(image: Any) -> np.ndarray:
    # rapidocr works on OpenCV images, whose channels are blue, green, red.
    return np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])


def _normalised_chw(bgr: np.ndarray) -> np.ndarray:
    """(x/255 - 0.5) / 0.5 in channel-first order, as all three PP-OCR models expect."""
    return ((bgr.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)


def _resized(bgr: np.ndarray, width: int, height: int) -> np.ndarray:
    Image, _, _ = _pillow()
    return np.asarray(Image.fromarray(bgr).resize((width, height), Image.BILINEAR))


def _det_input(bgr: np.ndarray) -> np.ndarray:
    """rapidocr's detector preprocessing: short side up to 736, sides rounded to multiples of 32."""
    height, width = bgr.shape[:2]
    ratio = _DET_SHORT_SIDE / min(height, width) if min(height, width) < _DET_SHORT_SIDE else 1.0
    new_height = int(round(int(height * ratio) / _DET_MULTIPLE) * _DET_MULTIPLE)
    new_width = int(round(int(width * ratio) / _DET_MULTIPLE) * _DET_MULTIPLE)
    return _normalised_chw(_resized(bgr, new_width, new_height))[np.newaxis]


def _line_input(bgr: np.ndarray, width: int) -> np.ndarray:
    """rapidocr's cls/rec preprocessing: height 48, width by aspect ratio up to `width`, zero padding right."""
    height, source_width = bgr.shape[:2]
    resized_width = min(width, math.ceil(_LINE_HEIGHT * source_width / height))
    padded = np.zeros((3, _LINE_HEIGHT, width), dtype=np.float32)
    padded[:, :, :resized_width] = _normalised_chw(_resized(bgr, resized_width, _LINE_HEIGHT))
    return padded[np.newaxis]


def _det_page(rng: np.random.Generator) -> tuple[Any, list[str]]:
    """A tinted page with a few lines of text of different sizes at different places."""
    Image, ImageDraw, ImageFont = _pillow()
    page_width, page_height = _DET_PAGE
    page = Image.new("RGB", _DET_PAGE, _paper(rng))
    draw = ImageDraw.Draw(page)
    lines: list[str] = []
    y = int(rng.integers(8, 40))
    while True:
        size = int(rng.integers(14, 31))
        font = ImageFont.load_default(size=size)
        words = _text_line(rng, 6).split()
        while len(words) > 1 and font.getlength(" ".join(words)) > page_width - 16:
            words.pop()
        text = " ".join(words)
        left, top, right, bottom = font.getbbox(text)
        if y + bottom - top > page_height - 8:
            break
        x = int(rng.integers(8, max(9, page_width - (right - left) - 8)))
        draw.text((x - left, y - top), text, font=font, fill=_ink(rng))
        lines.append(text)
        y += bottom - top + int(rng.integers(size // 2, 2 * size))
    return page, lines


def det_feeds(entry: ZooEntry, count: int, seed: int) -> Realistic:
    """Rendered pages of a few text lines each, as the detector gets them."""
    rng = np.random.default_rng(seed)
    samples, notes = [], []
    for index in range(count):
        page, lines = _det_page(rng)
        samples.append({"x": _det_input(_bgr(page))})
        notes.append(f"sample {index}: {len(lines)} lines: " + " | ".join(lines))
    return Realistic(samples, notes, f"rendered {_DET_PAGE[0]}x{_DET_PAGE[1]} pages of text, rapidocr preprocessing")


def _text_line_crops(count: int, seed: int) -> list[tuple[Any, str, int]]:
    """`count` seeded (crop, text, font size) text lines, each fitting the recogniser's 320x48 input."""
    rng = np.random.default_rng(seed)
    return [_fitting_crop(rng, max_ratio=_REC_WIDTH / _LINE_HEIGHT) for _ in range(count)]


def cls_feeds(entry: ZooEntry, count: int, seed: int) -> Realistic:
    """Text-line crops for the direction classifier, every other one upside down."""
    samples, notes = [], []
    for index, (crop, text, size) in enumerate(_text_line_crops(count, seed)):
        # Every other line upside down, so even two samples hold both classes the model tells apart.
        upside_down = index % 2 == 1
        if upside_down:
            crop = crop.rotate(180)
        samples.append({"x": _line_input(_bgr(crop), _CLS_WIDTH)})
        notes.append(f'sample {index}: "{text}" {size}px' + (", rotated 180 degrees" if upside_down else ", upright"))
    return Realistic(samples, notes, "rendered text lines, odd samples rotated 180 degrees, rapidocr preprocessing")


def rec_feeds(entry: ZooEntry, count: int, seed: int) -> Realistic:
    """Text-line crops for the recogniser; the notes hold the rendered text to read back."""
    samples, notes = [], []
    for index, (crop, text, size) in enumerate(_text_line_crops(count, seed)):
        # rapidocr widens the batch beyond 320 for lines longer than 320/48 (never the case here).
        width = max(_REC_WIDTH, int(_LINE_HEIGHT * crop.width / crop.height))
        samples.append({"x": _line_input(_bgr(crop), width)})
        notes.append(f'sample {index}: "{text}" {size}px')
    return Realistic(samples, notes, "rendered text lines, rapidocr preprocessing")
