"""scikit-learn -> ONNX through skl2onnx, converted at build time from the user's own objects.

Only ONNX is ever served: nothing is unpickled at serve time, and a model file a user gives
is never unpickled here either (train in source.py, or load with the user's own code).
"""

from __future__ import annotations

from typing import Any

import onnx

from onnxlift.sources import Exporter

# skl2onnx's StringNormalizer defaults to en_US.UTF-8, which many images (the Lambda base
# image, Debian slim) lack: session creation then fails. C.UTF-8 is on every glibc system.
PORTABLE_LOCALE = "C.UTF-8"


def portable_locale(model: onnx.ModelProto, locale: str = PORTABLE_LOCALE) -> int:
    """Set every StringNormalizer's locale; returns how many nodes were changed."""
    changed = 0
    for node in model.graph.node:
        if node.op_type != "StringNormalizer":
            continue
        for attribute in list(node.attribute):
            if attribute.name == "locale":
                node.attribute.remove(attribute)
        node.attribute.append(onnx.helper.make_attribute("locale", locale))
        changed += 1
    return changed


def sklearn_exporter(
    estimator: Any, *, initial_types: list[tuple[str, Any]], options: dict[Any, Any] | None = None
) -> Exporter:
    def export(path: Any, opset: int) -> None:
        from skl2onnx import convert_sklearn

        model = convert_sklearn(
            estimator,
            initial_types=initial_types,
            options=options,
            target_opset={"": opset, "ai.onnx.ml": 3},
        )
        portable_locale(model)
        onnx.save(model, str(path))

    return export
