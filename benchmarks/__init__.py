"""Benchmarks: keras_diffusion across Keras backends, and against diffusers.

Run `python -m benchmarks.compare --help`; see `benchmarks/README.md`.
"""
