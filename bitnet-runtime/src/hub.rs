//! Model resolution: a local directory or a Hugging Face repo id (hf-hub, standard HF cache).
