//! Host kernels for paged KV cache writes: `paged_update_cache`, `paged_fill_cache`.
