"""`python -m onnxlift.cli`: the same as the `onnxlift` console script."""

from onnxlift.cli import main

main()
