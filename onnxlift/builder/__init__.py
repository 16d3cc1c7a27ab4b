"""The build pipeline: export -> check -> quantize -> parity -> artifact."""
