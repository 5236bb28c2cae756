//! The engine: one thread that owns the device, the model and the [`Generator`] (which is not
//! `Send`: it holds traces, and borrows the model), and runs the scheduler loop.
//!
//! HTTP handlers talk to it over a channel: `Submit` queues a request in the generator (which
//! admits it to the decode batch when a slot and its prompt's KV blocks are free), `Cancel`
//! drops a sequence and frees its blocks. Between two `step()`s every pending command is
//! applied, so requests join and leave the batch step by step (continuous batching). Each
//! request's ids go back on its own channel; a closed channel (the client went away) cancels
//! its sequence too.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvError, Sender, TryRecvError};

use bitnet_runtime::{Event, FinishReason, Generator, GeneratorConfig, Request, SeqId, Tokenizer};
use tokio::sync::mpsc::UnboundedSender;

use crate::LoadModel;
use crate::error::Error;
use crate::metrics::{EngineSnapshot, Metrics};

/// A request's id in the server (not the generator's sequence id).
pub type ReqId = u64;

/// What handlers ask of the engine.
#[derive(Debug)]
pub enum Command {
    Submit {
        id: ReqId,
        request: Request,
        events: UnboundedSender<EngineEvent>,
    },
    Cancel {
        id: ReqId,
    },
}

/// What the engine tells a request.
#[derive(Clone, Debug, PartialEq)]
pub enum EngineEvent {
    /// Queued in the generator.
    Accepted,
    /// Refused as invalid (the runtime's reason).
    Rejected(String),
    /// Refused: the generator's queue already holds `max_queue` sequences.
    Overloaded,
    Token(u32),
    Finished(FinishReason),
    /// The sequence failed (e.g. out of KV blocks with nothing left to preempt).
    Failed(String),
}

/// What handlers need to know about the loaded model.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    pub max_seq_len: usize,
    /// Ids that end an answer (`<|eot_id|>`, `<|end_of_text|>`, the config's eos).
    pub stop_ids: Vec<u32>,
    pub max_batch: usize,
}

struct Live {
    id: ReqId,
    events: UnboundedSender<EngineEvent>,
}

/// Clears the engine's liveness flag when its thread ends, however it ends (a panic too).
struct AliveFlag(Arc<AtomicBool>);

impl Drop for AliveFlag {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// Starts the engine thread; returns once the model is loaded and the generator is ready.
/// `alive` turns false when the thread ends; at most `max_queue` sequences wait for the batch.
pub fn spawn(
    load: Box<LoadModel>,
    gen_cfg: GeneratorConfig,
    max_queue: usize,
    tokenizer: Arc<Tokenizer>,
    metrics: Arc<Metrics>,
    alive: Arc<AtomicBool>,
) -> Result<(Sender<Command>, ModelInfo), Error> {
    let (cmd_tx, cmd_rx) = std::sync::mpsc::channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("bitnet-engine".into())
        .spawn(move || {
            let _alive = AliveFlag(alive);
            let model = match load() {
                Ok(m) => m,
                Err(e) => {
                    let _ = ready_tx.send(Err(Error::ModelLoad(e)));
                    return;
                }
            };
            let generator = match Generator::new(&model, gen_cfg.clone()) {
                Ok(g) => g,
                Err(e) => {
                    let _ = ready_tx.send(Err(Error::Generator(e)));
                    return;
                }
            };
            let info = ModelInfo {
                max_seq_len: model.max_seq_len(),
                stop_ids: tokenizer.stop_ids(&model.config().eos_token_ids),
                max_batch: gen_cfg.max_batch,
            };
            let engine = Engine {
                generator,
                live: HashMap::new(),
                seq_of: HashMap::new(),
                metrics,
                max_queue,
                max_batch_seen: 0,
                cancelled: 0,
            };
            // /metrics shows the cache from the start.
            engine.publish();
            if ready_tx.send(Ok(info)).is_err() {
                return;
            }
            engine.run(cmd_rx);
        })
        .map_err(|e| Error::Engine(format!("cannot spawn: {e}")))?;
    let info = ready_rx
        .recv()
        .map_err(|_: RecvError| Error::Engine("it stopped while loading the model".into()))??;
    Ok((cmd_tx, info))
}

struct Engine<'m> {
    generator: Generator<'m>,
    live: HashMap<SeqId, Live>,
    seq_of: HashMap<ReqId, SeqId>,
    metrics: Arc<Metrics>,
    max_queue: usize,
    max_batch_seen: usize,
    cancelled: u64,
}

impl Engine<'_> {
    /// Serves commands until every sender is gone and no work is left.
    fn run(mut self, rx: Receiver<Command>) {
        loop {
            if !self.generator.has_work() {
                // Idle: sleep until a handler asks for something.
                match rx.recv() {
                    Ok(cmd) => self.apply(cmd),
                    Err(RecvError) => return,
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(cmd) => self.apply(cmd),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        if !self.generator.has_work() {
                            return;
                        }
                        break;
                    }
                }
            }
            if self.generator.has_work() {
                match self.generator.step() {
                    Ok(events) => {
                        // Published before anyone hears of the step, so a client that reacts
                        // to its tokens reads /metrics as of this step.
                        self.max_batch_seen =
                            self.max_batch_seen.max(self.generator.last_decode_batch());
                        self.publish();
                        self.dispatch(events);
                    }
                    Err(e) => self.fail_all(&e.to_string()),
                }
                self.publish();
            }
        }
    }

    fn apply(&mut self, cmd: Command) {
        match cmd {
            Command::Submit {
                id,
                request,
                events,
            } => {
                if self.generator.num_waiting() >= self.max_queue {
                    let _ = events.send(EngineEvent::Overloaded);
                    return;
                }
                match self.generator.add_request(request) {
                    Ok(seq) => {
                        self.publish();
                        if events.send(EngineEvent::Accepted).is_ok() {
                            self.live.insert(seq, Live { id, events });
                            self.seq_of.insert(id, seq);
                        } else {
                            self.generator.cancel(seq);
                            self.publish();
                        }
                    }
                    Err(e) => {
                        let _ = events.send(EngineEvent::Rejected(e.to_string()));
                    }
                }
            }
            Command::Cancel { id } => {
                if let Some(seq) = self.seq_of.remove(&id) {
                    self.live.remove(&seq);
                    if self.generator.cancel(seq) {
                        self.cancelled += 1;
                    }
                    self.publish();
                }
            }
        }
    }

    fn forget(&mut self, seq: SeqId) {
        if let Some(l) = self.live.remove(&seq) {
            self.seq_of.remove(&l.id);
        }
    }

    fn dispatch(&mut self, events: Vec<Event>) {
        self.max_batch_seen = self.max_batch_seen.max(self.generator.last_decode_batch());
        for e in events {
            let (seq, ev, last) = match e {
                Event::Token { seq, token } => (seq, EngineEvent::Token(token), false),
                Event::Finished { seq, reason } => (seq, EngineEvent::Finished(reason), true),
                Event::Failed { seq, error } => (seq, EngineEvent::Failed(error), true),
            };
            let Some(l) = self.live.get(&seq) else {
                continue;
            };
            if l.events.send(ev).is_err() {
                // Nobody listens any more: stop decoding for them.
                self.forget(seq);
                if self.generator.cancel(seq) {
                    self.cancelled += 1;
                }
            } else if last {
                self.forget(seq);
            }
        }
    }

    /// A step failed: every live sequence fails with it (the generator stays usable for new
    /// requests; if the device is broken, they fail the same way).
    fn fail_all(&mut self, error: &str) {
        for (seq, l) in std::mem::take(&mut self.live) {
            let _ = l.events.send(EngineEvent::Failed(error.to_owned()));
            self.generator.cancel(seq);
        }
        self.seq_of.clear();
    }

    fn publish(&self) {
        let alloc = &self.generator.cache().alloc;
        self.metrics.publish(EngineSnapshot {
            running: self.generator.num_running(),
            waiting: self.generator.num_waiting(),
            last_batch: self.generator.last_decode_batch(),
            max_batch_seen: self.max_batch_seen,
            kv_blocks_in_use: alloc.in_use(),
            kv_blocks_total: alloc.num_blocks(),
            kv_blocks_cached: alloc.cached(),
            stats: self.generator.stats(),
            cancelled: self.cancelled,
        });
    }
}
