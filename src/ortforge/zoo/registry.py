"""Which real models the zoo knows: one pinned wheel member per entry, with its license and what it does.

Nothing here touches the network or the disk; fetching is `ortforge.zoo.wheels`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ortforge.core.errors import UserError

ZOO_PREFIX = "zoo:"


@dataclass(frozen=True)
class ZooEntry:
    """One model inside one pinned wheel, and what it is."""

    name: str
    package: str
    version: str
    member: str
    license: str
    description: str
    family: str
    # Other wheel members the model needs beside it (e.g. magika's feature-size config).
    companions: tuple[str, ...] = ()


_RAPIDOCR = ("rapidocr-onnxruntime", "1.4.4")

ZOO: dict[str, ZooEntry] = {
    entry.name: entry
    for entry in (
        ZooEntry(
            "magika",
            "magika",
            "1.0.3",
            "magika/models/standard_v3_3/model.onnx",
            "Apache-2.0",
            "Google's file-type classifier: 2048 bytes from a file's start and end -> 214 content types",
            "mlp",
            companions=("magika/models/standard_v3_3/config.min.json",),
        ),
        ZooEntry(
            "ppocr-det",
            *_RAPIDOCR,
            "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
            "Apache-2.0",
            "PP-OCRv4 text detector (DB): image -> per-pixel text probability map",
            "cnn",
        ),
        ZooEntry(
            "ppocr-cls",
            *_RAPIDOCR,
            "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
            "Apache-2.0",
            "PP-OCR text-line direction classifier: 48x192 crop -> upright or rotated 180 degrees",
            "cnn",
        ),
        ZooEntry(
            "ppocr-rec",
            *_RAPIDOCR,
            "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
            "Apache-2.0",
            "PP-OCRv4 text recogniser (SVTR-LCNet, CTC): 48-pixel-high text line -> characters",
            "cnn+attention",
        ),
        ZooEntry(
            "silero-vad",
            "silero-vad",
            "6.2.3",
            "silero_vad/data/silero_vad.onnx",
            "MIT",
            "Silero voice activity detector: 32 ms of 16 kHz audio + LSTM state -> speech probability",
            "rnn",
        ),
    )
}


def entries() -> list[ZooEntry]:
    """Every zoo model, in a stable order (for listings)."""
    return list(ZOO.values())


def lookup(name: str) -> ZooEntry:
    """The entry called `name`; an unknown name is a user error listing the known ones."""
    if name not in ZOO:
        raise UserError(f"unknown zoo model '{name}'", hint=f"known: {', '.join(ZOO)}")
    return ZOO[name]


def is_zoo_reference(text: str) -> bool:
    """Whether a model argument names a zoo model ('zoo:magika') rather than a file."""
    return text.startswith(ZOO_PREFIX)
