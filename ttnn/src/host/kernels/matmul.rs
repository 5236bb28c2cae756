//! Host kernels for matrix multiplication: `linear` and `matmul` (f32, bf16, bfp8_b and bfp4_b weights).
