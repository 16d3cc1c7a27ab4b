"""Run a child so that it dies with its parent (`onnxlift up`, a build), however that dies.

    python -m onnxlift.parent_watch PARENT_PID -m some.module ARGS...
    python -m onnxlift.parent_watch PARENT_PID path/to/script ARGS...

runs the module or script in this process (same pid, same argv after the prefix) with a
daemon thread that checks every WATCH_INTERVAL_S that its parent is still PARENT_PID. Once it
is not (the parent was killed, even with SIGKILL, and this process was handed to init or a
subreaper), it kills its own process group: the child leads its own session (so Ctrl-C reaches
only `onnxlift up`), and gunicorn's workers are in that group too. An orphan would otherwise
keep its port (moto's 4566) and block the next `onnxlift up`.

Not prctl(PR_SET_PDEATHSIG): it fires when the *thread* that forked the child ends, and the
stack starts sandboxes from short-lived gateway request threads; and it needs a preexec_fn,
which is not safe in a process that runs threads.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import threading
import time

__all__ = ["WATCH_INTERVAL_S", "main", "watch_parent"]

WATCH_INTERVAL_S = 0.2


def _die() -> None:
    if os.getpgrp() == os.getpid():  # our own group: this process and what it forked
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)  # never the group of whoever started us


def watch_parent(parent: int, interval: float = WATCH_INTERVAL_S) -> threading.Thread:
    """Start the thread that ends this process once its parent is no longer `parent`."""
    if os.getppid() != parent:  # gone before we started watching
        _die()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        _die()

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread


def main(argv: list[str]) -> None:
    if len(argv) < 2 or not argv[0].isdigit() or (argv[1] == "-m" and len(argv) < 3):
        sys.exit("usage: python -m onnxlift.parent_watch PARENT_PID (-m MODULE | SCRIPT) ...")
    watch_parent(int(argv[0]))
    if argv[1] == "-m":
        sys.argv = [argv[2], *argv[3:]]
        runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
    else:
        sys.argv = argv[1:]
        runpy.run_path(argv[1], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
