"""Every way in: a PyTorch module through the Python API, an ONNX file through `onnxlift add`,
and the checks that refuse what must not be served."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from onnxlift.errors import BuildError
from onnxlift.sources.onnx_file import check_onnx_file

pytestmark = pytest.mark.slow


class Scorer(torch.nn.Module):
    """A small MLP: the kind of module a team brings."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 3)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def held_out(rows: int = 64) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((rows, 16)).astype(np.float32)


@pytest.mark.parametrize("mode", ["static", "dynamic", "none"])
def test_python_api_builds_any_module(mode: str, tmp_path: Path) -> None:
    from onnxlift_serving.artifact import load_artifact

    from onnxlift.api import build_pytorch

    result = build_pytorch(
        Scorer(),
        name="scorer",
        example_inputs={"x": torch.randn(2, 16)},
        output_names=["score"],
        dynamic_axes={"x": {0: "batch"}, "score": {0: "batch"}},
        parity_inputs={"x": held_out()},
        quantization=mode,
        threshold=0.05,
        root=tmp_path,
        report=lambda _: None,
    )
    manifest = load_artifact(result.folder).manifest
    assert manifest["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}]
    assert manifest["outputs"] == [{"name": "score", "datatype": "FP32", "shape": [-1, 3]}]
    assert manifest["quantization"]["mode"] == mode
    assert manifest["parity"]["metric"] == "max_abs_error"
    assert manifest["parity"]["value"] <= 0.05
    assert ("int8" in manifest["parity"]) == (mode != "none")


def test_python_api_gate_fails_with_the_figure(tmp_path: Path) -> None:
    from onnxlift.api import build_pytorch

    with pytest.raises(
        BuildError,
        match=r"parity gate failed: int8 max_abs_error .* > threshold 1e-09; worst input #",
    ):
        build_pytorch(
            Scorer(),
            name="scorer",
            example_inputs={"x": torch.randn(2, 16)},
            output_names=["score"],
            dynamic_axes={"x": {0: "batch"}, "score": {0: "batch"}},
            parity_inputs={"x": held_out()},
            quantization="dynamic",
            threshold=1e-9,
            root=tmp_path,
            report=lambda _: None,
        )


def export_scorer(path: Path) -> Path:
    torch.onnx.export(
        Scorer(),
        (torch.randn(2, 16),),
        str(path),
        input_names=["x"],
        output_names=["score"],
        dynamic_axes={"x": {0: "batch"}},
        dynamo=False,
        opset_version=17,
    )
    return path


def test_add_checks_builds_and_publishes_an_outside_onnx_file(
    project: Path, tmp_path: Path, registry: Any, load_handler: Any, lambda_context: Any
) -> None:
    from onnxlift.cli import cli

    outside = export_scorer(tmp_path / "elsewhere.onnx")
    result = CliRunner().invoke(
        cli,
        [
            "add",
            str(outside),
            "--name",
            "scorer",
            "--quantize",
            "dynamic",
            "--bucket",
            registry.bucket,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "published scorer version 1" in result.output
    assert (project / "models" / "scorer" / "model.toml").is_file()
    manifest = registry.manifest("scorer", "1")
    assert manifest["quantization"]["mode"] == "dynamic" and manifest["parity"]["value"] <= 0.05

    # ... and the real handler serves it, straight from the registry.
    module = load_handler(MODEL_NAME="scorer", MODEL_VERSION="1")
    from tests.conftest import call

    x = held_out(3)
    body = {
        "inputs": [{"name": "x", "shape": [3, 16], "datatype": "FP32", "data": x.ravel().tolist()}]
    }
    status, answer, _ = call(module, lambda_context, body, path="/v2/models/scorer/infer")
    assert status == 200, answer
    (score,) = answer["outputs"]
    expected = Scorer()(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(np.asarray(score["data"]).reshape(3, 3), expected, atol=0.05)

    again = CliRunner().invoke(cli, ["add", str(outside), "--name", "scorer", "--no-publish"])
    assert again.exit_code == 2 and "exists" in again.output


def test_add_refuses_pickles_and_leaves_nothing(project: Path, tmp_path: Path) -> None:
    from onnxlift.cli import cli

    bad = tmp_path / "model.onnx"
    bad.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    result = CliRunner().invoke(cli, ["add", str(bad), "--name", "evil", "--no-publish"])
    assert result.exit_code == 2 and "pickle" in result.output
    assert not (project / "models" / "evil").exists()


def test_external_data_must_stay_in_the_model_folder(tmp_path: Path) -> None:
    import onnx

    inner = tmp_path / "pkg"
    inner.mkdir()
    path = export_scorer(inner / "m.onnx")
    model = onnx.load(str(path))
    onnx.save(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    assert check_onnx_file(path).graph.name  # inside its folder: fine
    shutil.move(inner / "weights.bin", tmp_path / "weights.bin")
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../weights.bin"
    onnx.save(model, str(path))
    with pytest.raises(BuildError, match="outside"):
        check_onnx_file(path)


def test_keras_savedmodel_and_keras_file_convert_alike(tmp_path: Path) -> None:
    import keras

    from onnxlift.sources.keras import keras_exporter

    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=(4,), name="features")
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))
    model.save(tmp_path / "m.keras")
    model.export(str(tmp_path / "saved"), verbose=False)
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    from onnxlift_serving.session import create_session

    results = []
    for source in (tmp_path / "m.keras", tmp_path / "saved"):
        out = tmp_path / f"{source.name}.onnx"
        keras_exporter(source, renames={"output_0": "probabilities"})(out, 17)
        session = create_session(out)
        assert [o.name for o in session.get_outputs()] == ["probabilities"]
        results.append(session.run(None, {"features": x})[0])
    np.testing.assert_allclose(results[0], model.predict(x, verbose=0), atol=1e-5)
    np.testing.assert_allclose(results[0], results[1], atol=1e-6)


def test_sklearn_text_graph_loads_without_en_us_locale() -> None:
    from skl2onnx.common.data_types import StringTensorType
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.naive_bayes import MultinomialNB
    from sklearn.pipeline import Pipeline

    from onnxlift.sources.sklearn import sklearn_exporter

    texts, labels = ["good match", "bad weather", "great goal", "cold rain"], ["s", "w", "s", "w"]
    pipe = Pipeline([("v", TfidfVectorizer()), ("nb", MultinomialNB())]).fit(texts, labels)
    import tempfile

    import onnx
    from onnxlift_serving.session import create_session

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "m.onnx"
        sklearn_exporter(
            pipe,
            initial_types=[("text", StringTensorType([None, 1]))],
            options={id(pipe.steps[-1][1]): {"zipmap": False}},
        )(out, 17)
        normalizers = [n for n in onnx.load(str(out)).graph.node if n.op_type == "StringNormalizer"]
        assert normalizers and all(
            a.s == b"C.UTF-8" for n in normalizers for a in n.attribute if a.name == "locale"
        )
        session = create_session(out)  # en_US.UTF-8 is absent on this machine
        labels_out = session.run(None, {"text": np.array([["GREAT match"]], dtype=object)})[0]
        assert list(labels_out) == ["s"]


def test_add_with_a_failed_gate_prints_one_line_and_exits_2(project: Path, tmp_path: Path) -> None:
    from onnxlift.cli import cli

    outside = export_scorer(tmp_path / "elsewhere.onnx")
    result = CliRunner().invoke(
        cli,
        ["add", str(outside), "--name", "scorer", "--quantize", "dynamic", "--max-abs-error",
         "1e-9", "--no-publish"],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    (line,) = [x for x in result.output.splitlines() if "parity gate failed" in x]
    assert line.startswith("error: scorer: parity gate failed: int8 max_abs_error ")
    assert "> threshold 1e-09; worst input #" in line and "x[16]=[" in line and "try: " in line
    assert "([quantization] exclude_nodes" in line  # square brackets survive the console
    assert "Traceback" not in result.output
    leftovers = [p.name for p in (project / "models").iterdir()]
    assert "scorer" not in leftovers and not [n for n in leftovers if n.startswith(".adding")]
    assert not (project / ".onnxlift" / "build" / "scorer").exists()  # no build of it either


HOSTILE_NAMES = ["../../../onnxlift-hostile", "/tmp/onnxlift-hostile", "a/b", "x\ny", "ünï", "1abc"]


@pytest.mark.parametrize("name", [*HOSTILE_NAMES, "a" * 65])
def test_add_refuses_a_name_before_making_any_folder(
    project: Path, tmp_path: Path, name: str
) -> None:
    from onnxlift.cli import cli

    before = sorted(p.name for p in (project / "models").iterdir())
    outside = tmp_path / "x.onnx"
    outside.write_bytes(b"never read")
    result = CliRunner().invoke(cli, ["add", str(outside), "--name", name, "--no-publish"])
    assert result.exit_code == 2 and "is not a model name" in result.output, result.output
    assert sorted(p.name for p in (project / "models").iterdir()) == before
    models = project / "models"
    assert not (models / "../../../onnxlift-hostile").resolve().exists()
    assert not Path("/tmp/onnxlift-hostile").exists()


def test_add_writes_a_hostile_file_name_into_model_toml_as_data(
    project: Path, tmp_path: Path
) -> None:
    import tomllib

    from onnxlift.cli import cli

    weird = tmp_path / 'a"\nname = "pwned'
    weird.mkdir()
    outside = export_scorer(weird / 'x\n[serving]\ntarget = "sagemaker".onnx')
    result = CliRunner().invoke(cli, ["add", str(outside), "--name", "safe", "--no-publish"])
    assert result.exit_code == 0, result.output
    spec = tomllib.loads((project / "models" / "safe" / "model.toml").read_text())
    assert spec["name"] == "safe" and spec["serving"]["target"] == "lambda"


def test_add_refuses_an_op_of_an_unknown_domain_in_one_line(project: Path, tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    from onnxlift.cli import cli

    graph = helper.make_graph(
        [helper.make_node("Mystery", ["x"], ["y"], domain="com.nobody")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.nobody", 1)]
    )
    model.ir_version = 8
    path = tmp_path / "mystery.onnx"
    onnx.save(model, path)
    result = CliRunner().invoke(cli, ["add", str(path), "--name", "mystery", "--no-publish"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "mystery.onnx refused" in result.output
    assert not (project / "models" / "mystery").exists()
    assert not (project / ".onnxlift" / "build" / "mystery").exists()
