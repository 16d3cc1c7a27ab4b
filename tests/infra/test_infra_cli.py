"""The real, pinned CDK CLI synthesizes the real app (cdk.json, app.py, model specs)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCAL_CDK = ROOT / "node_modules" / ".bin" / "cdk"


@pytest.mark.skipif(
    not LOCAL_CDK.exists() or shutil.which("npx") is None,
    reason="the pinned CDK CLI is not installed (run `npm ci` at the repo root)",
)
def test_npx_cdk_synth(tmp_path: Path) -> None:
    outdir = tmp_path / "cdk.out"
    env = {
        **os.environ,
        # `python app.py` must be this interpreter, the one with aws-cdk-lib.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION": "1",
        "CDK_DISABLE_CLI_TELEMETRY": "true",
    }
    result = subprocess.run(
        ["npx", "--no", "--", "cdk", "synth", "--quiet", "--output", str(outdir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    version = subprocess.run(
        ["npx", "--no", "--", "cdk", "--version"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert version.stdout.startswith("2.1148.1"), version.stdout

    # cdk.json's default environment is dev: the stack is Onnxlift-dev.
    template = json.loads((outdir / "Onnxlift-dev.template.json").read_text())
    assert any(r["Type"] == "AWS::Lambda::Function" for r in template["Resources"].values())
    report = outdir / "validation-report.json"
    if report.exists():
        for plugin in json.loads(report.read_text())["pluginReports"]:
            if plugin["pluginName"] == "AwsSolutions":
                assert plugin["violations"] == []
