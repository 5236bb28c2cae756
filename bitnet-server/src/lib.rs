//! `bitnet-server`: an OpenAI-compatible HTTP server over the BitNet runtime.
//!
//! - `POST /v1/chat/completions` (the model's chat format) and `POST /v1/completions` (a prompt
//!   string, or token ids), whole or streamed as server-sent events (`stream: true`), with
//!   `usage` and `finish_reason` `stop` or `length`; per-request `temperature`, `top_p`,
//!   `top_k`, `seed`, `max_tokens` and `stop` strings.
//! - `GET /v1/models`, `GET /health`, and Prometheus text at `GET /metrics`.
//! - One engine thread owns the device, the model and the runtime's [`Generator`]
//!   (continuous batching: requests join and leave the decode batch between steps). A bounded
//!   queue sits in front of it: when full, requests get 503 with `Retry-After`. A client that
//!   goes away cancels its sequence, which frees its KV blocks.
//! - Optional bearer-token auth, a request body limit, and OpenAI-style error objects for
//!   malformed requests, unknown models and invalid parameters.
//!
//! Start it with [`Server::start`] (tests bind port 0 and read [`Server::local_addr`]) or,
//! from a plain `main`, [`serve_blocking`].
//!
//! [`Generator`]: bitnet_runtime::Generator

mod api;
mod engine;
mod error;
mod http;
mod metrics;
mod text;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use bitnet_layers::BitNetModel;
use bitnet_runtime::{GeneratorConfig, Tokenizer};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use error::{ApiError, Error};
pub use text::{Piece, TextStream};

/// How the server is set up.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where to listen (default 127.0.0.1:8080; port 0 picks a free one).
    pub addr: SocketAddr,
    /// The model id clients name in `model` (and `/v1/models` lists).
    pub model_name: String,
    /// When set, `/v1/*` and `/metrics` need `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Requests that may wait for a place in the decode batch; beyond it, 503.
    pub max_queue: usize,
    /// Largest request body, bytes; beyond it, 413.
    pub max_body_bytes: usize,
    /// The runtime's generator (`max_batch` is the decode batch).
    pub generator: GeneratorConfig,
}

impl ServerConfig {
    pub fn new(model_name: impl Into<String>) -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            model_name: model_name.into(),
            api_key: None,
            max_queue: 64,
            max_body_bytes: 4 << 20,
            generator: GeneratorConfig::default(),
        }
    }
}

/// Loads the model. It runs on the engine thread, which then owns the model for good.
pub type LoadModel =
    dyn FnOnce() -> Result<BitNetModel, Box<dyn std::error::Error + Send + Sync>> + Send;

/// A running server.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// Binds `config.addr`, loads the model on the engine thread (`load`), and serves.
    /// Returns once requests can be served.
    pub async fn start(
        config: ServerConfig,
        tokenizer: Tokenizer,
        load: Box<LoadModel>,
    ) -> Result<Self, Error> {
        if config.model_name.is_empty() {
            return Err(Error::Config("the model name is empty".into()));
        }
        if config.max_queue == 0 {
            return Err(Error::Config("max_queue must be at least 1".into()));
        }
        // Bind first: a taken port fails before a long model load.
        let listener = TcpListener::bind(config.addr)
            .await
            .map_err(|source| Error::Io {
                context: format!("binding {}", config.addr),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Io {
            context: "reading the bound address".into(),
            source,
        })?;
        let tokenizer = Arc::new(tokenizer);
        let metrics = Arc::new(metrics::Metrics::default());
        let alive = Arc::new(AtomicBool::new(true));
        let (engine, info) = {
            let (tok, m, gen_cfg) = (tokenizer.clone(), metrics.clone(), config.generator.clone());
            let (alive, max_queue) = (alive.clone(), config.max_queue);
            tokio::task::spawn_blocking(move || {
                engine::spawn(load, gen_cfg, max_queue, tok, m, alive)
            })
            .await
            .map_err(|e| Error::Engine(format!("starting: {e}")))??
        };
        let state = http::AppState {
            settings: Arc::new(http::Settings {
                model_name: config.model_name,
                api_key: config.api_key,
                max_queue: config.max_queue,
                max_body_bytes: config.max_body_bytes,
                created: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
            }),
            info: Arc::new(info),
            tokenizer,
            engine,
            metrics,
            engine_alive: alive,
            next_id: Arc::new(AtomicU64::new(0)),
        };
        let app = http::router(state);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        Ok(Self {
            addr,
            stop: Some(stop),
            task,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections and waits up to `grace` for open ones to finish.
    pub async fn shutdown(mut self, grace: Duration) -> Result<(), Error> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match tokio::time::timeout(grace, &mut self.task).await {
            Ok(Ok(r)) => r.map_err(|source| Error::Io {
                context: "serving".into(),
                source,
            }),
            Ok(Err(e)) => Err(Error::Engine(format!("the server task failed: {e}"))),
            Err(_) => {
                // Streams still open after the grace period are cut.
                self.task.abort();
                Ok(())
            }
        }
    }
}

/// Runs a server until Ctrl-C (or SIGTERM), on a runtime of its own: for a plain `main`.
/// `ready` is told the bound address once requests can be served.
pub fn serve_blocking(
    config: ServerConfig,
    tokenizer: Tokenizer,
    load: Box<LoadModel>,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), Error> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            context: "starting the async runtime".into(),
            source,
        })?;
    rt.block_on(async {
        let server = Server::start(config, tokenizer, load).await?;
        ready(server.local_addr());
        shutdown_signal().await;
        server.shutdown(Duration::from_secs(5)).await
    })
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
