"""Dynamic batching for the SageMaker container: concurrent requests run as one session.run.

Triton's dynamic batcher is the model: requests for one loaded model version whose inputs
stack (the same input names and dtypes, the same shape past the batch dimension) wait in one
queue; a batch of at most `max_batch_size` rows is run at once, and each caller gets exactly
its own rows back. A text model's inputs are a list of strings, which the pipeline tokenizes
and pads as one batch, so any two text requests stack.

No thread of its own (leader/follower): a request's own thread queues it, and the first
waiting thread that finds no batch running becomes the leader: it waits until the oldest
queued request is `max_queue_delay_ms` old or the queue holds `max_batch_size` rows that
stack with it, takes them, runs them, hands each caller its rows, and returns (or leads again
if its own request was not in that batch). Requests that arrive while a batch runs form the
next one, so under load batches fill even with a delay of 0 (Triton's default), and an idle
model answers a lone request at once. Nothing runs when no request waits; an evicted version's
batcher goes with it; a worker that stops (SIGTERM) finishes its in-flight requests, and those
threads are the ones that run the queue, so the queue drains with them.

- A request of more than `max_batch_size` rows, or one whose inputs cannot stack (a scalar,
  inputs of different row counts), runs alone, in turn.
- A merged run that fails (any error, a 413 from the arena included) is split in halves and
  each half run again, recursively, so each caller gets its own answer or its own error, never
  another's: one bad request among N costs about 2 log2(N) more runs, not N, and the requests
  in the half without it are answered by one run. An answer that cannot be split (outputs
  without one row per input row) fails every merged run alike: those requests run one by one.
- The queue holds at most `max_queue_size` requests; past it a request gets 503 with
  Retry-After (backpressure, not memory growth).
- One batch runs at a time per version, as Triton runs one per model instance: on a GPU a
  second concurrent run only contends for the device, on a CPU for the same intra-op threads.
"""

from __future__ import annotations

import logging
import math
import mmap
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxlift_serving.contract import (
    MAX_QUEUE_DELAY_MS,
    THROTTLE_RETRY_AFTER_S,
    Env,
    parse_count,
)
from onnxlift_serving.errors import ServiceUnavailable

Tensors = dict[str, np.ndarray]
log = logging.getLogger(__name__)
# A batching worker's request threads at most (BatchingConfig.request_threads): each may hold
# one decoded request, and the launcher charges each to the worker's memory.
MAX_BATCHING_THREADS = 128


@dataclass(frozen=True)
class BatchingConfig:
    """The spec's [serving.batching] as the container reads it back (contract.Env)."""

    max_batch_size: int  # rows in one merged run
    max_queue_delay_ms: float = 0.0  # how long the oldest queued request may wait for more
    max_queue_size: int = 0  # requests waiting at most; 0: 2 x max_batch_size

    def __post_init__(self) -> None:
        # A delay that is not a finite number would make Condition.wait raise (inf) or never
        # time out (nan): refused, as the spec refuses it (at most MAX_QUEUE_DELAY_MS).
        delay = self.max_queue_delay_ms
        if (
            self.max_batch_size < 1
            or not math.isfinite(delay)
            or not 0 <= delay <= MAX_QUEUE_DELAY_MS
            or self.max_queue_size < 0
        ):
            raise ValueError(f"invalid batching settings {self}")

    @property
    def queue_limit(self) -> int:
        return self.max_queue_size or 2 * self.max_batch_size

    @property
    def threads_for_bound(self) -> int:
        """Request threads in one worker for the queue bound to be reached: a running batch
        (at most max_batch_size requests, each on its own thread), a full queue, and one
        more request, the one the full queue refuses with 503. With fewer threads the queue
        never fills: the requests past them wait unseen in gunicorn's own queue."""
        return self.max_batch_size + self.queue_limit + 1

    @property
    def request_threads(self) -> int:
        """The gthread threads the launcher gives a batching worker: threads_for_bound, at
        most MAX_BATCHING_THREADS."""
        return min(MAX_BATCHING_THREADS, self.threads_for_bound)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> BatchingConfig | None:
        """None (no batching) unless BATCH_MAX_SIZE is a count of at least 1."""
        raw = env.get(Env.BATCH_MAX_SIZE, "").strip()
        size = parse_count(raw)
        if raw and size is None:  # "16.0", "1e3": a typo, not "off"
            raise ValueError(f"{Env.BATCH_MAX_SIZE}={raw[:20]!r} is not a whole number")
        if not size:
            return None
        delay = float(env.get(Env.BATCH_MAX_QUEUE_DELAY_MS, "0") or 0)
        queue = parse_count(env.get(Env.BATCH_MAX_QUEUE_SIZE, "").strip()) or 0
        return cls(max_batch_size=size, max_queue_delay_ms=delay, max_queue_size=queue)


# Ops that derive an activation scale from the whole run: merged, one caller's rows would move
# (and reveal a little of) another's answer, so a graph holding any of them is never batched.
PER_BATCH_SCALE_OPS = (
    b"DynamicQuantizeLinear",
    b"DynamicQuantizeMatMul",
    b"DynamicQuantizeLSTM",
    b"MatMulIntegerToFloat",
    b"QAttention",
)


def has_per_batch_scales(model: Path) -> bool:
    """Whether the graph file holds a PER_BATCH_SCALE_OPS node, whatever its manifest says (a
    model imported already quantized). An op type is a plain string in the protobuf, so a byte
    search finds every such node; a name that merely contains one only turns batching off."""
    with model.open("rb") as handle:
        if model.stat().st_size == 0:
            return False
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return any(data.find(op) >= 0 for op in PER_BATCH_SCALE_OPS)


def stack_key(inputs: Tensors) -> tuple[int, Hashable] | None:
    """(rows, what must match for two requests to stack), or None if `inputs` cannot stack:
    a scalar input, or inputs that disagree on the row count."""
    rows = {array.shape[0] if array.ndim else -1 for array in inputs.values()}
    if len(rows) != 1 or -1 in rows:
        return None
    key = tuple((name, a.dtype.str, a.shape[1:]) for name, a in sorted(inputs.items()))
    return rows.pop(), key


def merge(parts: list[Tensors]) -> Tensors:
    """The requests' inputs one after the other along the batch dimension."""
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def split(outputs: Tensors, rows: list[int]) -> list[Tensors]:
    """Each request's rows of a merged run's outputs; ValueError if an output is not one row
    per input row (a model whose outputs are not batched cannot be split)."""
    total = sum(rows)
    for name, array in outputs.items():
        if not array.ndim or array.shape[0] != total:
            raise ValueError(f"output '{name}' has shape {array.shape}, not {total} rows")
    bounds = np.cumsum(rows)[:-1]
    pieces = {name: np.split(array, bounds) for name, array in outputs.items()}
    return [{name: pieces[name][i] for name in outputs} for i in range(len(rows))]


@dataclass(eq=False)
class _Pending:
    inputs: Tensors
    rows: int
    key: Hashable
    arrived: float
    result: Tensors | None = None
    error: BaseException | None = None
    done: bool = False

    def finish(self, result: Tensors | None, error: BaseException | None = None) -> None:
        self.result, self.error, self.done = result, error, True

    def outcome(self) -> Tensors:
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


@dataclass
class BatchStats:
    """What the batcher did (a version's metadata shows it; one worker's, not the endpoint's)."""

    runs: int = 0  # session runs, merged or single
    merged_runs: int = 0
    merged_requests: int = 0  # requests that rode in a merged run
    retried_batches: int = 0  # merged runs that failed (and were split and run again)
    rejected: int = 0  # requests refused because the queue was full
    largest_rows: int = 0
    sizes: deque[int] = field(default_factory=lambda: deque(maxlen=1000))  # requests a run

    def record(self, requests: int, rows: int) -> None:
        self.runs += 1
        self.largest_rows = max(self.largest_rows, rows)
        if requests > 1:
            self.merged_runs += 1
            self.merged_requests += requests
        self.sizes.append(requests)


class Batcher:
    """One queue and one runner for one loaded model version; `run` is its pipeline's run."""

    def __init__(
        self,
        run: Callable[[Tensors], Tensors],
        config: BatchingConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._run = run
        self.config = config
        self._clock = clock
        self._delay_s = config.max_queue_delay_ms / 1000.0
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # followers: a batch ended
        self._filling = threading.Condition(lock)  # the leader, waiting for its batch to fill
        self._queue: deque[_Pending] = deque()
        self._running = False
        self._closed = False
        self.stats = BatchStats()

    def submit(self, inputs: Tensors) -> Tensors:
        """The outputs of `inputs` alone, run with whatever else is queued that stacks."""
        found = stack_key(inputs)
        rows, key = found if found is not None else (0, object())  # a key nothing else has
        pending = _Pending(inputs, rows, key, self._clock())
        with self._cond:
            if self._closed:
                raise _shutting_down()
            if len(self._queue) >= self.config.queue_limit:
                self.stats.rejected += 1
                raise ServiceUnavailable(
                    f"{len(self._queue)} requests are already waiting for this model; "
                    "try again shortly",
                    retry_after_s=THROTTLE_RETRY_AFTER_S,
                )
            self._queue.append(pending)
            self._filling.notify()  # only the leader cares; followers wake when a batch ends
        while True:
            with self._cond:
                while not pending.done and self._running:
                    self._cond.wait()
                if pending.done:
                    return pending.outcome()
                self._running = True
            batch: list[_Pending] = []
            try:  # _take under the lock too: whatever it raises, _running is reset below
                with self._cond:
                    batch = self._take()
                self._execute(batch)
            finally:
                with self._cond:
                    for item in batch:  # only if _execute itself broke (BaseException)
                        if not item.done:
                            item.finish(None, ServiceUnavailable("the batch was interrupted"))
                    self._running = False
                    self._cond.notify_all()

    def close(self, *, refuse_queued: bool = False) -> None:
        """Refuse new requests (503) and stop waiting for batches to fill: what is queued runs
        now. `refuse_queued` (the worker is exiting: nothing queued would run before it is
        killed): each queued request is answered 503 with Retry-After at once instead; a batch
        already running still finishes and answers."""
        with self._cond:
            self._closed = True
            if refuse_queued:
                while self._queue:
                    self._queue.popleft().finish(None, _shutting_down())
                self._cond.notify_all()  # followers whose request was refused
            self._filling.notify_all()

    @property
    def queued(self) -> int:
        with self._cond:
            return len(self._queue)

    # -- under the lock -----------------------------------------------------------------

    def _stacking(self) -> tuple[list[_Pending], int]:
        """The head of the queue and the queued requests that stack with it, in order, while
        their rows fit max_batch_size (the head is taken even if it alone is larger)."""
        head = self._queue[0]
        batch, rows = [head], head.rows
        if head.rows >= self.config.max_batch_size or head.rows == 0:
            return batch, rows
        for item in list(self._queue)[1:]:
            if item.key == head.key and rows + item.rows <= self.config.max_batch_size:
                batch.append(item)
                rows += item.rows
                if rows == self.config.max_batch_size:
                    break
        return batch, rows

    def _take(self) -> list[_Pending]:
        """Wait (at most until the oldest request is max_queue_delay_ms old) for a full batch,
        then remove and return it (none if close emptied the queue meanwhile). Called with
        the lock held."""
        while True:
            if not self._queue:
                return []
            batch, rows = self._stacking()
            full = rows >= self.config.max_batch_size or batch[0].rows == 0
            left = self._queue[0].arrived + self._delay_s - self._clock()
            if full or left <= 0 or self._closed:
                break
            self._filling.wait(left)
        for item in batch:
            self._queue.remove(item)
        return batch

    # -- outside the lock ---------------------------------------------------------------

    def _alone(self, item: _Pending) -> None:
        self.stats.record(1, item.rows)
        try:
            item.finish(self._run(item.inputs))
        except Exception as error:  # the caller's own error, raised in its own thread
            item.finish(None, error)

    def _execute(self, batch: list[_Pending]) -> None:
        if len(batch) <= 1:
            for item in batch:
                self._alone(item)
            return
        rows = [item.rows for item in batch]
        try:
            outputs = self._run(merge([item.inputs for item in batch]))
        except Exception as error:
            # One request's rows (or the merged size) broke the run: each half again, down to
            # single requests, so the bad one fails alone and the others still merge.
            log.warning("a merged run of %d requests failed (%s); running it again in halves",
                        len(batch), type(error).__name__)  # fmt: skip
            self.stats.retried_batches += 1
            middle = len(batch) // 2
            self._execute(batch[:middle])
            self._execute(batch[middle:])
            return
        try:
            parts = split(outputs, rows)
        except ValueError as error:  # no merged run of this model splits: one by one
            log.warning("a merged answer of %d requests cannot be split (%s); running them "
                        "one by one", len(batch), error)  # fmt: skip
            self.stats.retried_batches += 1
            for item in batch:
                self._alone(item)
            return
        self.stats.record(len(batch), sum(rows))
        for item, part in zip(batch, parts, strict=True):
            item.finish(part)


def _shutting_down() -> ServiceUnavailable:
    return ServiceUnavailable("the server is shutting down; send the request again")


def batchable(inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> bool:
    """Whether a model's signature (protocol.TensorSpec each) has a free batch dimension on
    every input and output: only then do rows of different requests stack and split."""
    specs = [*inputs.values(), *outputs.values()]
    return bool(specs) and all(spec.shape and spec.shape[0] == -1 for spec in specs)
