//! `experimental::rotary_embedding_llama` and its transformation matrix.
