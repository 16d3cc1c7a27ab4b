"""`serve`: gunicorn in front of the container app, sized for the instance it runs on.

Workers (SAGEMAKER_WORKERS overrides):
* GPU instance (onnxruntime has the CUDA provider and /dev/nvidia<N> exist): one worker per
  GPU, each pinned to its own device with CUDA_VISIBLE_DEVICES. A second process on the same
  GPU would hold a second CUDA context and model copy and only contend for the device;
  concurrency within a worker comes from threads instead (onnxruntime's run releases the GIL).
* CPU: one worker per two cores with two onnxruntime threads each, capped by memory
  (onnxlift_serving.sizing.cpu_worker_plan).
Every worker runs the gthread worker with SAGEMAKER_THREADS (default 4) threads, so /ping
is answered within SageMaker's 2 s even while inferences are running.

Dynamic batching (ONNXLIFT_BATCH_MAX_SIZE, the spec's [serving.batching]) merges the requests
a worker holds at once, so it needs that many in the worker: a sync worker holds one, and
gthread's default 4 would cap every merged run at 4 requests. With batching on (and no
SAGEMAKER_THREADS) a worker gets max_batch_size + max_queue_size + 1 threads (one batch
running, a full queue, and the request that full queue refuses with 503), at most
batching.MAX_BATCHING_THREADS: so the queue bound is what holds requests back, answered 503
with Retry-After, not gunicorn's own queue of accepted connections, where a request waits
unseen (and a /ping waits behind it). Each thread past the default 4 may hold one more
decoded request outside onnxruntime's arena, so each takes REQUEST_MEMORY_MB off the
worker's arena budget (ONNXLIFT_MEMORY_LIMIT_MB): max_queue_size bounds that memory too.

No preload: each worker imports the app and creates its session *after* the fork. A CUDA
context does not survive fork(), and onnxruntime's intra-op thread pool, created with the
session, would be missing its threads in the child (only the forking thread is copied).

SIGTERM (SageMaker stopping the instance, `docker stop`): gunicorn's master stops accepting,
lets in-flight requests finish for up to SAGEMAKER_GRACEFUL_TIMEOUT (default 20) seconds,
then exits 0. Requests waiting in a batch queue are in-flight requests: their own threads run
the queue, so it drains within that window. Whatever still waits when a worker exits (the
window ran out, or SIGINT/SIGQUIT asked for a quick stop) is answered 503 with Retry-After by
the worker_exit and worker_int hooks (Batcher.close), not dropped with the process.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication
from onnxlift_serving.batching import BatchingConfig
from onnxlift_serving.contract import Env
from onnxlift_serving.sizing import cpu_worker_plan

DEFAULT_BIND = "0.0.0.0:8080"  # the contract: SageMaker sends /ping and /invocations to 8080
# SageMaker gives up on an invocation after 60 s; a worker silent for that long is stuck.
WORKER_TIMEOUT_S = 60
# SageMaker's front end keeps connections open; outlive its idle timeout so it never
# sends on a connection we are closing.
KEEPALIVE_S = 75
DEFAULT_THREADS = 4
# A decoded request at SageMaker's 6 MB payload: ~57 MiB of FP32 values as Python and numpy
# objects plus its body (contract.SERVING_RESERVE_MB's measurement), rounded up.
REQUEST_MEMORY_MB = 64
DEFAULT_GRACEFUL_S = 20
GPU_DEVICE = re.compile(r"^nvidia\d+$")


@dataclass(frozen=True)
class Plan:
    workers: int
    threads: int  # gthread threads per worker
    ort_threads: int  # onnxruntime intra-op threads per worker
    gpus: int
    reason: str


def gpu_count(dev: Path = Path("/dev")) -> int:
    """GPUs visible to the container, without initialising CUDA in the master."""
    try:
        return sum(1 for entry in dev.iterdir() if GPU_DEVICE.match(entry.name))
    except OSError:
        return 0


def cuda_provider_available() -> bool:
    import onnxruntime as ort  # lists compiled-in providers; creates no CUDA context

    return "CUDAExecutionProvider" in ort.get_available_providers()


def memory_bytes(root: Path = Path("/")) -> int:
    """The container's memory: its cgroup's limit where one is set, else the machine's."""
    total = 4 * 1024**3
    try:
        with open(root / "proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    total = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    for limit in ("sys/fs/cgroup/memory.max", "sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            value = (root / limit).read_text().strip()
        except OSError:
            continue
        if value.isdigit():  # "max" (v2) or a huge number (v1) when unlimited
            total = min(total, int(value))
    return total


def worker_memory_mb(env: Mapping[str, str], plan: Plan, memory: int) -> str:
    """Each worker's memory limit (MiB) for onnxlift_serving's arena cap: ONNXLIFT_MEMORY_LIMIT_MB
    if set (0: no cap), else the container's memory shared by the workers. Each worker holds
    its own arena, and the sum past the container's memory gets a worker OOM-killed."""
    explicit = env.get(Env.MEMORY_LIMIT_MB)
    if explicit:
        return explicit
    share = memory // plan.workers // 1024**2
    extra_requests = max(0, plan.threads - DEFAULT_THREADS)
    # Each request thread past the default may hold a decoded request outside the arena; the
    # charge for them never takes more than half the worker's share (64 batching threads on a
    # 2 GiB-per-core CPU instance would otherwise leave the arena nothing: every request a 413).
    return str(max(1, share - min(extra_requests * REQUEST_MEMORY_MB, share // 2)))


def uncharged_request_mb(env: Mapping[str, str], plan: Plan, memory: int) -> int:
    """What the extra request threads may hold past the half share they are charged at most
    (worker_memory_mb): 0 when their whole charge fits; more, and a full queue of large
    requests can take a worker past its memory (OOM-killed rather than a 503)."""
    if env.get(Env.MEMORY_LIMIT_MB):
        return 0
    share = memory // plan.workers // 1024**2
    wanted = max(0, plan.threads - DEFAULT_THREADS) * REQUEST_MEMORY_MB
    return max(0, wanted - share // 2)


def request_threads(env: Mapping[str, str]) -> int:
    """gthread threads per worker: SAGEMAKER_THREADS, else enough for dynamic batching's queue
    bound to be reached (BatchingConfig.request_threads), else DEFAULT_THREADS."""
    if env.get(Env.SAGEMAKER_THREADS):
        return int(env[Env.SAGEMAKER_THREADS])
    batching = BatchingConfig.from_env(env)
    return max(DEFAULT_THREADS, batching.request_threads if batching else 0)


def plan_workers(
    env: Mapping[str, str], *, cores: int, gpus: int, cuda: bool, memory: int, model_bytes: int
) -> Plan:
    threads = request_threads(env)
    explicit = env.get(Env.SAGEMAKER_WORKERS)
    if gpus > 0 and cuda:
        workers = int(explicit) if explicit else gpus
        ort_threads = max(1, min(4, cores // workers))
        reason = f"{gpus} GPU(s): one worker per GPU"
    else:
        workers, ort_threads = cpu_worker_plan(
            cores=cores, memory_bytes=memory, model_bytes=model_bytes
        )
        reason = f"CPU, {cores} cores: one worker per two cores, memory-capped"
        if explicit:
            workers = int(explicit)
            ort_threads = max(1, cores // workers)
        gpus = 0
    if explicit:
        reason = Env.SAGEMAKER_WORKERS.value
    if env.get(Env.ORT_INTRA_OP_THREADS):
        ort_threads = int(env[Env.ORT_INTRA_OP_THREADS])
    return Plan(max(1, workers), max(1, threads), max(1, ort_threads), gpus, reason)


def _model_bytes(env: Mapping[str, str]) -> int:
    model_dir = Path(env.get(Env.SM_MODEL_DIR) or env.get(Env.MODEL_DIR) or "/opt/ml/model")
    try:
        return (model_dir / "model.onnx").stat().st_size
    except OSError:
        return 0


# -- gunicorn hooks (run in the master, except post_fork) -----------------------------------


def pre_fork(server: Any, worker: Any) -> None:
    """Give the new worker the lowest GPU index no living worker holds."""
    gpus = int(os.environ.get(Env.GPUS, "0"))
    if gpus:
        taken = {getattr(w, "gpu_index", None) for w in server.WORKERS.values()}
        worker.gpu_index = next((i for i in range(gpus) if i not in taken), 0)


def post_fork(server: Any, worker: Any) -> None:
    """In the worker, before the app (and CUDA) is loaded: see only its own GPU."""
    index = getattr(worker, "gpu_index", None)
    if index is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(index)
    server.log.info("worker %s started (gpu %s)", worker.pid, "none" if index is None else index)


def _refuse_queued(worker: Any) -> None:
    app = getattr(worker, "wsgi", None)  # the ContainerApp, in the worker only (no preload)
    close = getattr(app, "close", None)
    if callable(close):
        close(refuse_queued=True)


def worker_int(worker: Any) -> None:
    """SIGINT/SIGQUIT in a worker (a quick stop: it exits 0.1 s later): requests waiting in a
    batch queue get 503 with Retry-After now instead of a dropped connection; the batch
    already running still answers if it can."""
    _refuse_queued(worker)


def worker_exit(server: Any, worker: Any) -> None:
    """A worker leaving, after its graceful window: whatever still waits in a batch queue
    would die with it (the master's SIGKILL follows), so it is answered 503 now. gunicorn
    also calls this in the master for a worker it reaps: that copy holds no app."""
    if getattr(worker, "pid", None) == os.getpid():
        _refuse_queued(worker)


def when_ready(server: Any) -> None:
    server.log.info("listening on %s", ", ".join(str(listener) for listener in server.LISTENERS))


class Server(BaseApplication):  # type: ignore[misc]
    """gunicorn's documented custom-application pattern: settings from a dict, no config file."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.settings.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        import wsgi  # in the worker, after the fork: this is where the model loads

        return wsgi.create_app()


def settings(plan: Plan, *, bind: str, graceful_s: int, access_log: bool) -> dict[str, Any]:
    return {
        "bind": [bind],
        "workers": plan.workers,
        "worker_class": "gthread",
        "threads": plan.threads,
        "preload_app": False,
        "timeout": WORKER_TIMEOUT_S,
        "graceful_timeout": graceful_s,
        "keepalive": KEEPALIVE_S,
        "accesslog": "-" if access_log else None,
        "errorlog": "-",
        "loglevel": "info",
        "proc_name": "onnxlift-sagemaker",
        # gunicorn 27's control socket lives at one path per user: two local containers
        # would fight over it, and nothing here uses it.
        "control_socket_disable": True,
        "pre_fork": pre_fork,
        "post_fork": post_fork,
        "worker_int": worker_int,
        "worker_exit": worker_exit,
        "when_ready": when_ready,
    }


def main(argv: list[str] | None = None, env: dict[str, str] | None = None) -> None:
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(prog="serve", description="onnxlift SageMaker container")
    parser.add_argument("mode", nargs="?", default="serve", choices=["serve"])
    parser.add_argument("--bind", default=env.get(Env.SAGEMAKER_BIND, DEFAULT_BIND))
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    if args.workers:
        env[Env.SAGEMAKER_WORKERS] = str(args.workers)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    cuda = cuda_provider_available()
    memory = memory_bytes()
    plan = plan_workers(
        env,
        cores=len(os.sched_getaffinity(0)),
        gpus=gpu_count(),
        cuda=cuda,
        memory=memory,
        model_bytes=_model_bytes(env),
    )
    # Read in each worker by wsgi.config_from_env and the pre_fork hook.
    env[Env.ORT_INTRA_OP_THREADS] = str(plan.ort_threads)
    env[Env.MEMORY_LIMIT_MB] = worker_memory_mb(env, plan, memory)
    env[Env.GPUS] = str(plan.gpus)
    if not cuda:
        env.setdefault(Env.ORT_PROVIDERS, "CPUExecutionProvider")
    batching = BatchingConfig.from_env(env)
    batch = batching.max_batch_size if batching else 0
    if batching and plan.threads < batching.threads_for_bound:
        logging.getLogger("onnxlift.sagemaker").warning(
            "dynamic batching: %d threads a worker cannot fill its queue of %d behind a batch "
            "of %d; requests past them wait in gunicorn's queue instead of a 503",
            plan.threads,
            batching.queue_limit,
            batch,
        )
    uncharged = uncharged_request_mb(env, plan, memory)
    if uncharged:
        logging.getLogger("onnxlift.sagemaker").warning(
            "%d request threads a worker may hold %d MiB of requests more than its memory "
            "limit leaves for them: lower [serving.batching] max_queue_size / max_batch_size "
            "or take an instance with more memory a worker",
            plan.threads,
            uncharged,
        )
    logging.getLogger("onnxlift.sagemaker").info(
        "serving on %s: %d worker(s) x %d threads, %d onnxruntime threads each (%s); "
        "memory limit %s MiB a worker; dynamic batching %s; CUDA provider %s",
        args.bind,
        plan.workers,
        plan.threads,
        plan.ort_threads,
        plan.reason,
        env[Env.MEMORY_LIMIT_MB],
        f"up to {batch} rows a run" if batch else "off",
        "available" if cuda else "not available, CPU only",
    )
    graceful = int(env.get(Env.SAGEMAKER_GRACEFUL_TIMEOUT, DEFAULT_GRACEFUL_S))
    access_log = env.get(Env.SAGEMAKER_ACCESS_LOG, "").lower() in ("1", "true")
    Server(settings(plan, bind=args.bind, graceful_s=graceful, access_log=access_log)).run()
