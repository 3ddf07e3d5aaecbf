"""tune: the staged search on a tiny model, the artifact, resuming from the cache, and the report in a browser."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

import ortforge
from helpers import conv_net, save, wide_range_feeds, wide_range_model
from ortforge.commands.tune import tune
from ortforge.core.errors import UserError
from ortforge.tuning.artifact import CONFIG_FILE, MODEL_FILE, REPORT_FILE, REPRODUCE_FILE, read_artifact
from ortforge.tuning.search import pareto_front

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ORTFORGE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tune")
    patch = pytest.MonkeyPatch()
    patch.setenv("ORTFORGE_CACHE", str(folder / "cache"))  # module-wide, undone below
    model = save(conv_net(), folder / "cnn.onnx")
    report = tune(str(model), folder / "artifact", time_budget_s=25)
    yield folder, model, report
    patch.undo()


def test_artifact_holds_model_config_and_report(tuned):
    folder, model, report = tuned
    artifact = folder / "artifact"
    assert {MODEL_FILE, CONFIG_FILE, REPORT_FILE} <= {p.name for p in artifact.iterdir()}
    model_path, config, record = read_artifact(artifact)
    assert record["format"] == "ortforge-artifact/1" and record["commands"]
    assert record["figures"]["latency_ratio"]["median"] > 0
    assert record["environment"]["onnxruntime"]
    # The verdict's evidence travels with it: the accuracy bound, the noise floor, the machine's load, in the record and the report.
    summary, html = record["summary"], (artifact / REPORT_FILE).read_text()
    assert summary["evidence"].startswith("judged on 32 evaluation sample(s): top1: ") and "change rate <" in summary["evidence"]
    assert summary["machine"].startswith("machine ") and record["figures"]["machine_load"]["cores"] >= 1
    assert all(text in html for text in ("change rate &lt;", summary["noise"], "machine "))
    # The roofline: the shipped model's GFLOP/s (its MACs over its measured median) against this machine's GEMM peaks.
    line = record["roofline"]["chosen"]
    assert line["macs"] > 0 and line["achieved_gflops"] == pytest.approx(2 * line["macs"] / line["latency_ms"] / 1e6)
    assert 0 < line["fp32_share"] and line["peaks"]["int8_gops"] > 0 and "Roofline: " in html and summary["roofline"] in html.replace("&#x27;", "'")
    # Run on a GPU EP, the model's time says nothing against the CPU's GEMM peaks: no roofline then.
    from dataclasses import replace

    from ortforge.core.session import SessionConfig
    from ortforge.tuning.record import roofline_record

    on_cuda = replace(report.result.chosen, session=replace(report.result.chosen.session, config=SessionConfig.on("CUDAExecutionProvider")))
    assert roofline_record(None, None, replace(report.result, chosen=on_cuda)) is None  # decided before the MACs are counted
    chosen = report.result.chosen
    assert chosen.trial.passed
    if chosen is not report.result.baseline:  # never slower than the baseline, consistently
        decisive = report.result.confirmation or report.result.final
        assert chosen.score.high < 1 - decisive.noise_floor  # faster beyond the noise of the run that chose it
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    session = ortforge.load(artifact)  # a ready session from the folder
    assert session.run(None, {"x": x})[0].shape == (1, 10)
    assert session.get_session_options().intra_op_num_threads == config.intra_op_num_threads


def test_plain_ort_can_apply_the_config_by_hand(tuned):
    import onnxruntime as ort

    folder, _, _ = tuned
    record = json.loads((folder / "artifact" / CONFIG_FILE).read_text())
    options = ort.SessionOptions()
    options.intra_op_num_threads = record["session"]["intra_op_num_threads"]
    for key, value in record["session"]["config_entries"].items():
        options.add_session_config_entry(key, value)
    providers = [p["name"] for p in record["session"]["providers"]]
    session = ort.InferenceSession(str(folder / "artifact" / record["model"]), options, providers=providers)
    assert session.run(None, {"x": np.zeros((1, 3, 16, 16), np.float32)})[0].shape == (1, 10)


def test_bench_measures_an_artifact_with_its_own_session_config(tuned):
    from ortforge.measure.bench import BenchOptions

    folder, model, _ = tuned
    _, config, _ = read_artifact(folder / "artifact")
    quick = BenchOptions(max_seconds=0.2, profile=False, min_rounds=2, noise_pair=False)
    report = ortforge.bench([str(model), str(folder / "artifact")], options=quick)
    assert [v.label for v in report.variants] == ["cnn.onnx", "artifact"]
    assert report.variants[1].config == config.to_dict()
    # The artifact's record given as the session config of another model: its session settings.
    report = ortforge.bench([str(model), str(folder / "artifact" / CONFIG_FILE)], options=quick)
    assert report.variants[1].label == f"cnn.onnx + {CONFIG_FILE}" and report.variants[1].config == config.to_dict()


def test_apply_redoes_the_artifact_recipe_and_its_verdict(tuned, tmp_path):
    folder, model, report = tuned
    _, config, record = read_artifact(folder / "artifact")
    recipe = record["recipe"]
    chosen = report.result.chosen
    assert recipe["transform"]["label"] == chosen.trial.candidate.label and recipe["session_label"] == chosen.session.label
    assert recipe["tolerances"] == [text for t in report.tolerances for text in t.arguments()]
    again = ortforge.apply(folder / "artifact", model, tmp_path / "again", time_budget_s=10)
    assert again.result.chosen.trial.candidate == chosen.trial.candidate and again.result.chosen.trial.passed
    assert again.result.built == 0  # the same model and data: every build came from tune's cache
    _, again_config, again_record = read_artifact(tmp_path / "again")
    assert again_config == config and again_record["recipe"]["transform"] == recipe["transform"]


def test_the_artifact_holds_the_file_that_reproduces_its_run(tuned):
    from ortforge.cli import _with_config, build_parser

    folder, model, report = tuned
    parser = build_parser()
    argv, configured = _with_config(parser, ["tune", "--config", str(folder / "artifact" / REPRODUCE_FILE), "-o", str(folder / "again")])
    args = parser.parse_args(argv)
    assert configured == str(model) and args.model is None
    assert (float(args.time_budget_s), args.objective, args.samples, args.calib_samples) == (25.0, "latency", 32, 16)
    assert args.tolerances == [text for t in report.tolerances for text in t.arguments()]  # the gate as judged, defaults spelled out


def test_rerun_resumes_from_the_cache(tuned):
    folder, model, first = tuned
    assert first.result.built >= 1
    again = tune(str(model), folder / "again", time_budget_s=20)
    assert again.result.built == 0  # every candidate came from the cache
    assert all(trial.cached for trial in again.result.trials)


def test_a_hook_that_raises_stops_tune_though_every_build_is_cached(tuned):
    folder, model, _ = tuned  # its cache holds every candidate's verdict without a hook: none may be reused
    (folder / "raising.py").write_text("def check(outputs, reference):\n    return 1 / 0\n")
    with pytest.raises(UserError, match="^the eval hook raised ZeroDivisionError: division by zero$"):
        tune(str(model), folder / "hooked", time_budget_s=20, eval_hook=f"{folder / 'raising.py'}:check")
    assert not (folder / "hooked").exists()


def test_interrupted_build_is_not_taken_as_done(cache, tmp_path, monkeypatch):
    from ortforge.tuning import runner

    model = save(conv_net(), tmp_path / "cnn.onnx")
    real = runner.LocalRunner._store
    calls = {"count": 0}

    def interrupt_after_two(self, trial, folder):
        calls["count"] += 1
        if calls["count"] == 3:
            raise KeyboardInterrupt
        real(self, trial, folder)

    monkeypatch.setattr(runner.LocalRunner, "_store", interrupt_after_two)
    with pytest.raises(KeyboardInterrupt):
        tune(str(model), tmp_path / "a", time_budget_s=20)
    monkeypatch.setattr(runner.LocalRunner, "_store", real)
    resumed = tune(str(model), tmp_path / "b", time_budget_s=20)
    cached = [trial.cached for trial in resumed.result.trials]
    assert cached[:2] == [True, True] and not all(cached)


def test_pareto_front_ranks_speed_only_beyond_the_intervals():
    points = [("a", 1.0, 0.98, 1.02, 0.0), ("b", 0.5, 0.48, 0.52, 0.01), ("c", 0.6, 0.58, 0.62, 0.02), ("d", 0.4, 0.38, 0.42, 0.5)]
    assert pareto_front(points) == ["a", "b", "d"]  # c: slower than b beyond both intervals, and less accurate
    tied = [("simple", 0.51, 0.47, 0.55, 0.01), ("complex", 0.50, 0.46, 0.54, 0.01)]
    assert pareto_front(tied) == ["simple", "complex"]  # within each other's intervals and as accurate: both on the front


def test_bad_objective_and_budget(tuned):
    folder, model, _ = tuned
    with pytest.raises(UserError, match="^objective=beauty: choose one of latency"):
        tune(str(model), folder / "x", objective="beauty")
    with pytest.raises(UserError, match="^time_budget_s=nan: must be a positive"):
        tune(str(model), folder / "x", time_budget_s=float("nan"))
    from ortforge.cli.arguments import parse_duration

    assert parse_duration("90s") == 90 and parse_duration("5m") == 300 and parse_duration("1h") == 3600
    for bad in ("soon", "-1m", "nan", "0s"):
        with pytest.raises(UserError, match=f"^time_budget_s={bad}:"):
            parse_duration(bad)


# Measures the laid-out page: text boxes that overlap (in each plot, and the figure cards), text cut by its plot's
# edge, a page wider than the window, and the plot elements that drew. Injected into a copy of the report.
LAYOUT_SCRIPT = """<script>
const boxes = (nodes) => [...nodes].map((n) => ({text: n.textContent.trim(), box: n.getBoundingClientRect()})).filter((b) => b.box.width > 0);
const meet = (a, b) => Math.min(a.right, b.right) - Math.max(a.left, b.left) > 1 && Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top) > 1;
const problems = [];
for (const svg of document.querySelectorAll('svg')) {
  const frame = svg.getBoundingClientRect(), texts = boxes(svg.querySelectorAll('text'));
  texts.forEach((a, i) => texts.slice(i + 1).forEach((b) => { if (meet(a.box, b.box)) problems.push(`overlap: "${a.text}" / "${b.text}"`); }));
  texts.forEach((a) => { if (a.box.left < frame.left - 1 || a.box.right > frame.right + 1 || a.box.top < frame.top - 1 || a.box.bottom > frame.bottom + 1) problems.push(`cut: "${a.text}"`); });
}
const cards = boxes(document.querySelectorAll('.figure'));
cards.forEach((a, i) => cards.slice(i + 1).forEach((b) => { if (meet(a.box, b.box)) problems.push(`overlap: "${a.text}" / "${b.text}"`); }));
if (document.documentElement.scrollWidth > window.innerWidth + 1) problems.push(`page ${document.documentElement.scrollWidth} px wide in a ${window.innerWidth} px window`);
const counts = {points: document.querySelectorAll('svg .point').length, intervals: document.querySelectorAll('svg .interval').length,
                numbers: document.querySelectorAll('svg .number').length, bars: document.querySelectorAll('svg .bar').length,
                legend: document.querySelectorAll('svg .legend text').length, snippets: document.querySelectorAll('pre code').length};
document.body.dataset.layout = JSON.stringify({problems, counts});
</script></body>"""


@pytest.mark.skipif(BROWSER is None, reason="needs Debian's chromium (apt-get install chromium) for a headless render")
@pytest.mark.parametrize("width", [1400, 800])
def test_report_lays_out_without_overlaps_in_a_headless_browser(tuned, tmp_path, width):
    import html

    folder, _, report = tuned
    page = tmp_path / "report.html"
    page.write_text((folder / "artifact" / REPORT_FILE).read_text().replace("</body>", LAYOUT_SCRIPT))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--no-first-run", f"--window-size={width},3000", f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    dom = subprocess.run([BROWSER, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    layout = json.loads(html.unescape(dom.split('data-layout="')[1].split('"')[0]))
    assert layout["problems"] == []
    plotted = len(report.record["points"])
    counts = layout["counts"]
    assert counts["points"] == plotted and counts["intervals"] == plotted and 1 <= counts["numbers"] <= plotted
    assert counts["bars"] >= 2 and counts["legend"] >= 5 and counts["snippets"] == 2
    assert "http://" not in dom.replace("http://www.w3.org/2000/svg", "")  # self-contained: nothing fetched


def test_the_first_ep_is_the_target_its_fp16_is_built_before_int8_and_its_defaults_are_the_baseline():
    from ortforge.tuning.candidates import precision_candidates
    from ortforge.tuning.search import TuneOptions

    on_cuda = [c.kind for c in precision_candidates("cnn", ["CUDAExecutionProvider", "CPUExecutionProvider"], transformer=False, rewrites=("affine folding",))]
    assert on_cuda[:4] == ["fp32", "rewrite", "fp16", "fp16"] and "int8" in on_cuda[4:]  # a short budget builds what the GPU runs fast
    on_cpu = [c.kind for c in precision_candidates("cnn", ["CPUExecutionProvider", "CUDAExecutionProvider"], transformer=False)]
    assert on_cpu[-2:] == ["fp16", "fp16"] and on_cpu.index("int8") < on_cpu.index("fp16")
    assert TuneOptions(providers=("CUDAExecutionProvider", "CPUExecutionProvider")).base_session.provider_names == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert TuneOptions().base_session.provider_names == ["CPUExecutionProvider"]

def test_fp16_candidate_on_gpu_eps_is_built_and_judged_by_simulation(cache, tmp_path):
    from ortforge.accuracy.judge import Judge
    from ortforge.accuracy.tolerance import default_tolerances
    from ortforge.core.model import load_model
    from ortforge.core.session import run_outputs
    from ortforge.tuning.candidates import precision_candidates
    from ortforge.tuning.runner import LocalRunner

    model = load_model(save(conv_net(), tmp_path / "cnn.onnx"))
    data = wide_range_feeds(2)
    data.samples = [{"x": np.random.default_rng(i).standard_normal((1, 3, 16, 16)).astype(np.float32)} for i in range(2)]
    candidates = precision_candidates("cnn", ["CUDAExecutionProvider", "CPUExecutionProvider"], transformer=False)
    fp16 = next(c for c in candidates if c.kind == "fp16")
    assert fp16.settings["provider"] == "CUDAExecutionProvider"
    assert not any(c.kind == "fp16" for c in precision_candidates("cnn", ["CPUExecutionProvider"], transformer=False))
    runner = LocalRunner(model, data, data, Judge(run_outputs(model, data), default_tolerances(run_outputs(model, data))), cache)
    trial = runner.build(fp16)
    assert not trial.error and 0.99 < trial.metrics["cosine"] < 1.0 + 1e-9  # simulated fp16 rounding, not exact
    mixed = next(c for c in candidates if c.settings.get("auto"))
    searched = runner.build(mixed)
    assert any(note.startswith("mixed precision:") for note in searched.notes), searched.notes
    assert searched.error or searched.metrics["cosine"] >= trial.metrics["cosine"] - 1e-6


def test_startup_objective_considers_offline_optimization(cache, tmp_path):
    model = save(conv_net(), tmp_path / "cnn.onnx")
    report = tune(str(model), tmp_path / "startup", objective="startup", time_budget_s=25)
    labels = [f.label for f in report.result.finalists]
    assert any("offline" in label for label in labels)
    offline = next(f for f in report.result.finalists if "offline" in f.label)
    assert offline.session.config.graph_optimization_level == "disable"  # saved at ALL, loaded without re-optimizing
    session = ortforge.load(tmp_path / "startup")  # whichever won, the artifact loads (stamp checked if offline)
    assert session.run(None, {"x": np.zeros((1, 3, 16, 16), np.float32)})[0].shape == (1, 10)


def test_throughput_objective_tries_requests_in_flight(cache, tmp_path):
    from ortforge.tuning.sessions import session_space

    assert not any(c.streams > 1 for c in session_space(providers=["CPUExecutionProvider"], cores=2))
    levels = {c.config.graph_optimization_level for c in session_space(providers=["CPUExecutionProvider"], cores=2, objective="startup")}
    assert {"basic", "extended"} <= levels
    concurrent = [c for c in session_space(providers=["CPUExecutionProvider"], cores=2, objective="throughput") if c.streams > 1]
    assert [(c.streams, c.config.intra_op_num_threads) for c in concurrent] == [(2, 1)]
    model = save(conv_net(), tmp_path / "cnn.onnx")
    seen = []
    report = tune(str(model), tmp_path / "throughput", objective="throughput", time_budget_s=25, progress=lambda what, _: seen.append(what))
    assert any(m.startswith("building") for m in seen) and any("final interleaved run" in m for m in seen)
    assert all("| best so far: " in m for m in seen)
    finalist = any(f.session.streams == 2 for f in report.result.finalists)
    assert finalist or any("requests in flight" in label and "session screening" in why for label, why in report.result.rejected)
    record = json.loads((tmp_path / "throughput" / CONFIG_FILE).read_text())
    assert record["objective"] == "throughput" and record["requests_in_flight"] == report.result.chosen.session.streams
    assert record["figures"]["throughput_per_s"]["chosen"] > 0
    assert record["figures"]["noise"]["floor"] >= 0.02 and record["figures"]["latency_ratio"]["rounds"] >= 1


def test_a_missed_int8_candidate_gets_nodes_kept_float_and_the_search_is_cached(cache, tmp_path, monkeypatch):
    from ortforge.accuracy.judge import Judge
    from ortforge.accuracy.tolerance import Tolerance
    from ortforge.core.model import load_model
    from ortforge.core.session import run_outputs
    from ortforge.searches import exclusion
    from ortforge.searches.trial import Candidate
    from ortforge.transforms.quantize import QuantizeOptions
    from ortforge.tuning.runner import LocalRunner

    model = load_model(save(wide_range_model(), tmp_path / "wide.onnx"))
    calibration, evaluation = wide_range_feeds(16, 0), wide_range_feeds(16, 1)
    tolerances = [Tolerance("cosine", 0.99)]
    recipe = QuantizeOptions(mode="static", op_types=("MatMul",))
    runner = LocalRunner(model, calibration, evaluation, Judge(run_outputs(model, evaluation), tolerances), cache)
    missed = runner.build(Candidate.of_recipe(recipe))
    assert not missed.passed
    repaired = runner.exclusion(missed)
    assert repaired is not None and "kept float" in repaired.label and repaired.settings["exclude"]
    assert runner.build(repaired).passed  # judged on the evaluation half, which the search never saw
    monkeypatch.setattr(exclusion, "search_exclusions", lambda *a, **k: pytest.fail("searched again"))
    assert runner.exclusion(missed) == repaired
    monkeypatch.undo()
    # What a cluster node runs (the plain function, no Ray needed): it finds the same nodes from the carried entry,
    # without quantizing the recipe again.
    from ortforge.searches import recipes
    from ortforge.tuning.ray_runner import remote_exclusion
    from ortforge.tuning.runner import entry_files

    monkeypatch.setattr(recipes, "apply_recipe", _counting(recipes.apply_recipe, calls := []))
    monkeypatch.setattr("ortforge.tuning.runner.apply_recipe", recipes.apply_recipe)
    found, record = remote_exclusion(model.proto.SerializeToString(), calibration, evaluation, runner.judge, missed.candidate,
                                     entry_files(runner.entry(missed.candidate)), None, 0.0)  # fmt: skip
    assert found == repaired  # and the record the driver caches is the one a local search writes
    assert record is not None and json.loads(record) == json.loads(runner.exclusion_record(missed.candidate).read_text())
    assert calls and all(call.exclude for call in calls)  # only the search's attempts quantized: the recipe came from the entry


def _counting(function, calls: list):  # noqa: ANN001, ANN202
    def counted(model, recipe, *rest, **keywords):  # noqa: ANN001, ANN202
        calls.append(recipe)
        return function(model, recipe, *rest, **keywords)

    return counted


def test_session_options_are_screened_before_the_final_run(tuned):
    from ortforge.tuning.search import SESSION_FINALISTS

    _, _, report = tuned
    result = report.result
    by_trial: dict[int, int] = {}
    for finalist in result.finalists:
        if finalist.session.label != "ORT defaults" and "offline" not in finalist.session.label:
            by_trial[id(finalist.trial)] = by_trial.get(id(finalist.trial), 0) + 1
    assert len(by_trial) <= 1 and all(count <= SESSION_FINALISTS for count in by_trial.values())
    assert "session screening" in result.stages


def _confirmation_schedule():
    """A minute for the confirmation stage alone (the scripted runners below ignore the time granted)."""
    from ortforge.core.deadline import Deadline
    from ortforge.measure.cost import MeasureCost
    from ortforge.tuning.schedule import Schedule, Stage
    from ortforge.tuning.search import CONFIRM

    return Schedule(Deadline(60), MeasureCost(), [Stage("confirmation", 5, CONFIRM, 0.5, 2)])


def test_confirmation_picks_the_runner_up_when_it_is_faster_head_to_head():
    """A scripted runner (per-round medians given): the selection rule, apart from any timing noise."""
    from ortforge.measure.bench import BenchReport, VariantResult
    from ortforge.measure.stats import latency_stats
    from ortforge.searches.trial import Candidate, Trial
    from ortforge.tuning.search import Finalist, TuneOptions, _confirm, score
    from ortforge.tuning.sessions import SessionCandidate

    def result(label, round_ms):
        rounds = [[int(ms * 1e6)] for ms in round_ms]
        return VariantResult(label, "m", {}, [], 0.0, 0.0, latency_stats([r[0] for r in rounds], rounds), 1, 1.0, 0, 0)

    timings = {"fp32": [10.0] * 8, "int8 a": [7.0] * 8, "int8 b": [5.0, 5.1, 4.9, 5.0, 5.2, 5.0, 4.8, 5.0]}

    class Scripted:
        def measure(self, targets, options, progress=None):
            return BenchReport([result(t.label, timings[t.label]) for t in targets], 8, 1.0, {})

    def finalist(label, ratio):
        found = Finalist(label, Trial(Candidate(label, "int8")), SessionCandidate("ORT defaults"))
        found.score = score(result(label, [ratio * 10] * 8), result("fp32", timings["fp32"]))
        return found

    baseline, a, b = finalist("fp32", 1.0), finalist("int8 a", 0.6), finalist("int8 b", 0.65)  # a led the crowded final run
    chosen, why, _, measured = _confirm(Scripted(), a, [baseline, a, b], TuneOptions(), _confirmation_schedule(), lambda *_: None)
    assert chosen.label == "int8 b" and "leader int8 a" in why and abs(chosen.score.ratio - 0.5) < 0.02
    assert [f.label for f in measured] == ["fp32", "int8 a", "int8 b"] and a.score.ratio == 0.6  # the finalists keep their own run's figures
    timings["int8 a"] = timings["int8 b"] = [11.0] * 8  # neither holds up: fp32 ships
    chosen, why, _, _ = _confirm(Scripted(), a, [baseline, a, b], TuneOptions(), _confirmation_schedule(), lambda *_: None)
    assert chosen.label == "fp32" and "shipping fp32" in why


def test_every_component_of_the_winner_must_pay_for_itself():
    """The chosen int8 + 2 threads is measured beside int8 with ORT's defaults and fp32 with 2 threads: when the
    thread setting adds nothing beyond noise, the simpler int8 + ORT defaults ships (scripted per-round medians)."""
    from ortforge.measure.bench import BenchReport, VariantResult
    from ortforge.measure.stats import latency_stats
    from ortforge.searches.trial import Candidate, Trial
    from ortforge.tuning.search import Finalist, TuneOptions, _confirm
    from ortforge.tuning.sessions import SessionCandidate

    def result(label, round_ms):
        rounds = [[int(ms * 1e6)] for ms in round_ms]
        return VariantResult(label, "m", {}, [], 0.0, 0.0, latency_stats([r[0] for r in rounds], rounds), 1, 1.0, 0, 0)

    timings = {"fp32 | ORT defaults": [10.0, 10.1, 9.9] * 4, "int8 | 2 intra-op thread(s)": [6.0, 6.05, 5.95] * 4,
               "int8 | ORT defaults": [6.05, 6.0, 6.1] * 4, "fp32 | 2 intra-op thread(s)": [9.9, 10.0, 10.1] * 4}  # fmt: skip
    asked = []

    class Scripted:
        def measure(self, targets, options, progress=None):
            asked.append([t.label for t in targets])
            return BenchReport([result(t.label, timings[t.label]) for t in targets], 12, 1.0, {})

    fp32, int8 = Trial(Candidate("fp32", "fp32")), Trial(Candidate("int8", "int8", (("mode", "static"),)))
    baseline = Finalist("fp32 | ORT defaults", fp32, SessionCandidate("ORT defaults"))
    threads = SessionCandidate("2 intra-op thread(s)", kind="threads")
    chosen = Finalist("int8 | 2 intra-op thread(s)", int8, threads)
    picked, why, _, measured = _confirm(Scripted(), chosen, [baseline, chosen], TuneOptions(), _confirmation_schedule(), lambda *_: None)
    assert asked == [["fp32 | ORT defaults", "int8 | 2 intra-op thread(s)", "int8 | ORT defaults", "fp32 | 2 intra-op thread(s)"]]
    assert picked.label == "int8 | ORT defaults" and picked.session.kind == "defaults"
    assert {f.label for f in measured} == set(asked[0])


def test_exclusion_runs_only_when_no_int8_recipe_met_the_tolerance():
    from types import SimpleNamespace

    from ortforge.accuracy.judge import Judge
    from ortforge.accuracy.tolerance import Tolerance
    from ortforge.core.deadline import Deadline
    from ortforge.searches.trial import Candidate, Trial
    from ortforge.tuning.search import _exclude

    asked = []

    class Recording:  # b is both the more accurate and the faster of the two missed recipes
        def exclusion(self, trial, progress=None, **deadline):
            asked.append(trial.candidate.label)

        def measure(self, targets, options, progress=None):
            return SimpleNamespace(variants=[SimpleNamespace(latency=SimpleNamespace(p50={"a": 2.0, "b": 1.0}[t.label])) for t in targets])

    def trial(label, cosine):
        verdict = Judge([], [Tolerance("cosine", 0.99)]).decide_measured({"cosine": cosine})
        return Trial(Candidate(label, "int8", (("mode", "dynamic"),)), model=object(), verdict=verdict)

    missed_a, missed_b, accurate = trial("a", 0.95), trial("b", 0.97), trial("c", 0.999)
    rejected: list = []
    _exclude(Recording(), [missed_a, missed_b, accurate], [accurate], rejected, Deadline(60), 0.0, lambda *_: None)
    assert asked == []
    _exclude(Recording(), [missed_a, missed_b], [], rejected, Deadline(60), 0.0, lambda *_: None)
    assert asked == ["b"] and rejected[-1][1] == "no set of nodes kept in float met the tolerance"


def test_two_runners_storing_one_entry_at_once_both_succeed(cache, tmp_path):
    """Two tunes sharing a cache may build the same candidate at once: the first copy stays, neither fails,
    and a folder an older version left half-written is replaced (two tunes raced to a FileExistsError before)."""
    from ortforge.accuracy.judge import Judge
    from ortforge.accuracy.tolerance import default_tolerances
    from ortforge.core.model import load_model
    from ortforge.core.session import run_outputs
    from ortforge.tuning.candidates import precision_candidates
    from ortforge.tuning.runner import RESULT_FILE, LocalRunner

    model = load_model(save(conv_net(), tmp_path / "cnn.onnx"))
    data = wide_range_feeds(2)
    data.samples = [{"x": np.random.default_rng(i).standard_normal((1, 3, 16, 16)).astype(np.float32)} for i in range(2)]
    judge = Judge(run_outputs(model, data), default_tolerances(run_outputs(model, data)))
    first, second = (LocalRunner(model, data, data, judge, cache) for _ in range(2))
    candidate = next(c for c in precision_candidates("cnn", ["CPUExecutionProvider"], transformer=False) if c.kind == "int8")
    folder = first.folder / candidate.key(first.model_hash, first.data_hash, first.judge_key)
    folder.mkdir(parents=True)  # half-written: no result file
    built = first._build(candidate)
    first._store(built, folder)
    stored = (folder / RESULT_FILE).read_text()
    second._store(second._build(candidate), folder)  # the entry exists: kept as it is, no error
    assert (folder / RESULT_FILE).read_text() == stored and second.build(candidate).cached
    assert [p.name for p in folder.parent.iterdir() if p.name.startswith(".")] == []  # no staging folder left


def test_sessions_on_the_target_ep_are_not_placement_checked_and_another_ep_is_checked_once():
    from helpers import linear_model
    from ortforge.core.model import from_proto
    from ortforge.searches.trial import Candidate, Trial
    from ortforge.tuning.search import TuneOptions, _allowed_sessions
    from ortforge.tuning.sessions import session_space

    trial = Trial(Candidate("fp32", "fp32"), model=from_proto(linear_model()))
    notes = []
    on_cuda = _allowed_sessions(trial, TuneOptions(providers=("CUDAExecutionProvider", "CPUExecutionProvider")), notes)
    assert {c.config.provider_names[0] for c in on_cuda} == {"CUDAExecutionProvider"} and len(on_cuda) > 2 and notes == []
    cuda_too = [c.config.provider_names[0] for c in session_space(providers=("CPUExecutionProvider", "CUDAExecutionProvider"))]
    on_cpu = _allowed_sessions(trial, TuneOptions(providers=("CPUExecutionProvider", "CUDAExecutionProvider")), notes)
    if "CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers():  # here CUDA cannot place a node
        assert "CUDAExecutionProvider" in cuda_too and all(c.config.provider_names[0] == "CPUExecutionProvider" for c in on_cpu)
        assert len(notes) == 1 and "on CUDAExecutionProvider: rejected" in notes[0]
