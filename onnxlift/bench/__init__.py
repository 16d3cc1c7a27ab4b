"""`onnxlift bench`: where every millisecond of a request goes, beside the alternatives.

One module per concern: timing (stats), corpus (the inputs), variants (which model files),
tiers (the request path), alternatives (INT8 vs FP32 vs PyTorch), threads, coldstart, size,
throughput (through the local gateway), report (JSON, Markdown, PNG) and runner (all of it).
"""
