"""What `tune` tries for precision: fp32, exact rewrites (affine folding, GELU fusion) and transformer fusion, the int8
and weight-only recipes that suit the model family on this CPU, pipelines of fusion then dynamic int8 for transformers
(then every recipe, for decoders whose attention is written out) and of the rewrites then static int8 where they apply,
and fp16 where a GPU EP is present. Session options come from
`sessions.py`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ortforge.core.runtime import GPU_PROVIDERS
from ortforge.searches.recipes import auto_recipes
from ortforge.searches.trial import Candidate
from ortforge.transforms.quantize import QuantizeOptions
from ortforge.transforms.weight_only import WeightOnlyOptions

# The mixed-precision candidate searches within fp16's usual elementwise bound; tune's own tolerance judges the result.
MIXED_RTOL, MIXED_ATOL = 1e-2, 1e-3


def precision_candidates(family: str, providers: list[str], transformer: bool, features: tuple[str, ...] | None = None,
                         rewrites: Sequence[str] = (), lm_head: str | None = None, fuse_first: bool = False) -> list[Candidate]:  # fmt: skip
    """fp32 first, then what suits the family and the hardware, the first of `providers` being the target (`rewrites`:
    the exact rewrites that apply to the model; `lm_head`: a decoder's logits projection, which gets int8 weights beside
    int4 everywhere else; `fuse_first`: a decoder whose attention is written out, every recipe built on its fusion)."""
    found = [Candidate("fp32", "fp32")]
    recipes = auto_recipes(family, features)
    fusion = Candidate("fp32 + transformer fusion", "fusion", (("model_type", "auto"),)) if transformer or fuse_first else None
    first = fusion if fuse_first else None
    found += [Candidate.of_recipe(recipe, base=first) for recipe in recipes]
    if family == "decoder" and lm_head:
        found += lm_head_int8(lm_head, base=first)
    if fuse_first:
        found += unfused_control(recipes)
    if rewrites:  # exact, and static int8 of the rewritten graph quantizes fewer tensors with fewer float steps between them
        # The rewrites' names are in its options, so its cache key changes with them (a new rewrite is not served stale).
        rewritten = Candidate(f"fp32 + {' + '.join(rewrites)}", "rewrite", (("rewrites", tuple(rewrites)),))
        found.insert(1, rewritten)
        found += [Candidate.of_recipe(r, base=rewritten) for r in recipes if isinstance(r, QuantizeOptions) and r.mode == "static"]
    if fusion is not None:  # fused attention and LayerNorm, then dynamic int8 of the MatMuls and of the fused Attention's QKV weights
        found.insert(1, fusion)
        if not fuse_first:
            found += [Candidate.of_recipe(with_attention(r), base=fusion) for r in recipes if isinstance(r, QuantizeOptions) and r.mode == "dynamic"]
    gpu = [p for p in providers if p in GPU_PROVIDERS]
    if not gpu:  # fp16 pays only where an EP has fp16 kernels; ORT's CPU EP computes most fp16 ops in fp32
        return found
    name = gpu[0].replace("ExecutionProvider", "")
    fp16 = [Candidate(f"fp16 for {name}", "fp16", (("provider", gpu[0]),)),
            Candidate(f"mixed fp16 for {name} (searched within rtol {MIXED_RTOL:g}, atol {MIXED_ATOL:g})", "fp16",
                      (("auto", True), ("provider", gpu[0])))]  # fmt: skip
    if providers[0] != gpu[0]:
        return found + fp16
    # A GPU EP is the target: its fp16 is built before the int8 recipes, which suit the CPU (and TensorRT's QDQ), so
    # that a short budget spends itself on what the GPU runs fast.
    exact = [c for c in found if c.kind in ("fp32", "rewrite", "fusion")]
    return exact + fp16 + [c for c in found if c not in exact]


def unfused_control(recipes: list) -> list[Candidate]:
    """For a decoder exported with its attention written out (torch's exports of current Hugging Face models), every
    recipe quantizes the fused model (GroupQueryAttention, packed q/k/v): fusion is exact and its gain holds under int4
    (stdlib-llama-1's TorchScript export in fp32: 701.6 -> 854.2 tokens/s fused, the model builder's 862.7;
    stdlib-llama-2's, GPTQ int4 screened at 0.241x of fp32 fused against 0.29x unfused). One int4 recipe on the unfused
    model stays, to show fusion's share: GPTQ's where offered, since rounding alone misses a 95% agreement gate on
    stdlib-llama-2 and then shows nothing."""
    int4 = [r for r in recipes if isinstance(r, WeightOnlyOptions) and r.bits == 4]
    control = next((r for r in int4 if r.algorithm == "gptq"), int4[0] if int4 else None)
    return [Candidate.of_recipe(control)] if control is not None else []


def lm_head_int8(lm_head: str, base: Candidate | None = None) -> list[Candidate]:
    """int4 weights except the LM head's, then int8 for the LM head: its rounding moves every logit at once, so it
    decides many next-token flips (stdlib-llama-1, blocks of 32: 156 of 2048 changed, 105 with it int8), and it is one
    projection of many."""
    candidates = []
    for block_size in (32, 128):
        rest = Candidate.of_recipe(WeightOnlyOptions(bits=4, block_size=block_size, accuracy_level=4, exclude=(lm_head,)), base=base)
        rest = replace(rest, label=f"{rest.label} but the LM head")
        head = Candidate.of_recipe(WeightOnlyOptions(bits=8, accuracy_level=4, op_types=("MatMul", "Gemm")), base=rest)
        candidates.append(replace(head, label=f"{rest.label} -> int8 LM head"))
    return candidates


def with_attention(recipe: QuantizeOptions) -> QuantizeOptions:
    """The recipe quantizing fused Attention nodes too (ORT writes QAttention): left float, their QKV projection, a
    quarter of an encoder's MACs, ran in fp32 and fusion -> int8 measured 0.71x of fp32 on MiniLM against 0.47x unfused."""
    return replace(recipe, op_types=(*recipe.op_types, "Attention")) if recipe.op_types and "Attention" not in recipe.op_types else recipe
