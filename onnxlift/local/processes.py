"""Child processes of the local stack: start on loopback, wait until they answer, stop them all."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from onnxlift.errors import OnnxliftError


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex((host, port)) == 0


def stack_alive(pid: object) -> bool:
    """Whether `pid` is a live `onnxlift up` (what local.json records as "pid"): not gone, not
    a zombie, and where /proc tells, still an onnxlift process (pids are reused)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: not ours, whatever it is
        return False
    proc = Path(f"/proc/{pid}")
    if not proc.is_dir():
        return True  # no /proc (macOS): the signal check is all there is
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        command = (proc / "cmdline").read_bytes()
    except (OSError, IndexError):
        return False
    return state != "Z" and b"onnxlift" in command


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_child(
    name: str,
    args: list[str],
    *,
    log: Path,
    env: dict[str, str],
    pass_fds: tuple[int, ...] = (),
) -> Child:
    """`python ARGS` in its own session, watched so it dies with this process (parent_watch);
    `pass_fds` are inherited by it (and no other descriptor of this process)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    handle = log.open("ab")
    watched = ["-m", "onnxlift.parent_watch", str(os.getpid())]
    process = subprocess.Popen(
        [sys.executable, *watched, *args],
        stdout=handle,
        stderr=subprocess.STDOUT,
        env=env,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C reaches the parent only
        pass_fds=pass_fds,
    )
    handle.close()
    return Child(name, process, log)


def wait_http(child: Child, url: str, *, timeout: float) -> None:
    """Poll `url` until it answers 200; fail with the child's log tail if it dies or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            raise OnnxliftError(
                f"{child.name} exited with {child.process.returncode}:\n{tail(child.log)}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise OnnxliftError(
        f"{child.name} did not answer {url} within {timeout:.0f}s:\n{tail(child.log)}"
    )


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env
