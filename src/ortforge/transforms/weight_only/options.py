"""`WeightOnlyOptions` and the settings ORT's block quantizer accepts."""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from ortforge.core.errors import OptionError
from ortforge.core.options import option

BITS = (4, 8)
# MLAS's blockwise quantizer accepts exactly these (it aborts on 24, 512, ...).
BLOCK_SIZES = (16, 32, 64, 128, 256)
# MatMulNBits accuracy_level: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 compute (activations quantized on the fly).
ACCURACY_LEVELS = (0, 1, 2, 3, 4)
OP_TYPES = ("MatMul", "Gemm", "Gather")
# ORT's algorithms: rtn (its default blockwise round-to-nearest, in C++), k_quant (llama.cpp-style k-quants, ORT's
# bundled neural-compressor code), hqq (half-quadratic: needs torch), gptq (weights fitted to calibration activations
# by our own GPTQ, `gptq.py`: ORT's fits nothing; then packed as rtn packs).
ALGORITHMS = ("rtn", "k_quant", "hqq", "gptq")
FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)


@dataclass(frozen=True)
class WeightOnlyOptions:
    """What to quantize and how; checked on construction so impossible settings fail before any work."""

    bits: int = option(4, choices=BITS, help="weight bits (int4 mode: 4)")
    block_size: int = option(32, choices=BLOCK_SIZES, help="weights per quantization block")
    symmetric: bool = option(False, help="symmetric blocks, no zero points (asymmetric, ORT's default, is more accurate)")
    # Level 4 (int8 compute) is what makes MatMulNBits fast on CPUs: unset, 8-bit weights ran 7.5x slower than fp32.
    accuracy_level: int = option(4, choices=ACCURACY_LEVELS, help="MatMulNBits compute type: 4 = int8 (fast on CPU), 0 = leave it to ORT")
    op_types: tuple[str, ...] = option(("MatMul", "Gemm"), choices=OP_TYPES, metavar="OP", help="op types whose weights are quantized (Gather, embeddings, is opt-in)")
    exclude: tuple[str, ...] = option((), metavar="NODE|OP", help="node names or op types left in float")
    algorithm: str = option("rtn", choices=ALGORITHMS, help="how blocks are fitted: rtn (round to nearest, ORT's default), k_quant "
                            "(k-quants), hqq (half-quadratic, needs torch), gptq (fitted to the calibration data, --calib)")  # fmt: skip

    mode = "weight-only"  # what `ortforge quantize --mode` calls it; not a field

    def describe(self) -> str:
        """A short label, e.g. 'weight-only int4 block 32 asym level 4 MatMul+Gemm'."""
        level = f" level {self.accuracy_level}" if self.accuracy_level else " level unset"
        symmetry = "sym" if self.symmetric else "asym"
        algorithm = "" if self.algorithm == "rtn" else f" {self.algorithm}"
        return f"weight-only int{self.bits}{algorithm} block {self.block_size} {symmetry}{level} {'+'.join(self.op_types)}"

    def __post_init__(self) -> None:
        object.__setattr__(self, "op_types", tuple(self.op_types))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if isinstance(self.bits, bool) or self.bits not in BITS:
            raise OptionError("bits", self.bits, f"weight-only quantization supports {' or '.join(map(str, BITS))} bits")
        if isinstance(self.block_size, bool) or self.block_size not in BLOCK_SIZES:
            raise OptionError("block_size", self.block_size, f"choose one of {', '.join(map(str, BLOCK_SIZES))}",
                              hint="ORT's block quantizer accepts only these powers of two")
        if self.accuracy_level not in ACCURACY_LEVELS:
            raise OptionError("accuracy_level", self.accuracy_level, "choose 0-4 (4 = int8 compute on CPU, 0 = leave it to ORT)")
        unknown = [op for op in self.op_types if op not in OP_TYPES]
        if unknown or not self.op_types:
            raise OptionError("op_types", ", ".join(unknown) or "(none)", f"weight-only quantization handles {', '.join(OP_TYPES)}")
        if self.algorithm not in ALGORITHMS:
            raise OptionError("algorithm", self.algorithm, f"choose one of {', '.join(ALGORITHMS)}")
        if self.algorithm != "rtn" and "Gather" in self.op_types:
            raise OptionError("algorithm", self.algorithm, "embeddings (Gather) are quantized with rtn only", hint="leave Gather out, or use rtn")
        if self.algorithm == "k_quant" and (self.bits, self.block_size) != (4, 32):
            raise OptionError("algorithm", self.algorithm, "ORT's k-quants are 4 bits in blocks of 32", hint="use bits 4, block size 32")
        if "Gather" in self.op_types and self.bits != 4:
            raise OptionError("bits", self.bits, "Gather is quantized at 4 bits only (ORT's GatherBlockQuantized path)",
                              hint="use bits 4, or leave Gather out of the op types")
