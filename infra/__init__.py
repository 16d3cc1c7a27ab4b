"""AWS CDK infrastructure for onnxlift: registry bucket, one Lambda per model, REST API."""
