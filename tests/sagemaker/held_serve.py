"""`serve` (launcher.main: gunicorn and the container app) with each worker's first batched
run held until the file HELD_RUN_GATE names exists; `<gate>.started` appears once that run
has begun. While it is held, the requests behind it provably wait in the batch queue (one
batch runs at a time per version), which the SIGTERM drain test needs to know.

    python tests/sagemaker/held_serve.py --bind HOST:PORT   (with the container's env)
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "functions" / "sagemaker"))

import launcher
import wsgi

HOLD_S = 60.0


def held_app(gate: Path) -> wsgi.ContainerApp:
    """The worker's app, loaded before it answers, its batcher's first run held at `gate`."""
    app = wsgi.create_app(background=False)
    assert app.service is not None and app.ready, app.service and app.service.load_error
    (loaded,) = app.service._loaded.values()
    batcher = loaded.batcher
    assert batcher is not None, "batching is off: set the ONNXLIFT_BATCH_* environment"
    run, held = batcher._run, []

    def first_held(inputs: Any) -> Any:
        if not held:
            held.append(True)
            Path(f"{gate}.started").touch()
            deadline = time.monotonic() + HOLD_S
            while not gate.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        return run(inputs)

    batcher._run = first_held  # type: ignore[method-assign]
    return app


if __name__ == "__main__":
    gate = Path(os.environ["HELD_RUN_GATE"])
    launcher.Server.load = lambda self: held_app(gate)  # type: ignore[method-assign]
    launcher.main(sys.argv[1:])
