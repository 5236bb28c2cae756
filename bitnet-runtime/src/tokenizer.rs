//! The Llama 3 tokenizer through `tokenizers`, and a streaming detokenizer.
