//! `bitnet bench`: prefill and decode speed of the real runtime path (paged cache, captured
//! decode traces replayed, sampling on the device), peak RSS, and how close decode gets to the
//! machine's memory bandwidth, measured in the same process.

use std::time::Instant;

use anyhow::Context;
use bitnet_layers::BitNetModel;
use bitnet_runtime::{Event, Generator, GeneratorConfig, Request, SamplingParams};
use clap::Args;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Prompt tokens (random ids).
    #[arg(long, default_value_t = 128)]
    pub prompt_len: usize,
    /// Tokens generated after the prompt.
    #[arg(long, default_value_t = 64)]
    pub gen_len: usize,
    /// Repetitions (medians are reported, with min and max).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// One JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Bytes of the bandwidth test's array (MiB).
    #[arg(long, default_value_t = 512)]
    pub bandwidth_mib: usize,
    /// Time every op (host backend): a per-op table on stderr for decode (per token, over all
    /// repetitions) and prefill (per prompt, over repetitions after the first, whose prefill
    /// step also runs and captures the decode trace), and `op_profile` in the JSON. The
    /// prefill step also decodes the first generated token, so its table holds one decode
    /// step's ops too (a second lm_head, one attention decode per layer).
    #[arg(long)]
    pub profile_ops: bool,
}

/// The op profile summed over several phases: name, calls, seconds.
#[derive(Default)]
struct ProfileSum(Vec<(String, u64, f64)>);

impl ProfileSum {
    fn add(&mut self, ops: Vec<ttnn::OpTime>) {
        for op in ops {
            match self.0.iter_mut().find(|e| e.0 == op.name) {
                Some(e) => {
                    e.1 += op.calls;
                    e.2 += op.total.as_secs_f64();
                }
                None => self.0.push((op.name, op.calls, op.total.as_secs_f64())),
            }
        }
    }

    /// Rows per `unit` (token or prompt), most expensive first: name, calls, ms, share.
    fn rows(&self, units: usize) -> Vec<(String, f64, f64, f64)> {
        let n = units.max(1) as f64;
        let total: f64 = self.0.iter().map(|e| e.2).sum();
        let mut rows: Vec<_> = self
            .0
            .iter()
            .map(|(name, calls, secs)| {
                let share = if total > 0.0 { secs / total } else { 0.0 };
                (name.clone(), *calls as f64 / n, secs * 1e3 / n, share)
            })
            .collect();
        rows.sort_by(|a, b| b.2.total_cmp(&a.2));
        rows
    }

    fn print(&self, title: &str, unit: &str, units: usize) {
        let rows = self.rows(units);
        let total: f64 = rows.iter().map(|r| r.2).sum();
        eprintln!("{title}: {total:.2} ms per {unit} in ops ({units} {unit}s)");
        eprintln!(
            "{:>10} {:>6} {:>7}  op",
            format!("ms/{unit}"),
            "share",
            "calls"
        );
        for (name, calls, ms, share) in rows {
            eprintln!("{ms:>10.3} {:>5.1}% {calls:>7.1}  {name}", share * 100.0);
        }
    }

    fn json(&self, units: usize) -> serde_json::Value {
        self.rows(units)
            .into_iter()
            .map(|(name, calls, ms, share)| {
                serde_json::json!({"op": name, "calls": calls, "ms": ms, "share": share})
            })
            .collect()
    }
}

/// Read bandwidth of this machine with `threads` threads (STREAM-like sum over `bytes`), GB/s:
/// the best of five passes.
pub fn read_bandwidth(threads: usize, bytes: usize) -> f64 {
    let v: Vec<u64> = (0..bytes / 8).map(|i| i as u64).collect();
    let threads = threads.max(1);
    let chunk = v.len() / threads;
    let mut best = 0f64;
    for _ in 0..5 {
        let t = Instant::now();
        let sum = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|k| {
                    let part = &v[k * chunk..(k + 1) * chunk];
                    s.spawn(move || {
                        let mut acc = [0u64; 8];
                        for c in part.chunks_exact(8) {
                            for i in 0..8 {
                                acc[i] = acc[i].wrapping_add(c[i]);
                            }
                        }
                        acc.iter().fold(0u64, |a, b| a.wrapping_add(*b))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(0))
                .fold(0u64, u64::wrapping_add)
        });
        std::hint::black_box(sum);
        best = best.max((chunk * threads * 8) as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    best
}

fn status_kib(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Peak resident memory of this process (VmHWM), bytes.
pub fn peak_rss_bytes() -> u64 {
    status_kib("VmHWM:").unwrap_or(0) * 1024
}

/// Resets VmHWM to the current RSS (Linux `clear_refs` 5), so a later peak covers only what
/// follows.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

fn spread(mut v: Vec<f64>) -> Spread {
    v.sort_by(f64::total_cmp);
    Spread {
        median: v[v.len() / 2],
        min: v[0],
        max: v[v.len() - 1],
    }
}

/// The memory bandwidth decode is measured against, GB/s.
#[derive(Clone, Copy, Debug)]
pub enum Bandwidth {
    /// This machine's read bandwidth, measured in-process (host backend).
    HostRead(f64),
    /// The card's peak DRAM bandwidth from its specification (Tenstorrent backend).
    DevicePeak(f64),
}

impl Bandwidth {
    fn gb_s(self) -> f64 {
        match self {
            Self::HostRead(v) | Self::DevicePeak(v) => v,
        }
    }

    fn source(self) -> &'static str {
        match self {
            Self::HostRead(_) => "host_read_test",
            Self::DevicePeak(_) => "device_dram_peak",
        }
    }
}

/// Runs the benchmark on an already loaded model.
///
/// On the host, the read bandwidth is measured again right after each repetition's decode and
/// that repetition's fraction of the bandwidth limit uses it: on a shared machine the bandwidth
/// available drifts by a quarter within minutes (13.8-21.1 GB/s in consecutive runs here), so a
/// figure from before loading says more about the neighbours than about the decode. The test's
/// buffer is freed before the RSS peak is reset, and the peak before each test is kept: the
/// reported peak is the model's, not the test's.
pub fn run(
    model: &BitNetModel,
    a: &BenchArgs,
    load_seconds: f64,
    bw: Bandwidth,
) -> anyhow::Result<()> {
    let threads = model.device().num_threads();
    let mut g = Generator::new(
        model,
        GeneratorConfig {
            max_batch: 1,
            // The repetitions' random prompts share no prefix, so the cache would only keep
            // each finished prompt's blocks and make the next repetition touch fresh KV pages:
            // the RSS peak would grow by one request's KV (29.5 MB) per repetition. Without it
            // every repetition reuses the first one's blocks, as llama-bench reuses its cache.
            prefix_sharing: false,
            ..Default::default()
        },
    )?;
    let vocab = model.config().vocab_size as u64;
    let (mut prefill, mut decode, mut captures) = (Vec::new(), Vec::new(), 0);
    let weight_bytes = model.weight_bytes_per_token();
    // The bandwidth before loading, then one per repetition (see above).
    let mut bandwidths = vec![bw.gb_s()];
    let mut fractions = Vec::new();
    let mut peak_before_tests = 0u64;
    let device = model.device();
    if a.profile_ops {
        device
            .set_op_profiling(true)
            .context("--profile-ops needs the host backend")?;
    }
    let (mut prefill_ops, mut prefill_profiled) = (ProfileSum::default(), 0);
    let (mut decode_ops, mut decode_profiled) = (ProfileSum::default(), 0);
    for rep in 0..a.reps.max(1) {
        // Random prompt ids (deterministic per repetition; speed does not depend on them).
        let mut s = 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(rep as u64 + 1);
        let prompt: Vec<u32> = (0..a.prompt_len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s % vocab) as u32
            })
            .collect();
        let before = g.stats();
        let id = g.add_request(Request {
            prompt_ids: prompt,
            max_new_tokens: a.gen_len,
            sampling: SamplingParams::greedy(),
            stop_ids: vec![],
        })?;
        // Step 1: the prefill (and, the first time, the decode trace's eager run and capture).
        device.reset_op_profile();
        let mut tokens = 0;
        for e in g.step()? {
            if matches!(e, Event::Token { seq, .. } if seq == id) {
                tokens += 1;
            }
        }
        let mid = g.stats();
        if a.profile_ops && (rep > 0 || a.reps <= 1) {
            prefill_ops.add(device.op_profile());
            prefill_profiled += 1;
        }
        eprintln!(
            "rep {}: prefill {:.1} tok/s",
            rep + 1,
            a.prompt_len as f64 / (mid.prefill_seconds - before.prefill_seconds)
        );
        prefill
            .push(a.prompt_len as f64 / (mid.prefill_seconds - before.prefill_seconds).max(1e-9));
        // Steady decode: replayed steps only.
        device.reset_op_profile();
        let t = Instant::now();
        let mut decoded = 0;
        while g.has_work() {
            for e in g.step()? {
                if matches!(e, Event::Token { seq, .. } if seq == id) {
                    decoded += 1;
                }
            }
        }
        let secs = t.elapsed().as_secs_f64();
        if a.profile_ops {
            decode_ops.add(device.op_profile());
            decode_profiled += decoded;
        }
        let rate = decoded as f64 / secs.max(1e-9);
        eprintln!(
            "rep {}: decode {rate:.1} tok/s ({} tokens after the first {tokens})",
            rep + 1,
            decoded
        );
        decode.push(rate);
        captures = g.stats().trace_captures;
        let rep_bw = match bw {
            Bandwidth::HostRead(_) => {
                peak_before_tests = peak_before_tests.max(peak_rss_bytes());
                let v = read_bandwidth(threads, a.bandwidth_mib << 20);
                reset_peak_rss();
                eprintln!("rep {}: read bandwidth {v:.1} GB/s", rep + 1);
                v
            }
            Bandwidth::DevicePeak(v) => v,
        };
        bandwidths.push(rep_bw);
        fractions.push(weight_bytes as f64 * rate / (rep_bw * 1e9));
    }
    let prefill = spread(prefill);
    let decode = spread(decode);
    let ms_per_token = 1000.0 / decode.median;
    let fraction = spread(fractions);
    let bandwidth = spread(bandwidths);
    let peak_rss = peak_before_tests.max(peak_rss_bytes());
    if a.profile_ops {
        device.set_op_profiling(false)?;
        prefill_ops.print("prefill op profile", "prompt", prefill_profiled);
        decode_ops.print("decode op profile", "token", decode_profiled);
    }
    if a.json {
        let mut v = serde_json::json!({
            "prefill_tok_s": prefill.median,
            "prefill_tok_s_spread": prefill,
            "decode_tok_s": decode,
            "ms_per_token": ms_per_token,
            "peak_rss_bytes": peak_rss,
            "weight_bytes_per_token": weight_bytes,
            "bandwidth_gb_s": bandwidth.median,
            "bandwidth_gb_s_spread": bandwidth,
            "bandwidth_source": bw.source(),
            "backend": model.device().backend().name(),
            "bandwidth_fraction": fraction.median,
            "bandwidth_fraction_spread": fraction,
            "threads": threads,
            "prompt_len": a.prompt_len,
            "gen_len": a.gen_len,
            "reps": a.reps,
            "load_seconds": load_seconds,
            "trace_captures": captures,
            "lm_head_dtype": format!("{:?}", model.plan().weights.lm_head),
            "kv_cache_dtype": format!("{:?}", model.plan().weights.kv_cache),
            "host_isa": model.device().host_isa().map(|i| format!("{i:?}")),
        });
        if a.profile_ops {
            v["op_profile"] = serde_json::json!({
                "prefill_per_prompt": prefill_ops.json(prefill_profiled),
                "decode_per_token": decode_ops.json(decode_profiled),
            });
        }
        println!("{v}");
    } else {
        println!(
            "threads {threads}: prefill {:.1} tok/s (min {:.1}, max {:.1}); decode {:.1} tok/s (min {:.1}, max {:.1}), {ms_per_token:.2} ms/token",
            prefill.median, prefill.min, prefill.max, decode.median, decode.min, decode.max
        );
        println!(
            "weights {:.1} MB/token; bandwidth {:.1} GB/s ({}, min {:.1}, max {:.1}); {:.0} % of the bandwidth limit (min {:.0}, max {:.0}); peak RSS {:.2} GB; load {load_seconds:.1} s",
            weight_bytes as f64 / 1e6,
            bandwidth.median,
            bw.source(),
            bandwidth.min,
            bandwidth.max,
            fraction.median * 100.0,
            fraction.min * 100.0,
            fraction.max * 100.0,
            peak_rss as f64 / 1e9
        );
    }
    Ok(())
}

/// Measures bandwidth first (then frees it and resets the RSS peak), then loads the model.
pub fn measure_then_load(
    threads: usize,
    bandwidth_mib: usize,
    load: impl FnOnce() -> anyhow::Result<BitNetModel>,
) -> anyhow::Result<(BitNetModel, f64, f64)> {
    eprintln!("measuring read bandwidth with {threads} thread(s) over {bandwidth_mib} MiB");
    let bandwidth = read_bandwidth(threads, bandwidth_mib << 20);
    let (model, secs) = load_timed(load)?;
    Ok((model, secs, bandwidth))
}

/// Resets the RSS peak, then loads the model; returns it and the load time in seconds.
pub fn load_timed(
    load: impl FnOnce() -> anyhow::Result<BitNetModel>,
) -> anyhow::Result<(BitNetModel, f64)> {
    reset_peak_rss();
    let t = Instant::now();
    let model = load().context("loading the model")?;
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "loaded in {secs:.1} s; RSS {:.2} GB (peak while loading {:.2} GB)",
        status_kib("VmRSS:").unwrap_or(0) as f64 * 1024.0 / 1e9,
        peak_rss_bytes() as f64 / 1e9
    );
    Ok((model, secs))
}
