"""`onnxlift bench`: where every millisecond of a request goes, beside the alternatives."""
