"""tune-many with the local runner: one artifact per model, an index rewritten as each finishes, and --resume after an
interruption keeping what was finished (the cluster runs are tests/tuning/test_fleet.py)."""

from __future__ import annotations

import json

import pytest

from helpers import conv_net, linear_model, save
from ortforge.commands.tune import TuneJob
from ortforge.commands.tune_many import tune_many
from ortforge.core.errors import OptionError


@pytest.fixture
def models(tmp_path, monkeypatch):
    monkeypatch.setenv("ORTFORGE_CACHE", str(tmp_path / "cache"))
    return [save(linear_model(32, batch=1), tmp_path / "linear.onnx"), save(conv_net(), tmp_path / "cnn.onnx")]


def test_an_interrupted_run_leaves_a_resumable_index_and_resume_tunes_only_the_rest(models, tmp_path, monkeypatch):
    real_run = TuneJob.run
    tuned: list[str] = []

    def interrupted_at_the_cnn(self, folder, **kwargs):  # noqa: ANN001, ANN202
        tuned.append(self.reference)
        if self.reference.endswith("cnn.onnx"):
            raise KeyboardInterrupt  # Ctrl-C while the second model tunes
        return real_run(self, folder, **kwargs)

    monkeypatch.setattr(TuneJob, "run", interrupted_at_the_cnn)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        tune_many([str(m) for m in models], out, time_budget_s=20, samples=8, calib_samples=4)
    index = json.loads((out / "index.json").read_text())
    assert index["state"] == "interrupted" and index["planned"] == 2 and [p["folder"].split("/")[0] for p in index["pairs"]] == ["linear"]
    assert (out / index["pairs"][0]["folder"] / "ortforge.json").is_file() and "--resume" in (out / "index.html").read_text()
    with pytest.raises(OptionError, match="earlier ortforge output"):  # neither --resume nor --overwrite: refused, nothing touched
        tune_many([str(m) for m in models], out, time_budget_s=20)

    monkeypatch.setattr(TuneJob, "run", lambda self, folder, **kw: tuned.append(self.reference) or real_run(self, folder, **kw))
    tuned.clear()
    report = tune_many([str(m) for m in models], out, time_budget_s=20, samples=8, calib_samples=4, resume=True)
    assert tuned == [str(models[1])]  # the linear model's finished pair was kept, only the cnn was tuned
    assert [(p.model, p.kept) for p in report.pairs] == [(str(models[0]), True), (str(models[1]), False)]
    index = json.loads((out / "index.json").read_text())
    assert index["state"] == "finished" and all(not p["error"] for p in index["pairs"])
    assert all((out / p["folder"] / "ortforge.json").is_file() for p in index["pairs"])


def test_resume_retunes_a_model_whose_contents_changed_and_needs_an_earlier_output(models, tmp_path, monkeypatch):
    with pytest.raises(OptionError, match="no earlier tune-many output to resume"):
        tune_many([str(models[0])], tmp_path / "nothing", resume=True)
    tuned: list[str] = []
    monkeypatch.setattr(TuneJob, "run", lambda self, folder, **kw: tuned.append(self.reference) or _written(folder))
    out = tmp_path / "out"
    tune_many([str(models[0])], out, time_budget_s=20)
    tune_many([str(models[0])], out, time_budget_s=20, resume=True)
    assert len(tuned) == 1  # same contents, artifact there: kept
    save(linear_model(16, batch=1), models[0])  # retrained: other contents under the same name
    tune_many([str(models[0])], out, time_budget_s=20, resume=True)
    assert len(tuned) == 2


def _written(folder):  # noqa: ANN001, ANN202 - an artifact folder and what run_pairs reads of a TuneReport
    from types import SimpleNamespace

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ortforge.json").write_text("{}")
    return SimpleNamespace(record={"chosen": {"label": "fp32 | ORT defaults"}, "summary": {"speedup": "1.00x", "accuracy": "exact"}})
