"""Generators of small models for tests, examples and benchmarks (ONNX and NumPy only)."""
