//! Paged KV cache writes: `paged_update_cache`, `paged_fill_cache`.
