"""Train the text pipeline at build time on a small labelled set generated here (seeded).

Only ONNX is served: the scikit-learn objects live in this process and are converted, never
pickled or unpickled.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
from onnxlift_serving.protocol import TensorSpec

from onnxlift.sources import ModelSource
from onnxlift.sources.sklearn import sklearn_exporter

SEED = 11
TOPICS = {
    "sports": (
        ["the striker", "our team", "the coach", "the goalkeeper", "fans", "the referee"],
        ["scored twice in", "won", "lost", "trained hard before", "celebrated after"],
        ["the final", "the derby", "the championship match", "extra time", "the league"],
    ),
    "tech": (
        ["the new phone", "this laptop", "the startup", "our server", "the app", "engineers"],
        ["shipped", "crashed during", "was updated for", "benchmarked", "released"],
        ["the chip", "the software update", "the cloud launch", "a GPU cluster", "the API"],
    ),
    "food": (
        ["the chef", "my grandmother", "this restaurant", "the bakery", "we", "the menu"],
        ["cooked", "served", "baked", "seasoned", "tasted"],
        ["fresh pasta", "spicy curry", "sourdough bread", "the pizza", "chocolate cake"],
    ),
    "weather": (
        ["the forecast", "a storm", "heavy rain", "the wind", "temperatures", "fog"],
        ["hit", "is expected over", "cooled", "flooded", "swept across"],
        ["the coast", "the weekend", "the valley", "the city tonight", "the mountains"],
    ),
}


def corpus(count: int = 600) -> tuple[list[str], list[str]]:
    rng = random.Random(SEED)
    texts, labels = [], []
    for i in range(count):
        topic = list(TOPICS)[i % len(TOPICS)]
        subjects, verbs, objects = TOPICS[topic]
        text = f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}"
        texts.append(text.upper() if i % 7 == 0 else text.capitalize())
        labels.append(topic)
    return texts, labels


def train() -> tuple[Any, list[str], list[str]]:
    """The fitted pipeline and the held-out texts and labels."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import Pipeline

    texts, labels = corpus()
    x_train, x_test, y_train, y_test = train_test_split(
        texts, labels, test_size=0.25, random_state=SEED, stratify=labels
    )
    pipeline = Pipeline(
        [("tfidf", TfidfVectorizer(lowercase=True)), ("clf", LogisticRegression(max_iter=1000))]
    )
    return pipeline.fit(x_train, y_train), x_test, y_test


def load(spec: Any) -> ModelSource:
    import sklearn
    from skl2onnx.common.data_types import StringTensorType

    pipeline, x_test, y_test = train()
    classifier = pipeline.steps[-1][1]
    classes = [str(c) for c in pipeline.classes_]
    return ModelSource(
        framework="sklearn",
        framework_version=f"scikit-learn {sklearn.__version__}",
        export=sklearn_exporter(
            pipeline,
            initial_types=[("text", StringTensorType([None, 1]))],
            options={id(classifier): {"zipmap": False}},
        ),
        inputs=[TensorSpec("text", "BYTES", (-1,))],
        outputs=[
            TensorSpec("label", "BYTES", (-1,)),
            TensorSpec("probabilities", "FP32", (-1, len(classes))),
        ],
        parity_inputs={"text": np.array(x_test, dtype=object)},
        reference={
            "label": np.array(pipeline.predict(x_test), dtype=object),
            "probabilities": pipeline.predict_proba(x_test).astype(np.float32),
        },
        truth=np.array(y_test, dtype=object),
        labels=classes,
    )
