"""Numerics shared by cells, model and search: matrix products (gemm: oneDNN or MKL, chosen per
CPU; quantized: int8), deferred weight gradients, masks, and process set-up (runtime: threads,
allocator, CPU features). Imports nothing of the layers above it."""
