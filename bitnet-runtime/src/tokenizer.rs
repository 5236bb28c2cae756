//! The Llama 3 tokenizer through `tokenizers`, and a streaming detokenizer.
//!
//! BitNet b1.58 2B-4T uses the Llama 3 byte-level BPE tokenizer (`tokenizer.json`, 128256 ids).
//! [`Tokenizer`] wraps `tokenizers::Tokenizer` and owns the conventions the model needs: BOS
//! (`<|begin_of_text|>`) is prepended by us, never by the file's post-processor, and the stop ids
//! are looked up by token string. [`StreamDecoder`] turns generated ids into text as they arrive
//! without ever splitting a UTF-8 character.

use std::fmt;
use std::path::Path;

use crate::error::{Error, Result};

/// Token string of the beginning-of-sequence token (Llama 3).
pub const BOS_TOKEN: &str = "<|begin_of_text|>";
/// Token string that ends a chat turn (Llama 3).
pub const EOT_TOKEN: &str = "<|eot_id|>";
/// Token string that ends a document (Llama 3; the config's `eos_token_id` of 2B-4T).
pub const END_OF_TEXT_TOKEN: &str = "<|end_of_text|>";

/// Lossy UTF-8 decoding's stand-in for bytes that do not (yet) form a character.
const REPLACEMENT: char = char::REPLACEMENT_CHARACTER;

/// A tokenizer loaded from a Hugging Face `tokenizer.json`.
///
/// Cheap to share by reference across threads (`Send + Sync`); cloning copies the vocabulary.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos_id: Option<u32>,
    eot_id: Option<u32>,
}

impl fmt::Debug for Tokenizer {
    // The derived form would print the whole vocabulary and merge table.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos_id", &self.bos_id)
            .field("eot_id", &self.eot_id)
            .finish()
    }
}

impl Tokenizer {
    /// Loads a `tokenizer.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let load_error = |reason: String| Error::TokenizerLoad {
            path: path.to_path_buf(),
            reason,
        };
        // `tokenizers` reports a missing file as a bare io error without the path; say it plainly.
        if !path.is_file() {
            return Err(load_error("no such file".into()));
        }
        let inner =
            tokenizers::Tokenizer::from_file(path).map_err(|e| load_error(e.to_string()))?;
        Ok(Self::wrap(inner))
    }

    /// Loads the `tokenizer.json` of a model directory (the layout of a Hugging Face checkpoint).
    pub fn from_model_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let path = dir.as_ref().join("tokenizer.json");
        if !path.is_file() {
            return Err(Error::TokenizerLoad {
                path,
                reason: "the model directory has no tokenizer.json".into(),
            });
        }
        Self::from_file(path)
    }

    /// Loads a tokenizer from the bytes of a `tokenizer.json`.
    pub fn from_bytes(json: impl AsRef<[u8]>) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_bytes(json)
            .map_err(|e| Error::Tokenizer(format!("invalid tokenizer.json: {e}")))?;
        Ok(Self::wrap(inner))
    }

    fn wrap(inner: tokenizers::Tokenizer) -> Self {
        let bos_id = inner.token_to_id(BOS_TOKEN);
        let eot_id = inner.token_to_id(EOT_TOKEN);
        Self {
            inner,
            bos_id,
            eot_id,
        }
    }

    /// Token ids of `text`, with BOS first when `add_bos`.
    ///
    /// Special tokens written in the text (`<|eot_id|>`, ...) become their single ids, as the chat
    /// format needs. The file's post-processor is never applied: some Llama 3 `tokenizer.json`
    /// files add BOS there and others do not, so BOS is ours alone. `add_bos` does not add a
    /// second BOS when the text already starts with `<|begin_of_text|>` (as a formatted chat
    /// prompt does): a doubled BOS is never what a caller wants and degrades the model.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| Error::Tokenizer(format!("encode failed: {e}")))?;
        let ids = encoding.get_ids();
        if !add_bos {
            return Ok(ids.to_vec());
        }
        let bos = self
            .bos_id
            .ok_or_else(|| Error::Tokenizer(format!("the vocabulary has no {BOS_TOKEN} token")))?;
        if ids.first() == Some(&bos) {
            return Ok(ids.to_vec());
        }
        let mut out = Vec::with_capacity(ids.len() + 1);
        out.push(bos);
        out.extend_from_slice(ids);
        Ok(out)
    }

    /// The text of `ids`; special tokens are written out (`<|eot_id|>`), and bytes that do not
    /// form valid UTF-8 become U+FFFD.
    ///
    /// Ids outside the vocabulary are an error (`tokenizers` would drop them silently).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Some(&bad) = ids.iter().find(|&&id| self.inner.id_to_token(id).is_none()) {
            return Err(Error::Tokenizer(format!(
                "id {bad} is not in the vocabulary ({} ids)",
                self.vocab_size()
            )));
        }
        self.inner
            .decode(ids, false)
            .map_err(|e| Error::Tokenizer(format!("decode failed: {e}")))
    }

    /// Number of ids, added (special) tokens included: 128256 for Llama 3.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token string (`"<|eot_id|>"`, or a byte-level BPE token), if the vocabulary
    /// has it.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token string of an id, if the vocabulary has it.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of `<|begin_of_text|>` (128000 for Llama 3), if the vocabulary has it.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// The id of `<|eot_id|>` (128009 for Llama 3), which ends a chat turn, if the vocabulary has
    /// it.
    pub fn eot_id(&self) -> Option<u32> {
        self.eot_id
    }

    /// The ids that end generation: `<|eot_id|>` and `<|end_of_text|>` (looked up by string, so
    /// absent ones are skipped for other vocabularies), then the config's `eos_token_id`s, without
    /// repeats.
    ///
    /// `<|eot_id|>` is needed beyond the config's eos (128001 for 2B-4T): the chat model ends its
    /// turns with it.
    pub fn stop_ids(&self, config_eos: &[u32]) -> Vec<u32> {
        let mut ids: Vec<u32> = [EOT_TOKEN, END_OF_TEXT_TOKEN]
            .iter()
            .filter_map(|t| self.inner.token_to_id(t))
            .collect();
        for &id in config_eos {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        ids
    }

    /// A streaming detokenizer over this tokenizer.
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder::new(self)
    }
}

/// Turns ids into text one id at a time, never splitting a UTF-8 character.
///
/// A byte-level BPE token can hold part of a character (a rare emoji or CJK character is often
/// two or more tokens), so text is released only once it is complete. The technique is the
/// prefix-offset one of Hugging Face's `TextStreamer` and vLLM's incremental detokenizer: decode
/// a short window of ids ending at the newest, and release what lies beyond the text already
/// released unless it ends in U+FFFD (incomplete bytes). The window starts one released chunk
/// back, so decoders whose output depends on the preceding token (leading-space rules) still see
/// context. The concatenation of everything [`push`](Self::push) and [`finish`](Self::finish)
/// return equals [`Tokenizer::decode`] of all ids.
#[derive(Debug)]
pub struct StreamDecoder<'t> {
    tokenizer: &'t Tokenizer,
    ids: Vec<u32>,
    /// Start of the decode window: context only, its text was released before `read_offset`.
    prefix_offset: usize,
    /// Ids before this are released as text.
    read_offset: usize,
    /// Decoded text beyond what was released (held back as incomplete), for `finish`.
    pending: String,
}

impl<'t> StreamDecoder<'t> {
    /// A decoder with nothing decoded yet.
    pub fn new(tokenizer: &'t Tokenizer) -> Self {
        Self {
            tokenizer,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
            pending: String::new(),
        }
    }

    /// Adds one id; returns the text it completes, or `None` while a character is incomplete (or
    /// the id decodes to nothing).
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        // Validate before keeping the id, so a bad id leaves the decoder usable.
        if self.tokenizer.id_to_token(id).is_none() {
            return Err(Error::Tokenizer(format!(
                "id {id} is not in the vocabulary ({} ids)",
                self.tokenizer.vocab_size()
            )));
        }
        self.ids.push(id);
        let window = &self.ids[self.prefix_offset..];
        let prefix_text = self
            .tokenizer
            .decode(&window[..self.read_offset - self.prefix_offset])?;
        let new_text = self.tokenizer.decode(window)?;
        // The window's text extends the prefix's for byte-level BPE; the byte-index fallback
        // covers decoders that rewrite earlier text, as vLLM does.
        let suffix = new_text
            .strip_prefix(prefix_text.as_str())
            .or_else(|| new_text.get(prefix_text.len()..))
            .unwrap_or("");
        if suffix.is_empty() || suffix.ends_with(REPLACEMENT) {
            self.pending = suffix.to_owned();
            return Ok(None);
        }
        let out = suffix.to_owned();
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        self.pending.clear();
        Ok(Some(out))
    }

    /// Releases the text still held back (incomplete bytes at the end become U+FFFD, as in
    /// [`Tokenizer::decode`]); `None` if there is none. Ids pushed after it start a new text.
    pub fn finish(&mut self) -> Option<String> {
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        let rest = std::mem::take(&mut self.pending);
        (!rest.is_empty()).then_some(rest)
    }

    /// All ids pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GPT-2's byte-to-character table of byte-level BPE: printable bytes stand for themselves,
    /// the rest map to U+0100 onwards.
    fn byte_char(b: u8) -> char {
        let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        if printable(b) {
            return char::from(b);
        }
        let n = (0..b).filter(|&x| !printable(x)).count() as u32;
        char::from_u32(256 + n).expect("below U+0200")
    }

    /// A byte-level tokenizer whose tokens are single bytes (id = byte value), plus Llama 3's
    /// special tokens: every multi-byte character is split across tokens.
    fn byte_tokenizer() -> Tokenizer {
        let vocab: serde_json::Map<String, serde_json::Value> = (0..=255u8)
            .map(|b| (byte_char(b).to_string(), serde_json::json!(b)))
            .collect();
        let added: Vec<_> = [(256, BOS_TOKEN), (257, END_OF_TEXT_TOKEN), (258, EOT_TOKEN)]
            .iter()
            .map(|&(id, content)| {
                serde_json::json!({"id": id, "content": content, "single_word": false,
                    "lstrip": false, "rstrip": false, "normalized": false, "special": true})
            })
            .collect();
        let json = serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false,
                "trim_offsets": true, "use_regex": true},
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": null, "end_of_word_suffix": null,
                "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": []}
        });
        Tokenizer::from_bytes(json.to_string()).expect("valid tokenizer.json")
    }

    #[test]
    fn byte_tokenizer_round_trips() {
        let tok = byte_tokenizer();
        let text = "a🙂 é";
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(ids, text.bytes().map(u32::from).collect::<Vec<_>>());
        assert_eq!(tok.decode(&ids).unwrap(), text);
        assert_eq!(tok.encode(text, true).unwrap()[0], 256);
        assert_eq!(tok.vocab_size(), 259);
    }

    #[test]
    fn bos_is_never_doubled() {
        let tok = byte_tokenizer();
        let ids = tok.encode("<|begin_of_text|>hi", true).unwrap();
        assert_eq!(ids, vec![256, u32::from(b'h'), u32::from(b'i')]);
    }

    #[test]
    fn stream_holds_incomplete_characters() {
        let tok = byte_tokenizer();
        let mut dec = tok.stream_decoder();
        let mut got = Vec::new();
        for b in "a🙂b".bytes() {
            got.push(dec.push(u32::from(b)).unwrap());
        }
        let s = |x: &str| Some(x.to_owned());
        assert_eq!(got, vec![s("a"), None, None, None, s("🙂"), s("b")]);
        assert_eq!(dec.finish(), None);
    }

    #[test]
    fn stream_concatenation_equals_decode() {
        let tok = byte_tokenizer();
        for text in ["héllo", "你好，世界", "👩‍👩‍👧‍👦 family", "ǅ ∑ 𝔘𝔫𝔦", "plain ascii"]
        {
            let ids = tok.encode(text, false).unwrap();
            let mut dec = tok.stream_decoder();
            let mut out = String::new();
            for &id in &ids {
                if let Some(chunk) = dec.push(id).unwrap() {
                    assert!(!chunk.contains(REPLACEMENT), "{text:?}: chunk {chunk:?}");
                    out.push_str(&chunk);
                }
            }
            out.extend(dec.finish());
            assert_eq!(out, text);
        }
    }

    #[test]
    fn stream_finish_flushes_a_truncated_character() {
        let tok = byte_tokenizer();
        let mut dec = tok.stream_decoder();
        // "é" is C3 A9; stop after the lead byte, as generation can at a stop id or max length.
        assert_eq!(dec.push(u32::from(b'x')).unwrap().as_deref(), Some("x"));
        assert_eq!(dec.push(0xC3).unwrap(), None);
        let rest = dec.finish();
        assert_eq!(rest.as_deref(), Some("\u{FFFD}"));
        assert_eq!(
            format!("x{}", rest.unwrap_or_default()),
            tok.decode(&[u32::from(b'x'), 0xC3]).unwrap()
        );
    }

    #[test]
    fn unknown_ids_are_errors() {
        let tok = byte_tokenizer();
        assert!(matches!(tok.decode(&[1, 9999]), Err(Error::Tokenizer(_))));
        let mut dec = tok.stream_decoder();
        assert!(dec.push(9999).is_err());
        assert!(dec.ids().is_empty());
        assert_eq!(dec.push(u32::from(b'o')).unwrap().as_deref(), Some("o"));
    }

    #[test]
    fn stop_ids_union_without_repeats() {
        let tok = byte_tokenizer();
        assert_eq!(tok.stop_ids(&[]), vec![258, 257]);
        assert_eq!(tok.stop_ids(&[257, 7, 7]), vec![258, 257, 7]);
        assert_eq!(tok.bos_id(), Some(256));
        assert_eq!(tok.eot_id(), Some(258));
    }

    #[test]
    fn missing_files_name_the_path() {
        let err = Tokenizer::from_model_dir("/nonexistent/model").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("/nonexistent/model/tokenizer.json"),
            "message: {msg}"
        );
        assert!(matches!(err, Error::TokenizerLoad { .. }));
    }
}
