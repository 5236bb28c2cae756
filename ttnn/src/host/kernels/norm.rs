//! Host kernels for `rms_norm`.
