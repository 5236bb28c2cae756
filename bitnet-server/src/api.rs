//! The OpenAI request bodies this server takes, their validation, and the response bodies.
//!
//! Unknown fields are ignored (clients send many optional ones); known fields with values this
//! server cannot honour (`n > 1`, `logprobs`, penalties) are refused by name rather than
//! silently ignored. Two extensions follow vLLM: `return_token_ids` adds the prompt's and the
//! answer's token ids to the response, and `ignore_eos` generates past the stop ids.

use bitnet_runtime::{FinishReason, Message, Role, SamplingParams};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::error::ApiError;

/// OpenAI allows at most this many stop strings.
const MAX_STOPS: usize = 4;
/// Longest stop string, bytes (matching costs grow with it on every token).
const MAX_STOP_BYTES: usize = 1024;

/// Parses a body as JSON (whatever its content type: `curl -d` sends form encoding).
pub fn parse_body(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::invalid(format!(
            "We could not parse the JSON body of your request ({e}). The body must be a JSON \
             object."
        ))
    })
}

/// Deserializes `v` into `T`, naming the offending field on error.
fn fields<T: DeserializeOwned>(v: &Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let msg = format!("Invalid value for '{path}': {}", e.inner());
        if path == "." {
            ApiError::invalid(msg)
        } else {
            ApiError::invalid_param(path, msg)
        }
    })
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// Fields both endpoints share.
#[derive(Debug, Deserialize)]
struct Common {
    model: String,
    max_tokens: Option<u64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    /// Not OpenAI's; vLLM's and llama.cpp's. `-1` or `0`: no limit.
    top_k: Option<i64>,
    seed: Option<i64>,
    stop: Option<Stop>,
    #[serde(default)]
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    n: Option<u64>,
    logprobs: Option<Value>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    /// Extension: return token ids.
    #[serde(default)]
    return_token_ids: Option<bool>,
    /// Extension (vLLM's): generate through end-of-turn and end-of-text ids, up to
    /// `max_tokens` (for benchmarks and tests).
    #[serde(default)]
    ignore_eos: Option<bool>,
}

/// How to generate, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    pub model: String,
    /// `None`: up to the end of the context.
    pub max_tokens: Option<usize>,
    pub sampling: SamplingParams,
    pub stops: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    pub return_token_ids: bool,
    pub ignore_eos: bool,
}

/// A seed for a request that gave none: differs between requests, like OpenAI's sampling.
fn fresh_seed(salt: u64) -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // splitmix64 finalizer: spreads the bits of time and request number.
    let mut z = nanos ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) as u32
}

fn common_spec(c: Common, max_tokens: Option<u64>, salt: u64) -> Result<Spec, ApiError> {
    if let Some(n) = c.n
        && n != 1
    {
        return Err(ApiError::invalid_param(
            "n",
            format!("n = {n} is not supported: this server returns one choice per request"),
        ));
    }
    let wants_logprobs = match &c.logprobs {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Number(n)) => n.as_u64() != Some(0),
        Some(_) => true,
    };
    if wants_logprobs {
        return Err(ApiError::invalid_param(
            "logprobs",
            "logprobs are not supported by this server",
        ));
    }
    for (name, v) in [
        ("presence_penalty", c.presence_penalty),
        ("frequency_penalty", c.frequency_penalty),
    ] {
        if v.is_some_and(|v| v != 0.0) {
            return Err(ApiError::invalid_param(
                name,
                format!("{name} is not supported by this server (only 0)"),
            ));
        }
    }
    let max_tokens = match max_tokens {
        Some(0) => {
            return Err(ApiError::invalid_param(
                "max_tokens",
                "max_tokens must be at least 1",
            ));
        }
        Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
        None => None,
    };
    let top_k = match c.top_k {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => u32::try_from(k).unwrap_or(u32::MAX),
        Some(k) => {
            return Err(ApiError::invalid_param(
                "top_k",
                format!("top_k = {k}: use a positive number, or -1 or 0 for no limit"),
            ));
        }
    };
    // Any integer seeds: fold 64 bits into the 32 the device sampler takes.
    let seed = match c.seed {
        Some(s) => {
            let s = s as u64;
            (s ^ (s >> 32)) as u32
        }
        None => fresh_seed(salt),
    };
    let sampling = SamplingParams {
        // OpenAI's default temperature is 1.
        temperature: c.temperature.unwrap_or(1.0),
        top_k,
        top_p: c.top_p.unwrap_or(1.0),
        seed,
    };
    if let Err(bitnet_runtime::Error::Sampling { name, reason }) = sampling.validate() {
        return Err(ApiError::invalid_param(
            name,
            format!("invalid {name}: {reason}"),
        ));
    }
    let stops = match c.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    if stops.len() > MAX_STOPS {
        return Err(ApiError::invalid_param(
            "stop",
            format!("at most {MAX_STOPS} stop sequences are allowed"),
        ));
    }
    if stops.iter().any(|s| s.len() > MAX_STOP_BYTES) {
        return Err(ApiError::invalid_param(
            "stop",
            format!("a stop sequence may be at most {MAX_STOP_BYTES} bytes long"),
        ));
    }
    let stream = c.stream.unwrap_or(false);
    if c.stream_options.is_some() && !stream {
        return Err(ApiError::invalid_param(
            "stream_options",
            "stream_options is only allowed with stream: true",
        ));
    }
    Ok(Spec {
        model: c.model,
        max_tokens,
        sampling,
        stops,
        stream,
        include_usage: c.stream_options.is_some_and(|o| o.include_usage),
        return_token_ids: c.return_token_ids.unwrap_or(false),
        ignore_eos: c.ignore_eos.unwrap_or(false),
    })
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ChatMessage {
    role: String,
    content: Option<Content>,
}

#[derive(Debug, Deserialize)]
struct ChatFields {
    messages: Vec<ChatMessage>,
    /// The newer name of `max_tokens` for chat.
    max_completion_tokens: Option<u64>,
}

/// A validated chat completion request.
#[derive(Debug)]
pub struct ChatRequest {
    pub spec: Spec,
    pub messages: Vec<Message>,
}

/// Parses and validates a `/v1/chat/completions` body.
pub fn chat_request(body: &Value, salt: u64) -> Result<ChatRequest, ApiError> {
    let common: Common = fields(body)?;
    let chat: ChatFields = fields(body)?;
    let max_tokens = chat.max_completion_tokens.or(common.max_tokens);
    let spec = common_spec(common, max_tokens, salt)?;
    if chat.messages.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "messages must hold at least one message",
        ));
    }
    let mut messages = Vec::with_capacity(chat.messages.len());
    for (i, m) in chat.messages.into_iter().enumerate() {
        // "developer" is the newer OpenAI name of the system role.
        let role = match m.role.as_str() {
            "developer" => Role::System,
            r => r.parse::<Role>().map_err(|e| {
                ApiError::invalid_param(format!("messages[{i}].role"), e.to_string())
            })?,
        };
        let content = match m.content {
            None => String::new(),
            Some(Content::Text(t)) => t,
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for (j, p) in parts.into_iter().enumerate() {
                    match (p.kind.as_str(), p.text) {
                        ("text", Some(t)) => text.push_str(&t),
                        (kind, _) => {
                            return Err(ApiError::invalid_param(
                                format!("messages[{i}].content[{j}]"),
                                format!(
                                    "content parts of type {kind:?} are not supported (text only)"
                                ),
                            ));
                        }
                    }
                }
                text
            }
        };
        messages.push(Message::new(role, content));
    }
    Ok(ChatRequest { spec, messages })
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PromptField {
    Text(String),
    Ids(Vec<u32>),
    Texts(Vec<String>),
    Batch(Vec<Vec<u32>>),
}

#[derive(Debug, Deserialize)]
struct CompletionFields {
    prompt: PromptField,
    #[serde(default)]
    echo: Option<bool>,
    suffix: Option<String>,
    best_of: Option<u64>,
}

/// A completion prompt: text (tokenized with BOS) or token ids (taken as they are).
#[derive(Debug, PartialEq)]
pub enum Prompt {
    Text(String),
    Ids(Vec<u32>),
}

/// A validated completion request.
#[derive(Debug)]
pub struct CompletionRequest {
    pub spec: Spec,
    pub prompt: Prompt,
}

/// Parses and validates a `/v1/completions` body.
pub fn completion_request(body: &Value, salt: u64) -> Result<CompletionRequest, ApiError> {
    let common: Common = fields(body)?;
    let f: CompletionFields = fields(body)?;
    let max_tokens = common.max_tokens;
    let spec = common_spec(common, max_tokens, salt)?;
    if f.echo == Some(true) {
        return Err(ApiError::invalid_param("echo", "echo is not supported"));
    }
    if f.suffix.is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid_param("suffix", "suffix is not supported"));
    }
    if f.best_of.is_some_and(|b| b != 1) {
        return Err(ApiError::invalid_param("best_of", "best_of must be 1"));
    }
    let one = || {
        ApiError::invalid_param(
            "prompt",
            "give one prompt (a string or a list of token ids); batches of prompts are not supported",
        )
    };
    let prompt = match f.prompt {
        PromptField::Text(t) => Prompt::Text(t),
        PromptField::Ids(ids) => Prompt::Ids(ids),
        PromptField::Texts(mut v) if v.len() == 1 => Prompt::Text(v.remove(0)),
        PromptField::Batch(mut v) if v.len() == 1 => Prompt::Ids(v.remove(0)),
        _ => return Err(one()),
    };
    Ok(CompletionRequest { spec, prompt })
}

/// The OpenAI name of a finish reason.
pub fn finish_str(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

/// `usage` of a response.
pub fn usage(prompt: usize, completion: usize) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(v: Value) -> Result<ChatRequest, ApiError> {
        chat_request(&v, 1)
    }

    #[test]
    fn a_minimal_chat_request_gets_openai_defaults() {
        let r =
            chat(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})).unwrap();
        assert_eq!(r.messages, vec![Message::user("hi")]);
        assert_eq!(r.spec.sampling.temperature, 1.0);
        assert_eq!(r.spec.sampling.top_p, 1.0);
        assert_eq!(r.spec.max_tokens, None);
        assert!(!r.spec.stream);
    }

    #[test]
    fn content_parts_roles_and_limits() {
        let r = chat(json!({
            "model": "m",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            ],
            "max_tokens": 5,
            "max_completion_tokens": 7,
            "stop": "x",
            "seed": -1,
            "top_k": 3,
            "temperature": 0,
            "stream": true,
            "stream_options": {"include_usage": true},
        }))
        .unwrap();
        assert_eq!(
            r.messages,
            vec![Message::system("be brief"), Message::user("ab")]
        );
        assert_eq!(r.spec.max_tokens, Some(7));
        assert_eq!(r.spec.stops, vec!["x".to_string()]);
        assert_eq!(r.spec.sampling.top_k, 3);
        assert_eq!(r.spec.sampling.seed, 0);
        assert!(r.spec.sampling.is_greedy());
        assert!(r.spec.stream && r.spec.include_usage);
    }

    #[test]
    fn bad_values_name_their_parameter() {
        let cases = [
            (json!({"model": "m", "messages": 5}), "messages"),
            (json!({"model": "m", "messages": []}), "messages"),
            (
                json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]}),
                "messages[0].role",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
                "messages[0].content[0]",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user"}], "temperature": -1}),
                "temperature",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user"}], "top_p": 1.5}),
                "top_p",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user"}], "top_k": 64}),
                "top_k",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user"}], "max_tokens": 0}),
                "max_tokens",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user"}], "n": 2}),
                "n",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user"}], "logprobs": true}),
                "logprobs",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user"}], "stop": ["a", "b", "c", "d", "e"]}),
                "stop",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user"}], "temperature": "hot"}),
                "temperature",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user"}], "stop": "x".repeat(2000)}),
                "stop",
            ),
        ];
        for (body, param) in cases {
            let e = chat(body.clone()).expect_err(&body.to_string());
            assert_eq!(e.status, 400, "{body}");
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {e:?}");
        }
        let e = chat(json!({"messages": []})).unwrap_err();
        assert!(e.message.contains("model"), "{e:?}");
    }

    #[test]
    fn completion_prompts() {
        let p = |v: Value| completion_request(&v, 0).map(|r| r.prompt);
        assert_eq!(
            p(json!({"model": "m", "prompt": "hi"})).unwrap(),
            Prompt::Text("hi".into())
        );
        assert_eq!(
            p(json!({"model": "m", "prompt": [1, 2]})).unwrap(),
            Prompt::Ids(vec![1, 2])
        );
        assert_eq!(
            p(json!({"model": "m", "prompt": ["one"]})).unwrap(),
            Prompt::Text("one".into())
        );
        assert_eq!(
            p(json!({"model": "m", "prompt": ["a", "b"]}))
                .unwrap_err()
                .param
                .as_deref(),
            Some("prompt")
        );
        assert_eq!(
            p(json!({"model": "m", "prompt": "x", "echo": true}))
                .unwrap_err()
                .param
                .as_deref(),
            Some("echo")
        );
    }
}
