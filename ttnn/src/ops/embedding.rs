//! `embedding`: row lookup (token embeddings, RoPE table rows).
