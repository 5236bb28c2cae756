//! Host kernels for `experimental::bitlinear`: per-token int8 absmax activation quantization, ternary matmul, per-tensor scale.
