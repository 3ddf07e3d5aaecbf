"""Transformer fusion: fuse with the fuser that fits the export, using what detection found in the graph.

Two fusers exist and each only fits some exports: ORT's `onnxruntime.transformers` optimizer matches
TorchScript-style graphs (and needs heads/hidden when the reshape constants say -1 for the heads), while
onnxscript's `ort_fusions` matches dynamo exports. A decoder with a KV cache and decomposed attention goes first
to our own rewrite into GroupQueryAttention (`decoder_attention.py`), which current Hugging Face exports need (ORT's
rules match none of their attention). `fuse_transformer` picks by export style, falls back
to the next when no attention got fused, and reports the fused-operator counts. Whether the fused model
is kept is for the caller to decide by measuring: fused CPU kernels are not always faster. Model type,
heads and hidden size come from `analysis.transformer.detect_transformer`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import onnx

from ortforge.analysis.decoder import find_decoder
from ortforge.analysis.patterns import ATTENTION_OPS
from ortforge.analysis.transformer import MODEL_TYPES, TransformerInfo, detect_transformer
from ortforge.core import runtime
from ortforge.core.errors import OptionError, UserError
from ortforge.core.model import (
    EXTERNAL_DATA_THRESHOLD,
    Model,
    loaded_copy,
    save_model,
    weight_bytes,
)
from ortforge.core.options import option
from ortforge.transforms import TransformResult, op_count_changes, op_counts
from ortforge.transforms.decoder_attention import DEFAULT_MAX_POSITIONS, fuse_decoder_attention

# Model types ORT's optimizer knows beyond the ones detection finds; a user may force any of them.
ORT_EXTRA_MODEL_TYPES = ("bert_tf", "bert_keras", "gpt2_tf", "gpt_neox", "swin", "tnlr", "conformer", "phi",
                         "qwen3", "sam2", "unet", "vae", "mmdit")
FUSERS = ("auto", "gqa", "ort", "onnxscript")
OPT_LEVELS = (None, 0, 1, 2, 99)

# ortforge's name of a fusion -> ORT FusionOptions attribute and the value that turns it off.
ORT_SWITCHES = {
    "attention": ("enable_attention", False),
    "skip_layer_norm": ("enable_skip_layer_norm", False),
    "bias_skip_layer_norm": ("enable_bias_skip_layer_norm", False),
    "embed_layer_norm": ("enable_embed_layer_norm", False),
    "layer_norm": ("enable_layer_norm", False),
    "gelu": ("enable_gelu", False),
    "bias_gelu": ("enable_bias_gelu", False),
    "rotary_embeddings": ("enable_rotary_embeddings", False),
    "qordered_matmul": ("enable_qordered_matmul", False),
    "shape_inference": ("enable_shape_inference", False),
    "multi_head_attention_bias": ("disable_multi_head_attention_bias", True),
    # Stable-diffusion models (unet, vae, clip) only.
    "group_norm": ("enable_group_norm", False),
    "skip_group_norm": ("enable_skip_group_norm", False),
    "nhwc_conv": ("enable_nhwc_conv", False),
    "bias_splitgelu": ("enable_bias_splitgelu", False),
    "packed_qkv": ("enable_packed_qkv", False),
    "packed_kv": ("enable_packed_kv", False),
    "bias_add": ("enable_bias_add", False),
}
# Fusions ORT leaves off by default; `enabled` turns them on.
ORT_OPT_IN = {
    "gelu_approximation": ("enable_gelu_approximation", True),
    "gemm_fast_gelu": ("enable_gemm_fast_gelu", True),
    "multi_head_attention": ("use_multi_head_attention", True),
}
MASK_FORMATS = {"auto": None, "index": 0, "index_start_end": 1, "raw": 2, "none": 3}

# What the fusers write: the attention ops among them are counted as fused attention (patterns.ATTENTION_OPS).
FUSED_OPS = (
    "Attention", "MultiHeadAttention", "GroupQueryAttention", "PackedAttention", "PackedMultiHeadAttention",
    "QOrderedAttention", "EmbedLayerNormalization", "SkipLayerNormalization", "SkipSimplifiedLayerNormalization",
    "LayerNormalization", "SimplifiedLayerNormalization", "BiasGelu", "FastGelu", "Gelu", "QuickGelu", "GemmFastGelu",
    "BiasAdd", "BiasSplitGelu", "BiasSoftmax", "RotaryEmbedding", "GroupNorm", "SkipGroupNorm", "FusedMatMul",
)
# ORT turns these off before its own fusion at opt_level > 1: they rewrite the MatMul/Softmax chains
# the attention patterns look for.
ORT_PREPASS_BLOCKERS = ["MatMulScaleFusion", "MatMulAddFusion", "MatmulTransposeFusion", "GemmActivationFusion",
                        "BiasSoftmaxFusion"]
LIBRARY_PATHS = ("onnxruntime/transformers", "onnxruntime\\transformers", "onnxscript")


# ---------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FusionOptions:
    """How to fuse. Defaults match ORT's optimizer; 0 for heads/hidden means 'detect from the graph'."""

    model_type: str = option("auto", flag="--transformer", metavar="TYPE",
                             help="auto, or bert, gpt2, bart, t5, vit, clip, ... (with auto the type is found from the graph)")  # fmt: skip
    num_heads: int = option(0, help="attention heads (0: found from the graph)")
    hidden_size: int = option(0, help="hidden size (0: found from the graph)")
    fuser: str = option("auto", choices=FUSERS, help="ortforge's GroupQueryAttention rewrite (decoders), ORT's transformer optimizer or "
                        "onnxscript's fuser (dynamo exports); auto: by export style")  # fmt: skip
    opt_level: int | None = option(None, choices=OPT_LEVELS[1:], flag="--fusion-opt-level", help="ORT graph optimization before ORT's fusion "
                                   "(default: ORT's per model type)")  # fmt: skip
    only_onnxruntime: bool = option(False, help="ORT's graph optimizer only, none of its Python fusions")
    use_gpu: bool = option(False, help="fuse for a GPU EP (opt levels above 1 may insert GPU-only ops)")
    disabled: tuple[str, ...] = option((), flag="--disable-fusion", metavar="NAME", help=f"fusions to skip: {', '.join(ORT_SWITCHES)}")
    enabled: tuple[str, ...] = option((), flag="--enable-fusion", metavar="NAME", help=f"opt-in fusions: {', '.join(ORT_OPT_IN)}")
    attention_mask_format: str = option("auto", choices=tuple(MASK_FORMATS), help="how the fused attention reads the mask (auto: ORT's per type)")
    max_positions: int = option(DEFAULT_MAX_POSITIONS, help="rows of the rotary tables a decoder's GroupQueryAttention gets: "
                                "longer contexts fail to run")  # fmt: skip
    external_data: bool | None = None  # for whoever saves the result; None: only when the weights near 2 GB

    def __post_init__(self) -> None:
        known_types = ("auto",) + MODEL_TYPES + ORT_EXTRA_MODEL_TYPES
        if self.model_type not in known_types:
            raise OptionError("model_type", self.model_type, f"not a known model type (one of {', '.join(known_types)})")
        if self.fuser not in FUSERS:
            raise OptionError("fuser", self.fuser, f"choose one of {', '.join(FUSERS)}")
        if self.opt_level not in OPT_LEVELS:
            raise OptionError("opt_level", self.opt_level, "choose one of 0, 1, 2, 99")
        for name, value in (("num_heads", self.num_heads), ("hidden_size", self.hidden_size)):
            if not isinstance(value, int) or value < 0:
                raise OptionError(name, value, "must be a non-negative integer (0 = found from the graph)")
        _check_names("disabled", self.disabled, ORT_SWITCHES)
        _check_names("enabled", self.enabled, ORT_OPT_IN)
        if self.attention_mask_format not in MASK_FORMATS:
            raise OptionError("attention_mask_format", self.attention_mask_format, f"choose one of {', '.join(MASK_FORMATS)}")
        if not isinstance(self.max_positions, int) or self.max_positions < 1:
            raise OptionError("max_positions", self.max_positions, "give the longest context (positions) the model must take")
        if self.only_onnxruntime and self.opt_level == 0:
            raise OptionError("opt_level", 0, "only_onnxruntime needs 1, 2 or 99 (0 leaves ORT nothing to do)")
        if self.only_onnxruntime and self.fuser == "onnxscript":
            raise OptionError("fuser", self.fuser, "only_onnxruntime uses ORT's graph optimizer; it cannot go with the onnxscript fuser")

    def to_dict(self) -> dict:
        return asdict(self)


def _check_names(option: str, names: tuple[str, ...], known: dict) -> None:
    if isinstance(names, str):
        raise OptionError(option, names, "give a tuple of names, not one string")
    for name in names:
        if name not in known:
            raise OptionError(option, name, f"not one of {', '.join(known)}")


# ---------------------------------------------------------------------------------------------
# Fusion
# ---------------------------------------------------------------------------------------------


@dataclass
class _Attempt:
    """One fuser's output (None when it failed or ORT cannot load it) and what it did."""

    fuser: str
    proto: onnx.ModelProto | None
    notes: list[str]
    counts: dict[str, int] = field(default_factory=dict)  # the fuser's own per-pattern counts, if any
    fused: dict[str, int] = field(default_factory=dict)
    changes: list[str] = field(default_factory=list)  # what a fuser of ours says it did

    def __post_init__(self) -> None:
        self.fused = fused_op_counts(self.proto) if self.proto is not None else {}

    @property
    def ok(self) -> bool:
        return self.proto is not None

    @property
    def attention(self) -> int:
        return sum(self.fused.get(op, 0) for op in ATTENTION_OPS)

    @property
    def nodes(self) -> int:
        return len(self.proto.graph.node) if self.proto is not None else 0

    def to_dict(self) -> dict:
        return {"fuser": self.fuser, "ok": self.ok, "attention_ops": self.attention, "nodes": self.nodes,
                "fused_ops": self.fused, "counts": self.counts}


def fused_op_counts(proto: onnx.ModelProto) -> dict[str, int]:
    """Count of each fused-operator type in the model (any domain), zero counts left out."""
    counts: Counter = Counter()
    for op, count in op_counts(proto).items():
        name = op.rsplit(":", 1)[-1]
        if name in FUSED_OPS:
            counts[name] += count
    return dict(sorted(counts.items()))


def fuse_transformer(model: Model, options: FusionOptions | None = None) -> TransformResult:
    """Fuse a transformer's attention, norms and activations with the fuser that fits its export.

    Heads and hidden size come from the graph unless given. The result's `details` hold fused-op counts,
    node counts, the fuser used and the detection; it is not measured or verified here.
    """
    options = options or FusionOptions()
    info = detect_transformer(model)
    facts = find_decoder(model.proto) if options.model_type == "auto" else None
    decoder = facts is not None
    model_type, heads, hidden, notes = _resolve(info, options, decoder)
    if decoder and options.opt_level is None:  # ORT's graph optimizer first would reshape what the rotary patterns expect
        options = replace(options, opt_level=0)
    attempts = []
    decomposed = decoder and facts.decomposed and "attention" not in options.disabled
    for fuser in _fuser_order(info, options, notes, decomposed):
        attempt = _run_fuser(fuser, model, model_type, heads, hidden, options)
        attempts.append(attempt)
        if attempt.ok and (attempt.attention or "attention" in options.disabled or info.attention_blocks == 0):
            break
    best = _best(attempts)
    if decoder and any(attempt.fuser == "ort" for attempt in attempts):
        notes.append("a decoder LM with a KV cache: ORT's fuser used its gpt2 rules (attention over past keys, rotary embeddings), "
                     "without ORT's graph optimizer before them")  # fmt: skip
    for attempt in attempts:
        notes.extend(attempt.notes)
    if len(attempts) > 1:
        notes.append(_attempts_note(attempts, best))
    return _result(model, best, attempts, info, model_type, heads, hidden, options, notes)


def _best(attempts: list[_Attempt]) -> _Attempt | None:
    """Most attention fused wins, then fewest nodes; max() keeps the first of equals (the fitting fuser)."""
    usable = [attempt for attempt in attempts if attempt.ok]
    return max(usable, key=lambda a: (a.attention, -a.nodes)) if usable else None


def _resolve(info: TransformerInfo, options: FusionOptions, decoder: bool = False) -> tuple[str, int, int, list[str]]:
    """Model type, heads and hidden size to fuse with: the user's where given, else the detected ones; a decoder LM with a
    KV cache gets ORT's gpt2 rules, whose rotary attention fusion ORT's own Llama export relies on (its list has no
    llama: a decomposed Llama layer went from 100 nodes to 40, attention and rotary fused, where t5's rules fused none)."""
    notes = []
    model_type = options.model_type if options.model_type != "auto" else info.model_type
    if decoder:
        model_type = "gpt2"
    if model_type == "unknown":
        model_type = "bert"
        notes.append("model type not recognised from the graph: fused with ORT's generic 'bert' rules (force it with model_type, --transformer)")
    heads = options.num_heads or info.num_heads
    hidden = options.hidden_size or info.hidden_size
    for name, given, found in (("num_heads", options.num_heads, info.num_heads), ("hidden_size", options.hidden_size, info.hidden_size)):
        if given and found and given != found:
            notes.append(f"{name} {given} given, the graph suggests {found}: used {given}")
    return model_type, heads, hidden, notes


def _fuser_order(info: TransformerInfo, options: FusionOptions, notes: list[str], decomposed_decoder: bool = False) -> list[str]:
    """The user's fuser, else by export style, our GroupQueryAttention rewrite first for a decoder with decomposed attention."""
    if options.fuser != "auto":
        if options.fuser == "onnxscript":
            _require_onnxscript()
        return [options.fuser]
    if options.only_onnxruntime:
        return ["ort"]
    order = ["onnxscript", "ort"] if info.export_style == "dynamo" else ["ort", "onnxscript"]
    if not _onnxscript_available():
        notes.append("onnxscript is not installed: only ORT's fuser was tried (pip install 'ortforge[fusion]')")
        order = ["ort"]
    return ["gqa", *order] if decomposed_decoder else order


def _attempts_note(attempts: list[_Attempt], best: _Attempt | None) -> str:
    tried = ", ".join(f"{a.fuser}: {a.attention} attention op(s), {a.nodes} nodes" if a.ok else f"{a.fuser}: failed" for a in attempts)
    return f"tried {tried}; kept {best.fuser if best else 'neither'}"


def _run_fuser(fuser: str, model: Model, model_type: str, heads: int, hidden: int, options: FusionOptions) -> _Attempt:
    """One fuser's attempt. The fusers are pattern matchers that can trip over graphs they half-match,
    so their failures, and outputs ORT cannot load, are recorded rather than raised."""
    notes: list[str] = []
    label = _FUSER_NAMES[fuser]
    if fuser == "gqa":
        return _gqa_attempt(model, options)
    with _library_output(notes):
        try:
            if fuser == "ort":
                proto, counts = _ort_fuse(model, model_type, heads, hidden, options), {}
            else:
                proto, counts = _onnxscript_fuse(model, options)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure inside the fuser library
            notes.append(f"{label} failed on this graph ({type(exc).__name__}: {_first_line(exc)}); its result is not used")
            return _Attempt(fuser, None, notes)
    problem = _load_problem(proto, model, options)
    if problem:
        notes.append(f"{label} produced a model ORT cannot load ({problem}); its result is not used")
        return _Attempt(fuser, None, notes)
    return _Attempt(fuser, proto, notes, counts)


_FUSER_NAMES = {"gqa": "ortforge's GroupQueryAttention rewrite", "ort": "ORT's transformers optimizer",
                "onnxscript": "onnxscript's ort_fusions"}


def _gqa_attempt(model: Model, options: FusionOptions) -> _Attempt:
    """Our rewrite of a decoder's decomposed attention; loaded by ORT before it counts, like the libraries' results."""
    result = fuse_decoder_attention(model, options.max_positions)
    if not result.changed:
        return _Attempt("gqa", None, [f"{_FUSER_NAMES['gqa']}: {note}" for note in result.notes])
    problem = _load_problem(result.proto, model, options)
    if problem:
        return _Attempt("gqa", None, [f"{_FUSER_NAMES['gqa']} produced a model ORT cannot load ({problem}); its result is not used"])
    return _Attempt("gqa", result.proto, result.notes, changes=result.changes)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().replace("<in-memory model>: ", "")
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _load_problem(proto: onnx.ModelProto, model: Model, options: FusionOptions) -> str:
    """Why ORT refuses the fused model, or '' if it loads (on CPU, with ORT's default graph optimizations,
    which is where some half-fused graphs first fail)."""
    if options.use_gpu or weight_bytes(proto) > EXTERNAL_DATA_THRESHOLD:
        return ""  # GPU-only fused ops may lack CPU kernels; over 2 GB cannot go to ORT as bytes
    from ortforge.core.model import from_proto
    from ortforge.core.session import SessionConfig

    try:
        SessionConfig().build(from_proto(proto, base_dir=model.base_dir))
    except Exception as exc:  # noqa: BLE001 - UserError from ortforge or ORT's own exceptions
        return _first_line(exc)
    return ""


def _result(model: Model, best: _Attempt | None, attempts: list[_Attempt], info: TransformerInfo, model_type: str,
            heads: int, hidden: int, options: FusionOptions, notes: list[str]) -> TransformResult:
    if best is None:
        proto = onnx.ModelProto()
        proto.CopyFrom(model.proto)
        best = _Attempt("none", proto, [])
    before_nodes, after_nodes = len(model.proto.graph.node), best.nodes
    fused_before = fused_op_counts(model.proto)
    new_fused = {op: count - fused_before.get(op, 0) for op, count in best.fused.items() if count > fused_before.get(op, 0)}
    changes_by_op = op_count_changes(model.proto, best.proto)
    changed = best.fuser != "none" and (bool(changes_by_op) or before_nodes != after_nodes)
    changes = list(best.changes)
    if new_fused and not changes:
        listed = ", ".join(f"{count} {op}" for op, count in new_fused.items())
        changes.append(f"fused {listed} ({_FUSER_NAMES[best.fuser]}, {model_type}, {heads or '?'} heads, hidden {hidden or '?'})")
    if not best.changes:
        changes.append(f"nodes {before_nodes} -> {after_nodes}" if changed else "no fusion applied")
    if best.fuser == "ort" and best.attention and model_type == "bert" and options.attention_mask_format == "auto":
        notes.append("fused attention reads the mask as one length per row (ORT's default for bert): right-padded "
                     "batches only; attention_mask_format 'raw' keeps any 0/1 mask")
    if weight_bytes(best.proto) > EXTERNAL_DATA_THRESHOLD:
        notes.append("the fused model's weights are too big for one .onnx file: save it with external data before running it")
    details = {
        "fuser": best.fuser,
        "model_type": model_type,
        "num_heads": heads,
        "hidden_size": hidden,
        "detected": info.to_dict(),
        "nodes_before": before_nodes,
        "nodes_after": after_nodes,
        "fused_ops": best.fused,
        "fused_ops_before": fused_before,
        "op_changes": changes_by_op,
        "attempts": [attempt.to_dict() for attempt in attempts],
        "options": options.to_dict(),
        "external_data": options.external_data,
    }
    return TransformResult(best.proto, changed, changes, _dedupe(notes), details)


def _dedupe(lines: list[str]) -> list[str]:
    return list(dict.fromkeys(line for line in lines if line))


# --- ORT's optimizer --------------------------------------------------------------------------


def _ort_fuse(model: Model, model_type: str, heads: int, hidden: int, options: FusionOptions) -> onnx.ModelProto:
    """ORT's graph optimizer at opt_level (run here, in a temp folder), then ORT's Python fusions."""
    from onnxruntime.transformers.optimizer import MODEL_TYPES as ORT_MODEL_TYPES
    from onnxruntime.transformers.optimizer import optimize_model

    if model_type not in ORT_MODEL_TYPES:
        raise UserError(f"onnxruntime {runtime.version()}'s optimizer does not know model type '{model_type}'")
    level = options.opt_level if options.opt_level is not None else ORT_MODEL_TYPES[model_type][2]
    proto = _ort_graph_optimize(model, level, options) if level > 0 else loaded_copy(model)
    if options.only_onnxruntime:
        return proto
    # opt_level=0: the ORT pass above already ran; ORT's own would import torch only to look for ROCm.
    optimizer = optimize_model(proto, model_type, heads, hidden, _ort_fusion_options(model_type, options), opt_level=0,
                               use_gpu=options.use_gpu)
    return optimizer.model


def _ort_fusion_options(model_type: str, options: FusionOptions):  # -> onnxruntime FusionOptions
    from onnxruntime.transformers.fusion_options import (
        FusionOptions as OrtFusionOptions,
    )

    ort_options = OrtFusionOptions(model_type)
    for name in options.disabled:
        attribute, value = ORT_SWITCHES[name]
        setattr(ort_options, attribute, value)
    for name in options.enabled:
        attribute, value = ORT_OPT_IN[name]
        setattr(ort_options, attribute, value)
    if MASK_FORMATS[options.attention_mask_format] is not None:
        ort_options.attention_mask_format = MASK_FORMATS[options.attention_mask_format]
    return ort_options


def _ort_graph_optimize(model: Model, level: int, options: FusionOptions) -> onnx.ModelProto:
    """Let an ORT session optimize the graph and write it out (external data kept apart for big models)."""
    ort = runtime.ort()
    with tempfile.TemporaryDirectory(prefix="ortforge-fusion-") as folder:
        source, entries = _ort_input(model, Path(folder))
        session_options = runtime.quiet_session_options()
        session_options.graph_optimization_level = {
            1: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            2: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            99: ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[level]
        output = Path(folder) / "optimized.onnx"
        session_options.optimized_model_filepath = str(output)
        session_options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "optimized.onnx.data")
        session_options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        for key, value in entries.items():
            session_options.add_session_config_entry(key, value)
        # ConstantSharing merges equal constants across the graph and would break pattern matching.
        disabled = ["ConstantSharing"] + (ORT_PREPASS_BLOCKERS if level > 1 and not options.only_onnxruntime else [])
        try:
            ort.InferenceSession(source, session_options, providers=_prepass_providers(options), disabled_optimizers=disabled)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types; the user needs one line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"{model.name}: ORT's graph optimizer (opt_level {level}) failed: {first}") from None
        return onnx.load(str(output))


def _ort_input(model: Model, folder: Path) -> tuple[bytes | str, dict[str, str]]:
    """What the session reads: the model's own file, its bytes, or (over 2 GB in memory) a temporary copy."""
    if (model.path is not None and not model.changes) or weight_bytes(model.proto) <= EXTERNAL_DATA_THRESHOLD:
        return model.ort_source()
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)  # save_model reads external data into the proto it is given: not the caller's
    saved = save_model(proto, folder / "input.onnx", source=model, external_data=True)
    return str(saved), {}


def _prepass_providers(options: FusionOptions) -> list[str]:
    if not options.use_gpu:
        return ["CPUExecutionProvider"]
    available = runtime.available_providers()
    for provider in ("CUDAExecutionProvider", "ROCMExecutionProvider", "MIGraphXExecutionProvider", "DmlExecutionProvider"):
        if provider in available:
            return [provider, "CPUExecutionProvider"]
    raise UserError("use_gpu: this onnxruntime has no GPU execution provider", hint="install onnxruntime-gpu, or leave use_gpu off")


# --- onnxscript's fuser -----------------------------------------------------------------------

# (onnxscript's count name, module in onnxscript.rewriter.ort_fusions, its function, ortforge's switch),
# in the order the steps depend on each other: SDPA before MHA before packed-QKV Attention.
ONNXSCRIPT_STEPS = (
    ("erf_gelu", "erfgelu", "fuse_erfgelu", "gelu"),
    ("rms_normalization", "rms_normalization", "fuse_rms_normalization", "layer_norm"),
    ("skip_layer_normalization", "skip_normalization", "fuse_skip_layer_normalization", "skip_layer_norm"),
    ("skip_rms_normalization", "skip_normalization", "fuse_skip_rms_normalization", "skip_layer_norm"),
    ("rotary_embedding", "rotary_embedding", "fuse_rotary_embedding", "rotary_embeddings"),
    ("cos_sin_cache", "cos_sin_cache", "fuse_cos_sin_cache", "rotary_embeddings"),
    ("partial_rotary_embedding", "rotary_embedding", "fuse_partial_rotary_embedding", "rotary_embeddings"),
    ("sdpa", "sdpa", "fuse_sdpa", "attention"),
    ("gqa", "gqa", "fuse_gqa", "attention"),
    ("packed_qkv_for_gqa", "gqa_packed_qkv", "fuse_qkv_gqa", "attention"),
    ("mha1", "mha", "fuse_mha1", "attention"),
    ("mha2", "mha", "fuse_mha2", "attention"),
    ("mha_scale", "mha_scale", "fuse_mha_scale", "attention"),
    ("mha_bias", "mha_bias", "fuse_mha_bias", "multi_head_attention_bias"),
    ("attention", "attention", "fuse_attention", "attention"),
    ("gelu", "gelu", "fuse_gelu", "gelu"),
    ("bias_gelu", "bias_gelu", "fuse_bias_gelu", "bias_gelu"),
    ("sdpa_via_mha", "sdpa_via_mha", "replace_sdpa_by_mha", "attention"),
)


def _onnxscript_available() -> bool:
    try:
        import onnxscript.rewriter.ort_fusions  # noqa: F401
    except ImportError:
        return False
    return True


def _require_onnxscript() -> None:
    if not _onnxscript_available():
        raise UserError("the onnxscript fuser needs the onnxscript package", hint="pip install 'ortforge[fusion]'")


def _onnxscript_fuse(model: Model, options: FusionOptions) -> tuple[onnx.ModelProto, dict[str, int]]:
    """onnxscript's ORT fusions on the model; unchanged external weights stay in the source's data files."""
    import onnx_ir as ir

    ir_model = ir.serde.deserialize_model(model.proto)
    if model.base_dir is not None:
        ir.external_data.set_base_dir(ir_model.graph, model.base_dir)
    if set(options.disabled) & _onnxscript_switches():
        counts = _onnxscript_steps(ir_model, set(options.disabled))
    else:
        from onnxscript.rewriter.ort_fusions import optimize_for_ort

        ir_model, counts = optimize_for_ort(ir_model)
    proto = ir.serde.serialize_model(ir_model)
    return proto, {name: int(count) for name, count in counts.items() if count}


def _onnxscript_switches() -> set[str]:
    return {switch for _, _, _, switch in ONNXSCRIPT_STEPS}


def _onnxscript_steps(ir_model, disabled: set[str]) -> dict[str, int]:
    """onnxscript's fusion steps one by one, skipping the disabled ones (its one-call API has no switches)."""
    import importlib

    import onnx_ir.passes.common as common_passes
    from onnxscript import optimizer, rewriter
    from onnxscript.rewriter.ort_fusions import (
        ORT_PATTERN_REWRITE_RULES,
        shape_optimization,
    )

    common_passes.ShapeInferencePass()(ir_model)
    optimizer.optimize(ir_model)
    shape_optimization.rules.apply_to_model(ir_model)
    optimizer.optimize(ir_model)
    counts: dict[str, int] = {}
    for name, module_name, function_name, switch in ONNXSCRIPT_STEPS:
        mha_fused = counts.get("mha1", 0) + counts.get("mha2", 0)
        if switch in disabled or (name in ("mha_bias", "attention") and not mha_fused):
            continue
        module = importlib.import_module(f"onnxscript.rewriter.ort_fusions.{module_name}")
        step = getattr(module, function_name, None)
        if step is None:
            raise UserError(f"this onnxscript has no fusion step '{function_name}'", hint="use fuser 'ort' or another onnxscript version")
        counts[name] = step(ir_model, apply_shape_inference=True) if name == "sdpa" else step(ir_model)
        if name == "cos_sin_cache":
            common_passes.CommonSubexpressionEliminationPass()(ir_model)
    optimizer.optimize(ir_model)
    rewriter.rewrite(ir_model, ORT_PATTERN_REWRITE_RULES)
    common_passes.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=1)(ir_model)
    common_passes.RemoveInitializersFromInputsPass()(ir_model)
    common_passes.ShapeInferencePass()(ir_model)
    return counts


# --- keeping library chatter out of the user's terminal ---------------------------------------


class _NoteHandler(logging.Handler):
    """Collects warnings that ORT's and onnxscript's fusion code log, as notes."""

    def __init__(self, notes: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.notes = notes

    def emit(self, record: logging.LogRecord) -> None:
        if any(part in record.pathname for part in LIBRARY_PATHS):
            self.notes.append(f"fuser: {record.getMessage().strip().splitlines()[0]}")


@contextlib.contextmanager
def _library_output(notes: list[str]) -> Iterator[None]:
    """The fusers print and log freely; ortforge shows their warnings as notes instead."""
    handler = _NoteHandler(notes)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        for caught_warning in caught:
            if any(part in str(caught_warning.filename) for part in LIBRARY_PATHS):
                notes.append(f"fuser: {caught_warning.message}")
            else:  # not ours to swallow
                warnings.warn_explicit(caught_warning.message, caught_warning.category, caught_warning.filename, caught_warning.lineno)
    finally:
        root.removeHandler(handler)
