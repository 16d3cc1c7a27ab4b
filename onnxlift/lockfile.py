"""Read the project's hashed lock files (pip requirements format, written by `make lock`).

requirements/dev.lock       the toolkit, its build toolchain and dev tools (make setup, CI)
functions/*/requirements.txt the Lambda image's and the SageMaker container's serving runtime
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Pin", "canonical", "read_pins"]


def canonical(name: str) -> str:
    """PEP 503 name: what pip and the lock compare."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Pin:
    name: str  # canonical
    version: str
    hashes: tuple[str, ...]

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


def read_pins(path: Path) -> dict[str, Pin]:
    """name -> Pin for every `name==version --hash=...` entry (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    pins = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip() if not raw.lstrip().startswith("--hash") else raw
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==(\S+)(.*)$", line.strip())
        if not match:
            continue
        name, _, version, rest = match.groups()
        hashes = tuple(re.findall(r"--hash=(sha256:[0-9a-f]{64})", rest))
        pins[canonical(name)] = Pin(canonical(name), version, hashes)
    return pins
