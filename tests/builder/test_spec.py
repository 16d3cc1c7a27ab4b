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
    """An edited builder, or a serving module the build runs, rebuilds; the request path's
    own modules do not (they change no artifact)."""
    import subprocess
    import sys

    import onnxlift_serving.pipelines

    from onnxlift.builder import build

    roots = build.toolkit_code_roots()

    def covered(path: str) -> bool:
        resolved = Path(path).resolve()
        return any(resolved == root or root in resolved.parents for root in roots)

    assert covered(build.__file__) and covered(build.parity.__file__)
    assert covered(onnxlift_serving.pipelines.__file__)
    serving = Path(onnxlift_serving.pipelines.__file__).parent
    assert not covered(str(serving / "service.py"))
    assert not covered(str(serving / "request_metrics.py"))
    # every serving module the builder imports is in the digest (a fresh interpreter)
    imported = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, onnxlift.builder.build, onnxlift.builder.bounded; "
            "print(' '.join(m for m in sys.modules if m.startswith('onnxlift_serving.')))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert imported
    assert {m.split(".", 1)[1] for m in imported} <= set(build.SERVING_MODULES_BUILT_ON)

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


def test_a_new_build_prunes_superseded_ones_but_not_unfinished_or_recent(tmp_path: Path) -> None:
    import os
    import time

    from onnxlift.builder.build import BUILD_MANIFEST, prune_superseded_builds

    model = tmp_path / "build" / "minilm"
    now = time.time()
    ages = {"current": 0, "previous": 7200, "recent": 600, "older": 9000, "oldest": 99000}
    for name, age in ages.items():
        (model / name).mkdir(parents=True)
        marker = model / name / BUILD_MANIFEST
        marker.write_text("{}")
        os.utime(marker, (now - age, now - age))
    (model / "running").mkdir()  # no build.json yet: a build beside this one
    (model / ".pruned-gone" / "work").mkdir(parents=True)  # a prune that stopped half way
    removed = prune_superseded_builds(model / "current", keep=1, idle_s=3600)
    assert sorted(path.name for path in removed) == ["older", "oldest", "previous"]
    # kept: the newest before current ("recent", used 10 min ago) and what is unfinished
    assert sorted(path.name for path in model.iterdir()) == ["current", "recent", "running"]
    assert prune_superseded_builds(model / "current", keep=0, idle_s=3600) == []
    assert prune_superseded_builds(model / "current", keep=0, idle_s=0) == [model / "recent"]
