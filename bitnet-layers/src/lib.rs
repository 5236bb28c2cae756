//! `bitnet-layers`: the BitNet b1.58 model written against `ttnn` only: BitLinear, RMSNorm,
//! RoPE setup, attention, MLP, decoder layer, the model, checkpoint loading, and the per-op
//! memory plan. It never names a backend.
//!
//! Empty until the model lands (issue 3).
