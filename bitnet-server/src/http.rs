//! Routes and handlers: auth, admission (bounded queue), the engine round trip, and the
//! OpenAI response shapes, whole or as server-sent events.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_stream::stream;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bitnet_runtime::{Request as GenRequest, Tokenizer, encode_chat};
use futures_util::{Stream, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use crate::api::{self, Prompt, Spec, finish_str, usage};
use crate::engine::{Command, EngineEvent, ModelInfo, ReqId};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::text::TextStream;

/// Settings the handlers read.
#[derive(Debug)]
pub struct Settings {
    pub model_name: String,
    pub api_key: Option<String>,
    pub max_queue: usize,
    pub max_body_bytes: usize,
    pub created: u64,
}

/// What every handler shares.
#[derive(Clone, Debug)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub info: Arc<ModelInfo>,
    pub tokenizer: Arc<Tokenizer>,
    pub engine: std::sync::mpsc::Sender<Command>,
    pub metrics: Arc<Metrics>,
    pub engine_alive: Arc<AtomicBool>,
    pub next_id: Arc<AtomicU64>,
}

/// The routes that count under their own name in `bitnet_requests_total`.
const ROUTES: [&str; 5] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/models",
    "/health",
    "/metrics",
];

pub fn router(state: AppState) -> Router {
    let protected = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/metrics", get(metrics))
        .route_layer(from_fn_with_state(state.clone(), require_key));
    Router::new()
        .merge(protected)
        .route("/health", get(health))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.settings.max_body_bytes))
        .layer(from_fn_with_state(state.clone(), count_requests))
        .with_state(state)
}

async fn count_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let route = if path.starts_with("/v1/models/") {
        "/v1/models/{id}"
    } else {
        ROUTES
            .iter()
            .find(|&&r| r == path)
            .copied()
            .unwrap_or("other")
    };
    let resp = next.run(req).await;
    state.metrics.count_request(route, resp.status().as_u16());
    resp
}

/// Equal-time comparison, so response timing does not reveal how much of a key matched.
fn same_key(given: &[u8], key: &[u8]) -> bool {
    given.len() == key.len() && given.iter().zip(key).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

async fn require_key(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(key) = &state.settings.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if !given.is_some_and(|g| same_key(g.as_bytes(), key.as_bytes())) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(method.as_str(), uri.path())
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::method_not_allowed(method.as_str(), uri.path())
}

async fn health(State(state): State<AppState>) -> Response {
    if state.engine_alive.load(Ordering::Relaxed) {
        axum::Json(json!({"status": "ok"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "error", "message": "the engine thread has stopped"})),
        )
            .into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(state.info.max_batch),
    )
        .into_response()
}

fn model_object(state: &AppState) -> Value {
    json!({
        "id": state.settings.model_name,
        "object": "model",
        "created": state.settings.created,
        "owned_by": "bitnet",
        "max_model_len": state.info.max_seq_len,
    })
}

async fn models(State(state): State<AppState>) -> Response {
    axum::Json(json!({"object": "list", "data": [model_object(&state)]})).into_response()
}

async fn model(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    if id == state.settings.model_name {
        axum::Json(model_object(&state)).into_response()
    } else {
        ApiError::unknown_model(&id, &state.settings.model_name).into_response()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The request body as JSON, or the error for a body too large or malformed.
fn body_json(state: &AppState, body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(state.settings.max_body_bytes)
        } else {
            ApiError::invalid(format!("could not read the request body: {e}"))
        }
    })?;
    let v = api::parse_body(&bytes)?;
    if !v.is_object() {
        return Err(ApiError::invalid("the request body must be a JSON object"));
    }
    Ok(v)
}

fn check_model(state: &AppState, spec: &Spec) -> Result<(), ApiError> {
    if spec.model == state.settings.model_name {
        Ok(())
    } else {
        Err(ApiError::unknown_model(
            &spec.model,
            &state.settings.model_name,
        ))
    }
}

/// A request's place in the server: counted in flight while it lives; dropping it (the answer
/// is complete, or the client went away and the response was dropped) cancels the sequence in
/// the engine, which frees its KV blocks.
#[derive(Debug)]
struct Ticket {
    id: ReqId,
    engine: std::sync::mpsc::Sender<Command>,
    metrics: Arc<Metrics>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // A finished sequence is no longer known to the engine: then this does nothing.
        let _ = self.engine.send(Command::Cancel { id: self.id });
        self.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

fn overloaded(state: &AppState) -> ApiError {
    state
        .metrics
        .rejected_overload
        .fetch_add(1, Ordering::Relaxed);
    ApiError::overloaded(format!(
        "The server is busy: the decode batch and the queue ({} requests) are full. Retry later.",
        state.settings.max_queue
    ))
}

/// Takes a place in flight, or refuses with 503 when the batch and the queue are full. (The
/// engine refuses too when its queue holds `max_queue` sequences, which happens with fewer in
/// flight when KV blocks, not batch slots, are short.)
fn admit(state: &AppState, id: ReqId) -> Result<Ticket, ApiError> {
    let capacity = state.info.max_batch + state.settings.max_queue;
    let in_flight = &state.metrics.in_flight;
    let mut cur = in_flight.load(Ordering::Relaxed);
    loop {
        if cur >= capacity {
            return Err(overloaded(state));
        }
        match in_flight.compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => break,
            Err(now) => cur = now,
        }
    }
    Ok(Ticket {
        id,
        engine: state.engine.clone(),
        metrics: state.metrics.clone(),
    })
}

/// A request the engine accepted.
struct Accepted {
    ticket: Ticket,
    events: UnboundedReceiver<EngineEvent>,
    prompt_ids: Vec<u32>,
}

/// Queues `prompt_ids` in the engine and waits until it is accepted or refused.
async fn submit(
    state: &AppState,
    id: ReqId,
    prompt_ids: Vec<u32>,
    spec: &Spec,
    prompt_param: &str,
) -> Result<Accepted, ApiError> {
    let max_seq = state.info.max_seq_len;
    if prompt_ids.len() >= max_seq {
        return Err(ApiError::invalid_param(
            prompt_param,
            format!(
                "This model's maximum context length is {max_seq} tokens; the prompt has {} \
                 (and at least one token must be generated).",
                prompt_ids.len()
            ),
        )
        .with_code("context_length_exceeded"));
    }
    let ticket = admit(state, id)?;
    let (tx, mut rx) = unbounded_channel();
    let request = GenRequest {
        prompt_ids: prompt_ids.clone(),
        max_new_tokens: spec
            .max_tokens
            .unwrap_or(max_seq - prompt_ids.len())
            .min(max_seq),
        sampling: spec.sampling,
        stop_ids: if spec.ignore_eos {
            Vec::new()
        } else {
            state.info.stop_ids.clone()
        },
    };
    state
        .engine
        .send(Command::Submit {
            id,
            request,
            events: tx,
        })
        .map_err(|_| ApiError::internal("the engine has stopped"))?;
    match rx.recv().await {
        Some(EngineEvent::Accepted) => {
            state
                .metrics
                .prompt_tokens
                .fetch_add(prompt_ids.len() as u64, Ordering::Relaxed);
            Ok(Accepted {
                ticket,
                events: rx,
                prompt_ids,
            })
        }
        Some(EngineEvent::Rejected(reason)) => Err(ApiError::invalid_param(prompt_param, reason)),
        Some(EngineEvent::Overloaded) => Err(overloaded(state)),
        _ => Err(ApiError::internal("the engine has stopped")),
    }
}

/// A piece of an answer.
#[derive(Debug)]
enum Out {
    /// Text and the ids generated since the previous piece.
    Text {
        text: String,
        ids: Vec<u32>,
    },
    /// The end: why, any ids not yet reported, and the count of generated tokens.
    End {
        reason: &'static str,
        ids: Vec<u32>,
        completion_tokens: usize,
    },
    Error(String),
}

/// The answer as it is generated. Dropping the stream drops the ticket (cancelling the
/// sequence if it is still running).
fn answer(
    state: AppState,
    accepted: Accepted,
    stops: Vec<String>,
) -> impl Stream<Item = Out> + Send + 'static {
    stream! {
        let Accepted { ticket, mut events, .. } = accepted;
        let tokenizer = state.tokenizer.clone();
        let mut text = TextStream::new(&tokenizer, state.info.stop_ids.clone(), stops);
        let mut ids = Vec::new();
        let mut generated = 0usize;
        loop {
            match events.recv().await {
                Some(EngineEvent::Token(id)) => {
                    generated += 1;
                    state.metrics.completion_tokens.fetch_add(1, Ordering::Relaxed);
                    ids.push(id);
                    match text.push(id) {
                        Ok(piece) => {
                            if !piece.text.is_empty() {
                                yield Out::Text { text: piece.text, ids: std::mem::take(&mut ids) };
                            }
                            if piece.stopped {
                                state.metrics.count_finish("stop");
                                yield Out::End { reason: "stop", ids, completion_tokens: generated };
                                break;
                            }
                        }
                        Err(e) => {
                            state.metrics.count_finish("error");
                            yield Out::Error(e.to_string());
                            break;
                        }
                    }
                }
                Some(EngineEvent::Finished(reason)) => {
                    let piece = text.finish();
                    if !piece.text.is_empty() {
                        yield Out::Text { text: piece.text, ids: std::mem::take(&mut ids) };
                    }
                    let reason = finish_str(reason);
                    state.metrics.count_finish(reason);
                    yield Out::End { reason, ids, completion_tokens: generated };
                    break;
                }
                Some(EngineEvent::Failed(error)) => {
                    state.metrics.count_finish("error");
                    yield Out::Error(error);
                    break;
                }
                Some(EngineEvent::Accepted | EngineEvent::Rejected(_) | EngineEvent::Overloaded) => {}
                None => {
                    state.metrics.count_finish("error");
                    yield Out::Error("the engine has stopped".into());
                    break;
                }
            }
        }
        // Done: the engine is told to forget the sequence (a no-op when it finished there).
        drop(ticket);
    }
}

/// Which endpoint is answering.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Chat,
    Completion,
}

impl Kind {
    fn id_prefix(self) -> &'static str {
        match self {
            Kind::Chat => "chatcmpl",
            Kind::Completion => "cmpl",
        }
    }
}

fn response_id(kind: Kind, id: ReqId) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{:x}{:06x}", kind.id_prefix(), nanos, id)
}

/// Generates and answers: a JSON body, or server-sent events with `stream: true`.
async fn respond(
    state: AppState,
    kind: Kind,
    id: ReqId,
    spec: Spec,
    prompt_ids: Vec<u32>,
    prompt_param: &str,
) -> Result<Response, ApiError> {
    let accepted = submit(&state, id, prompt_ids, &spec, prompt_param).await?;
    let meta = Meta {
        kind,
        id: response_id(kind, id),
        created: now_secs(),
        model: state.settings.model_name.clone(),
        prompt_ids: accepted.prompt_ids.clone(),
        spec,
    };
    let stops = meta.spec.stops.clone();
    let out = answer(state, accepted, stops);
    if meta.spec.stream {
        Ok(Sse::new(sse_events(meta, out))
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
            .into_response())
    } else {
        whole(meta, out).await
    }
}

/// What every chunk or body repeats.
struct Meta {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    prompt_ids: Vec<u32>,
    spec: Spec,
}

impl Meta {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Completion, _) => "text_completion",
        }
    }

    fn envelope(&self, chunk: bool, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": self.object(chunk),
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }

    /// One streamed choice: `delta` for chat, `text` for completions.
    fn chunk(&self, text: Option<String>, reason: Option<&str>, ids: &[u32]) -> Value {
        let mut choice = match self.kind {
            Kind::Chat => json!({
                "index": 0,
                "delta": match text { Some(t) => json!({"content": t}), None => json!({}) },
                "logprobs": null,
                "finish_reason": reason,
            }),
            Kind::Completion => json!({
                "index": 0,
                "text": text.unwrap_or_default(),
                "logprobs": null,
                "finish_reason": reason,
            }),
        };
        if self.spec.return_token_ids {
            choice["token_ids"] = json!(ids);
        }
        let mut v = self.envelope(true, json!([choice]));
        if self.spec.include_usage {
            v["usage"] = Value::Null;
        }
        v
    }
}

fn sse(v: &Value) -> Result<SseEvent, Infallible> {
    Ok(SseEvent::default().data(v.to_string()))
}

fn sse_events(
    meta: Meta,
    out: impl Stream<Item = Out> + Send + 'static,
) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send + 'static {
    stream! {
        let mut out = std::pin::pin!(out);
        if meta.kind == Kind::Chat {
            // OpenAI's first chunk names the role.
            let mut first = meta.chunk(None, None, &[]);
            first["choices"][0]["delta"] = json!({"role": "assistant", "content": ""});
            if meta.spec.return_token_ids {
                first["prompt_token_ids"] = json!(meta.prompt_ids);
            }
            yield sse(&first);
        }
        let mut first_text = meta.kind == Kind::Completion && meta.spec.return_token_ids;
        while let Some(piece) = out.next().await {
            match piece {
                Out::Text { text, ids } => {
                    let mut v = meta.chunk(Some(text), None, &ids);
                    if std::mem::take(&mut first_text) {
                        v["prompt_token_ids"] = json!(meta.prompt_ids);
                    }
                    yield sse(&v);
                }
                Out::End { reason, ids, completion_tokens } => {
                    yield sse(&meta.chunk(None, Some(reason), &ids));
                    if meta.spec.include_usage {
                        let mut v = meta.envelope(true, json!([]));
                        v["usage"] = usage(meta.prompt_ids.len(), completion_tokens);
                        yield sse(&v);
                    }
                    break;
                }
                Out::Error(message) => {
                    yield sse(&ApiError::internal(message).body());
                    break;
                }
            }
        }
        yield Ok(SseEvent::default().data("[DONE]"));
    }
}

/// Collects the whole answer into one response body.
async fn whole(meta: Meta, out: impl Stream<Item = Out>) -> Result<Response, ApiError> {
    let mut out = std::pin::pin!(out);
    let mut text = String::new();
    let mut ids = Vec::new();
    let mut end = None;
    while let Some(piece) = out.next().await {
        match piece {
            Out::Text { text: t, ids: i } => {
                text.push_str(&t);
                ids.extend(i);
            }
            Out::End {
                reason,
                ids: i,
                completion_tokens,
            } => {
                ids.extend(i);
                end = Some((reason, completion_tokens));
                break;
            }
            Out::Error(message) => return Err(ApiError::internal(message)),
        }
    }
    let (reason, completion_tokens) =
        end.ok_or_else(|| ApiError::internal("the answer ended early"))?;
    let choice = match meta.kind {
        Kind::Chat => json!({
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": null,
            "finish_reason": reason,
        }),
        Kind::Completion => json!({
            "index": 0,
            "text": text,
            "logprobs": null,
            "finish_reason": reason,
        }),
    };
    let mut v = meta.envelope(false, json!([choice]));
    if meta.spec.return_token_ids {
        v["choices"][0]["token_ids"] = json!(ids);
        v["prompt_token_ids"] = json!(meta.prompt_ids);
    }
    v["usage"] = usage(meta.prompt_ids.len(), completion_tokens);
    Ok(axum::Json(v).into_response())
}

fn next_id(state: &AppState) -> ReqId {
    state.next_id.fetch_add(1, Ordering::Relaxed)
}

async fn chat_completions(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let v = body_json(&state, body)?;
    let id = next_id(&state);
    let req = api::chat_request(&v, id)?;
    check_model(&state, &req.spec)?;
    let prompt = encode_chat(&state.tokenizer, &req.messages, true)
        .map_err(|e| ApiError::invalid_param("messages", e.to_string()))?;
    respond(state, Kind::Chat, id, req.spec, prompt, "messages").await
}

async fn completions(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let v = body_json(&state, body)?;
    let id = next_id(&state);
    let req = api::completion_request(&v, id)?;
    check_model(&state, &req.spec)?;
    let prompt = match req.prompt {
        // As `bitnet generate --prompt`: BOS first.
        Prompt::Text(t) => state
            .tokenizer
            .encode(&t, true)
            .map_err(|e| ApiError::invalid_param("prompt", e.to_string()))?,
        Prompt::Ids(ids) => ids,
    };
    respond(state, Kind::Completion, id, req.spec, prompt, "prompt").await
}
