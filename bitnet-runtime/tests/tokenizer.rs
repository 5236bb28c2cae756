//! The Llama 3 tokenizer against the oracle's golden ids, the chat prompt against the fullvocab
//! golden prompt, and the streaming detokenizer on characters split across tokens.
//!
//! The tokenizer file cannot be committed (licence): `cargo xtask fetch-test-data` caches it.
//! These tests fail, not skip, without it, so a green run always covers the real tokenizer.

use std::sync::OnceLock;

use bitnet_runtime::{Conversation, Error, Message, Tokenizer, encode_chat, format_chat};
use serde_json::Value;

fn tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        Tokenizer::from_file(bitnet_tests::test_tokenizer_path()).expect("load the test tokenizer")
    })
}

fn fixture(name: &str) -> Value {
    let path = bitnet_tests::fixtures_dir().join(name);
    let text = std::fs::read_to_string(&path).expect("read fixture");
    serde_json::from_str(&text).expect("parse fixture")
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("id array")
        .iter()
        .map(|x| u32::try_from(x.as_u64().expect("id")).expect("u32 id"))
        .collect()
}

fn golden() -> Value {
    fixture("tokenizer_golden.json")
}

#[test]
fn golden_cases_encode_and_decode() {
    let tok = tokenizer();
    let golden = golden();
    let cases = golden["cases"].as_array().expect("cases");
    assert!(cases.len() >= 9);
    for case in cases {
        let text = case["text"].as_str().expect("text");
        let ids = ids_of(&case["ids"]);
        assert_eq!(tok.encode(text, false).unwrap(), ids, "encode {text:?}");
        assert_eq!(
            tok.decode(&ids).unwrap(),
            case["decoded"].as_str().expect("decoded"),
            "decode {text:?}"
        );
        // BOS goes first exactly once, also when the text already starts with it.
        let with_bos = tok.encode(text, true).unwrap();
        let expected: Vec<u32> = if ids.first() == Some(&128000) {
            ids.clone()
        } else {
            std::iter::once(128000).chain(ids.iter().copied()).collect()
        };
        assert_eq!(with_bos, expected, "encode with BOS {text:?}");
    }
}

#[test]
fn golden_special_tokens_and_vocab_size() {
    let tok = tokenizer();
    let golden = golden();
    assert_eq!(
        tok.vocab_size() as u64,
        golden["vocab_size_with_added"].as_u64().unwrap()
    );
    for (token, id) in golden["special"].as_object().expect("special") {
        let id = u32::try_from(id.as_u64().unwrap()).unwrap();
        assert_eq!(tok.token_to_id(token), Some(id), "{token}");
        assert_eq!(tok.id_to_token(id).as_deref(), Some(token.as_str()));
        // A special token written in text is that one id.
        assert_eq!(tok.encode(token, false).unwrap(), vec![id], "{token}");
    }
    assert_eq!(tok.bos_id(), Some(128000));
    assert_eq!(tok.eot_id(), Some(128009));
}

#[test]
fn chat_prompt_equals_the_fullvocab_golden_prompt() {
    let tok = tokenizer();
    let golden = fixture("fullvocab-2b4t-format/golden.json");
    let expected = ids_of(&golden["prompt_ids"]);
    assert_eq!(expected.len(), 19);
    let messages = [Message::user("Hey, are you conscious? Can you talk to me?")];
    let text = format_chat(&messages, true);
    assert_eq!(text, golden["prompt_text"].as_str().unwrap());
    assert_eq!(encode_chat(tok, &messages, true).unwrap(), expected);
    // Either way of encoding the formatted text gives one BOS.
    assert_eq!(tok.encode(&text, false).unwrap(), expected);
    assert_eq!(tok.encode(&text, true).unwrap(), expected);
    let mut conv = Conversation::new();
    conv.push_user("  Hey, are you conscious? Can you talk to me?\n");
    assert_eq!(conv.prompt_ids(tok).unwrap(), expected);
    // "Assistant: " ends in the space token.
    assert_eq!(expected.last(), Some(&220));
}

#[test]
fn chat_with_system_turn_equals_the_golden_case() {
    let tok = tokenizer();
    let golden = golden();
    let text = "<|begin_of_text|>System: You are a helpful assistant.<|eot_id|>User: Hi<|eot_id|>Assistant: ";
    let case = golden["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["text"] == text)
        .expect("system-turn golden case");
    let mut conv = Conversation::with_system("You are a helpful assistant.");
    conv.push_user("Hi");
    assert_eq!(conv.prompt(), text);
    assert_eq!(conv.prompt_ids(tok).unwrap(), ids_of(&case["ids"]));
}

#[test]
fn stop_ids_include_eot_end_of_text_and_config_eos() {
    let tok = tokenizer();
    assert_eq!(tok.stop_ids(&[]), vec![128009, 128001]);
    assert_eq!(tok.stop_ids(&[128001]), vec![128009, 128001]);
    assert_eq!(
        tok.stop_ids(&[128001, 128008]),
        vec![128009, 128001, 128008]
    );
}

/// The single-byte token of each byte (byte-level BPE has all 256), found by its token string.
fn byte_token_ids(tok: &Tokenizer) -> Vec<u32> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut next = 256u32;
    (0..=255u8)
        .map(|b| {
            let c = if printable(b) {
                char::from(b)
            } else {
                let c = char::from_u32(next).expect("below U+0200");
                next += 1;
                c
            };
            tok.token_to_id(&c.to_string())
                .unwrap_or_else(|| panic!("no byte token for {b:#04x}"))
        })
        .collect()
}

const MULTIBYTE_TEXTS: &[&str] = &[
    "héllo naïve café — “quotes” 你好，世界 🙂",
    "🦀 Rust crab, 🧬 DNA, 🪐 ringed planet, 🫠 melting",
    "👩‍👩‍👧‍👦 family ZWJ sequence and 🇯🇵 flag",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙 𝒜𝒷𝒸 and ∮ E⋅da = Q",
    "鬱蒼とした森の奥で、龘麤靐齉爩。",
    "한국어 텍스트와 ᄀᄁ 자모",
    "ภาษาไทย ทดสอบ and देवनागरी लिपि",
    "Ελληνικά, Кириллица, עִבְרִית, العربية",
    "combining: e\u{301} a\u{308}\u{323} z\u{35f}z",
    "ǅ ẞ ŉ ﬁ ﬀ Ⅻ ㎒ ㍿",
    "<|begin_of_text|>User: 🙂?<|eot_id|>Assistant: 😀",
];

/// Streams `ids`, checking each chunk, and returns the chunks.
fn stream(tok: &Tokenizer, ids: &[u32], full: &str) -> Vec<String> {
    let mut dec = tok.stream_decoder();
    let mut chunks = Vec::new();
    for &id in ids {
        if let Some(chunk) = dec.push(id).expect("push") {
            chunks.push(chunk);
        }
    }
    chunks.extend(dec.finish());
    for chunk in &chunks {
        assert!(!chunk.is_empty());
        // A chunk is a String, so valid UTF-8; a split character would show up as U+FFFD.
        assert!(
            !chunk.contains('\u{FFFD}') || full.contains('\u{FFFD}'),
            "chunk {chunk:?} of {full:?} splits a character"
        );
    }
    assert_eq!(chunks.concat(), full);
    chunks
}

#[test]
fn stream_decoder_over_natural_encodings() {
    let tok = tokenizer();
    let mut partial_tokens = 0;
    for &text in MULTIBYTE_TEXTS {
        let ids = tok.encode(text, true).unwrap();
        // Count tokens that are not whole characters on their own: the case under test.
        partial_tokens += ids
            .iter()
            .filter(|&&id| tok.decode(&[id]).unwrap().contains('\u{FFFD}'))
            .count();
        let full = tok.decode(&ids).unwrap();
        assert_eq!(
            full,
            format!(
                "<|begin_of_text|>{}",
                text.trim_start_matches("<|begin_of_text|>")
            )
        );
        stream(tok, &ids, &full);
    }
    assert!(
        partial_tokens >= 10,
        "the texts should split characters across tokens ({partial_tokens} partial tokens)"
    );
}

#[test]
fn stream_decoder_over_single_byte_tokens() {
    // Every multi-byte character spread over one token per byte: the hardest split.
    let tok = tokenizer();
    let byte_ids = byte_token_ids(tok);
    for &text in MULTIBYTE_TEXTS {
        let ids: Vec<u32> = text.bytes().map(|b| byte_ids[usize::from(b)]).collect();
        assert_eq!(tok.decode(&ids).unwrap(), text);
        let chunks = stream(tok, &ids, text);
        // Text is released as soon as each character completes: one chunk per character.
        assert_eq!(chunks.len(), text.chars().count(), "{text:?}");
    }
}

#[test]
fn stream_decoder_releases_emoji_when_complete() {
    let tok = tokenizer();
    let byte_ids = byte_token_ids(tok);
    let mut dec = tok.stream_decoder();
    assert_eq!(
        dec.push(tok.encode("Hi", false).unwrap()[0])
            .unwrap()
            .as_deref(),
        Some("Hi")
    );
    let crab = "🦀".as_bytes();
    for &b in &crab[..3] {
        assert_eq!(dec.push(byte_ids[usize::from(b)]).unwrap(), None);
    }
    assert_eq!(
        dec.push(byte_ids[usize::from(crab[3])]).unwrap().as_deref(),
        Some("🦀")
    );
    assert_eq!(dec.push(128009).unwrap().as_deref(), Some("<|eot_id|>"));
    assert_eq!(dec.finish(), None);
}

#[test]
fn out_of_vocabulary_ids_are_errors() {
    let tok = tokenizer();
    assert!(matches!(
        tok.decode(&[9906, 128256]),
        Err(Error::Tokenizer(_))
    ));
    assert!(tok.stream_decoder().push(u32::MAX).is_err());
}

#[test]
fn missing_tokenizer_files_are_clear_errors() {
    let dir = std::env::temp_dir().join(format!("bitnet-no-tokenizer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let err = Tokenizer::from_model_dir(&dir).unwrap_err();
    assert!(matches!(err, Error::TokenizerLoad { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains(&dir.join("tokenizer.json").display().to_string()),
        "{msg}"
    );
    let err = Tokenizer::from_file(dir.join("nope.json")).unwrap_err();
    assert!(err.to_string().contains("nope.json"), "{err}");
    // A file that is not a tokenizer.json names the file too.
    let bad = dir.join("tokenizer.json");
    std::fs::write(&bad, "{ not json").unwrap();
    let err = Tokenizer::from_model_dir(&dir).unwrap_err();
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn model_dir_loads_the_tokenizer_json() {
    let tok = tokenizer();
    // A model directory of its own: BITNET_TEST_TOKENIZER may name the file differently.
    let dir = std::env::temp_dir().join(format!("bitnet-model-dir-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        bitnet_tests::test_tokenizer_path(),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    let from_dir = Tokenizer::from_model_dir(&dir).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(from_dir.vocab_size(), tok.vocab_size());
    assert_eq!(
        from_dir.encode("Hello world", true).unwrap(),
        vec![128000, 9906, 1917]
    );
}
