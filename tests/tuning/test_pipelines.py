"""Candidates that are pipelines: transformer fusion, then dynamic int8 of the fused model, built stage by stage with
each stage cached once and shared, judged against the original model, and carried by a recipe."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from helpers import bert_encoder, save
from ortforge.accuracy.judge import Judge
from ortforge.accuracy.tolerance import default_tolerances
from ortforge.commands.tune import prepare_tune
from ortforge.core.session import run_outputs
from ortforge.data.specs import ShapeOptions
from ortforge.searches.trial import Candidate
from ortforge.transforms.quantize import QuantizeOptions
from ortforge.tuning.candidates import precision_candidates
from ortforge.tuning.runner import LocalRunner

FUSION = Candidate("fp32 + transformer fusion", "fusion", (("model_type", "auto"),))


@pytest.fixture
def runner(tmp_path):
    job = prepare_tune(str(save(bert_encoder(), tmp_path / "bert.onnx")), samples=8, calib_samples=4,
                       shape_options=ShapeOptions(dims={"batch": 2, "seq": 7}))  # fmt: skip
    reference = run_outputs(job.model, job.evaluation)
    return LocalRunner(job.model, job.calibration, job.evaluation, Judge(reference, default_tolerances(reference), feeds=job.evaluation),
                       tmp_path / "cache")  # fmt: skip


def test_fusion_then_int8_is_built_on_the_fused_model_and_its_first_stage_is_shared(runner):
    s8 = Candidate.of_recipe(QuantizeOptions(mode="dynamic", per_channel=True, op_types=("MatMul",)), base=FUSION)
    trial = runner.build(s8)
    assert trial.passed, trial.why_not  # judged against the original model's outputs
    ops = Counter(node.op_type for node in trial.model.proto.graph.node)
    assert ops["Attention"] + ops["QAttention"] >= 1 and ops["DynamicQuantizeLinear"] + ops["QAttention"] >= 1, ops  # fused, then quantized
    assert runner.built == 2 and (runner.entry(FUSION) / "result.json").is_file()  # the fusion stage, then the pipeline
    u8 = Candidate.of_recipe(QuantizeOptions(mode="dynamic", weight_type="u8", per_channel=True, op_types=("MatMul",)), base=FUSION)
    runner.build(u8)
    assert runner.built == 3  # the fused model came from the cache
    assert runner.entry(s8) != runner.entry(Candidate.of_recipe(s8.recipe))  # a pipeline is not its last stage alone
    assert Candidate.from_dict(s8.to_dict()) == s8 and [c.kind for c in s8.stages] == ["fusion", "int8"]
    assert s8.complexity > Candidate.of_recipe(s8.recipe).complexity  # within noise, the single transform wins


def test_transformers_get_fusion_then_dynamic_int8_pipelines_and_cnns_do_not():
    labels = [c.label for c in precision_candidates("transformer", ["CPUExecutionProvider"], True)]
    assert sum(label.startswith("fp32 + transformer fusion -> dynamic") for label in labels) == 2
    assert not any(" -> " in c.label for c in precision_candidates("cnn", ["CPUExecutionProvider"], False))


def test_after_fusion_the_attention_projection_is_quantized_and_smoothed_too(runner):
    pipelines = [c for c in precision_candidates("transformer", ["CPUExecutionProvider"], True) if c.base == FUSION]
    assert pipelines and all("Attention" in c.recipe.op_types for c in pipelines)
    smoothed = Candidate.of_recipe(replace(pipelines[0].recipe, smooth=0.7), base=FUSION)
    trial = runner.build(smoothed)
    assert trial.passed, trial.why_not
    graph = trial.model.proto.graph
    attention = [n for n in graph.node if n.op_type == "QAttention"]
    assert attention and not any(n.op_type == "Attention" for n in graph.node)  # the QKV weights are int8 now
    producers = {out: n for n in graph.node for out in n.output}
    quantized_input = producers[attention[0].input[0]]  # DynamicQuantizeLinear of the smoothed activation
    assert producers[quantized_input.input[0]].op_type == "Mul"


def test_models_with_affine_steps_beside_convs_get_folding_then_static_int8(tmp_path):
    from helpers import lcnet_block

    candidates = precision_candidates("cnn", ["CPUExecutionProvider"], False, rewrites=["affine folding"])
    fold = next(c for c in candidates if c.kind == "rewrite")
    pipelines = [c for c in candidates if c.base == fold]
    assert pipelines and all(c.recipe.mode == "static" for c in pipelines)
    job = prepare_tune(str(save(lcnet_block(), tmp_path / "lcnet.onnx")), samples=6, calib_samples=6)
    reference = run_outputs(job.model, job.evaluation)
    runner = LocalRunner(job.model, job.calibration, job.evaluation, Judge(reference, default_tolerances(reference), feeds=job.evaluation),
                         tmp_path / "cache")  # fmt: skip
    folded = runner.build(fold)
    assert folded.passed and folded.metrics["cosine"] > 0.9999  # exact up to rounding, judged against the original
    trial = runner.build(pipelines[0])
    assert trial.model is not None and runner.built == 2
    assert not any(n.op_type == "Mul" for n in trial.model.proto.graph.node)  # int8 of the folded graph
    assert Candidate.from_dict(trial.candidate.to_dict()) == trial.candidate


def test_the_rewrite_stage_names_its_rewrites_so_a_new_rewrite_is_not_taken_from_the_cache():
    def stage(rewrites: list[str]) -> Candidate:
        return next(c for c in precision_candidates("cnn", ["CPUExecutionProvider"], False, rewrites=rewrites) if c.kind == "rewrite")

    gelu, both = stage(["GELU fusion"]), stage(["GELU fusion", "one-hot lookup"])
    assert gelu.settings["rewrites"] == ("GELU fusion",) and gelu.key("model", "data") != both.key("model", "data")
    assert Candidate.from_dict(both.to_dict()) == both


def test_a_cluster_node_builds_a_pipeline_from_the_stages_carried_to_it(runner, monkeypatch):
    from ortforge.tuning.ray_runner import remote_build
    from ortforge.tuning.runner import entry_files

    pipeline = Candidate.of_recipe(QuantizeOptions(mode="dynamic", per_channel=True, op_types=("MatMul",)), base=FUSION)
    runner.build(pipeline)
    stages = {runner.entry(FUSION).name: entry_files(runner.entry(FUSION))}
    monkeypatch.setattr("ortforge.transforms.fusion.fuse_transformer", lambda *a: pytest.fail("fused again on the node"))
    name, files = remote_build(runner.model.proto.SerializeToString(), runner.calibration, runner.evaluation, runner.judge, pipeline, stages)
    assert name == runner.entry(pipeline).name and files["model.onnx"] == (runner.entry(pipeline) / "model.onnx").read_bytes()


def test_a_missed_static_recipe_is_built_again_with_accuracy_recovery_before_nodes_go_float(tmp_path):
    from helpers import wide_range_feeds, wide_range_model
    from ortforge.accuracy.tolerance import Tolerance
    from ortforge.core.deadline import Deadline
    from ortforge.core.model import load_model
    from ortforge.tuning.search import _recover

    model = load_model(save(wide_range_model(), tmp_path / "wide.onnx"))
    calibration, evaluation = wide_range_feeds(16, 0), wide_range_feeds(16, 1)
    runner = LocalRunner(model, calibration, evaluation, Judge(run_outputs(model, evaluation), [Tolerance("cosine", 0.99)]), tmp_path / "cache")
    missed = runner.build(Candidate.of_recipe(QuantizeOptions(mode="static", op_types=("MatMul",))))
    assert not missed.passed
    trials, accurate, rejected, notes = [missed], [], [], []
    _recover(runner, trials, accurate, rejected, Deadline(600), 0.0, lambda *a: None, notes)
    recovered = trials[-1]
    assert recovered.candidate.settings["equalize"] and recovered.candidate.settings["bias_correction"]
    assert "equalized bias-corrected" in recovered.label and notes and notes[0].startswith(f"accuracy recovery of {missed.label}")
    assert ("within tolerance" if recovered.passed else "still outside tolerance") in notes[0]
    _recover(runner, trials, accurate, rejected, Deadline(600), 0.0, lambda *a: None, notes)  # once per search
    assert len(trials) == 2 and len(notes) == 1


class _ScriptedRunner:
    """Builds from a script: label -> cosine (pass at 0.99); records what was asked."""

    def __init__(self, cosines: dict[str, float]) -> None:
        self.cosines, self.asked = cosines, []

    def build(self, candidate: Candidate):  # noqa: ANN201 - a Trial
        from ortforge.accuracy.judge import Verdict
        from ortforge.searches.trial import Trial

        self.asked.append(candidate.label)
        cosine = self.cosines.get(candidate.label, 0.5)
        return Trial(candidate, model=object(), verdict=Verdict(cosine >= 0.99, [], {"cosine": cosine}))


def test_a_passing_dynamic_recipe_does_not_stop_the_recovery_of_static_int8():
    from ortforge.accuracy.judge import Verdict
    from ortforge.core.deadline import Deadline
    from ortforge.searches.trial import Trial
    from ortforge.tuning.search import _recover

    static = Candidate.of_recipe(QuantizeOptions(mode="static", per_channel=True, op_types=("Conv",)))
    dynamic = Candidate.of_recipe(QuantizeOptions(mode="dynamic", per_channel=True, op_types=("MatMul",)))
    trials = [Trial(static, model=object(), verdict=Verdict(False, [], {"cosine": 0.98})),
              Trial(dynamic, model=object(), verdict=Verdict(True, [], {"cosine": 0.999}))]  # fmt: skip
    accurate, notes = [trials[1]], []
    runner = _ScriptedRunner({f"{static.label} equalized bias-corrected": 0.995})
    _recover(runner, trials, accurate, [], Deadline(600), 0.0, lambda *a: None, notes)
    assert runner.asked == [f"{static.label} equalized bias-corrected"]  # static recovered; the passing dynamic one left alone
    assert trials[-1] in accurate and "within tolerance" in notes[0]


def test_the_recipe_rescued_is_the_fastest_of_the_nearly_most_accurate():
    from types import SimpleNamespace

    from ortforge.accuracy.judge import Verdict
    from ortforge.searches.trial import Trial
    from ortforge.tuning.search import RESCUE_SLACK, fastest_first, near_most_accurate

    def missed(label: str, cosine: float) -> Trial:
        return Trial(Candidate(label, "int8", (("mode", "static"),)), None, Verdict(False, [], {"cosine": cosine}))

    conv_only, every_op, broken = missed("conv only", 0.987), missed("every op", 0.968), missed("broken", 0.002)
    near = near_most_accurate([conv_only, every_op, broken, missed("far", 0.987 - RESCUE_SLACK - 0.01)])
    assert near == [conv_only, every_op]

    class Scripted:  # measured latencies, as a runner would report them
        def measure(self, targets, options, progress=None):
            medians = {"conv only": 140.0, "every op": 110.0}
            return SimpleNamespace(variants=[SimpleNamespace(latency=SimpleNamespace(p50=medians[t.label])) for t in targets])

    assert fastest_first(Scripted(), near, lambda *a: None) == [every_op, conv_only]
    assert fastest_first(None, [conv_only], lambda *a: None) == [conv_only]  # one recipe: nothing to time


def test_a_recipe_to_rescue_tries_each_percentile_clip_then_the_next_fastest_recipe_before_nodes_go_float():
    from types import SimpleNamespace

    from ortforge.accuracy.judge import Verdict
    from ortforge.core.deadline import Deadline
    from ortforge.searches.trial import Trial
    from ortforge.tuning.search import _exclude

    def recipe(ops: tuple[str, ...], **extra) -> Candidate:
        return Candidate.of_recipe(QuantizeOptions(mode="static", per_channel=True, op_types=ops, **extra))

    every, conv = recipe(("Conv", "MatMul")), recipe(("Conv",))
    cosines = {recipe(("Conv", "MatMul"), calibration_method="percentile").label: 0.984,
               recipe(("Conv", "MatMul"), calibration_method="percentile", percentile=99.99).label: 0.985,
               recipe(("Conv",), calibration_method="percentile").label: 0.989,
               recipe(("Conv",), calibration_method="percentile", percentile=99.99).label: 0.995}  # fmt: skip

    class Scripted(_ScriptedRunner):
        def measure(self, targets, options, progress=None):  # every op int8 runs faster
            return SimpleNamespace(variants=[SimpleNamespace(latency=SimpleNamespace(p50=1.0 if t.label == every.label else 2.0)) for t in targets])

        def exclusion(self, *args, **kwargs):
            pytest.fail("percentile ranges rescued a recipe: no node needs to stay float")

    def missed() -> list[Trial]:
        return [Trial(every, model=object(), verdict=Verdict(False, [], {"cosine": 0.98})), Trial(conv, model=object(), verdict=Verdict(False, [], {"cosine": 0.977}))]

    runner = Scripted(cosines)
    accurate, rejected = [], []
    _exclude(runner, missed(), accurate, rejected, Deadline(600), 0.0, lambda *a: None)
    assert runner.asked == list(cosines)  # the faster recipe's clips first, mildest first; then the next fastest's
    assert [t.label for t in accurate] == [list(cosines)[-1]] and accurate[0].label.endswith("percentile 99.99")
    assert [label for label, _ in rejected] == list(cosines)[:3]

    class Searching(Scripted):
        def exclusion(self, trial, *args, **kwargs):
            self.asked.append(f"exclusion search of {trial.label}")

    expensive = Deadline(600)
    expensive.record("build", 60.0)  # builds this slow leave the time to the exclusion search
    runner = Searching(cosines)
    _exclude(runner, missed(), [], [], expensive, 0.0, lambda *a: None)
    assert runner.asked == [list(cosines)[0], f"exclusion search of {list(cosines)[0]}"]
