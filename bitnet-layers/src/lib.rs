//! `bitnet-layers`: the BitNet b1.58 model written against `ttnn` only: BitLinear, RMSNorm,
//! RoPE setup, attention, MLP, decoder layer, the model, checkpoint loading, and the per-op
//! memory plan. It never names a backend.

pub mod bitlinear;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod memory_plan;
pub mod mlp;
pub mod rms_norm;
pub mod ternary;

pub use checkpoint::{Checkpoint, Weights};
pub use config::{BitNetConfig, LinearClass, QuantizationMode};
pub use error::{Error, Result};
