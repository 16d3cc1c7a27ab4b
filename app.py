#!/usr/bin/env python3
"""CDK app: the deployment config (cdk.json context + model specs) -> the onnxlift stack."""

from __future__ import annotations

import os
from pathlib import Path

import aws_cdk as cdk
from onnxlift_serving import contract

from infra import nag
from infra.config import (
    config_from_context,
    models_from_specs,
    read_context,
    sagemaker_from_specs,
)
from infra.onnxlift_stack import OnnxliftStack
from onnxlift.spec import discover_specs

ROOT = Path(__file__).resolve().parent

app = cdk.App()
context = read_context(app.node)
specs = discover_specs(ROOT / "models")
config = config_from_context(
    context,
    models_from_specs(specs, context, ROOT),
    sagemaker_from_specs(specs, context, ROOT),
)
# One stack per environment (-c onnxlift.env=dev|staging|prod): Onnxlift-<env>.
OnnxliftStack(
    app,
    contract.stack_name(config.env),
    config=config,
    project_root=ROOT,
    env=cdk.Environment(
        account=os.environ.get("CDK_DEFAULT_ACCOUNT"), region=os.environ.get("CDK_DEFAULT_REGION")
    ),
)
nag.enable(app)
app.synth()
