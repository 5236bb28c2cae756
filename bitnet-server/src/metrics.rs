//! Counters and gauges for `GET /metrics` (Prometheus text exposition format 0.0.4).
//!
//! Handlers count requests and tokens; the engine thread publishes a snapshot of the scheduler
//! (batch occupancy, queue, KV blocks, speed) after every step.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bitnet_runtime::GeneratorStats;

/// The scheduler's state after the engine's latest step.
#[derive(Clone, Debug, Default)]
pub struct EngineSnapshot {
    /// Sequences in the decode batch now.
    pub running: usize,
    /// Sequences queued in the generator (waiting for a slot or KV blocks).
    pub waiting: usize,
    /// Sequences the last decode step decoded together.
    pub last_batch: usize,
    /// Largest decode batch so far.
    pub max_batch_seen: usize,
    pub kv_blocks_in_use: usize,
    pub kv_blocks_total: usize,
    /// Blocks registered in the prefix cache (in use or not; unused ones are reclaimable).
    pub kv_blocks_cached: usize,
    pub stats: GeneratorStats,
    /// Sequences cancelled because their client went away or a stop string ended them.
    pub cancelled: u64,
}

/// Everything `/metrics` reports.
#[derive(Debug, Default)]
pub struct Metrics {
    /// `(route, status)` -> responses.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// finish reason -> completions.
    finished: Mutex<BTreeMap<&'static str, u64>>,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    /// Requests accepted and not yet answered in full (queued or decoding).
    pub in_flight: AtomicUsize,
    pub rejected_overload: AtomicU64,
    engine: Mutex<EngineSnapshot>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding a metrics lock leaves plain counters behind: still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Metrics {
    pub fn count_request(&self, route: &str, status: u16) {
        *lock(&self.requests)
            .entry((route.to_owned(), status))
            .or_default() += 1;
    }

    pub fn count_finish(&self, reason: &'static str) {
        *lock(&self.finished).entry(reason).or_default() += 1;
    }

    pub fn publish(&self, snap: EngineSnapshot) {
        *lock(&self.engine) = snap;
    }

    pub fn engine(&self) -> EngineSnapshot {
        lock(&self.engine).clone()
    }

    /// The Prometheus text of every metric.
    pub fn render(&self, max_batch: usize) -> String {
        let mut out = String::new();
        let e = self.engine();
        let s = &e.stats;
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, String)]| {
            // Writing into a String cannot fail.
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let one = |v: String| vec![(String::new(), v)];
        let requests: Vec<_> = lock(&self.requests)
            .iter()
            .map(|((route, status), n)| {
                (
                    format!("{{route=\"{route}\",status=\"{status}\"}}"),
                    n.to_string(),
                )
            })
            .collect();
        metric(
            "bitnet_requests_total",
            "counter",
            "HTTP responses by route and status.",
            &requests,
        );
        let finished: Vec<_> = lock(&self.finished)
            .iter()
            .map(|(r, n)| (format!("{{reason=\"{r}\"}}"), n.to_string()))
            .collect();
        metric(
            "bitnet_completions_total",
            "counter",
            "Completions by how they ended: stop, length, cancelled (client went away), error.",
            &finished,
        );
        metric(
            "bitnet_requests_rejected_overload_total",
            "counter",
            "Requests refused with 503 because the queue was full.",
            &one(self.rejected_overload.load(Ordering::Relaxed).to_string()),
        );
        metric(
            "bitnet_prompt_tokens_total",
            "counter",
            "Prompt tokens of accepted requests.",
            &one(self.prompt_tokens.load(Ordering::Relaxed).to_string()),
        );
        metric(
            "bitnet_completion_tokens_total",
            "counter",
            "Tokens generated for clients.",
            &one(self.completion_tokens.load(Ordering::Relaxed).to_string()),
        );
        metric(
            "bitnet_requests_in_flight",
            "gauge",
            "Requests accepted and not yet finished (queued or decoding).",
            &one(self.in_flight.load(Ordering::Relaxed).to_string()),
        );
        metric(
            "bitnet_queue_depth",
            "gauge",
            "Requests waiting to join the decode batch (for a slot or KV blocks, or preempted).",
            &one(e.waiting.to_string()),
        );
        metric(
            "bitnet_batch_occupancy",
            "gauge",
            "Sequences decoded together in the latest decode step.",
            &one(e.last_batch.to_string()),
        );
        metric(
            "bitnet_batch_occupancy_max",
            "gauge",
            "Most sequences decoded together in one step since the server started.",
            &one(e.max_batch_seen.to_string()),
        );
        metric(
            "bitnet_batch_size_limit",
            "gauge",
            "Most sequences the decode batch may hold (--max-batch).",
            &one(max_batch.to_string()),
        );
        metric(
            "bitnet_running_sequences",
            "gauge",
            "Sequences in the decode batch now.",
            &one(e.running.to_string()),
        );
        metric(
            "bitnet_kv_blocks_in_use",
            "gauge",
            "KV cache blocks held by live sequences.",
            &one(e.kv_blocks_in_use.to_string()),
        );
        metric(
            "bitnet_kv_blocks_cached",
            "gauge",
            "KV cache blocks registered for prefix sharing (unused ones are reclaimable).",
            &one(e.kv_blocks_cached.to_string()),
        );
        metric(
            "bitnet_kv_blocks_total",
            "gauge",
            "KV cache blocks in all.",
            &one(e.kv_blocks_total.to_string()),
        );
        metric(
            "bitnet_sequences_cancelled_total",
            "counter",
            "Sequences stopped early (client went away, or a stop string matched).",
            &one(e.cancelled.to_string()),
        );
        metric(
            "bitnet_preemptions_total",
            "counter",
            "Sequences preempted (recomputed later) because KV blocks ran out.",
            &one(s.preemptions.to_string()),
        );
        metric(
            "bitnet_prefill_tokens_total",
            "counter",
            "Prompt tokens prefilled (shared prefix blocks excluded).",
            &one(s.prefill_tokens.to_string()),
        );
        metric(
            "bitnet_prefill_seconds_total",
            "counter",
            "Time spent in prefill.",
            &one(format!("{:.6}", s.prefill_seconds)),
        );
        metric(
            "bitnet_decode_tokens_total",
            "counter",
            "Tokens produced by decode steps.",
            &one(s.decode_tokens.to_string()),
        );
        metric(
            "bitnet_decode_seconds_total",
            "counter",
            "Time spent in decode steps.",
            &one(format!("{:.6}", s.decode_seconds)),
        );
        metric(
            "bitnet_decode_steps_total",
            "counter",
            "Decode steps run.",
            &one(s.decode_steps.to_string()),
        );
        let rate = |tokens: usize, secs: f64| {
            if secs > 0.0 {
                tokens as f64 / secs
            } else {
                0.0
            }
        };
        metric(
            "bitnet_prefill_tokens_per_second",
            "gauge",
            "Prefill speed since start (tokens / prefill time).",
            &one(format!("{:.3}", rate(s.prefill_tokens, s.prefill_seconds))),
        );
        metric(
            "bitnet_decode_tokens_per_second",
            "gauge",
            "Decode speed since start, all sequences of a step counted (tokens / decode time).",
            &one(format!("{:.3}", rate(s.decode_tokens, s.decode_seconds))),
        );
        metric(
            "bitnet_trace_replays_total",
            "counter",
            "Decode steps replayed from captured traces.",
            &one(s.trace_replays.to_string()),
        );
        out
    }
}
