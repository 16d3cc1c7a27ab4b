"""The `onnxlift` command line, assembled from one module per concern (as BentoML's CLI is):

models     build, add               the model pipeline
versions   publish, pull, promote, rollback, list   the registry
verify     verify                   a version's parity, where it is served
serve      up                       the local stack
benchmark  bench                    figures and the report
images     image build, image push  the images ECR mode deploys
rehearse   deploy-local             the real cdk CLI against moto (a deploy rehearsal)
"""

from __future__ import annotations

import os

import click

from onnxlift import __version__
from onnxlift.cli.benchmark import bench
from onnxlift.cli.common import OnnxliftGroup
from onnxlift.cli.images import image
from onnxlift.cli.models import add, build
from onnxlift.cli.rehearse import deploy_local
from onnxlift.cli.serve import up
from onnxlift.cli.verify import verify_command
from onnxlift.cli.versions import list_models, promote, publish, pull, rollback

__all__ = ["cli", "main"]


@click.group(cls=OnnxliftGroup)
@click.version_option(__version__, prog_name="onnxlift")
def cli() -> None:
    """Quantized ONNX models as a service on AWS."""


for command in (
    build,
    add,
    publish,
    pull,
    promote,
    rollback,
    list_models,
    verify_command,
    image,
    up,
    deploy_local,
    bench,
):
    cli.add_command(command)


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever fetched from a model hub
    cli()
