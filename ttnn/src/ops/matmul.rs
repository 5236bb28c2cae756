//! Matrix multiplication: `linear` and `matmul` (f32, bf16, bfp8_b and bfp4_b weights).
//!
//! TT-NN semantics (`ttnn/cpp/ttnn/operations/matmul`): both inputs on the device in TILE layout,
//! `C = act(A' @ B' + bias)` with `A'`/`B'` the inputs with their last two dims swapped when
//! `transpose_a`/`transpose_b` is set. Batch dims follow TT's two rules, not numpy broadcasting:
//! B with batch 1 is reused for every batch of A ("bcast_batch"), otherwise A and B must have the
//! same rank and identical batch dims. The output is A's shape with the last dim replaced by N,
//! in DRAM interleaved unless a memory config is given (TT-NN's matmul default).
//!
//! The host computes in f32 with a fixed accumulation order per output element, independent of
//! how many rows are computed together and of the thread split, then rounds to the output dtype.

use crate::device::BackendImpl;
use crate::error::{Error, Result};
use crate::host::kernels::matmul::{MatmulCmd, MatmulDims};
use crate::ops::eltwise::UnaryOp;
use crate::ops::{
    FLOAT_TYPES, expect_dtype, expect_layout, on_device, on_same_device, resolve_shard_spec,
};
use crate::tensor::Tensor;
use crate::tt::{Tt, ops as tt_ops};
use crate::types::{
    ComputeKernelConfig, CoreCoord, CoreRangeSet, DRAM_MEMORY_CONFIG, DataType, Layout,
    MemoryConfig, Shape, ShardOrientation, ShardSpec, TILE_SIZE, TensorMemoryLayout,
};

/// TT-NN's `MatmulMultiCoreProgramConfig`: the simplest program, no parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct MatmulMultiCoreProgramConfig;

/// TT-NN's `MatmulMultiCoreReuseProgramConfig` (all sizes in tiles).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MatmulMultiCoreReuseProgramConfig {
    pub compute_with_storage_grid_size: CoreCoord,
    pub in0_block_w: usize,
    pub out_subblock_h: usize,
    pub out_subblock_w: usize,
    pub per_core_m: usize,
    pub per_core_n: usize,
}

/// TT-NN's `MatmulMultiCoreReuseMultiCastProgramConfig` (2-D multicast; sizes in tiles).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MatmulMultiCoreReuseMultiCastProgramConfig {
    pub compute_with_storage_grid_size: CoreCoord,
    pub in0_block_w: usize,
    pub out_subblock_h: usize,
    pub out_subblock_w: usize,
    pub per_core_m: usize,
    pub per_core_n: usize,
    pub transpose_mcast: bool,
    /// Applied to the output on the device, before any `activation` argument.
    pub fused_activation: Option<UnaryOp>,
    pub fuse_batch: bool,
}

/// TT-NN's `MatmulMultiCoreReuseMultiCast1DProgramConfig` (1-D multicast; sizes in tiles).
/// tt_transformers' decode and prefill configs are of this kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MatmulMultiCoreReuseMultiCast1DProgramConfig {
    pub compute_with_storage_grid_size: CoreCoord,
    pub in0_block_w: usize,
    pub out_subblock_h: usize,
    pub out_subblock_w: usize,
    pub per_core_m: usize,
    pub per_core_n: usize,
    pub fuse_batch: bool,
    /// Applied to the output on the device, before any `activation` argument.
    pub fused_activation: Option<UnaryOp>,
    /// True: in0 (activations) is multicast and the cores split N (width-sharded output);
    /// false: in1 is multicast and the cores split M (height-sharded output).
    pub mcast_in0: bool,
    /// Output in ROW_MAJOR layout; needs an explicit `dtype` of Bfloat16 or Float32.
    pub untilize_out: bool,
}

/// TT-NN's `MatmulMultiCoreReuseMultiCastDRAMShardedProgramConfig` (weights DRAM width-sharded,
/// the decode matmul of tt_transformers; sizes in tiles).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MatmulMultiCoreReuseMultiCastDramShardedProgramConfig {
    pub in0_block_w: usize,
    pub per_core_m: usize,
    pub per_core_n: usize,
    /// Applied to the output on the device, before any `activation` argument.
    pub fused_activation: Option<UnaryOp>,
}

/// TT-NN's `MatmulProgramConfig`: how a TT device splits a matmul over its cores.
///
/// The host backend checks the cheap parameter rules TT-NN's `validate` applies (positive sizes,
/// `Kt % in0_block_w == 0`, `per_core_M % out_subblock_h == 0`, `per_core_N % out_subblock_w ==
/// 0`, subblock within the destination registers, grid within the device) and uses the config
/// to derive a missing output shard spec and the fused activation; otherwise it ignores it.
/// `out_block_h`/`out_block_w` and the gather/hop fields of newer TT-NN builds are not modelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatmulProgramConfig {
    MultiCore(MatmulMultiCoreProgramConfig),
    MultiCoreReuse(MatmulMultiCoreReuseProgramConfig),
    MultiCoreReuseMultiCast(MatmulMultiCoreReuseMultiCastProgramConfig),
    MultiCoreReuseMultiCast1D(MatmulMultiCoreReuseMultiCast1DProgramConfig),
    MultiCoreReuseMultiCastDramSharded(MatmulMultiCoreReuseMultiCastDramShardedProgramConfig),
}

impl From<MatmulMultiCoreProgramConfig> for MatmulProgramConfig {
    fn from(c: MatmulMultiCoreProgramConfig) -> Self {
        Self::MultiCore(c)
    }
}
impl From<MatmulMultiCoreReuseProgramConfig> for MatmulProgramConfig {
    fn from(c: MatmulMultiCoreReuseProgramConfig) -> Self {
        Self::MultiCoreReuse(c)
    }
}
impl From<MatmulMultiCoreReuseMultiCastProgramConfig> for MatmulProgramConfig {
    fn from(c: MatmulMultiCoreReuseMultiCastProgramConfig) -> Self {
        Self::MultiCoreReuseMultiCast(c)
    }
}
impl From<MatmulMultiCoreReuseMultiCast1DProgramConfig> for MatmulProgramConfig {
    fn from(c: MatmulMultiCoreReuseMultiCast1DProgramConfig) -> Self {
        Self::MultiCoreReuseMultiCast1D(c)
    }
}
impl From<MatmulMultiCoreReuseMultiCastDramShardedProgramConfig> for MatmulProgramConfig {
    fn from(c: MatmulMultiCoreReuseMultiCastDramShardedProgramConfig) -> Self {
        Self::MultiCoreReuseMultiCastDramSharded(c)
    }
}

impl MatmulProgramConfig {
    fn fused_activation(&self) -> Option<UnaryOp> {
        match self {
            Self::MultiCore(_) | Self::MultiCoreReuse(_) => None,
            Self::MultiCoreReuseMultiCast(c) => c.fused_activation,
            Self::MultiCoreReuseMultiCast1D(c) => c.fused_activation,
            Self::MultiCoreReuseMultiCastDramSharded(c) => c.fused_activation,
        }
    }

    fn untilize_out(&self) -> bool {
        matches!(self, Self::MultiCoreReuseMultiCast1D(c) if c.untilize_out)
    }
}

/// Optional arguments of [`linear`] (TT-NN's keyword arguments; `output_tile`,
/// `optional_output_tensor`, `global_cb` and `sub_device_id` are not modelled).
#[derive(Clone, Debug, Default)]
pub struct LinearArgs<'a> {
    /// Row-broadcast bias, logically `[1, N]` (or `[1, 1, 1, N]`), TILE layout.
    pub bias: Option<&'a Tensor>,
    pub transpose_a: bool,
    pub transpose_b: bool,
    /// Default: DRAM interleaved.
    pub memory_config: Option<MemoryConfig>,
    /// Default: `a`'s dtype.
    pub dtype: Option<DataType>,
    pub program_config: Option<MatmulProgramConfig>,
    /// Applied to `A' @ B' + bias` (TT-NN's `activation="relu"` etc.).
    pub activation: Option<UnaryOp>,
    pub compute_kernel_config: Option<ComputeKernelConfig>,
    /// TT-NN's `core_grid`: validated against the device grid, otherwise ignored by the host.
    pub core_grid: Option<CoreCoord>,
}

/// Optional arguments of [`matmul`]: those of [`LinearArgs`] without the bias.
#[derive(Clone, Debug, Default)]
pub struct MatmulArgs {
    pub transpose_a: bool,
    pub transpose_b: bool,
    /// Default: DRAM interleaved.
    pub memory_config: Option<MemoryConfig>,
    /// Default: `a`'s dtype.
    pub dtype: Option<DataType>,
    pub program_config: Option<MatmulProgramConfig>,
    pub activation: Option<UnaryOp>,
    pub compute_kernel_config: Option<ComputeKernelConfig>,
    pub core_grid: Option<CoreCoord>,
}

/// `act(A' @ B')` (TT-NN's `ttnn.matmul`). See [`linear`] for the rules.
pub fn matmul(a: &Tensor, b: &Tensor, args: &MatmulArgs) -> Result<Tensor> {
    let largs = LinearArgs {
        bias: None,
        transpose_a: args.transpose_a,
        transpose_b: args.transpose_b,
        memory_config: args.memory_config.clone(),
        dtype: args.dtype,
        program_config: args.program_config,
        activation: args.activation,
        compute_kernel_config: args.compute_kernel_config,
        core_grid: args.core_grid,
    };
    run("ttnn::matmul", a, b, &largs)
}

/// `act(A' @ B' + bias)` (TT-NN's `ttnn.linear`).
///
/// - `a`: `[..., M, K]` (`[..., K, M]` with `transpose_a`); `b`: `[..., K, N]` (`[..., N, K]` with
///   `transpose_b`, e.g. a tied embedding `[vocab, hidden]` used as the lm_head). Rank-1 inputs
///   are treated as `[1, K]` / `[K, 1]` and that dim is dropped from the output (no transpose).
/// - Both on the same device, TILE layout, float (Float32, Bfloat16, Bfloat8B, Bfloat4B).
/// - Batch: B's batch (product of all but the last two dims) is 1, or A and B have the same rank
///   and identical batch dims. A B of higher rank than A must have 1s in front; the output then
///   takes B's rank.
/// - Bias (linear only): on the device, TILE, float, batch 1 and one row, last dim N (up to N
///   rounded up to a tile; only the first N values are used); not allowed with a batched B.
///   Host deviation: TT only checks that the bias is padded to one tile row (so up to 32 logical
///   rows pass, and the device uses row 0); the host requires one logical row.
/// - Output: A's shape with the last dim N (the M dim comes from `A'`), dtype `args.dtype` or
///   A's, TILE (ROW_MAJOR with a 1-D program config's `untilize_out`), memory config
///   `args.memory_config` or DRAM interleaved; a sharded config without a spec gets one from the
///   program config (1-D: width shards of `per_core_N` tiles when `mcast_in0`, else height shards
///   of `per_core_M`; 2-D: blocks; DRAM-sharded: width shards), else an even split.
/// - Activations: the program config's `fused_activation`, then `args.activation`.
pub fn linear(a: &Tensor, b: &Tensor, args: &LinearArgs<'_>) -> Result<Tensor> {
    run("ttnn::linear", a, b, args)
}

/// Shapes of a matmul after the rank-1 promotion and the transposes.
#[derive(Clone, Copy, Debug)]
struct Plan {
    out_shape: Shape,
    batch: usize,
    batch_b: usize,
    m: usize,
    k: usize,
    n: usize,
}

/// Product of all dims but the last two (1 for rank <= 2).
fn batch_of(s: &[usize]) -> usize {
    s[..s.len().saturating_sub(2)].iter().product()
}

fn plan(
    op: &'static str,
    a: Shape,
    b: Shape,
    transpose_a: bool,
    transpose_b: bool,
) -> Result<Plan> {
    if a.rank() == 0 || b.rank() == 0 {
        return Err(Error::arg(
            op,
            "both arguments to matmul need to be at least 1-D",
        ));
    }
    let a_vec = a.rank() == 1;
    let b_vec = b.rank() == 1;
    if (a_vec && transpose_a) || (b_vec && transpose_b) {
        return Err(Error::arg(op, "a rank-1 input cannot be transposed"));
    }
    let a2: Shape = if a_vec { [1, a.dim(0)].into() } else { a };
    let b2: Shape = if b_vec { [b.dim(0), 1].into() } else { b };
    let (ar, ac) = (a2.dim(-2), a2.dim(-1));
    let (br, bc) = (b2.dim(-2), b2.dim(-1));
    let (m, k) = if transpose_a { (ac, ar) } else { (ar, ac) };
    let (kb, n) = if transpose_b { (bc, br) } else { (br, bc) };
    if k != kb {
        return Err(Error::shape(
            op,
            "b",
            format!(
                "a height of {k} (the width of a{}; transpose_b={transpose_b})",
                if transpose_a { " transposed" } else { "" }
            ),
            b,
        ));
    }
    if m == 0 || k == 0 || n == 0 {
        return Err(Error::arg(
            op,
            format!("M, K and N must be positive, got M={m} K={k} N={n}"),
        ));
    }
    let (ad, bd) = (a2.dims(), b2.dims());
    let batch = batch_of(ad);
    let batch_b = batch_of(bd);
    if batch_b != 1 {
        // Non-bcast ("bmm"): identical batch dims.
        if ad.len() != bd.len() || ad[..ad.len() - 2] != bd[..bd.len() - 2] {
            return Err(Error::shape(
                op,
                "b",
                format!(
                    "batch dims {:?} (a's; TT's bmm needs BCMK x BCKN) or batch 1",
                    &ad[..ad.len() - 2]
                ),
                b,
            ));
        }
    }
    let mut dims: Vec<usize> = Vec::with_capacity(ad.len().max(bd.len()));
    if bd.len() > ad.len() {
        // Checked above: B's batch is 1, so these leading dims are all 1.
        dims.extend_from_slice(&bd[..bd.len() - ad.len()]);
    }
    dims.extend_from_slice(&ad[..ad.len() - 2]);
    if !a_vec {
        dims.push(m);
    }
    if !b_vec {
        dims.push(n);
    }
    let out_shape = Shape::try_new(&dims)
        .ok_or_else(|| Error::arg(op, format!("output rank {} exceeds MAX_RANK", dims.len())))?;
    Ok(Plan {
        out_shape,
        batch,
        batch_b,
        m,
        k,
        n,
    })
}

fn check_bias(op: &'static str, bias: &Tensor, p: &Plan) -> Result<()> {
    expect_dtype(op, "bias", bias, FLOAT_TYPES)?;
    expect_layout(op, "bias", bias, Layout::Tile)?;
    if p.batch_b > 1 {
        return Err(Error::arg(
            op,
            "a batched b is not supported when a bias is given (linear)",
        ));
    }
    let s = bias.shape();
    let rows = if s.rank() >= 2 { s.dim(-2) } else { 1 };
    let last = s.last();
    let n_padded = p.n.div_ceil(TILE_SIZE) * TILE_SIZE;
    if s.rank() == 0 || batch_of(s.dims()) != 1 || rows != 1 || last < p.n || last > n_padded {
        return Err(Error::shape(
            op,
            "bias",
            format!("[1, {}] (one row, batch 1, row-broadcast)", p.n),
            s,
        ));
    }
    Ok(())
}

/// Registers available to one output subblock (TT's `get_dest_reg_count` for 32x32 tiles).
fn dest_reg_count(cfg: &ComputeKernelConfig) -> usize {
    let full = if cfg.dst_full_sync_en { 16 } else { 8 };
    if cfg.fp32_dest_acc_en { full / 2 } else { full }
}

fn check_grid(op: &'static str, what: &str, g: CoreCoord, device_grid: CoreCoord) -> Result<()> {
    if g.x == 0 || g.y == 0 || g.x > device_grid.x || g.y > device_grid.y {
        return Err(Error::arg(
            op,
            format!(
                "{what} {}x{} does not fit the {}x{} compute grid",
                g.x, g.y, device_grid.x, device_grid.y
            ),
        ));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn check_blocking(
    op: &'static str,
    kt: usize,
    in0_block_w: usize,
    out_subblock_h: usize,
    out_subblock_w: usize,
    per_core_m: usize,
    per_core_n: usize,
    regs: usize,
) -> Result<()> {
    let fail = |reason: String| Err(Error::arg(op, format!("program_config: {reason}")));
    if in0_block_w == 0
        || out_subblock_h == 0
        || out_subblock_w == 0
        || per_core_m == 0
        || per_core_n == 0
    {
        return fail("in0_block_w, out_subblock_h/w and per_core_M/N must be positive".into());
    }
    if !kt.is_multiple_of(in0_block_w) {
        return fail(format!(
            "Kt ({kt} tiles) must be divisible by in0_block_w ({in0_block_w})"
        ));
    }
    if !per_core_m.is_multiple_of(out_subblock_h) {
        return fail(format!(
            "per_core_M ({per_core_m}) must be divisible by out_subblock_h ({out_subblock_h})"
        ));
    }
    if !per_core_n.is_multiple_of(out_subblock_w) {
        return fail(format!(
            "per_core_N ({per_core_n}) must be divisible by out_subblock_w ({out_subblock_w})"
        ));
    }
    if out_subblock_h * out_subblock_w > regs {
        return fail(format!(
            "out_subblock_w {out_subblock_w} times out_subblock_h {out_subblock_h} needs to be at most {regs} to fit in the destination registers"
        ));
    }
    Ok(())
}

fn check_program_config(
    op: &'static str,
    pc: &MatmulProgramConfig,
    p: &Plan,
    device_grid: CoreCoord,
    kernel_cfg: &ComputeKernelConfig,
    dtype_given: Option<DataType>,
) -> Result<()> {
    let kt = p.k.div_ceil(TILE_SIZE);
    let regs = dest_reg_count(kernel_cfg);
    match pc {
        MatmulProgramConfig::MultiCore(_) => Ok(()),
        MatmulProgramConfig::MultiCoreReuse(c) => {
            check_grid(
                op,
                "program_config grid",
                c.compute_with_storage_grid_size,
                device_grid,
            )?;
            check_blocking(
                op,
                kt,
                c.in0_block_w,
                c.out_subblock_h,
                c.out_subblock_w,
                c.per_core_m,
                c.per_core_n,
                regs,
            )?;
            if p.batch > 1 && p.batch_b == 1 {
                return Err(Error::arg(
                    op,
                    "program_config: batch broadcasting is not supported by MatmulMultiCoreReuseProgramConfig",
                ));
            }
            Ok(())
        }
        MatmulProgramConfig::MultiCoreReuseMultiCast(c) => {
            check_grid(
                op,
                "program_config grid",
                c.compute_with_storage_grid_size,
                device_grid,
            )?;
            check_blocking(
                op,
                kt,
                c.in0_block_w,
                c.out_subblock_h,
                c.out_subblock_w,
                c.per_core_m,
                c.per_core_n,
                regs,
            )
        }
        MatmulProgramConfig::MultiCoreReuseMultiCast1D(c) => {
            check_grid(
                op,
                "program_config grid",
                c.compute_with_storage_grid_size,
                device_grid,
            )?;
            check_blocking(
                op,
                kt,
                c.in0_block_w,
                c.out_subblock_h,
                c.out_subblock_w,
                c.per_core_m,
                c.per_core_n,
                regs,
            )?;
            if c.untilize_out
                && !matches!(dtype_given, Some(DataType::Bfloat16 | DataType::Float32))
            {
                return Err(Error::arg(
                    op,
                    "program_config: untilize_out needs an explicit dtype of Bfloat16 or Float32",
                ));
            }
            Ok(())
        }
        MatmulProgramConfig::MultiCoreReuseMultiCastDramSharded(c) => {
            if c.in0_block_w == 0 || c.per_core_m == 0 || c.per_core_n == 0 {
                return Err(Error::arg(
                    op,
                    "program_config: in0_block_w and per_core_M/N must be positive",
                ));
            }
            if !kt.is_multiple_of(c.in0_block_w) {
                return Err(Error::arg(
                    op,
                    format!(
                        "program_config: Kt ({kt} tiles) must be divisible by in0_block_w ({})",
                        c.in0_block_w
                    ),
                ));
            }
            Ok(())
        }
    }
}

/// The shard spec a TT matmul gives a sharded output config that has none, from its program
/// config; `None` when the program config does not determine one for this memory layout.
fn shard_spec_from_program_config(
    pc: &MatmulProgramConfig,
    layout: TensorMemoryLayout,
    out_shape: Shape,
    device_grid: CoreCoord,
) -> Option<ShardSpec> {
    let padded = out_shape.padded(Layout::Tile);
    let (rows, cols) = (padded.rows(), padded.last());
    let (mt, nt) = (rows / TILE_SIZE, cols / TILE_SIZE);
    let row_major = ShardOrientation::RowMajor;
    let spread = |n_cores: usize, grid: CoreCoord| {
        (n_cores <= grid.x * grid.y).then(|| CoreRangeSet::num_cores_to_corerangeset(n_cores, grid))
    };
    match (pc, layout) {
        (MatmulProgramConfig::MultiCoreReuseMultiCast1D(c), TensorMemoryLayout::WidthSharded)
            if c.mcast_in0 =>
        {
            let cores = nt.div_ceil(c.per_core_n);
            let grid = spread(cores, c.compute_with_storage_grid_size)?;
            Some(ShardSpec::new(
                grid,
                [rows, c.per_core_n * TILE_SIZE],
                row_major,
            ))
        }
        (MatmulProgramConfig::MultiCoreReuseMultiCast1D(c), TensorMemoryLayout::HeightSharded)
            if !c.mcast_in0 =>
        {
            let cores = mt.div_ceil(c.per_core_m);
            let grid = spread(cores, c.compute_with_storage_grid_size)?;
            Some(ShardSpec::new(
                grid,
                [c.per_core_m * TILE_SIZE, cols],
                row_major,
            ))
        }
        (MatmulProgramConfig::MultiCoreReuseMultiCast(c), TensorMemoryLayout::BlockSharded) => {
            let (gx, gy) = (nt.div_ceil(c.per_core_n), mt.div_ceil(c.per_core_m));
            let (gx, gy) = if c.transpose_mcast {
                (gy, gx)
            } else {
                (gx, gy)
            };
            let g = c.compute_with_storage_grid_size;
            if gx == 0 || gy == 0 || gx > g.x || gy > g.y {
                return None;
            }
            let orientation = if c.transpose_mcast {
                ShardOrientation::ColMajor
            } else {
                row_major
            };
            Some(ShardSpec::new(
                CoreRangeSet::from_range(crate::types::CoreRange::new(
                    CoreCoord::new(0, 0),
                    CoreCoord::new(gx - 1, gy - 1),
                )),
                [c.per_core_m * TILE_SIZE, c.per_core_n * TILE_SIZE],
                orientation,
            ))
        }
        (
            MatmulProgramConfig::MultiCoreReuseMultiCastDramSharded(c),
            TensorMemoryLayout::WidthSharded,
        ) => {
            let cores = nt.div_ceil(c.per_core_n);
            let grid = spread(cores, device_grid)?;
            Some(ShardSpec::new(
                grid,
                [rows, c.per_core_n * TILE_SIZE],
                row_major,
            ))
        }
        _ => None,
    }
}

fn run(op: &'static str, a: &Tensor, b: &Tensor, args: &LinearArgs<'_>) -> Result<Tensor> {
    let device = on_device(op, "a", a)?;
    on_same_device(op, "b", device, b)?;
    for (what, t) in [("a", a), ("b", b)] {
        expect_layout(op, what, t, Layout::Tile)?;
        expect_dtype(op, what, t, FLOAT_TYPES)?;
    }
    let p = plan(op, a.shape(), b.shape(), args.transpose_a, args.transpose_b)?;
    if let Some(bias) = args.bias {
        on_same_device(op, "bias", device, bias)?;
        check_bias(op, bias, &p)?;
    }
    let dtype = args.dtype.unwrap_or(a.dtype());
    if !FLOAT_TYPES.contains(&dtype) {
        return Err(Error::dtype(
            op,
            "the output",
            dtype,
            format!("{FLOAT_TYPES:?}"),
        ));
    }
    let device_grid = device.compute_with_storage_grid_size();
    if let Some(g) = args.core_grid {
        check_grid(op, "core_grid", g, device_grid)?;
    }
    // TT-NN's default kernel config only matters here for the subblock register check.
    let kernel_cfg = args.compute_kernel_config.unwrap_or(ComputeKernelConfig {
        fp32_dest_acc_en: dtype == DataType::Float32,
        dst_full_sync_en: false,
        ..ComputeKernelConfig::default()
    });
    if let Some(pc) = &args.program_config {
        check_program_config(op, pc, &p, device_grid, &kernel_cfg, args.dtype)?;
    }
    let layout = match &args.program_config {
        Some(pc) if pc.untilize_out() => Layout::RowMajor,
        _ => Layout::Tile,
    };
    let requested = args.memory_config.clone().unwrap_or(DRAM_MEMORY_CONFIG);
    let mc = if requested.is_sharded() && requested.shard_spec.is_none() {
        let derived = args.program_config.as_ref().and_then(|pc| {
            shard_spec_from_program_config(pc, requested.memory_layout, p.out_shape, device_grid)
        });
        match derived {
            Some(spec) => MemoryConfig {
                shard_spec: Some(spec),
                ..requested
            },
            None => resolve_shard_spec(op, device, requested, p.out_shape, layout)?,
        }
    } else {
        requested
    };
    let host = match device.backend_impl() {
        BackendImpl::Host(host) => host,
        BackendImpl::Tt(tt) => {
            let matmul_entry = op == "ttnn::matmul";
            return tt_ops::linear(&Tt::new(tt, device), op, a, b, args, matmul_entry);
        }
    };
    let bias_buf = match args.bias {
        Some(bias) => Some((
            bias.host_buffer(op, "bias")?.clone(),
            bias.dtype(),
            bias.shape().volume(),
        )),
        None => None,
    };
    let out = Tensor::allocate(device, op, p.out_shape, dtype, layout, &mc)?;
    let mut acts = Vec::with_capacity(2);
    acts.extend(args.program_config.and_then(|pc| pc.fused_activation()));
    acts.extend(args.activation);
    let a_len = a.shape().volume();
    let out_len = p.out_shape.volume();
    let (bias, bias_scratch) = match bias_buf {
        Some((buf, dt, len)) => (
            Some(buf),
            Vec::with_capacity(if dt == DataType::Float32 { 0 } else { len }),
        ),
        None => (None, Vec::new()),
    };
    // Block-float B stored [N, K]: A's rows are quantized for the integer kernel.
    let int_rows = args.transpose_b && matches!(b.dtype(), DataType::Bfloat8B | DataType::Bfloat4B);
    let (rows, kq) = (p.batch * p.m, p.k.div_ceil(16) * 16);
    let cmd = MatmulCmd {
        a: a.host_buffer(op, "a")?.clone(),
        b: b.host_buffer(op, "b")?.clone(),
        bias,
        out: out.host_buffer(op, "output")?.clone(),
        dims: MatmulDims {
            batch: p.batch,
            bcast_b: p.batch_b == 1,
            m: p.m,
            k: p.k,
            n: p.n,
            transpose_a: args.transpose_a,
            transpose_b: args.transpose_b,
        },
        acts,
        sa: Vec::with_capacity(if a.dtype() == DataType::Float32 {
            0
        } else {
            a_len
        }),
        sat: Vec::with_capacity(if args.transpose_a { a_len } else { 0 }),
        sbias: bias_scratch,
        so: Vec::with_capacity(if dtype == DataType::Float32 {
            0
        } else {
            out_len
        }),
        sq: Vec::with_capacity(if int_rows { rows * kq } else { 0 }),
        sqs: Vec::with_capacity(if int_rows { rows } else { 0 }),
    };
    host.submit(cmd)?;
    Ok(out)
}
