"""The local Lambda service: each function is a pool of sandbox processes, as on Lambda.

A sandbox (lambda_runtime.py) is one process that runs the handler's init phase once and
then takes one event at a time. A function's pool hands each event to an idle sandbox,
starts a new one when none is idle (the event that needed it waits for its init, like a
cold start), up to the function's reserved concurrency, and beyond that throttles at once
(`Throttled`: the gateway answers 429 with Retry-After, as Lambda's TooManyRequestsException)
rather than queueing. The pool talks to each sandbox over a private channel (channel.py: a
socket pair whose other end the sandbox inherits, length-prefixed frames rather than the
RIE's HTTP, which the sandbox still serves and the pool uses only to wait for its init),
used only by the event that holds the sandbox. A sandbox that runs past the function's
timeout is killed (`FunctionTimeout`), one that dies is removed (`SandboxCrashed`); the next
event that needs a sandbox starts a fresh one.

All sandboxes of a function append to one log file, as they share one log group on AWS.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxlift.local import channel
from onnxlift.local.http import LOOPBACK, BackendResponse
from onnxlift.local.lambda_runtime import HEALTH_PATH
from onnxlift.local.processes import Child, base_env, free_port, start_child, tail

INIT_TIMEOUT_S = 60.0  # Lambda's init phase is 10 s; loading from the local registry may be slower


class Throttled(Exception):
    """Every sandbox is busy and the pool is at the function's concurrency limit."""


class FunctionTimeout(TimeoutError):
    """The event ran past the function's timeout; its sandbox was killed."""


class SandboxCrashed(ConnectionError):
    """The sandbox died (or its init failed) before it answered the event."""


@dataclass(frozen=True)
class FunctionConfig:
    """What the pool needs to start a function's sandboxes."""

    name: str
    handler: Path
    env: dict[str, str]
    memory_mb: int
    timeout_s: float
    concurrency: int  # the function's reserved concurrency: the most sandboxes at once
    log: Path
    host: str = LOOPBACK
    init_timeout_s: float = INIT_TIMEOUT_S


@dataclass(eq=False)  # hashed by identity: the pool keeps them in a set
class SandboxProcess:
    """One sandbox process and the pool's end of its channel."""

    child: Child
    host: str
    port: int
    channel: socket.socket | None = None

    @property
    def alive(self) -> bool:
        return self.child.process.poll() is None

    @property
    def pid(self) -> int:
        return self.child.process.pid

    def send(self, payload: bytes, timeout_s: float) -> BackendResponse:
        """The event over the channel, its reply back; TimeoutError past timeout_s,
        ConnectionError (channel.ChannelClosed) when the sandbox died or its channel broke."""
        if self.channel is None:
            raise channel.ChannelClosed("the sandbox's channel is closed")
        self.channel.settimeout(timeout_s)
        channel.send_event(self.channel, payload)
        status, headers, body = channel.receive_reply(self.channel, timeout_s)
        message = http.client.HTTPMessage()
        for key, value in headers.items():
            message[key] = value
        # only a reply over 64 KiB is a bytearray (filled in place), copied once here
        return BackendResponse(status, message, body if isinstance(body, bytes) else bytes(body))

    def close_connection(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    def kill(self) -> None:
        """At once, as Lambda ends a sandbox that timed out: no SIGTERM grace."""
        self.close_connection()
        if self.alive:
            self.child.process.kill()
        self.child.process.wait()

    def terminate(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.child.process.terminate()

    def stop(self) -> None:
        self.close_connection()
        self.child.stop()


@dataclass
class PoolFigures:
    started: int = 0
    events: int = 0
    throttled: int = 0
    timeouts: int = 0
    crashes: int = 0


class FunctionPool:
    """The sandboxes of one function: handed out one event at a time, grown on demand."""

    def __init__(self, config: FunctionConfig) -> None:
        self.config = config
        self.figures = PoolFigures()
        self._lock = threading.Lock()
        self._idle: list[SandboxProcess] = []  # a stack: the most recently used goes first
        self._all: set[SandboxProcess] = set()
        self._slots = 0  # sandboxes running or starting; never above config.concurrency
        self._warming: list[SandboxProcess] = []
        self._numbers = itertools.count(1)
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------
    def prestart(self) -> None:
        """Start one sandbox now without waiting for its init (wait_ready does)."""
        with self._lock:
            self._slots += 1
        sandbox = self._launch()
        with self._lock:
            self._warming.append(sandbox)

    def wait_ready(self) -> None:
        """Wait for the sandboxes prestart started; they become idle, ready for events."""
        with self._lock:
            warming, self._warming = self._warming, []
        for sandbox in warming:
            self._await_init(sandbox)  # OnnxliftError with the log tail when it fails
            with self._lock:
                if not self._closed:
                    self._idle.append(sandbox)

    def stop(self) -> None:
        with self._lock:
            self._closed = True
            sandboxes = list(self._all)
            self._idle.clear()
        for sandbox in sandboxes:  # all told first, so they wind down side by side
            sandbox.terminate()
        for sandbox in sandboxes:
            sandbox.stop()

    def describe(self) -> dict[str, Any]:
        with self._lock:
            return {
                "reserved_concurrency": self.config.concurrency,
                "sandboxes": self._slots,
                "idle": len(self._idle),
                "pids": sorted(s.pid for s in self._all),
                **vars(self.figures),
            }

    # -- events ------------------------------------------------------------------------------
    def invoke(self, payload: bytes, deadline_s: float | None = None) -> BackendResponse:
        """Run one event in a sandbox of its own; the sandbox's reply to the invoke API.

        `deadline_s`: how long the caller waits (API Gateway's 29 s), when shorter than the
        function's timeout. Past it the sandbox is ended too: on AWS it would run on to its own
        timeout, unseen; locally it would hold a slot and a core for nothing."""
        timeout_s = min(self.config.timeout_s, deadline_s or self.config.timeout_s)
        sandbox = self._acquire()
        try:
            response = sandbox.send(payload, timeout_s)
        except TimeoutError as exc:
            self._remove(sandbox, "timeouts")
            raise FunctionTimeout(f"{self.config.name} timed out after {timeout_s:g} s") from exc
        except (OSError, ValueError) as exc:  # ChannelClosed is a ConnectionError
            self._remove(sandbox, "crashes")
            raise SandboxCrashed(f"a sandbox of {self.config.name} died: {exc}") from exc
        except BaseException:
            self._remove(sandbox, None)
            raise
        with self._lock:
            self.figures.events += 1
            if self._closed:
                self._all.discard(sandbox)
            else:
                self._idle.append(sandbox)
                return response
        sandbox.stop()
        return response

    def _acquire(self) -> SandboxProcess:
        with self._lock:
            if self._closed:
                raise SandboxCrashed(f"{self.config.name} is stopping")
            while self._idle:
                sandbox = self._idle.pop()
                if sandbox.alive:
                    return sandbox
                sandbox.close_connection()
                self._forget(sandbox, "crashes")  # died while idle
            if self._slots >= self.config.concurrency:
                self.figures.throttled += 1
                raise Throttled(
                    f"Rate exceeded: {self.config.name} is running "
                    f"{self.config.concurrency} events, its reserved concurrency"
                )
            self._slots += 1
        return self._cold_start()

    def _cold_start(self) -> SandboxProcess:
        """A new sandbox for the event that asked (its slot is taken): start it, wait its init."""
        sandbox: SandboxProcess | None = None
        try:
            sandbox = self._launch()
            self._await_init(sandbox)
            if self._closed:
                raise SandboxCrashed(f"{self.config.name} stopped during the cold start")
        except Exception as exc:
            with self._lock:
                self._slots -= 1
                if sandbox is not None:
                    self._all.discard(sandbox)
                self.figures.crashes += 1
            if sandbox is not None:
                sandbox.kill()
            raise SandboxCrashed(f"a new sandbox of {self.config.name} failed: {exc}") from exc
        return sandbox

    def _remove(self, sandbox: SandboxProcess, figure: str | None) -> None:
        sandbox.kill()
        with self._lock:
            self._forget(sandbox, figure)

    def _forget(self, sandbox: SandboxProcess, figure: str | None) -> None:
        """Under the lock: the sandbox no longer counts against the limit; `figure` (timeouts,
        crashes) counts why."""
        if sandbox in self._all:
            self._all.discard(sandbox)
            self._slots -= 1
            if figure is not None:
                setattr(self.figures, figure, getattr(self.figures, figure) + 1)

    # -- processes ---------------------------------------------------------------------------
    def _launch(self) -> SandboxProcess:
        config = self.config
        port = free_port(config.host)
        args = ["-m", "onnxlift.local.lambda_runtime", "--handler", str(config.handler),
                "--function-name", config.name, "--host", config.host, "--port", str(port),
                "--memory-mb", str(config.memory_mb),
                "--timeout-s", str(max(1, round(config.timeout_s)))]  # fmt: skip
        number = next(self._numbers)
        pool_end, sandbox_end = channel.channel_pair()
        with sandbox_end:  # this process's copy closes once the child has its own
            args += ["--channel-fd", str(sandbox_end.fileno())]
            try:
                child = start_child(
                    f"function {config.name} (sandbox {number})",
                    args,
                    log=config.log,
                    env=base_env() | config.env,
                    pass_fds=(sandbox_end.fileno(),),
                )
            except BaseException:
                pool_end.close()
                raise
        sandbox = SandboxProcess(child, config.host, port, pool_end)
        with self._lock:
            closed = self._closed
            if not closed:
                self._all.add(sandbox)
                self.figures.started += 1
        if closed:  # stop() ran while this one was starting: it must not outlive the pool
            sandbox.kill()
            raise SandboxCrashed(f"{config.name} is stopping")
        return sandbox

    def _await_init(self, sandbox: SandboxProcess) -> None:
        """Poll the health route until this sandbox's process answers it (its pid, not whoever
        else took the port)."""
        from onnxlift.errors import OnnxliftError

        deadline = time.monotonic() + self.config.init_timeout_s
        while time.monotonic() < deadline:
            if not sandbox.alive:
                raise OnnxliftError(
                    f"{sandbox.child.name} exited with {sandbox.child.process.returncode}:\n"
                    f"{tail(sandbox.child.log)}"
                )
            if _health_pid(sandbox.host, sandbox.port) == sandbox.pid:
                return
            time.sleep(0.05)
        raise OnnxliftError(
            f"{sandbox.child.name} did not finish its init within "
            f"{self.config.init_timeout_s:.0f} s:\n{tail(sandbox.child.log)}"
        )


def _health_pid(host: str, port: int) -> int | None:
    connection = http.client.HTTPConnection(host, port, timeout=2)
    with contextlib.closing(connection):
        try:
            connection.request("GET", HEALTH_PATH)
            response = connection.getresponse()
            if response.status != 200:
                return None
            return int(json.loads(response.read()).get("pid", 0))
        except (OSError, http.client.HTTPException, ValueError, AttributeError):
            return None


@dataclass
class LambdaService:
    """Every local function's pool, by function name."""

    pools: dict[str, FunctionPool] = field(default_factory=dict)

    def add(self, config: FunctionConfig) -> FunctionPool:
        """A pool for the function, its first sandbox starting (warm, as `onnxlift up` wants)."""
        pool = self.pools[config.name] = FunctionPool(config)
        pool.prestart()
        return pool

    def wait_ready(self) -> None:
        for pool in self.pools.values():
            pool.wait_ready()

    def describe(self) -> dict[str, dict[str, Any]]:
        return {name: pool.describe() for name, pool in self.pools.items()}

    def stop(self) -> None:
        for pool in self.pools.values():
            pool.stop()
