//! `bitnet generate` and `bitnet chat`: requests in, streamed text or JSON out. The work is the
//! runtime's (`Generator`, `Tokenizer`, chat formatting); this module only wires flags to it.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};
use bitnet_layers::BitNetModel;
use bitnet_runtime::chat::{Conversation, Message, encode_chat};
use bitnet_runtime::tokenizer::Tokenizer;
use bitnet_runtime::{
    Event, FinishReason, Generator, GeneratorConfig, GeneratorStats, Request, SamplingParams, SeqId,
};
use clap::Args;
use serde::Deserialize;

/// Sampling and length flags shared by `generate` and `chat`.
#[derive(Debug, Args)]
pub struct GenOpts {
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Sampling temperature (0: greedy, the default).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub temperature: f32,
    /// Sample from the top k tokens (0: all 32 device candidates).
    #[arg(long, default_value_t = 0)]
    pub top_k: u32,
    /// Nucleus sampling threshold.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u32,
    /// Report prefill/decode speed, trace captures and replays, KV blocks and device memory.
    #[arg(long)]
    pub stats: bool,
    #[command(flatten)]
    pub engine: EngineOpts,
}

/// Generator flags shared by `generate`, `chat` and `serve`.
#[derive(Debug, Args)]
pub struct EngineOpts {
    /// KV cache memory budget, MiB.
    #[arg(long, default_value_t = 1024)]
    pub kv_budget_mb: u64,
    /// Run every decode step eagerly instead of replaying captured traces.
    #[arg(long)]
    pub no_trace: bool,
}

impl EngineOpts {
    pub fn generator_config(&self, max_batch: usize) -> GeneratorConfig {
        GeneratorConfig {
            max_batch,
            kv_budget_bytes: self.kv_budget_mb << 20,
            use_traces: !self.no_trace,
            ..Default::default()
        }
    }
}

impl GenOpts {
    pub fn sampling(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
        }
    }

    pub fn generator_config(&self, max_batch: usize) -> GeneratorConfig {
        self.engine.generator_config(max_batch)
    }
}

/// The stats object of `--json` output.
pub fn stats_json(s: &GeneratorStats) -> serde_json::Value {
    serde_json::json!({
        "prefill_tok_s": s.prefill_tok_s(),
        "decode_tok_s": s.decode_tok_s(),
        "trace_captures": s.trace_captures,
        "trace_replays": s.trace_replays,
        "kv_blocks_peak": s.kv_blocks_peak,
        "dram_bytes_peak": s.dram_bytes_peak,
        "l1_bytes_peak": s.l1_bytes_peak,
        "prefill_tokens": s.prefill_tokens,
        "decode_tokens": s.decode_tokens,
        "input_refreshes": s.input_refreshes,
        "kv_blocks_shared": s.kv_blocks_shared,
        "preemptions": s.preemptions,
    })
}

pub fn print_stats(s: &GeneratorStats) {
    eprintln!(
        "prefill {:.1} tok/s ({} tokens), decode {:.1} tok/s ({} tokens), trace captures {}, replays {}, KV blocks peak {}, DRAM peak {} B, L1 peak {} B",
        s.prefill_tok_s(),
        s.prefill_tokens,
        s.decode_tok_s(),
        s.decode_tokens,
        s.trace_captures,
        s.trace_replays,
        s.kv_blocks_peak,
        s.dram_bytes_peak,
        s.l1_bytes_peak
    );
}

/// The tokenizer: `--tokenizer`, else the model directory's `tokenizer.json`.
pub fn load_tokenizer(
    model_dir: &std::path::Path,
    path: Option<&PathBuf>,
) -> anyhow::Result<Tokenizer> {
    Ok(match path {
        Some(p) => Tokenizer::from_file(p)?,
        None => Tokenizer::from_model_dir(model_dir)
            .context("the model has no tokenizer.json; pass --tokenizer FILE, or --ids")?,
    })
}

/// Stop ids: the config's eos ids and, with a tokenizer, `<|eot_id|>` and `<|end_of_text|>`.
pub fn stop_ids(model: &BitNetModel, tok: Option<&Tokenizer>) -> Vec<u32> {
    let eos = &model.config().eos_token_ids;
    match tok {
        Some(t) => t.stop_ids(eos),
        None => eos.clone(),
    }
}

fn finish_str(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

/// One request, streamed to stdout as text (or collected for `--json`).
pub fn generate_one(
    model: &BitNetModel,
    tok: Option<&Tokenizer>,
    prompt_ids: Vec<u32>,
    opts: &GenOpts,
    json: bool,
) -> anyhow::Result<()> {
    let mut g = Generator::new(model, opts.generator_config(1))?;
    let id = g.add_request(Request {
        prompt_ids: prompt_ids.clone(),
        max_new_tokens: opts.max_new_tokens,
        sampling: opts.sampling(),
        stop_ids: stop_ids(model, tok),
    })?;
    let mut ids = Vec::new();
    let mut finish = None;
    let mut stream = tok.map(Tokenizer::stream_decoder);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    while g.has_work() {
        for e in g.step()? {
            match e {
                Event::Token { seq, token } if seq == id => {
                    ids.push(token);
                    if !json {
                        match stream.as_mut() {
                            Some(s) => {
                                if let Some(text) = s.push(token)? {
                                    out.write_all(text.as_bytes())?;
                                    out.flush()?;
                                }
                            }
                            None => {
                                write!(out, "{token} ")?;
                                out.flush()?;
                            }
                        }
                    }
                }
                Event::Finished { reason, .. } => finish = Some(reason),
                Event::Failed { error, .. } => bail!("generation failed: {error}"),
                Event::Token { .. } => {}
            }
        }
    }
    let stats = g.stats();
    if json {
        let mut v = serde_json::json!({
            "prompt_ids": prompt_ids,
            "ids": ids,
            "finish_reason": finish.map(finish_str),
            "stats": stats_json(&stats),
        });
        if let Some(t) = tok {
            v["text"] = t.decode(&ids)?.into();
        }
        writeln!(out, "{v}")?;
    } else {
        if let Some(rest) = stream.as_mut().and_then(|s| s.finish()) {
            out.write_all(rest.as_bytes())?;
        }
        writeln!(out)?;
        if opts.stats {
            print_stats(&stats);
        }
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchLine {
    ids: Option<Vec<u32>>,
    prompt: Option<String>,
    max_new_tokens: Option<usize>,
}

/// One batch-file line: its prompt ids and optional `max_new_tokens`.
fn parse_line(
    line: &str,
    n: usize,
    tok: Option<&Tokenizer>,
) -> Result<(Vec<u32>, Option<usize>), String> {
    let l: BatchLine = serde_json::from_str(line).map_err(|e| format!("line {n}: {e}"))?;
    let ids = match (l.ids, l.prompt) {
        (Some(ids), None) => ids,
        (None, Some(p)) => match tok {
            Some(t) => t.encode(&p, true).map_err(|e| format!("line {n}: {e}"))?,
            None => {
                return Err(format!(
                    "line {n}: \"prompt\" needs a tokenizer (use \"ids\" or --tokenizer)"
                ));
            }
        },
        _ => {
            return Err(format!(
                "line {n}: give exactly one of \"ids\" and \"prompt\""
            ));
        }
    };
    Ok((ids, l.max_new_tokens))
}

/// `--batch-file`: every valid line is decoded together in one batch; one JSON line out per
/// input line, in input order (a bad line gets `{"index", "error"}` and the rest go on).
pub fn generate_batch(
    model: &BitNetModel,
    tok: Option<&Tokenizer>,
    path: &std::path::Path,
    opts: &GenOpts,
    max_batch: usize,
) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut g = Generator::new(model, opts.generator_config(max_batch))?;
    let stops = stop_ids(model, tok);
    // Per input line: its sequence, or the error that stopped it.
    let mut lines: Vec<(Option<SeqId>, Vec<u32>, Option<String>)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let added = parse_line(line, i + 1, tok).and_then(|(ids, max_new)| {
            let req = Request {
                prompt_ids: ids.clone(),
                max_new_tokens: max_new.unwrap_or(opts.max_new_tokens),
                sampling: opts.sampling(),
                stop_ids: stops.clone(),
            };
            g.add_request(req)
                .map(|seq| (seq, ids))
                .map_err(|e| format!("line {}: {e}", i + 1))
        });
        lines.push(match added {
            Ok((seq, ids)) => (Some(seq), ids, None),
            Err(e) => (None, Vec::new(), Some(e)),
        });
    }
    let mut tokens: HashMap<SeqId, Vec<u32>> = HashMap::new();
    let mut finish: HashMap<SeqId, Result<FinishReason, String>> = HashMap::new();
    for e in g.run()? {
        match e {
            Event::Token { seq, token } => tokens.entry(seq).or_default().push(token),
            Event::Finished { seq, reason } => {
                finish.insert(seq, Ok(reason));
            }
            Event::Failed { seq, error } => {
                finish.insert(seq, Err(error));
            }
        }
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for (index, (seq, prompt_ids, err)) in lines.into_iter().enumerate() {
        let v = match (seq, err) {
            (Some(seq), None) => {
                let ids = tokens.remove(&seq).unwrap_or_default();
                let mut v =
                    serde_json::json!({ "index": index, "prompt_ids": prompt_ids, "ids": ids });
                match finish.remove(&seq) {
                    Some(Ok(r)) => v["finish_reason"] = finish_str(r).into(),
                    Some(Err(e)) => v["error"] = e.into(),
                    None => {}
                }
                if let Some(t) = tok {
                    v["text"] = t.decode(&ids)?.into();
                }
                v
            }
            (_, Some(e)) => serde_json::json!({ "index": index, "error": e }),
            (None, None) => unreachable!("a line has a sequence or an error"),
        };
        writeln!(out, "{v}")?;
    }
    if opts.stats {
        print_stats(&g.stats());
    }
    Ok(())
}

/// `bitnet chat`: a multi-turn REPL on stdin/stdout. `/reset` forgets the exchange, `/exit`
/// (or end of input) quits. Earlier turns stay in the KV cache's prefix cache, so each new
/// turn only prefills what is new.
pub fn chat(
    model: &BitNetModel,
    tok: &Tokenizer,
    system: Option<&str>,
    opts: &GenOpts,
) -> anyhow::Result<()> {
    let mut conv = match system {
        Some(s) => Conversation::with_system(s),
        None => Conversation::new(),
    };
    let mut g = Generator::new(model, opts.generator_config(1))?;
    let stops = stop_ids(model, Some(tok));
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut lines = stdin.lock().lines();
    loop {
        write!(out, "> ")?;
        out.flush()?;
        let Some(line) = lines.next() else { break };
        let line = line?;
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                conv.clear();
                writeln!(out, "(conversation reset)")?;
                continue;
            }
            _ => {}
        }
        conv.push_user(line.trim());
        let prompt = encode_chat(tok, conv.messages(), true)?;
        let id = match g.add_request(Request {
            prompt_ids: prompt,
            max_new_tokens: opts.max_new_tokens,
            sampling: opts.sampling(),
            stop_ids: stops.clone(),
        }) {
            Ok(id) => id,
            Err(e) => {
                // A turn that cannot run (e.g. the context is full) ends only that turn.
                writeln!(out, "error: {e}")?;
                conv.clear();
                continue;
            }
        };
        let mut stream = tok.stream_decoder();
        let mut reply = Vec::new();
        while g.has_work() {
            for e in g.step()? {
                match e {
                    Event::Token { seq, token } if seq == id && !stops.contains(&token) => {
                        reply.push(token);
                        if let Some(t) = stream.push(token)? {
                            out.write_all(t.as_bytes())?;
                            out.flush()?;
                        }
                    }
                    Event::Failed { error, .. } => writeln!(out, "\nerror: {error}")?,
                    _ => {}
                }
            }
        }
        if let Some(rest) = stream.finish() {
            out.write_all(rest.as_bytes())?;
        }
        writeln!(out)?;
        conv.push(Message::assistant(tok.decode(&reply)?));
        if opts.stats {
            print_stats(&g.stats());
        }
    }
    Ok(())
}
