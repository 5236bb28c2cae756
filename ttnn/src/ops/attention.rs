//! Attention: paged decode SDPA, causal prefill SDPA, chunked prefill SDPA.
