//! `bitnet-layers`: the BitNet b1.58 model written against `ttnn` only: BitLinear, RMSNorm,
//! RoPE setup, attention, MLP, decoder layer, the model, checkpoint loading, and the per-op
//! memory plan. It never names a backend.

pub mod attention;
pub mod bitlinear;
pub mod checkpoint;
pub mod config;
pub mod decoder;
pub mod error;
pub mod kv_cache;
pub mod memory_plan;
pub mod mlp;
pub mod model;
pub mod rms_norm;
pub mod rope;
pub mod ternary;

pub use checkpoint::{Checkpoint, Weights};
pub use config::{BitNetConfig, LinearClass, QuantizationMode};
pub use error::{Error, Result};
pub use kv_cache::KvCache;
pub use memory_plan::{MemoryPlan, PlanOptions, PlanOverrides, WeightDtypes};
pub use model::{BitNetModel, DecodeInputs, ModelOptions, PrefillOptions, PrefillOutput};
