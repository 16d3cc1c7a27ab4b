"""A build in a child process with a wall-clock and a memory limit, that Ctrl-C stops.

Building runs a model's checks and its reference run: onnx.checker, shape inference, session
creation (constant folding) and inference on the parity inputs. A hostile or careless file
can make any of these run for hours (a Loop of 10^12 iterations, a 200,000-node graph) or
allocate tens of GB (a ConstantOfShape of a huge constant shape). In-process, none of that can
be stopped: onnxruntime ignores Ctrl-C inside a run. In a child the parent can always stop it:

- memory: RLIMIT_DATA on the child, so an allocation over the limit fails at once (numpy's
  MemoryError, onnxruntime's "Failed to allocate memory") instead of growing until the kernel
  kills something. RLIMIT_DATA, not RLIMIT_AS: it counts memory written to (heap, anonymous
  mappings), not address space that torch and glibc's per-thread arenas only reserve.
- time: the parent kills the child past the deadline.
- Ctrl-C: the child ignores SIGINT; the parent gets KeyboardInterrupt, kills the child and
  re-raises, so callers clean up as for any interruption.

The child reports progress lines and its result (or one refusal line) over a pipe. A build
that is already finished (same fingerprint) is answered in the parent without a child.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import resource
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from onnxlift import paths
from onnxlift.errors import BuildError, LimitExceeded, ModelRejected, OnnxliftError

if TYPE_CHECKING:  # the builder imports onnx, onnxruntime and numpy: only where a build runs
    from onnxlift.builder.build import BuildResult, Report

__all__ = [
    "DEFAULT_MEMORY_MB",
    "DEFAULT_SECONDS",
    "BuildLimits",
    "build_bounded",
]

DEFAULT_SECONDS: Final = 1800  # MiniLM builds in about 2 minutes here; 15x that is a runaway
# Half the machine: room for the caller (the local stack, an editor) and the OS beside it.
DEFAULT_MEMORY_MB: Final = max(
    2048, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 2
)
# Beyond onnxruntime's arena refusals (onnxlift_serving.session.is_allocation_failure): the
# C++ allocator's own, which RLIMIT_DATA makes any native allocation raise.
NATIVE_ALLOCATION_FAILURES: Final = ("bad_alloc", "bad allocation")
POLL_SECONDS: Final = 0.2


@dataclass(frozen=True)
class BuildLimits:
    seconds: float = DEFAULT_SECONDS
    memory_mb: int = DEFAULT_MEMORY_MB


def _failure_log(root: Path, name: str) -> Path:
    return paths.cache_dir(root) / "logs" / f"{name}-build.log"


def _child_main(
    connection: Connection, folder: Path, root: Path, force: bool, memory_mb: int, parent: int
) -> None:
    """The child: limits first, then the build; every outcome is one message on the pipe."""
    from onnxlift.parent_watch import watch_parent

    for stop in (signal.SIGINT, signal.SIGTERM):  # the parent decides when to stop...
        signal.signal(stop, signal.SIG_IGN)
    watch_parent(parent)  # ...and a parent killed outright (SIGKILL) takes the child along
    limit = memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    name = folder.name
    try:
        import onnxruntime

        from onnxlift.builder.build import build_model

        # onnxruntime's own log lines would repeat, unasked, what the one line below says.
        onnxruntime.set_default_logger_severity(4)
        from onnxlift.spec import load_spec

        result = build_model(
            load_spec(folder),
            root=root,
            force=force,
            report=lambda line: connection.send(("report", line)),
        )
        connection.send(("done", result))
    except OnnxliftError as exc:
        connection.send(("refused", str(exc)))
    except MemoryError as exc:
        connection.send(("memory", f"MemoryError: {str(exc)[:200]}"))
    except BaseException as exc:  # onnx's, onnxruntime's or a source.py's (sys.exit too)
        text = str(exc)
        from onnxlift_serving.session import is_allocation_failure

        if is_allocation_failure(text) or any(m in text for m in NATIVE_ALLOCATION_FAILURES):
            size = re.search(r"buffer of size (\d+)", text)
            what = f"an allocation of {int(size[1]):,} bytes failed" if size else text[-200:]
            connection.send(("memory", what))
            return
        log = _failure_log(root, name)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(traceback.format_exc())
        first = (text.strip().splitlines() or [""])[0][:300]
        shown = log.relative_to(root) if log.is_relative_to(root) else log
        connection.send(("rejected", f"{type(exc).__name__}: {first} (traceback in {shown})"))


def _outcome(kind: str, payload: Any, name: str, limits: BuildLimits) -> BuildResult:
    if kind == "done":
        return payload  # type: ignore[no-any-return]
    if kind == "memory":
        raise LimitExceeded(
            f"{name}: the build needed more than its {limits.memory_mb:,} MiB memory limit "
            f"({payload}); raise it with --memory-limit-mb if the model is that large"
        )
    if kind == "rejected":
        raise ModelRejected(payload)
    raise BuildError(payload)


def _stop(process: multiprocessing.process.BaseProcess) -> None:
    if process.is_alive():
        process.kill()
    process.join(10)
    if process.exitcode is not None:
        process.close()  # its sentinel fd now, not at garbage collection


def build_bounded(
    folder: Path,
    *,
    root: Path,
    force: bool = False,
    limits: BuildLimits | None = None,
    report: Report = print,
) -> BuildResult:
    """Build the model whose spec is in `folder` in a child process under `limits`."""
    from onnxlift.builder.build import cached_build
    from onnxlift.spec import load_spec

    limits = limits or BuildLimits()
    spec = load_spec(folder)
    if not force and (cached := cached_build(spec, root)) is not None:
        report(f"{spec.name}: build {cached.manifest['build_fingerprint']} is up to date")
        return cached
    context = multiprocessing.get_context("spawn")  # no threads or locks inherited mid-state
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(
        target=_child_main,
        args=(sender, folder, root, force, limits.memory_mb, os.getpid()),
        name=f"onnxlift-build-{spec.name}",
        daemon=False,  # a source.py may start processes of its own; parent_watch ends it
    )
    deadline = time.monotonic() + limits.seconds
    process.start()
    sender.close()  # the child holds the only writer: EOF on the reader means it has gone
    previous = _terminate_as_interrupt()
    try:
        while True:
            if time.monotonic() > deadline:
                raise LimitExceeded(
                    f"{spec.name}: the build ran past its {limits.seconds:g} s time limit and "
                    "was stopped; raise it with --time-limit-s if the model needs that long"
                )
            if not receiver.poll(POLL_SECONDS):
                continue
            try:
                kind, payload = receiver.recv()
            except EOFError:
                process.join(10)
                raise _died(spec.name, process.exitcode, limits) from None
            if kind == "report":
                report(payload)
                continue
            return _outcome(kind, payload, spec.name, limits)
    finally:
        _stop(process)
        receiver.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _terminate_as_interrupt() -> Any:
    """SIGTERM (a `kill`, a CI timeout) ends the build as Ctrl-C does, so callers clean up
    (Python's default would exit at once, leaving add's staging folder). Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


def _died(name: str, exitcode: int | None, limits: BuildLimits) -> OnnxliftError:
    """The child ended without a word: a signal (the kernel's OOM killer, an abort inside
    onnxruntime) or an exit from native code."""
    if exitcode is not None and exitcode < 0:
        try:
            how = signal.Signals(-exitcode).name
        except ValueError:  # a realtime signal has no name
            how = f"signal {-exitcode}"
    else:  # it exited without a result: most often it could not start (its stderr says why)
        return BuildError(
            f"{name}: the build process exited (code {exitcode}) without a result; its error "
            "is printed above (from a script, call the build under "
            "`if __name__ == '__main__':`, as multiprocessing's spawn requires)"
        )
    return LimitExceeded(
        f"{name}: the build process died ({how}) while checking the model: a native crash in "
        f"onnx or onnxruntime, or memory beyond its {limits.memory_mb:,} MiB limit"
    )
