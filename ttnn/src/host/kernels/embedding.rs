//! Host kernels for `embedding`: row lookup (token embeddings, RoPE table rows).
