//! The memory plan: one table, op -> (MemoryConfig, dtype, ComputeKernelConfig), for the decode
//! step and for prefill, derived from one decision rule and validated against the device's L1
//! before the first op runs.
//!
//! The rule (tt_transformers' practice):
//! - an output that is small and consumed by the next op stays in L1, width-sharded;
//! - reductions, the SDPA output and large intermediates (the FFN's first projections, anything
//!   wider than twice the residual stream) go to DRAM;
//! - weights, the KV cache and the RoPE tables live in DRAM;
//! - ops whose output placement TT-NN fixes (the decode head split and concat, and the resharded
//!   SDPA output they need) are listed with that placement and cannot be overridden;
//! - prefill runs every activation through DRAM (its tensors grow with the prompt).
//!
//! Dtypes: activations f32 on the host backend (the numerics of the HF f32 reference) and
//! bf16 on a TT device; ternary layers `Ternary`; lm_head bf16 | bfp8_b (default) | bfp4_b; KV
//! cache bf16 (TT default) | bfp8_b | f32 (host default, see `PlanOptions::kv_cache`).
//! Everything can be overridden from TOML.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Deserialize;
use ttnn::{
    BufferType, ComputeKernelConfig, DRAM_MEMORY_CONFIG, DataType, Device, L1_MEMORY_CONFIG,
    Layout, MathFidelity, MemoryConfig, Shape, TILE_SIZE, TensorMemoryLayout,
};

use crate::config::BitNetConfig;
use crate::error::{Error, Result};

/// Which forward pass a plan entry belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Step {
    /// One token per sequence, up to `max_batch` sequences.
    Decode,
    /// A chunk of one sequence's prompt.
    Prefill,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Self::Decode => "decode",
            Self::Prefill => "prefill",
        }
    }
}

/// The ops of a forward step that produce a tensor, in execution order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PlanOp {
    Embedding,
    AttnNorm,
    Qkv,
    CreateHeads,
    Rotary,
    Sdpa,
    SdpaReshard,
    ConcatHeads,
    AttnSubNorm,
    OProj,
    AttnResidual,
    FfnNorm,
    Gate,
    Up,
    Relu2Mul,
    FfnSubNorm,
    Down,
    FfnResidual,
    FinalNorm,
    LmHead,
}

impl PlanOp {
    pub const ALL: [PlanOp; 20] = [
        Self::Embedding,
        Self::AttnNorm,
        Self::Qkv,
        Self::CreateHeads,
        Self::Rotary,
        Self::Sdpa,
        Self::SdpaReshard,
        Self::ConcatHeads,
        Self::AttnSubNorm,
        Self::OProj,
        Self::AttnResidual,
        Self::FfnNorm,
        Self::Gate,
        Self::Up,
        Self::Relu2Mul,
        Self::FfnSubNorm,
        Self::Down,
        Self::FfnResidual,
        Self::FinalNorm,
        Self::LmHead,
    ];

    /// The op's name in tables and TOML overrides.
    pub fn name(self) -> &'static str {
        match self {
            Self::Embedding => "embedding",
            Self::AttnNorm => "attn_norm",
            Self::Qkv => "qkv",
            Self::CreateHeads => "create_heads",
            Self::Rotary => "rotary",
            Self::Sdpa => "sdpa",
            Self::SdpaReshard => "sdpa_reshard",
            Self::ConcatHeads => "concat_heads",
            Self::AttnSubNorm => "attn_sub_norm",
            Self::OProj => "o_proj",
            Self::AttnResidual => "attn_residual",
            Self::FfnNorm => "ffn_norm",
            Self::Gate => "gate",
            Self::Up => "up",
            Self::Relu2Mul => "relu2_mul",
            Self::FfnSubNorm => "ffn_sub_norm",
            Self::Down => "down",
            Self::FfnResidual => "ffn_residual",
            Self::FinalNorm => "final_norm",
            Self::LmHead => "lm_head",
        }
    }

    fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.name() == s)
    }

    /// What the decision rule sees.
    fn role(self) -> Role {
        match self {
            Self::CreateHeads | Self::Rotary | Self::SdpaReshard | Self::ConcatHeads => {
                Role::FixedByOp
            }
            Self::Sdpa => Role::Dram,
            Self::LmHead => Role::Dram,
            _ => Role::Consumed,
        }
    }

    /// Inputs that are live while the op runs (besides the residual stream).
    fn inputs(self) -> &'static [PlanOp] {
        use PlanOp::*;
        match self {
            Embedding => &[],
            AttnNorm => &[],
            Qkv => &[AttnNorm],
            CreateHeads => &[Qkv],
            Rotary => &[CreateHeads],
            Sdpa => &[Rotary],
            SdpaReshard => &[Sdpa],
            ConcatHeads => &[SdpaReshard],
            AttnSubNorm => &[ConcatHeads],
            OProj => &[AttnSubNorm],
            AttnResidual => &[OProj],
            FfnNorm => &[],
            Gate => &[FfnNorm],
            Up => &[FfnNorm, Gate],
            Relu2Mul => &[Gate, Up],
            FfnSubNorm => &[Relu2Mul],
            Down => &[FfnSubNorm],
            FfnResidual => &[Down],
            FinalNorm => &[],
            LmHead => &[FinalNorm],
        }
    }

    /// The residual-stream tensor alive while the op runs.
    fn residual(self) -> Option<PlanOp> {
        use PlanOp::*;
        match self {
            Embedding => None,
            AttnNorm | Qkv | CreateHeads | Rotary | Sdpa | SdpaReshard | ConcatHeads
            | AttnSubNorm | OProj | AttnResidual => Some(Embedding),
            FfnNorm | Gate | Up | Relu2Mul | FfnSubNorm | Down | FfnResidual => Some(AttnResidual),
            FinalNorm | LmHead => Some(FfnResidual),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Placed by the rule: L1 width-sharded if small, else DRAM.
    Consumed,
    /// DRAM by rule (reductions, SDPA output, the logits).
    Dram,
    /// The op decides its output placement (TT-NN forces it).
    FixedByOp,
}

/// Memory config, dtype and compute config of one op's output.
#[derive(Clone, Debug, PartialEq)]
pub struct OpConfig {
    pub memory_config: MemoryConfig,
    pub dtype: DataType,
    pub compute_kernel_config: ComputeKernelConfig,
}

/// One row of the plan.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanEntry {
    pub step: Step,
    pub op: PlanOp,
    /// Logical output shapes (the head split has three).
    pub shapes: Vec<Shape>,
    pub config: OpConfig,
    /// Footprint of all outputs: bytes in all, and per core for L1.
    pub bytes: u64,
    pub bytes_per_core: u64,
    pub buffer_type: BufferType,
}

/// Weight and cache dtypes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WeightDtypes {
    /// The tied embedding used as the output projection: Bfloat16, Bfloat8B or Bfloat4B.
    pub lm_head: DataType,
    /// Paged KV cache: Bfloat16, Bfloat8B, or Float32 (host).
    pub kv_cache: DataType,
}

/// What a plan is derived for.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanOptions {
    /// Largest decode batch (the decode plan is validated at this size; ≤ 32 pads to 32 rows).
    pub max_batch: usize,
    /// Prefill chunk length the prefill plan is sized for.
    pub prefill_chunk: usize,
    /// The output projection's dtype (default bfp8_b).
    pub lm_head: DataType,
    /// The KV cache's dtype. Default: the device's compute dtype (f32 on the host backend, bf16
    /// on a TT device). On the host a bf16 cache moves the 2B-4T-format oracle's logits by a
    /// median 0.08 (max 0.64): the int8 activation quantizers amplify the rounding, as HF's own
    /// bf16 run shows (median 0.10 against its fp32 run), so the host keeps f32 to match the
    /// fp32 reference.
    pub kv_cache: Option<DataType>,
    /// Activation dtype; default the device's compute dtype (f32 host, bf16 TT).
    pub activation_dtype: Option<DataType>,
    /// Overrides from TOML.
    pub overrides: PlanOverrides,
}

impl Default for PlanOptions {
    fn default() -> Self {
        Self {
            max_batch: 32,
            prefill_chunk: 128,
            lm_head: DataType::Bfloat8B,
            kv_cache: None,
            activation_dtype: None,
            overrides: PlanOverrides::default(),
        }
    }
}

/// Overrides read from a TOML file:
///
/// ```toml
/// [weights]
/// lm_head = "bf16"          # bf16 | bfp8_b | bfp4_b
/// kv_cache = "bf16"         # bf16 | bfp8_b | f32
/// [activations]
/// dtype = "f32"             # f32 | bf16
/// [decode.qkv]              # or [prefill.<op>]; op names as in `bitnet info --plan`
/// memory = "dram"           # dram | l1 | l1_width_sharded | l1_height_sharded | l1_block_sharded
/// dtype = "bf16"
/// math_fidelity = "hifi2"   # lofi | hifi2 | hifi3 | hifi4
/// fp32_dest_acc_en = true
/// ```
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanOverrides {
    #[serde(default)]
    pub weights: WeightOverrides,
    #[serde(default)]
    pub activations: ActivationOverrides,
    #[serde(default)]
    pub decode: BTreeMap<String, OpOverride>,
    #[serde(default)]
    pub prefill: BTreeMap<String, OpOverride>,
}

/// `[weights]` of the override file.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightOverrides {
    pub lm_head: Option<String>,
    pub kv_cache: Option<String>,
}

/// `[activations]` of the override file.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivationOverrides {
    pub dtype: Option<String>,
}

/// `[decode.<op>]` / `[prefill.<op>]` of the override file.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpOverride {
    pub memory: Option<String>,
    pub dtype: Option<String>,
    pub math_fidelity: Option<String>,
    pub fp32_dest_acc_en: Option<bool>,
}

impl PlanOverrides {
    /// Parses the TOML text of an override file.
    pub fn from_toml(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| Error::MemoryPlan(format!("override file: {e}")))
    }

    /// Reads an override file.
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::MemoryPlan(format!("override file {}: {e}", path.display())))?;
        Self::from_toml(&text)
    }
}

/// Parses a dtype name as the plan and the CLI spell them.
pub fn parse_dtype(field: &str, s: &str) -> Result<DataType> {
    Ok(match s {
        "f32" | "float32" => DataType::Float32,
        "bf16" | "bfloat16" => DataType::Bfloat16,
        "bfp8_b" | "bfloat8_b" => DataType::Bfloat8B,
        "bfp4_b" | "bfloat4_b" => DataType::Bfloat4B,
        other => {
            return Err(Error::MemoryPlan(format!(
                "{field}: unknown dtype {other:?} (f32, bf16, bfp8_b, bfp4_b)"
            )));
        }
    })
}

fn dtype_name(d: DataType) -> &'static str {
    match d {
        DataType::Float32 => "f32",
        DataType::Bfloat16 => "bf16",
        DataType::Bfloat8B => "bfp8_b",
        DataType::Bfloat4B => "bfp4_b",
        DataType::Uint32 => "u32",
        DataType::Int32 => "i32",
        DataType::Uint16 => "u16",
        DataType::Uint8 => "u8",
        DataType::Ternary => "ternary",
    }
}

fn parse_memory(field: &str, s: &str) -> Result<MemoryConfig> {
    Ok(match s {
        "dram" => DRAM_MEMORY_CONFIG,
        "l1" => L1_MEMORY_CONFIG,
        "l1_width_sharded" => ttnn::L1_WIDTH_SHARDED_MEMORY_CONFIG,
        "l1_height_sharded" => ttnn::L1_HEIGHT_SHARDED_MEMORY_CONFIG,
        "l1_block_sharded" => ttnn::L1_BLOCK_SHARDED_MEMORY_CONFIG,
        other => {
            return Err(Error::MemoryPlan(format!(
                "{field}: unknown memory {other:?} (dram, l1, l1_width_sharded, l1_height_sharded, l1_block_sharded)"
            )));
        }
    })
}

fn parse_fidelity(field: &str, s: &str) -> Result<MathFidelity> {
    Ok(match s {
        "lofi" => MathFidelity::LoFi,
        "hifi2" => MathFidelity::HiFi2,
        "hifi3" => MathFidelity::HiFi3,
        "hifi4" => MathFidelity::HiFi4,
        other => {
            return Err(Error::MemoryPlan(format!(
                "{field}: unknown math fidelity {other:?}"
            )));
        }
    })
}

fn memory_name(mc: &MemoryConfig) -> String {
    let buf = match mc.buffer_type {
        BufferType::Dram => "DRAM",
        BufferType::L1 => "L1",
        BufferType::L1Small => "L1_SMALL",
    };
    let layout = match mc.memory_layout {
        TensorMemoryLayout::Interleaved => "interleaved".to_string(),
        TensorMemoryLayout::HeightSharded => "height_sharded".to_string(),
        TensorMemoryLayout::WidthSharded => "width_sharded".to_string(),
        TensorMemoryLayout::BlockSharded => "block_sharded".to_string(),
    };
    match &mc.shard_spec {
        Some(s) => format!(
            "{buf} {layout} {}x[{}, {}]",
            s.grid.num_cores(),
            s.shape[0],
            s.shape[1]
        ),
        None => format!("{buf} {layout}"),
    }
}

/// The derived, validated plan.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryPlan {
    pub entries: Vec<PlanEntry>,
    pub weights: WeightDtypes,
    pub activation_dtype: DataType,
    pub max_batch: usize,
    pub prefill_chunk: usize,
    /// Largest L1 footprint on one core at any op (bytes) and the op.
    pub l1_peak_per_core: (u64, Step, PlanOp),
    /// L1 available per core on the device.
    pub l1_per_core: u64,
    /// Bytes of weights in DRAM.
    pub dram_weight_bytes: u64,
    /// Bytes of the RoPE tables in DRAM.
    pub dram_rope_bytes: u64,
    /// KV-cache bytes of one 32-position block, all layers.
    pub kv_block_bytes: u64,
}

/// Per-op compute settings, as tt_transformers chooses them.
fn compute_config(op: PlanOp) -> ComputeKernelConfig {
    match op {
        PlanOp::AttnNorm
        | PlanOp::AttnSubNorm
        | PlanOp::FfnNorm
        | PlanOp::FfnSubNorm
        | PlanOp::FinalNorm => ComputeKernelConfig::hifi2(),
        PlanOp::Sdpa | PlanOp::Rotary => ComputeKernelConfig::hifi4(),
        PlanOp::LmHead => ComputeKernelConfig::hifi2(),
        _ => ComputeKernelConfig {
            math_fidelity: MathFidelity::LoFi,
            ..ComputeKernelConfig::hifi2()
        },
    }
}

impl MemoryPlan {
    /// Derives the plan for `cfg` on `device` and validates it against the device's L1.
    pub fn new(cfg: &BitNetConfig, device: &Device, opts: &PlanOptions) -> Result<Self> {
        let ov = &opts.overrides;
        let mut weights = WeightDtypes {
            lm_head: opts.lm_head,
            kv_cache: opts.kv_cache.unwrap_or(device.compute_dtype()),
        };
        if let Some(s) = &ov.weights.lm_head {
            weights.lm_head = parse_dtype("weights.lm_head", s)?;
        }
        if let Some(s) = &ov.weights.kv_cache {
            weights.kv_cache = parse_dtype("weights.kv_cache", s)?;
        }
        if !matches!(
            weights.lm_head,
            DataType::Bfloat16 | DataType::Bfloat8B | DataType::Bfloat4B | DataType::Float32
        ) {
            return Err(Error::MemoryPlan(format!(
                "lm_head dtype {:?} is not supported",
                weights.lm_head
            )));
        }
        if !matches!(
            weights.kv_cache,
            DataType::Bfloat16 | DataType::Bfloat8B | DataType::Float32
        ) {
            return Err(Error::MemoryPlan(format!(
                "kv_cache dtype {:?} is not supported (bf16, bfp8_b, f32)",
                weights.kv_cache
            )));
        }
        let mut act = opts.activation_dtype.unwrap_or(device.compute_dtype());
        if let Some(s) = &ov.activations.dtype {
            act = parse_dtype("activations.dtype", s)?;
        }
        if !matches!(act, DataType::Float32 | DataType::Bfloat16) {
            return Err(Error::MemoryPlan(format!(
                "activation dtype {act:?} is not supported (f32, bf16)"
            )));
        }
        if opts.max_batch == 0 || opts.max_batch > 32 {
            return Err(Error::MemoryPlan(format!(
                "max_batch {} must be in 1..=32",
                opts.max_batch
            )));
        }
        if opts.prefill_chunk == 0 {
            return Err(Error::MemoryPlan("prefill_chunk must be positive".into()));
        }
        for (step, map) in [(Step::Decode, &ov.decode), (Step::Prefill, &ov.prefill)] {
            for name in map.keys() {
                let op = PlanOp::from_name(name).ok_or_else(|| {
                    Error::MemoryPlan(format!(
                        "[{}.{name}]: no such op (see `bitnet info --plan`)",
                        step.name()
                    ))
                })?;
                if op.role() == Role::FixedByOp && map[name].memory.is_some() {
                    return Err(Error::MemoryPlan(format!(
                        "[{}.{name}]: the op fixes its output placement; memory cannot be overridden",
                        step.name()
                    )));
                }
            }
        }
        let mut entries = Vec::new();
        for step in [Step::Decode, Step::Prefill] {
            let rows = match step {
                Step::Decode => opts.max_batch,
                Step::Prefill => opts.prefill_chunk,
            };
            for op in PlanOp::ALL {
                let over = match step {
                    Step::Decode => ov.decode.get(op.name()),
                    Step::Prefill => ov.prefill.get(op.name()),
                };
                entries.push(Self::entry(cfg, device, step, op, rows, act, over)?);
            }
        }
        let l1_per_core = device.memory_report().l1_max_core.capacity;
        let mut plan = Self {
            entries,
            weights,
            activation_dtype: act,
            max_batch: opts.max_batch,
            prefill_chunk: opts.prefill_chunk,
            l1_peak_per_core: (0, Step::Decode, PlanOp::Embedding),
            l1_per_core,
            dram_weight_bytes: 0,
            dram_rope_bytes: 0,
            kv_block_bytes: 0,
        };
        plan.validate_l1()?;
        plan.dram_weight_bytes = plan.weight_bytes(cfg, device)?;
        let rope = Shape::new(&[cfg.max_position_embeddings, cfg.head_dim]);
        plan.dram_rope_bytes = 2 * device
            .buffer_footprint(rope, act, Layout::RowMajor, &DRAM_MEMORY_CONFIG)?
            .total_bytes;
        plan.kv_block_bytes = plan.kv_cache_bytes(cfg, device, 1, 32)?;
        Ok(plan)
    }

    /// Output shapes of `op` for `rows` tokens.
    fn shapes(cfg: &BitNetConfig, step: Step, op: PlanOp, rows: usize) -> Vec<Shape> {
        let (h, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let (nh, nkv, hd) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        let act = |w: usize| Shape::new(&[1, 1, rows, w]);
        match (step, op) {
            (_, PlanOp::Qkv) => vec![act(cfg.qkv_size())],
            (_, PlanOp::Gate | PlanOp::Up | PlanOp::Relu2Mul | PlanOp::FfnSubNorm) => vec![act(i)],
            (_, PlanOp::LmHead) => vec![act(v)],
            (_, PlanOp::ConcatHeads) => vec![act(nh * hd)],
            (Step::Decode, PlanOp::CreateHeads) => vec![
                Shape::new(&[1, rows, nh, hd]),
                Shape::new(&[1, rows, nkv, hd]),
                Shape::new(&[1, rows, nkv, hd]),
            ],
            (Step::Decode, PlanOp::Rotary) => vec![
                Shape::new(&[1, rows, nh, hd]),
                Shape::new(&[1, rows, nkv, hd]),
            ],
            (Step::Decode, PlanOp::Sdpa | PlanOp::SdpaReshard) => {
                vec![Shape::new(&[1, rows, nh, hd])]
            }
            (Step::Prefill, PlanOp::CreateHeads) => vec![
                Shape::new(&[1, nh, rows, hd]),
                Shape::new(&[1, nkv, rows, hd]),
                Shape::new(&[1, nkv, rows, hd]),
            ],
            (Step::Prefill, PlanOp::Rotary) => vec![
                Shape::new(&[1, nh, rows, hd]),
                Shape::new(&[1, nkv, rows, hd]),
            ],
            (Step::Prefill, PlanOp::Sdpa | PlanOp::SdpaReshard) => {
                vec![Shape::new(&[1, nh, rows, hd])]
            }
            _ => vec![act(h)],
        }
    }

    /// The placement TT-NN's decode head ops force: one user per core, `[ceil32(heads), hd]`
    /// shards (K and V sized by the Q head count, as TT-NN computes them).
    pub fn decode_head_config(
        device: &Device,
        num_heads: usize,
        head_dim: usize,
        users: usize,
    ) -> MemoryConfig {
        let grid = device.compute_with_storage_grid_size();
        let heads = num_heads.div_ceil(TILE_SIZE) * TILE_SIZE;
        MemoryConfig::sharded(
            TensorMemoryLayout::HeightSharded,
            BufferType::L1,
            ttnn::ShardSpec::new(
                ttnn::CoreRangeSet::num_cores_to_corerangeset(users, grid),
                [heads, head_dim],
                ttnn::ShardOrientation::RowMajor,
            ),
        )
    }

    fn entry(
        cfg: &BitNetConfig,
        device: &Device,
        step: Step,
        op: PlanOp,
        rows: usize,
        act: DataType,
        over: Option<&OpOverride>,
    ) -> Result<PlanEntry> {
        let shapes = Self::shapes(cfg, step, op, rows);
        let field = format!("{}.{}", step.name(), op.name());
        let mut dtype = act;
        let mut compute = compute_config(op);
        if let Some(o) = over {
            if let Some(d) = &o.dtype {
                dtype = parse_dtype(&field, d)?;
            }
            if let Some(f) = &o.math_fidelity {
                compute.math_fidelity = parse_fidelity(&field, f)?;
            }
            if let Some(a) = o.fp32_dest_acc_en {
                compute.fp32_dest_acc_en = a;
            }
        }
        let residual_bytes = (rows.div_ceil(TILE_SIZE) * TILE_SIZE * cfg.hidden_size) as u64;
        let out_elems = shapes[0].padded(Layout::Tile).volume() as u64;
        let mc = match (step, op.role()) {
            (Step::Prefill, _) => DRAM_MEMORY_CONFIG,
            (Step::Decode, Role::FixedByOp) => match op {
                PlanOp::ConcatHeads => ttnn::L1_WIDTH_SHARDED_MEMORY_CONFIG,
                _ => Self::decode_head_config(device, cfg.num_attention_heads, cfg.head_dim, rows),
            },
            (Step::Decode, Role::Dram) => DRAM_MEMORY_CONFIG,
            // Small and consumed next: L1, width-sharded; large intermediates: DRAM.
            (Step::Decode, Role::Consumed) if out_elems <= 2 * residual_bytes => {
                ttnn::L1_WIDTH_SHARDED_MEMORY_CONFIG
            }
            (Step::Decode, Role::Consumed) => DRAM_MEMORY_CONFIG,
        };
        let mc = match over.and_then(|o| o.memory.as_deref()) {
            Some(m) => parse_memory(&field, m)?,
            None => mc,
        };
        let mc = ttnn::resolve_shard_spec("memory plan", device, mc, shapes[0], Layout::Tile)
            .map_err(|e| Error::MemoryPlan(format!("{field}: {e}")))?;
        let mut bytes = 0;
        let mut per_core = 0;
        for s in &shapes {
            let fp = device
                .buffer_footprint(*s, dtype, Layout::Tile, &mc)
                .map_err(|e| Error::MemoryPlan(format!("{field}: output {s}: {e}")))?;
            bytes += fp.total_bytes;
            per_core += fp.bytes_per_core;
        }
        Ok(PlanEntry {
            step,
            op,
            shapes,
            config: OpConfig {
                memory_config: mc.clone(),
                dtype,
                compute_kernel_config: compute,
            },
            bytes,
            bytes_per_core: per_core,
            buffer_type: mc.buffer_type,
        })
    }

    /// Every op's live L1 (its output, its inputs, the residual stream) must fit one core.
    fn validate_l1(&mut self) -> Result<()> {
        for step in [Step::Decode, Step::Prefill] {
            for op in PlanOp::ALL {
                let e = self.entry_of(step, op);
                let mut live = vec![op];
                live.extend_from_slice(op.inputs());
                live.extend(op.residual());
                live.sort();
                live.dedup();
                let need: u64 = live
                    .iter()
                    .map(|&o| self.entry_of(step, o))
                    .filter(|x| x.buffer_type == BufferType::L1)
                    .map(|x| x.bytes_per_core)
                    .sum();
                if need > self.l1_per_core {
                    return Err(Error::MemoryPlan(format!(
                        "{} op {}: needs {need} bytes of L1 on one core (output {} bytes/core{}), but the modelled chip has {} bytes of L1 per core",
                        step.name(),
                        op.name(),
                        e.bytes_per_core,
                        if live.len() > 1 {
                            " plus live inputs and the residual stream"
                        } else {
                            ""
                        },
                        self.l1_per_core
                    )));
                }
                if need > self.l1_peak_per_core.0 {
                    self.l1_peak_per_core = (need, step, op);
                }
            }
        }
        Ok(())
    }

    fn weight_bytes(&self, cfg: &BitNetConfig, device: &Device) -> Result<u64> {
        let (h, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let fp = |shape: &[usize], dtype, layout| -> Result<u64> {
            Ok(device
                .buffer_footprint(Shape::new(shape), dtype, layout, &DRAM_MEMORY_CONFIG)?
                .total_bytes)
        };
        let per_layer = fp(&[cfg.qkv_size(), h], DataType::Ternary, Layout::Tile)?
            + fp(
                &[h, cfg.num_attention_heads * cfg.head_dim],
                DataType::Ternary,
                Layout::Tile,
            )?
            + 2 * fp(&[i, h], DataType::Ternary, Layout::Tile)?
            + fp(&[h, i], DataType::Ternary, Layout::Tile)?
            + 4 * fp(&[h], DataType::Float32, Layout::RowMajor)?
            + fp(&[i], DataType::Float32, Layout::RowMajor)?;
        let embed = fp(&[v, h], DataType::Bfloat16, Layout::RowMajor)?;
        let head = fp(&[v, h], self.weights.lm_head, Layout::Tile)?;
        Ok(per_layer * cfg.num_hidden_layers as u64
            + embed
            + head
            + fp(&[h], DataType::Float32, Layout::RowMajor)?)
    }

    /// The entry for `op` in `step`.
    pub fn entry_of(&self, step: Step, op: PlanOp) -> &PlanEntry {
        self.entries
            .iter()
            .find(|e| e.step == step && e.op == op)
            .unwrap_or_else(|| unreachable!("every (step, op) has an entry"))
    }

    /// The decode config of `op`.
    pub fn op(&self, op: PlanOp) -> &OpConfig {
        &self.entry_of(Step::Decode, op).config
    }

    /// The config of `op` in `step`.
    pub fn op_in(&self, step: Step, op: PlanOp) -> &OpConfig {
        &self.entry_of(step, op).config
    }

    /// KV-cache bytes for `num_blocks` blocks of `block_size` positions, all layers.
    pub fn kv_cache_bytes(
        &self,
        cfg: &BitNetConfig,
        device: &Device,
        num_blocks: usize,
        block_size: usize,
    ) -> Result<u64> {
        let shape = Shape::new(&[
            num_blocks,
            cfg.num_key_value_heads,
            block_size,
            cfg.head_dim,
        ]);
        let one = device
            .buffer_footprint(
                shape,
                self.weights.kv_cache,
                Layout::Tile,
                &DRAM_MEMORY_CONFIG,
            )?
            .total_bytes;
        Ok(2 * cfg.num_hidden_layers as u64 * one)
    }

    /// The plan as a text table: op, output shape, bytes, buffer, layout, dtype; then totals.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<8} {:<14} {:<22} {:>12} {:>10}  {:<34} {:<7} fidelity",
            "step", "op", "output shape", "bytes", "bytes/core", "memory", "dtype"
        );
        for e in &self.entries {
            let shapes: Vec<String> = e.shapes.iter().map(|s| s.to_string()).collect();
            let _ = writeln!(
                s,
                "{:<8} {:<14} {:<22} {:>12} {:>10}  {:<34} {:<7} {:?}",
                e.step.name(),
                e.op.name(),
                shapes.join(" "),
                e.bytes,
                if e.buffer_type == BufferType::L1 {
                    e.bytes_per_core.to_string()
                } else {
                    "-".into()
                },
                memory_name(&e.config.memory_config),
                dtype_name(e.config.dtype),
                e.config.compute_kernel_config.math_fidelity,
            );
        }
        let (peak, step, op) = self.l1_peak_per_core;
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "L1:   peak {peak} bytes on one core ({} {}), {} bytes per core available",
            step.name(),
            op.name(),
            self.l1_per_core
        );
        let _ = writeln!(
            s,
            "DRAM: weights {} bytes (lm_head {}), RoPE tables {} bytes, KV cache {} bytes per 32-position block ({}, all layers)",
            self.dram_weight_bytes,
            dtype_name(self.weights.lm_head),
            self.dram_rope_bytes,
            self.kv_block_bytes,
            dtype_name(self.weights.kv_cache),
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ttnn::{ChipSpec, DeviceSpec};

    fn device(chip: ChipSpec) -> Device {
        Device::open(DeviceSpec::default().with_chip(chip).with_threads(1)).expect("open")
    }

    #[test]
    fn the_2b4t_decode_plan_follows_the_rule() {
        let cfg = BitNetConfig::b1_58_2b_4t();
        let plan = MemoryPlan::new(
            &cfg,
            &device(ChipSpec::wormhole_n150()),
            &PlanOptions::default(),
        )
        .expect("plan");
        let l1_width =
            |op| plan.op(op).memory_config.memory_layout == TensorMemoryLayout::WidthSharded;
        for op in [
            PlanOp::Embedding,
            PlanOp::AttnNorm,
            PlanOp::Qkv,
            PlanOp::OProj,
            PlanOp::Down,
            PlanOp::FfnResidual,
        ] {
            assert!(l1_width(op), "{op:?}: {:?}", plan.op(op));
        }
        for op in [
            PlanOp::Sdpa,
            PlanOp::Gate,
            PlanOp::Up,
            PlanOp::Relu2Mul,
            PlanOp::LmHead,
        ] {
            assert_eq!(
                plan.op(op).memory_config.buffer_type,
                BufferType::Dram,
                "{op:?}"
            );
        }
        assert_eq!(
            plan.op(PlanOp::CreateHeads).memory_config.memory_layout,
            TensorMemoryLayout::HeightSharded
        );
        assert_eq!(plan.op(PlanOp::Qkv).dtype, DataType::Float32);
        for op in PlanOp::ALL {
            assert_eq!(
                plan.op_in(Step::Prefill, op).memory_config,
                DRAM_MEMORY_CONFIG
            );
        }
        let table = plan.table();
        assert!(
            table.contains("qkv") && table.contains("L1 width_sharded") && table.contains("DRAM:"),
            "{table}"
        );
        assert!(
            plan.dram_weight_bytes > 900_000_000,
            "{}",
            plan.dram_weight_bytes
        );
    }

    #[test]
    fn a_small_l1_fails_before_any_op_runs_naming_the_op() {
        let chip = ChipSpec {
            l1_size_per_core: 24 * 1024,
            l1_reserved_per_core: 0,
            ..ChipSpec::wormhole_n150()
        };
        let cfg = BitNetConfig::b1_58_2b_4t();
        let e = MemoryPlan::new(&cfg, &device(chip), &PlanOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("memory plan: decode op "), "{e}");
        assert!(e.contains("bytes of L1 per core"), "{e}");
    }

    #[test]
    fn overrides_apply_and_bad_ones_are_named() {
        let cfg = BitNetConfig::b1_58_2b_4t();
        let dev = device(ChipSpec::wormhole_n150());
        let ov = PlanOverrides::from_toml(
            "[weights]\nlm_head = \"bfp4_b\"\nkv_cache = \"bfp8_b\"\n[decode.qkv]\nmemory = \"dram\"\ndtype = \"bf16\"\nmath_fidelity = \"hifi4\"\n",
        )
        .expect("parse");
        let plan = MemoryPlan::new(
            &cfg,
            &dev,
            &PlanOptions {
                overrides: ov,
                ..Default::default()
            },
        )
        .expect("plan");
        assert_eq!(plan.weights.lm_head, DataType::Bfloat4B);
        assert_eq!(plan.weights.kv_cache, DataType::Bfloat8B);
        assert_eq!(plan.op(PlanOp::Qkv).memory_config, DRAM_MEMORY_CONFIG);
        assert_eq!(plan.op(PlanOp::Qkv).dtype, DataType::Bfloat16);
        assert_eq!(
            plan.op(PlanOp::Qkv).compute_kernel_config.math_fidelity,
            MathFidelity::HiFi4
        );
        for (text, needle) in [
            ("[decode.qkvv]\nmemory = \"dram\"\n", "no such op"),
            (
                "[decode.create_heads]\nmemory = \"dram\"\n",
                "cannot be overridden",
            ),
            ("[decode.qkv]\nmemory = \"sram\"\n", "unknown memory"),
            ("[weights]\nlm_head = \"int4\"\n", "unknown dtype"),
            ("[weights]\nkv_cache = \"bfp4_b\"\n", "kv_cache dtype"),
            ("[bogus]\n", "unknown field"),
        ] {
            let e = PlanOverrides::from_toml(text)
                .and_then(|ov| {
                    MemoryPlan::new(
                        &cfg,
                        &dev,
                        &PlanOptions {
                            overrides: ov,
                            ..Default::default()
                        },
                    )
                })
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }
}
#[cfg(test)]
mod print {
    #[test]
    #[ignore]
    fn print_plan() {
        let cfg = crate::BitNetConfig::b1_58_2b_4t();
        let dev = ttnn::Device::open(ttnn::DeviceSpec::default().with_threads(1)).expect("open");
        println!(
            "{}",
            super::MemoryPlan::new(&cfg, &dev, &Default::default())
                .expect("plan")
                .table()
        );
    }
}
