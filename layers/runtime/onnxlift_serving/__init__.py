"""The serving runtime shared by the Lambda image and the SageMaker container.

It imports only onnxruntime, numpy, tokenizers and boto3 (lazily), never the build
toolchain, so images stay small and cold starts short.
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
