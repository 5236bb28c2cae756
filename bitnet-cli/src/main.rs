//! `bitnet`: the command-line front end. Each subcommand turns validated arguments into library
//! objects and calls them; generation, tokenization, caching and scheduling live in the
//! libraries.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use bitnet_layers::memory_plan::parse_dtype;
use bitnet_layers::{
    BitNetConfig, BitNetModel, KvCache, ModelOptions, PlanOptions, PlanOverrides, PrefillOptions,
};
use bitnet_runtime::{GenerateRequest, SamplingParams};
use clap::{Args, Parser, Subcommand, ValueEnum};
use ttnn::{ChipSpec, Device, DeviceSpec};

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
    /// Generate tokens after a prompt given as token ids.
    Generate(GenerateArgs),
    /// Write the logits of one prefill to a safetensors file (tensor `logits`, float32).
    Logits(LogitsArgs),
    /// Summarise a model; with --plan, print its memory plan.
    Info(InfoArgs),
    /// Describe the devices this build can open (the host backend models a Tenstorrent chip).
    Devices,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Backend {
    /// The CPU, modelling a Tenstorrent chip.
    Host,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Chip {
    /// Wormhole n150.
    N150,
    /// Blackhole p150a.
    P150a,
}

#[derive(Debug, Args)]
struct DeviceOpts {
    /// Backend that runs the ops.
    #[arg(long, value_enum, default_value = "host")]
    device: Backend,
    /// Chip the host backend models (memory sizes and core grid).
    #[arg(long, value_enum, default_value = "n150")]
    chip: Chip,
    /// Host kernel threads (default: one per physical core).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Debug, Args)]
struct ModelOpts {
    /// Model directory (config.json + model.safetensors or a sharded index).
    #[arg(long)]
    model: PathBuf,
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
    /// Prompt token ids, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    ids: Vec<u32>,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Sampling temperature (0: greedy, the default).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    temperature: f32,
    /// Sample from the top k tokens (0: all 32 device candidates).
    #[arg(long, default_value_t = 0)]
    top_k: u32,
    /// Nucleus sampling threshold.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u32,
    /// Print one JSON object: {"prompt_ids", "ids", "finish_reason", "stats"}.
    #[arg(long)]
    json: bool,
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

fn open_device(d: &DeviceOpts) -> anyhow::Result<Device> {
    let chip = match d.chip {
        Chip::N150 => ChipSpec::wormhole_n150(),
        Chip::P150a => ChipSpec::blackhole_p150a(),
    };
    let mut spec = DeviceSpec::default().with_chip(chip);
    match d.device {
        Backend::Host => {}
    }
    if let Some(t) = d.threads {
        spec = spec.with_threads(t);
    }
    Device::open(spec).context("opening the device")
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

fn load_model(m: &ModelOpts, max_batch: usize) -> anyhow::Result<BitNetModel> {
    let device = open_device(&m.device)?;
    let opts = ModelOptions {
        plan: plan_options(m, max_batch)?,
        max_seq_len: m.max_seq_len,
    };
    BitNetModel::load(&m.model, &device, &opts)
        .with_context(|| format!("loading {}", m.model.display()))
}

fn generate(a: GenerateArgs) -> anyhow::Result<()> {
    let model = load_model(&a.model, 1)?;
    let req = GenerateRequest {
        prompt_ids: a.ids.clone(),
        max_new_tokens: a.max_new_tokens,
        sampling: SamplingParams {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            seed: a.seed,
        },
        stop_ids: model.config().eos_token_ids.clone(),
    };
    let out = bitnet_runtime::generate(&model, &req)?;
    if a.json {
        let v = serde_json::json!({
            "prompt_ids": a.ids,
            "ids": out.ids,
            "finish_reason": out.finish_reason,
            "stats": out.stats,
        });
        println!("{v}");
    } else {
        let ids: Vec<String> = out.ids.iter().map(u32::to_string).collect();
        println!("{}", ids.join(" "));
        eprintln!(
            "prefill {:.1} tok/s, decode {:.1} tok/s, {} tokens ({:?})",
            out.stats.prefill_tok_s,
            out.stats.decode_tok_s,
            out.stats.generated_tokens,
            out.finish_reason
        );
    }
    Ok(())
}

fn write_logits(path: &Path, shape: Vec<usize>, values: &[f32]) -> anyhow::Result<()> {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, &bytes)?;
    safetensors::tensor::serialize_to_file([("logits", view)], None, path)
        .with_context(|| format!("writing {}", path.display()))
}

fn logits(a: LogitsArgs) -> anyhow::Result<()> {
    let model = load_model(&a.model, 1)?;
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
    let cfg = BitNetConfig::from_file(&a.model.model.join("config.json"))?;
    let summary = serde_json::json!({
        "model": a.model.model.display().to_string(),
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

fn devices() {
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
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Generate(a) => generate(a),
        Command::Logits(a) => logits(a),
        Command::Info(a) => info(a),
        Command::Devices => {
            devices();
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

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
