"""One cold start, run as a fresh interpreter by coldstart.py; prints one JSON line.

    python coldstart_probe.py onnx|handler|torch ARTIFACT_FOLDER|HANDLER_FILE|WEIGHTS THREADS TEXT

It imports nothing of the toolkit beyond the serving runtime, so what it measures is what a
serving process pays: imports, session (or model) creation, one inference. The handler kind
reads its model and its API Gateway event from the environment.
"""

import json
import sys
import time

started = time.perf_counter()


def main() -> None:
    kind, where, threads, text = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    marks: dict[str, float] = {}
    phases: dict[str, float] = {}  # the handler's own init by phase (handler kind)
    if kind == "onnx":
        import numpy as np
        import onnxruntime  # noqa: F401
        import tokenizers  # noqa: F401
        from onnxlift_serving.artifact import load_artifact
        from onnxlift_serving.pipelines import build_pipeline
        from onnxlift_serving.session import create_session, optimization_for

        marks["imports"] = time.perf_counter()
        artifact = load_artifact(__import__("pathlib").Path(where))  # sha256 checked, as served
        level = optimization_for(artifact.manifest, [])
        session = create_session(artifact.model_path, threads=threads, optimization=level)
        pipeline = build_pipeline(artifact, session)
        marks["load"] = time.perf_counter()
        out = pipeline.run({pipeline.text_input: np.array([text], dtype=object)})
        dim = int(out[pipeline.embedding_output].shape[-1])
    elif kind == "handler":
        import importlib.util
        import os

        sys.path.insert(0, os.path.dirname(where))
        spec = importlib.util.spec_from_file_location("handler", where)
        module = importlib.util.module_from_spec(spec)
        sys.modules["handler"] = module
        spec.loader.exec_module(module)  # imports + model load: the Lambda init phase
        now = time.perf_counter()
        # The handler times its own init by phase (imports, verify, session, pipeline).
        phases = dict(getattr(module, "INIT_PHASES", {}))
        marks["imports"] = now - phases.get("init_s", 0.0) + phases.get("imports_s", 0.0)
        marks["load"] = now
        from onnxlift_serving.contract import Env  # already loaded by the handler

        name = os.environ[Env.MODEL_NAME]

        class Context:  # what the handler and powertools read of Lambda's context
            function_name, memory_limit_in_mb, aws_request_id = f"onnxlift-{name}", 2048, "cold"
            invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:{name}"

            def get_remaining_time_in_millis(self):
                return 29_000

        event = json.loads(os.environ["ONNXLIFT_BENCH_EVENT"])  # built by the parent
        response = module.lambda_handler(event, Context())
        if response.get("statusCode") != 200:
            raise SystemExit(f"handler answered {response.get('statusCode')}: {response}")
        dim = len(json.loads(response["body"])["outputs"][0]["data"])
    elif kind == "torch":
        import torch
        from sentence_transformers import SentenceTransformer

        marks["imports"] = time.perf_counter()
        torch.set_num_threads(threads)
        model = SentenceTransformer(where, device="cpu")
        marks["load"] = time.perf_counter()
        dim = int(model.encode([text], convert_to_numpy=True, show_progress_bar=False).shape[-1])
    else:
        raise SystemExit(f"unknown kind {kind}")
    done = time.perf_counter()
    result = {
        "imports_s": marks["imports"] - started,
        "load_s": marks["load"] - marks["imports"],
        "first_inference_s": done - marks["load"],
        "in_process_s": done - started,
        "dim": dim,
    }
    if phases:
        result["phases"] = phases
    print("COLDSTART " + json.dumps(result), flush=True)


main()
