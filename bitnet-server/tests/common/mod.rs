//! What the server tests share: the fixture model and tokenizer, a server on a loopback port,
//! the runtime's own answers to compare with, and small HTTP/SSE/metrics helpers.

// Helpers of tests: each test uses some of them, and a failure in them is a test failure.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use bitnet_layers::{BitNetModel, ModelOptions, PlanOptions};
use bitnet_runtime::{Event, Generator, GeneratorConfig, Request, SamplingParams, Tokenizer};
use bitnet_server::{Server, ServerConfig};
use bitnet_tests::{model_dir, test_tokenizer_path};
use futures_util::StreamExt;
use serde_json::Value;
use ttnn::{DataType, Device, DeviceSpec};

/// A random checkpoint with the real vocabulary, so text prompts work with the Llama 3
/// tokenizer (its output is noise, but deterministic).
pub const FIXTURE: &str = "fullvocab-2b4t-format";
/// A smaller random checkpoint (vocab 4000, so prompts are token ids): its output projection
/// costs a 32nd of the full vocabulary's, for tests that generate many tokens.
pub const TINY: &str = "tiny-2b4t-format";
pub const MODEL: &str = "bitnet-test";

pub fn load_model() -> Result<BitNetModel, Box<dyn std::error::Error + Send + Sync>> {
    load_fixture(FIXTURE)
}

pub fn load_fixture(name: &str) -> Result<BitNetModel, Box<dyn std::error::Error + Send + Sync>> {
    let dev = Device::open(DeviceSpec::default().with_threads(1))?;
    let opts = ModelOptions {
        plan: PlanOptions {
            // As the CLI tests run `bitnet generate`: bf16 lm_head matches the golden ids.
            lm_head: DataType::Bfloat16,
            max_batch: 32,
            ..Default::default()
        },
        max_seq_len: None,
    };
    Ok(BitNetModel::load(&model_dir(name), &dev, &opts)?)
}

pub fn tokenizer() -> Tokenizer {
    Tokenizer::from_file(test_tokenizer_path()).unwrap()
}

/// A server on 127.0.0.1, a free port, serving [`FIXTURE`]; `edit` changes the defaults.
pub async fn start(edit: impl FnOnce(&mut ServerConfig)) -> Server {
    start_fixture(FIXTURE, edit).await
}

/// A server on 127.0.0.1, a free port, serving fixture `name`.
pub async fn start_fixture(name: &'static str, edit: impl FnOnce(&mut ServerConfig)) -> Server {
    let mut cfg = ServerConfig::new(MODEL);
    cfg.addr = "127.0.0.1:0".parse().unwrap();
    cfg.generator = GeneratorConfig {
        num_blocks: Some(512),
        ..Default::default()
    };
    edit(&mut cfg);
    Server::start(cfg, tokenizer(), Box::new(move || load_fixture(name)))
        .await
        .unwrap()
}

pub fn base(server: &Server) -> String {
    format!("http://{}", server.local_addr())
}

/// What `bitnet generate` produces for `prompt` (one sequence through the runtime's
/// generator, stopping at the tokenizer's stop ids): the generated ids, stop id included.
pub fn reference_ids(prompts: &[Vec<u32>], max_new_tokens: usize) -> Vec<Vec<u32>> {
    reference_ids_of(FIXTURE, prompts, max_new_tokens)
}

/// [`reference_ids`] on fixture `name`.
pub fn reference_ids_of(name: &str, prompts: &[Vec<u32>], max_new_tokens: usize) -> Vec<Vec<u32>> {
    let model = load_fixture(name).unwrap();
    let stops = tokenizer().stop_ids(&model.config().eos_token_ids);
    prompts
        .iter()
        .map(|p| {
            let mut g = Generator::new(
                &model,
                GeneratorConfig {
                    max_batch: 1,
                    ..Default::default()
                },
            )
            .unwrap();
            g.add_request(Request {
                prompt_ids: p.clone(),
                max_new_tokens,
                sampling: SamplingParams::greedy(),
                stop_ids: stops.clone(),
            })
            .unwrap();
            g.run()
                .unwrap()
                .into_iter()
                .filter_map(|e| match e {
                    Event::Token { token, .. } => Some(token),
                    _ => None,
                })
                .collect()
        })
        .collect()
}

/// The text an answer of `ids` shows: stop ids are not text.
pub fn answer_text(tok: &Tokenizer, ids: &[u32]) -> String {
    let stops = tok.stop_ids(&[]);
    let kept: Vec<u32> = ids.iter().copied().filter(|i| !stops.contains(i)).collect();
    tok.decode(&kept).unwrap()
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an id list: {v}"))
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// POSTs JSON; returns the status and the JSON body.
pub async fn post(client: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let r = client.post(url).json(body).send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, v)
}

/// Reads a whole server-sent-event response; returns each event's `data`.
pub async fn sse(resp: reqwest::Response) -> Vec<String> {
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let body = resp.text().await.unwrap();
    parse_events(&body)
}

pub fn parse_events(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|e| {
            let data: Vec<&str> = e
                .lines()
                .filter_map(|l| l.strip_prefix("data: ").or(l.strip_prefix("data:")))
                .collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}

/// A streamed answer: the chunks (parsed) before `[DONE]`, which must come last.
pub async fn stream_chunks(client: &reqwest::Client, url: &str, body: &Value) -> Vec<Value> {
    let resp = client.post(url).json(body).send().await.unwrap();
    let events = sse(resp).await;
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap_or_else(|err| panic!("{err}: {e}")))
        .collect()
}

pub async fn metrics_text(client: &reqwest::Client, base: &str) -> String {
    let r = client.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// The value of one sample (`name` with its labels, as written).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            l.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
                .map(|v| v.trim().parse::<f64>().unwrap())
        })
        .unwrap_or_else(|| panic!("no sample {name} in\n{text}"))
}

/// Polls `/metrics` until `ok` holds, for at most `secs`.
pub async fn wait_for_metrics(
    client: &reqwest::Client,
    base: &str,
    secs: u64,
    ok: impl Fn(&str) -> bool,
) -> String {
    let start = Instant::now();
    loop {
        let text = metrics_text(client, base).await;
        if ok(&text) {
            return text;
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "metrics did not get there in {secs} s:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads SSE events from a live response until `n` have arrived; returns the stream to keep.
pub async fn read_events(resp: reqwest::Response, n: usize) -> impl futures_util::Stream {
    let mut stream = Box::pin(resp.bytes_stream());
    let mut buf = String::new();
    while parse_events(&buf).len() < n {
        let chunk = stream.next().await.unwrap().unwrap();
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
    stream
}
