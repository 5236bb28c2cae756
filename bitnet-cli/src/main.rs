//! `bitnet`: the command-line front end. Each subcommand turns validated arguments into library
//! objects and calls them; generation, tokenization, caching and scheduling live in the
//! libraries.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod bench;
mod run;
mod serve;

use anyhow::{Context, bail};
use bitnet_layers::memory_plan::parse_dtype;
use bitnet_layers::{
    BitNetConfig, BitNetModel, KvCache, ModelOptions, PlanOptions, PlanOverrides, PrefillOptions,
};
use bitnet_runtime::chat::{Message, encode_chat};
use bitnet_runtime::hub::{ResolveOptions, resolve_model};
use clap::{Args, Parser, Subcommand, ValueEnum};
use ttnn::{BackendKind, ChipSpec, Device, DeviceSpec};

#[derive(Debug, Parser)]
#[command(
    name = "bitnet",
    version,
    about = "BitNet b1.58 inference on Tenstorrent hardware (TT-NN) or the host CPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate text after a prompt (text or token ids), streamed; or a batch of requests.
    Generate(GenerateArgs),
    /// An interactive multi-turn chat that streams its replies.
    Chat(ChatArgs),
    /// Write the logits of one prefill to a safetensors file (tensor `logits`, float32).
    Logits(LogitsArgs),
    /// Measure prefill and decode speed, peak memory and the share of memory bandwidth reached.
    Bench(BenchCmd),
    /// Serve the model over HTTP with the OpenAI API (chat and text completions, streaming),
    /// decoding concurrent requests together.
    Serve(serve::ServeArgs),
    /// Summarise a model; with --plan, print its memory plan.
    Info(InfoArgs),
    /// Describe the devices this build can open (the host backend models a Tenstorrent chip)
    /// and where the Tenstorrent backend's library would be found.
    Devices(DevicesArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Backend {
    /// The CPU, modelling a Tenstorrent chip.
    Host,
    /// A Tenstorrent card through TT-NN: loads the shim libttnn_c.so (--tt-lib, else
    /// $TTNN_C_LIB, else next to this executable, else under $TT_METAL_HOME).
    Tt,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Chip {
    /// Wormhole n150.
    N150,
    /// Blackhole p150a.
    P150a,
}

#[derive(Clone, Debug, Args)]
struct DeviceOpts {
    /// Backend that runs the ops.
    #[arg(long, value_enum, default_value = "host")]
    device: Backend,
    /// Chip the host backend models (memory sizes and core grid); with --device tt, the card's
    /// figures used in reports (the core grid is the card's own).
    #[arg(long, value_enum, default_value = "n150")]
    chip: Chip,
    /// Host kernel threads (default: one per physical core; host backend only).
    #[arg(long)]
    threads: Option<usize>,
    /// The TT-NN shim library (libttnn_c.so) for --device tt; the only path tried when given.
    #[arg(long, value_name = "PATH")]
    tt_lib: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct DevicesArgs {
    /// The TT-NN shim library to report on (as --tt-lib of the other commands).
    #[arg(long, value_name = "PATH")]
    tt_lib: Option<PathBuf>,
}

#[derive(Clone, Debug, Args)]
struct ModelOpts {
    /// Model: a directory (config.json + safetensors weights), or a Hugging Face repo id such
    /// as microsoft/bitnet-b1.58-2B-4T (downloaded into the HF cache; HF_HUB_OFFLINE=1 or
    /// --offline uses the cache only).
    #[arg(long)]
    model: String,
    /// Use only the local Hugging Face cache.
    #[arg(long)]
    offline: bool,
    /// tokenizer.json to use instead of the model directory's.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// lm_head weight dtype: bf16, bfp8_b or bfp4_b.
    #[arg(long, default_value = "bfp8_b")]
    lm_head_dtype: String,
    /// KV cache dtype: f32, bf16 or bfp8_b (default: f32 on the host, bf16 on a TT device).
    #[arg(long)]
    kv_dtype: Option<String>,
    /// Memory-plan overrides (TOML; see `bitnet info --plan`).
    #[arg(long)]
    plan_overrides: Option<PathBuf>,
    /// Longest sequence to support (default: the model's max_position_embeddings).
    #[arg(long)]
    max_seq_len: Option<usize>,
    #[command(flatten)]
    device: DeviceOpts,
}

#[derive(Debug, Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelOpts,
    /// Prompt text (tokenized with the model's tokenizer; BOS prepended).
    #[arg(long, conflicts_with_all = ["ids", "batch_file"])]
    prompt: Option<String>,
    /// Prompt token ids, comma-separated.
    #[arg(long, value_delimiter = ',', conflicts_with = "batch_file")]
    ids: Option<Vec<u32>>,
    /// One request per line: {"ids": [...]} or {"prompt": "..."}, optional "max_new_tokens";
    /// all decoded together; JSON lines out in input order.
    #[arg(long)]
    batch_file: Option<PathBuf>,
    /// Apply the chat format to --prompt (a user turn, then "Assistant: ").
    #[arg(long, requires = "prompt")]
    chat: bool,
    /// A system turn before the user's (with --chat).
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// Most sequences decoded together (batch file).
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    #[command(flatten)]
    gen_opts: run::GenOpts,
    /// Print one JSON object: {"prompt_ids", "ids", "text", "finish_reason", "stats"}.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ChatArgs {
    #[command(flatten)]
    model: ModelOpts,
    /// A system turn that starts the conversation.
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    gen_opts: run::GenOpts,
}

#[derive(Debug, Args)]
struct LogitsArgs {
    #[command(flatten)]
    model: ModelOpts,
    /// Token ids, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    ids: Vec<u32>,
    /// Logits for every position ([T, V]) instead of the last one ([V]).
    #[arg(long)]
    all_positions: bool,
    /// Output file.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, Args)]
struct BenchCmd {
    #[command(flatten)]
    model: ModelOpts,
    #[command(flatten)]
    bench: bench::BenchArgs,
}

#[derive(Debug, Args)]
struct InfoArgs {
    #[command(flatten)]
    model: ModelOpts,
    /// Print the memory plan (op, output shape, bytes, buffer, layout, dtype) and totals.
    #[arg(long)]
    plan: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

fn chip_spec(c: Chip) -> ChipSpec {
    match c {
        Chip::N150 => ChipSpec::wormhole_n150(),
        Chip::P150a => ChipSpec::blackhole_p150a(),
    }
}

fn open_device(d: &DeviceOpts) -> anyhow::Result<Device> {
    let mut spec = DeviceSpec::default().with_chip(chip_spec(d.chip));
    match d.device {
        Backend::Host => {
            if d.tt_lib.is_some() {
                bail!("--tt-lib applies to --device tt only");
            }
            if let Some(t) = d.threads {
                spec = spec.with_threads(t);
            }
            Device::open(spec).context("opening the host device")
        }
        Backend::Tt => {
            spec = spec.with_backend(BackendKind::Tenstorrent);
            if let Some(p) = &d.tt_lib {
                spec = spec.with_ttnn_lib(p);
            }
            Device::open(spec).context("opening the Tenstorrent device (--device tt)")
        }
    }
}

fn plan_options(m: &ModelOpts, max_batch: usize) -> anyhow::Result<PlanOptions> {
    let overrides = match &m.plan_overrides {
        Some(p) => PlanOverrides::from_file(p)?,
        None => PlanOverrides::default(),
    };
    Ok(PlanOptions {
        lm_head: parse_dtype("--lm-head-dtype", &m.lm_head_dtype)?,
        kv_cache: m
            .kv_dtype
            .as_deref()
            .map(|s| parse_dtype("--kv-dtype", s))
            .transpose()?,
        max_batch,
        overrides,
        ..Default::default()
    })
}

/// The model directory: `--model` as given, or resolved from the Hugging Face cache/hub.
fn model_dir(m: &ModelOpts) -> anyhow::Result<PathBuf> {
    let opts = ResolveOptions {
        offline: m.offline,
        progress: true,
        ..Default::default()
    };
    Ok(resolve_model(&m.model, &opts)?)
}

fn load_model(m: &ModelOpts, max_batch: usize) -> anyhow::Result<(BitNetModel, PathBuf)> {
    let dir = model_dir(m)?;
    let model = load_model_from(&dir, m, max_batch)?;
    Ok((model, dir))
}

/// Opens the device and loads the model in `dir` (already resolved).
fn load_model_from(dir: &Path, m: &ModelOpts, max_batch: usize) -> anyhow::Result<BitNetModel> {
    let device = open_device(&m.device)?;
    let opts = ModelOptions {
        plan: plan_options(m, max_batch)?,
        max_seq_len: m.max_seq_len,
    };
    let model = BitNetModel::load(dir, &device, &opts)
        .with_context(|| format!("loading {}", dir.display()))?;
    tune_allocator_for_inference();
    Ok(model)
}

fn generate(a: GenerateArgs) -> anyhow::Result<()> {
    let max_batch = if a.batch_file.is_some() {
        a.max_batch
    } else {
        1
    };
    let (model, dir) = load_model(&a.model, max_batch)?;
    // The tokenizer is needed for text in or out; --ids alone runs without one.
    let tok = match run::load_tokenizer(&dir, a.model.tokenizer.as_ref()) {
        Ok(t) => Some(t),
        Err(e) if a.prompt.is_some() => return Err(e),
        Err(_) => None,
    };
    if let Some(path) = &a.batch_file {
        return run::generate_batch(&model, tok.as_ref(), path, &a.gen_opts, max_batch);
    }
    let prompt_ids = match (&a.prompt, &a.ids) {
        (Some(p), _) => {
            let t = tok
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("--prompt needs a tokenizer"))?;
            if a.chat {
                let mut msgs = Vec::new();
                if let Some(s) = &a.system {
                    msgs.push(Message::system(s.clone()));
                }
                msgs.push(Message::user(p.clone()));
                encode_chat(t, &msgs, true)?
            } else {
                t.encode(p, true)?
            }
        }
        (None, Some(ids)) => ids.clone(),
        (None, None) => bail!("give --prompt, --ids or --batch-file"),
    };
    run::generate_one(&model, tok.as_ref(), prompt_ids, &a.gen_opts, a.json)
}

fn chat(a: ChatArgs) -> anyhow::Result<()> {
    let (model, dir) = load_model(&a.model, 1)?;
    let tok = run::load_tokenizer(&dir, a.model.tokenizer.as_ref())?;
    run::chat(&model, &tok, a.system.as_deref(), &a.gen_opts)
}

fn write_logits(path: &Path, shape: Vec<usize>, values: &[f32]) -> anyhow::Result<()> {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, &bytes)?;
    safetensors::tensor::serialize_to_file([("logits", view)], None, path)
        .with_context(|| format!("writing {}", path.display()))
}

fn logits(a: LogitsArgs) -> anyhow::Result<()> {
    let (model, _) = load_model(&a.model, 1)?;
    if a.ids.is_empty() {
        bail!("--ids needs at least one token id");
    }
    let bs = bitnet_runtime::simple::BLOCK_SIZE;
    let blocks = a.ids.len().div_ceil(bs);
    let cache = KvCache::allocate(
        model.device(),
        model.config(),
        blocks,
        bs,
        model.plan().weights.kv_cache,
    )?;
    let table: Vec<i32> = (0..blocks as i32).collect();
    let out = model.prefill(
        &a.ids,
        0,
        &cache,
        &table,
        PrefillOptions {
            all_logits: a.all_positions,
            hidden_states: false,
        },
    )?;
    let values = out.logits.to_vec::<f32>()?;
    let v = model.config().vocab_size;
    let shape = if a.all_positions {
        vec![a.ids.len(), v]
    } else {
        vec![v]
    };
    write_logits(&a.out, shape, &values)
}

fn info(a: InfoArgs) -> anyhow::Result<()> {
    let dir = model_dir(&a.model)?;
    let cfg = BitNetConfig::from_file(&dir.join("config.json"))?;
    let summary = serde_json::json!({
        "model": dir.display().to_string(),
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rope_theta": cfg.rope_theta,
        "rms_norm_eps": format!("{}", cfg.rms_norm_eps).parse::<f64>().unwrap_or(f64::NAN),
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "linear_class": format!("{:?}", cfg.linear_class),
        "quantization_mode": format!("{:?}", cfg.quantization_mode),
        "bos_token_id": cfg.bos_token_id,
        "eos_token_ids": cfg.eos_token_ids,
    });
    if a.json {
        println!("{summary}");
    } else {
        for (k, v) in summary.as_object().into_iter().flatten() {
            println!("{k:<24} {v}");
        }
    }
    if a.plan {
        let device = open_device(&a.model.device)?;
        let plan = bitnet_layers::MemoryPlan::new(&cfg, &device, &plan_options(&a.model, 32)?)?;
        println!();
        print!("{}", plan.table());
    }
    Ok(())
}

fn devices(a: &DevicesArgs) {
    for chip in [ChipSpec::wormhole_n150(), ChipSpec::blackhole_p150a()] {
        println!(
            "host backend modelling {}: grid {}x{}, L1 {} KiB/core, DRAM {} GiB in {} banks",
            chip.name,
            chip.grid.x,
            chip.grid.y,
            chip.l1_size_per_core / 1024,
            chip.dram_size >> 30,
            chip.dram_banks
        );
    }
    println!(
        "host threads: {} (one per physical core)",
        ttnn::physical_cores()
    );
    // Where `--device tt` would load the shim from, without loading it (opening a card is
    // `bitnet generate --device tt ...`).
    let env_lib = std::env::var_os("TTNN_C_LIB");
    let home = std::env::var_os("TT_METAL_HOME");
    let exe = std::env::current_exe().ok();
    let tried = ttnn::shim_candidates(
        a.tt_lib.as_deref(),
        env_lib.as_deref(),
        exe.as_deref(),
        home.as_deref(),
    );
    match tried.iter().find(|p| p.is_file()) {
        Some(p) => println!(
            "tenstorrent backend (--device tt): TT-NN shim {}",
            p.display()
        ),
        None => println!(
            "tenstorrent backend (--device tt): no TT-NN shim found (looked at {}); build it with TT_METAL_HOME set (ttnn-sys/README.md) or pass --tt-lib",
            tried
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Generate(a) => generate(a),
        Command::Chat(a) => chat(a),
        Command::Bench(a) => {
            let load = || Ok(load_model(&a.model, 1)?.0);
            let (model, load_seconds, bandwidth) = match a.model.device.device {
                Backend::Host => {
                    let threads = a.model.device.threads.unwrap_or_else(ttnn::physical_cores);
                    let (m, secs, gbs) =
                        bench::measure_then_load(threads, a.bench.bandwidth_mib, load)?;
                    (m, secs, bench::Bandwidth::HostRead(gbs))
                }
                // The weights stream from the card's DRAM: its peak is the limit.
                Backend::Tt => {
                    let (m, secs) = bench::load_timed(load)?;
                    let peak = chip_spec(a.model.device.chip).dram_bandwidth as f64 / 1e9;
                    (m, secs, bench::Bandwidth::DevicePeak(peak))
                }
            };
            bench::run(&model, &a.bench, load_seconds, bandwidth)
        }
        Command::Serve(a) => serve::serve(a),
        Command::Logits(a) => logits(a),
        Command::Info(a) => info(a),
        Command::Devices(a) => {
            devices(&a);
            Ok(())
        }
    }
}

/// A closed stdout (e.g. `bitnet ... | head`) ends the program quietly.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Large allocations (weights, KV cache, load-time scratch) straight from `mmap`, so memory
/// freed after loading goes back to the system at once. glibc otherwise raises its mmap
/// threshold after the first large free and serves later large blocks from the heap, where
/// freed scratch between live weights stays resident (about 35 MB on the 2B-4T shape).
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// After loading: the eager prefill allocates and frees activations of a few MiB per op; with
/// the load-time 1 MiB threshold each was a fresh `mmap` whose pages faulted in again (about a
/// tenth of prefill time). Serve them from the heap and keep freed heap memory for reuse:
/// measured on 2B-4T (2 threads), prefill 44-50 -> 54-58 tok/s for 18 MB more peak RSS.
fn tune_allocator_for_inference() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; glibc takes the arena lock (MT-safe).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 20);
    }
}

fn main() -> ExitCode {
    tune_allocator();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
