//! `bitnet serve`: the OpenAI-compatible server of `bitnet-server`, set up from flags. The
//! model loads on the server's engine thread, which owns it from then on.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;

use anyhow::Context;
use bitnet_server::{ServerConfig, serve_blocking};
use clap::Args;

use crate::{ModelOpts, load_model_from, model_dir, run};

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelOpts,
    /// Address to listen on (loopback by default: anyone who can reach the port can use the
    /// model).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Most requests decoded together (continuous batching; at most 32).
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// Requests that may wait for a place in the batch; more get 503 with Retry-After.
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// Require `Authorization: Bearer KEY` on /v1/* and /metrics (default: $BITNET_API_KEY if
    /// set; none otherwise).
    #[arg(long)]
    api_key: Option<String>,
    /// The model id clients send (default: --model as given for a Hub id, the directory's name
    /// for a local one).
    #[arg(long)]
    model_name: Option<String>,
    /// Largest request body, KiB; larger ones get 413.
    #[arg(long, default_value_t = 4096)]
    max_body_kb: usize,
    #[command(flatten)]
    engine: run::EngineOpts,
}

/// The id a model is served under when `--model-name` is not given.
fn default_model_name(spec: &str) -> String {
    let path = Path::new(spec);
    let dir_name = path
        .is_dir()
        .then(|| path.canonicalize().ok())
        .flatten()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    dir_name.unwrap_or_else(|| spec.to_owned())
}

fn listen_addr(host: &str, port: u16) -> anyhow::Result<SocketAddr> {
    (host, port)
        .to_socket_addrs()
        .with_context(|| format!("--host {host}"))?
        .next()
        .with_context(|| format!("--host {host} resolves to no address"))
}

pub fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let addr = listen_addr(&a.host, a.port)?;
    let dir = model_dir(&a.model)?;
    let tokenizer = run::load_tokenizer(&dir, a.model.tokenizer.as_ref())?;
    let mut cfg = ServerConfig::new(
        a.model_name
            .clone()
            .unwrap_or_else(|| default_model_name(&a.model.model)),
    );
    cfg.addr = addr;
    cfg.api_key = a
        .api_key
        .clone()
        .or_else(|| std::env::var("BITNET_API_KEY").ok())
        .filter(|k| !k.is_empty());
    cfg.max_queue = a.max_queue;
    cfg.max_body_bytes = a.max_body_kb.saturating_mul(1024);
    cfg.generator = a.engine.generator_config(a.max_batch);
    let model_opts = a.model.clone();
    let max_batch = a.max_batch;
    let name = cfg.model_name.clone();
    let auth = cfg.api_key.is_some();
    eprintln!("loading {} ...", dir.display());
    serve_blocking(
        cfg,
        tokenizer,
        Box::new(move || Ok(load_model_from(&dir, &model_opts, max_batch)?)),
        |addr| {
            eprintln!(
                "serving {name} at http://{addr}/v1 (OpenAI API{}); Ctrl-C stops",
                if auth { ", bearer key required" } else { "" }
            );
        },
    )?;
    Ok(())
}
