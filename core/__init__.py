"""Foundations: the example format (the contract between ingest, trainer and evaluator), the
per-image statistics and the synthetic data generator.

The lowest layer of the project. Plain numpy, Pillow, SciPy and protobuf: no TensorFlow, no
Beam, and no import of any other package of this project (tests/test_layering.py checks it).
"""
