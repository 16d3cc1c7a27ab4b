"""onnxlift: quantized ONNX models as a service on AWS."""

__version__ = "0.1.0"
