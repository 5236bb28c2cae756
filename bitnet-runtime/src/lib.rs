//! `bitnet-runtime`: what turns the model into a service: tokenizer, paged KV cache, the
//! trace-replay generator with on-device sampling, and the request scheduler (continuous
//! batching).
//!
//! - [`generator`]: the batched generator: chunked prefill into a paged KV cache with prefix
//!   sharing, decode steps captured as traces per (batch bucket, sampling mode) and replayed,
//!   sampling on the device.
//! - [`simple`]: one sequence, untraced, for checking the generator against.
//! - [`tokenizer`]: the Llama 3 tokenizer, a streaming detokenizer and the stop ids;
//!   [`chat`]: the 2B-4T chat format; [`hub`]: model directories and Hugging Face repo ids.

pub mod chat;
pub mod error;
pub mod generator;
pub mod hub;
pub mod kv;
pub mod sampling;
pub mod simple;
pub mod tokenizer;

pub use chat::{Conversation, Message, Role, encode_chat, format_chat};
pub use error::{Error, Result};
pub use generator::{Event, Generator, GeneratorConfig, GeneratorStats, Request, SeqId};
pub use kv::{BlockAllocator, PagedKvCache};
pub use sampling::SamplingParams;
pub use simple::{FinishReason, GenerateOutput, GenerateRequest, GenerateStats, generate};
pub use tokenizer::{StreamDecoder, Tokenizer};
