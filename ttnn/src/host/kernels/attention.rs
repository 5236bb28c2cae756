//! Host kernels for attention: paged decode SDPA, causal prefill SDPA, chunked prefill SDPA.
