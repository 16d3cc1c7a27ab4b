"""The SageMaker container's app on a published copy of the real MiniLM, and one way to call
its WSGI interface as gunicorn would."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, published_copy

sys.path.insert(0, str(ROOT / "functions" / "sagemaker"))

import wsgi


@pytest.fixture(scope="module")
def artifact(minilm_build: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model folder as SageMaker lays it out under /opt/ml/model."""
    return published_copy(minilm_build.folder, tmp_path_factory.mktemp("opt-ml") / "model")


@pytest.fixture(scope="module")
def app(artifact: Path) -> wsgi.ContainerApp:
    return wsgi.create_app(
        {"SM_MODEL_DIR": str(artifact), "ORT_INTRA_OP_THREADS": "1"}, background=False
    )


def wsgi_call(
    app: wsgi.ContainerApp,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    environ_overrides: dict[str, Any] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request; `headers` as a client sends them (a name in
    the WSGI environ, HTTP_X, or CONTENT_TYPE, passes through as it is), then
    `environ_overrides` as they are (a lying CONTENT_LENGTH, another input stream)."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
    }
    for key, value in (headers or {}).items():
        name = key.upper().replace("-", "_")
        passes = name == "CONTENT_TYPE" or name.startswith("HTTP_")
        environ[name if passes else "HTTP_" + name] = value
    environ |= environ_overrides or {}
    seen: dict[str, Any] = {}

    def start_response(status: str, response_headers: list[tuple[str, str]]) -> None:
        seen["status"], seen["headers"] = int(status.split()[0]), dict(response_headers)

    payload = b"".join(app(environ, start_response))
    return seen["status"], seen["headers"], payload
