//! `bitnet-runtime`: what turns the model into a service: tokenizer, paged KV cache, the
//! trace-replay generator with on-device sampling, and the request scheduler (continuous
//! batching).
//!
//! Empty until the runtime lands (issue 4).
