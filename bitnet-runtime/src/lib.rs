//! `bitnet-runtime`: what turns the model into a service: tokenizer, paged KV cache, the
//! trace-replay generator with on-device sampling, and the request scheduler (continuous
//! batching).
//!
//! Today it holds [`simple`]: one sequence, untraced decode, greedy or sampled on the device.
//! The paged, traced, batched generator replaces it behind the same request/output types.

pub mod chat;
pub mod error;
pub mod hub;
pub mod sampling;
pub mod simple;
pub mod tokenizer;

pub use error::{Error, Result};
pub use sampling::SamplingParams;
pub use simple::{GenerateOutput, GenerateRequest, GenerateStats, generate};
