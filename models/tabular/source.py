"""Train the Keras classifier at build time on data that ships inside scikit-learn."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from onnxlift_serving.protocol import TensorSpec

from onnxlift.sources import ModelSource
from onnxlift.sources.keras import keras_exporter

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
SEED = 7


def dataset() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    data = load_breast_cancer()
    x = data.data.astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, data.target, test_size=0.3, random_state=SEED, stratify=data.target
    )
    return x_train, x_test, y_train, y_test, [str(n) for n in data.target_names]


def train(x_train: np.ndarray, y_train: np.ndarray) -> Any:
    import keras

    keras.utils.set_random_seed(SEED)
    features = keras.Input(shape=(x_train.shape[1],), name="features")
    normalize = keras.layers.Normalization()
    normalize.adapt(x_train)
    hidden = keras.layers.Dense(32, activation="relu")(normalize(features))
    hidden = keras.layers.Dense(16, activation="relu")(hidden)
    probabilities = keras.layers.Dense(2, activation="softmax", name="probabilities")(hidden)
    model = keras.Model(features, probabilities)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x_train, y_train, epochs=40, batch_size=32, verbose=0)
    return model


def load(spec: Any) -> ModelSource:
    import keras
    import tensorflow as tf

    x_train, x_test, y_train, y_test, names = dataset()
    model = train(x_train, y_train)
    saved = Path(tempfile.mkdtemp(prefix="onnxlift-tabular-"))
    if spec.raw.get("source", {}).get("format", "keras") == "savedmodel":
        model.export(str(saved / "saved_model"), verbose=False)
        path = saved / "saved_model"
    else:
        path = saved / "model.keras"
        model.save(path)
    probabilities = model.predict(x_test, verbose=0)
    labels = np.asarray(names, dtype=object)
    return ModelSource(
        framework="keras",
        framework_version=f"keras {keras.__version__}, tensorflow {tf.__version__}",
        export=keras_exporter(path, renames={"output_0": "probabilities"}),
        inputs=[TensorSpec("features", "FP32", (-1, x_train.shape[1]))],
        outputs=[TensorSpec("label", "BYTES", (-1,)), TensorSpec("probabilities", "FP32", (-1, 2))],
        parity_inputs={"features": x_test},
        reference={"label": labels[probabilities.argmax(axis=1)], "probabilities": probabilities},
        truth=labels[y_test],
        calibration=[{"features": x_train[i : i + 8]} for i in range(0, len(x_train), 8)],
        labels=names,
    )
