"""Model specs are validated before anything is built or deployed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from onnxlift.errors import SpecError
from onnxlift.spec import discover_specs, load_spec
from tests.conftest import ROOT


def copy_minilm(tmp_path: Path, name: str = "minilm") -> Path:
    folder = tmp_path / name
    shutil.copytree(ROOT / "models" / "minilm", folder)
    return folder


def test_the_shipped_spec_loads() -> None:
    spec = load_spec(ROOT / "models" / "minilm")
    assert spec.task == "text-embedding"
    assert spec.parity.threshold == 0.99
    assert spec.serving.target == "lambda" and 128 <= spec.serving.memory_mb <= 10_240
    specs = {s.name: s for s in discover_specs(ROOT / "models")}
    assert set(specs) >= {"minilm", "tabular", "textclf"}
    assert (specs["tabular"].framework, specs["tabular"].quantization.mode) == ("keras", "static")
    assert (specs["textclf"].framework, specs["textclf"].quantization.mode) == ("sklearn", "none")
    assert specs["textclf"].parity.metric == "top1_agreement"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('name = "minilm"', 'name = "other"', "must match its folder"),
        ('task = "text-embedding"', 'task = "telepathy"', "task 'telepathy'"),
        ("memory_mb = 2048", "memory_mb = 20480", "memory_mb must be within"),
        ("timeout_s = 29", "timeout_s = 901", "timeout_s must be within"),
        ('target = "lambda"', 'target = "ec2"', "serving.target"),
        ("threshold = 0.99", "threshold = 1.5", "threshold"),
        ('metric = "min_cosine"', 'metric = "vibes"', "parity.metric"),
        ("per_channel = true", "per_chanel = true", "unexpected keyword"),
        ('mode = "dynamic"', 'mode = "int3"', "quantization.mode"),
        ('module = "source.py"', 'module = "missing.py"', "not found"),
        ("[serving]", "[serving", "model.toml"),
    ],
)
def test_bad_specs_are_refused_with_the_reason(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    folder = copy_minilm(tmp_path)
    toml = folder / "model.toml"
    text = toml.read_text()
    assert old in text
    toml.write_text(text.replace(old, new))
    with pytest.raises(SpecError, match=message):
        load_spec(folder)


def test_fingerprint_follows_the_model_folder(tmp_path: Path) -> None:
    folder = copy_minilm(tmp_path)
    chain = {"torch": "2.13.0"}
    before = load_spec(folder).fingerprint(chain)
    assert load_spec(folder).fingerprint(chain) == before
    assert load_spec(folder).fingerprint({"torch": "2.14.0"}) != before
    (folder / "parity_sentences.txt").write_text("changed\n")
    assert load_spec(folder).fingerprint(chain) != before


def test_toolkit_code_is_in_the_fingerprint(tmp_path: Path) -> None:
    """An edited builder or serving package rebuilds: its digest is in the toolchain."""
    import onnxlift_serving.pipelines

    from onnxlift.builder import build

    roots = build.toolkit_code_roots()
    files = (build.__file__, build.parity.__file__, onnxlift_serving.pipelines.__file__)
    covered = {Path(path).resolve() for path in files}
    for path in covered:
        assert any(path == root or root in path.parents for root in roots), path
    assert build.toolchain()["onnxlift_code"] == build.toolkit_code_digest()

    package = tmp_path / "pkg"
    package.mkdir()
    (package / "a.py").write_text("A = 1\n")
    single = tmp_path / "one.py"
    single.write_text("B = 1\n")
    before = build.code_digest([package, single])
    assert build.code_digest([package, single]) == before
    (package / "a.py").write_text("A = 2\n")
    edited = build.code_digest([package, single])
    assert edited != before
    (package / "a.py").rename(package / "b.py")  # same bytes, another name
    assert build.code_digest([package, single]) not in (before, edited)
    (package / "notes.txt").write_text("not code")
    renamed = build.code_digest([package, single])
    (package / "notes.txt").write_text("still not code")
    assert build.code_digest([package, single]) == renamed


def test_a_new_build_prunes_superseded_ones_but_not_unfinished(tmp_path: Path) -> None:
    import os

    from onnxlift.builder.build import BUILD_MANIFEST, prune_superseded_builds

    model = tmp_path / "build" / "minilm"
    for age, name in enumerate(["current", "previous", "older", "oldest"]):
        (model / name).mkdir(parents=True)
        marker = model / name / BUILD_MANIFEST
        marker.write_text("{}")
        os.utime(marker, (1_000_000 - age * 100, 1_000_000 - age * 100))
    (model / "running").mkdir()  # no build.json yet: a build beside this one
    removed = prune_superseded_builds(model / "current", keep=1)
    assert sorted(path.name for path in removed) == ["older", "oldest"]
    assert sorted(path.name for path in model.iterdir()) == ["current", "previous", "running"]
    assert prune_superseded_builds(model / "current", keep=1) == []
