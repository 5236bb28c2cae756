//! TT-NN's vocabulary types: data types, layouts, shapes, memory configs, shard specs and compute
//! kernel configs, with the names and constants a tt_transformers reader knows.

use std::fmt;

/// Tile edge: TT devices compute on 32x32 tiles made of four 16x16 faces.
pub const TILE_SIZE: usize = 32;
/// Face edge inside a tile; block-float formats share one exponent per face row of 16 values.
pub const FACE_SIZE: usize = 16;

/// Element type of a tensor, as in TT-NN (`ttnn.bfloat16`, ...), plus `Ternary`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataType {
    Bfloat16,
    Float32,
    Uint32,
    /// Block float: 16 values share an 8-bit exponent; 1 sign + 7 mantissa bits each.
    Bfloat8B,
    /// Block float: 16 values share an 8-bit exponent; 1 sign + 3 mantissa bits each.
    Bfloat4B,
    Uint8,
    Uint16,
    Int32,
    /// Values in {-1, 0, +1}. Not a TT-NN type: the host backend keeps it packed at 2 bits per
    /// value; the Tenstorrent backend stores it as BFLOAT4_B, which holds ternary values exactly.
    Ternary,
}

impl DataType {
    /// Bytes per element for the plain (non-block) types; `None` for block and packed types.
    pub fn element_size(self) -> Option<usize> {
        match self {
            Self::Bfloat16 | Self::Uint16 => Some(2),
            Self::Float32 | Self::Uint32 | Self::Int32 => Some(4),
            Self::Uint8 => Some(1),
            Self::Bfloat8B | Self::Bfloat4B | Self::Ternary => None,
        }
    }

    /// True for the types that only exist in tile layout on a TT device (block floats, and
    /// Ternary, which the device stores as BFLOAT4_B).
    pub fn requires_tile_layout(self) -> bool {
        matches!(self, Self::Bfloat8B | Self::Bfloat4B | Self::Ternary)
    }

    /// True for floating-point types (including block floats).
    pub fn is_float(self) -> bool {
        matches!(
            self,
            Self::Bfloat16 | Self::Float32 | Self::Bfloat8B | Self::Bfloat4B
        )
    }

    /// True for integer types.
    pub fn is_integer(self) -> bool {
        matches!(
            self,
            Self::Uint32 | Self::Int32 | Self::Uint16 | Self::Uint8
        )
    }

    /// Bytes of one 32x32 tile on a TT device (block floats: 64 exponent bytes + mantissas).
    pub fn tile_size_bytes(self) -> usize {
        let values = TILE_SIZE * TILE_SIZE;
        match self {
            Self::Bfloat8B => 64 + values,
            // Ternary is stored as BFLOAT4_B on the device.
            Self::Bfloat4B | Self::Ternary => 64 + values / 2,
            other => values * other.element_size().unwrap_or(4),
        }
    }

    /// Bytes a row-major page of `width` elements takes. Block-float types have no row-major form.
    pub fn row_bytes(self, width: usize) -> usize {
        width * self.element_size().unwrap_or(1)
    }
}

/// Memory layout of a tensor's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layout {
    RowMajor,
    /// 32x32 tiles; the last two dimensions are padded to multiples of 32.
    Tile,
}

/// Re-exports in TT-NN spelling.
pub const ROW_MAJOR_LAYOUT: Layout = Layout::RowMajor;
/// Re-exports in TT-NN spelling.
pub const TILE_LAYOUT: Layout = Layout::Tile;

/// Largest tensor rank supported (TT-NN tensors are at most 8-D; models use 4-D).
pub const MAX_RANK: usize = 8;

/// A tensor shape. `Copy` and allocation-free, so ops replayed from a trace never allocate for it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    dims: [usize; MAX_RANK],
    rank: u8,
}

impl Shape {
    /// A shape from its dimensions. Panics above `MAX_RANK` dimensions (a programming error);
    /// use [`Shape::try_new`] for untrusted input.
    pub fn new(dims: &[usize]) -> Self {
        match Self::try_new(dims) {
            Some(s) => s,
            None => panic!(
                "Shape::new: rank {} exceeds MAX_RANK {MAX_RANK}",
                dims.len()
            ),
        }
    }

    /// A shape from its dimensions, or `None` above `MAX_RANK` dimensions.
    pub fn try_new(dims: &[usize]) -> Option<Self> {
        if dims.len() > MAX_RANK {
            return None;
        }
        let mut d = [1usize; MAX_RANK];
        d[..dims.len()].copy_from_slice(dims);
        Some(Self {
            dims: d,
            rank: dims.len() as u8,
        })
    }

    pub fn rank(&self) -> usize {
        self.rank as usize
    }

    pub fn dims(&self) -> &[usize] {
        &self.dims[..self.rank()]
    }

    /// Number of elements.
    pub fn volume(&self) -> usize {
        self.dims().iter().product()
    }

    /// Dimension `i`, counting from the end when negative (`-1` is the last).
    pub fn dim(&self, i: isize) -> usize {
        let r = self.rank() as isize;
        let idx = if i < 0 { r + i } else { i };
        if idx < 0 || idx >= r {
            1
        } else {
            self.dims[idx as usize]
        }
    }

    /// The last dimension (1 for a scalar).
    pub fn last(&self) -> usize {
        self.dim(-1)
    }

    /// Product of all dimensions but the last: the number of rows of the 2-D view.
    pub fn rows(&self) -> usize {
        if self.rank() == 0 {
            1
        } else {
            self.dims()[..self.rank() - 1].iter().product()
        }
    }

    /// The shape as stored in `layout`: for tile layout the last two dimensions round up to 32
    /// (a rank-1 tensor is treated as `[1, n]`, as TT-NN does).
    pub fn padded(&self, layout: Layout) -> Shape {
        match layout {
            Layout::RowMajor => *self,
            Layout::Tile => {
                let mut s = if self.rank() < 2 {
                    let mut v = [1usize; 2];
                    if self.rank() == 1 {
                        v[1] = self.dims[0];
                    }
                    Shape::new(&v)
                } else {
                    *self
                };
                let r = s.rank();
                s.dims[r - 1] = s.dims[r - 1].div_ceil(TILE_SIZE) * TILE_SIZE;
                s.dims[r - 2] = s.dims[r - 2].div_ceil(TILE_SIZE) * TILE_SIZE;
                s
            }
        }
    }

    /// Same dims with the last one replaced.
    pub fn with_last(&self, last: usize) -> Shape {
        let mut s = *self;
        if s.rank == 0 {
            return Shape::new(&[last]);
        }
        s.dims[s.rank() - 1] = last;
        s
    }

    /// Same dims with dimension `i` (negative counts from the end) replaced.
    pub fn with_dim(&self, i: isize, v: usize) -> Shape {
        let mut s = *self;
        let r = s.rank() as isize;
        let idx = if i < 0 { r + i } else { i };
        if (0..r).contains(&idx) {
            s.dims[idx as usize] = v;
        }
        s
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Shape({:?})", self.dims())
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.dims())
    }
}

impl From<&[usize]> for Shape {
    fn from(d: &[usize]) -> Self {
        Shape::new(d)
    }
}

impl<const N: usize> From<[usize; N]> for Shape {
    fn from(d: [usize; N]) -> Self {
        Shape::new(&d)
    }
}

/// Where a buffer lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BufferType {
    Dram,
    L1,
    /// The small L1 region reserved by `l1_small_size` (used by a few TT kernels for scratch).
    L1Small,
}

/// How a buffer is spread over banks or cores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TensorMemoryLayout {
    /// Pages round-robin over all banks (DRAM channels or L1 of every core).
    Interleaved,
    /// The 2-D view is split by rows; each core holds a band of rows.
    HeightSharded,
    /// The 2-D view is split by columns; each core holds a band of columns.
    WidthSharded,
    /// The 2-D view is split both ways over a 2-D grid of cores.
    BlockSharded,
}

impl TensorMemoryLayout {
    pub fn is_sharded(self) -> bool {
        !matches!(self, Self::Interleaved)
    }
}

/// A Tensix core's logical coordinates in the compute grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct CoreCoord {
    pub x: usize,
    pub y: usize,
}

impl CoreCoord {
    pub const fn new(x: usize, y: usize) -> Self {
        Self { x, y }
    }
}

impl fmt::Display for CoreCoord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({}, {})", self.x, self.y)
    }
}

/// An inclusive rectangle of cores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CoreRange {
    pub start: CoreCoord,
    pub end: CoreCoord,
}

impl CoreRange {
    pub const fn new(start: CoreCoord, end: CoreCoord) -> Self {
        Self { start, end }
    }

    /// Number of cores in the rectangle (0 if `end` precedes `start`).
    pub fn num_cores(&self) -> usize {
        if self.end.x < self.start.x || self.end.y < self.start.y {
            return 0;
        }
        (self.end.x - self.start.x + 1) * (self.end.y - self.start.y + 1)
    }

    pub fn contains(&self, c: CoreCoord) -> bool {
        (self.start.x..=self.end.x).contains(&c.x) && (self.start.y..=self.end.y).contains(&c.y)
    }

    fn intersects(&self, o: &CoreRange) -> bool {
        self.start.x <= o.end.x
            && o.start.x <= self.end.x
            && self.start.y <= o.end.y
            && o.start.y <= self.end.y
    }
}

/// A set of non-overlapping core rectangles.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct CoreRangeSet {
    ranges: Vec<CoreRange>,
}

impl CoreRangeSet {
    /// A set from rectangles; `None` if two of them overlap.
    pub fn new(ranges: Vec<CoreRange>) -> Option<Self> {
        for (i, a) in ranges.iter().enumerate() {
            if ranges[i + 1..].iter().any(|b| a.intersects(b)) {
                return None;
            }
        }
        Some(Self { ranges })
    }

    /// One rectangle.
    pub fn from_range(r: CoreRange) -> Self {
        Self { ranges: vec![r] }
    }

    /// The first `num_cores` cores of a grid `grid_x` wide, filled row by row (as TT-NN's
    /// `num_cores_to_corerangeset(..., row_wise=true)`).
    pub fn num_cores_to_corerangeset(num_cores: usize, grid: CoreCoord) -> Self {
        let mut ranges = Vec::new();
        if grid.x == 0 || num_cores == 0 {
            return Self { ranges };
        }
        let full_rows = num_cores / grid.x;
        let rem = num_cores % grid.x;
        if full_rows > 0 {
            ranges.push(CoreRange::new(
                CoreCoord::new(0, 0),
                CoreCoord::new(grid.x - 1, full_rows - 1),
            ));
        }
        if rem > 0 {
            ranges.push(CoreRange::new(
                CoreCoord::new(0, full_rows),
                CoreCoord::new(rem - 1, full_rows),
            ));
        }
        Self { ranges }
    }

    pub fn ranges(&self) -> &[CoreRange] {
        &self.ranges
    }

    pub fn num_cores(&self) -> usize {
        self.ranges.iter().map(CoreRange::num_cores).sum()
    }

    /// The cores in shard order: row by row (`RowMajor`) or column by column (`ColMajor`)
    /// within each rectangle, rectangles in the order given.
    pub fn cores(&self, orientation: ShardOrientation) -> Vec<CoreCoord> {
        let mut out = Vec::with_capacity(self.num_cores());
        for r in &self.ranges {
            match orientation {
                ShardOrientation::RowMajor => {
                    for y in r.start.y..=r.end.y {
                        for x in r.start.x..=r.end.x {
                            out.push(CoreCoord::new(x, y));
                        }
                    }
                }
                ShardOrientation::ColMajor => {
                    for x in r.start.x..=r.end.x {
                        for y in r.start.y..=r.end.y {
                            out.push(CoreCoord::new(x, y));
                        }
                    }
                }
            }
        }
        out
    }

    /// The smallest rectangle holding every core.
    pub fn bounding_box(&self) -> Option<CoreRange> {
        let first = self.ranges.first()?;
        let mut bb = *first;
        for r in &self.ranges[1..] {
            bb.start.x = bb.start.x.min(r.start.x);
            bb.start.y = bb.start.y.min(r.start.y);
            bb.end.x = bb.end.x.max(r.end.x);
            bb.end.y = bb.end.y.max(r.end.y);
        }
        Some(bb)
    }
}

/// Order in which shards are assigned to the cores of a shard grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum ShardOrientation {
    #[default]
    RowMajor,
    ColMajor,
}

/// Which cores hold a sharded tensor and the shape of each core's shard (in elements of the
/// tensor's 2-D view: `[rows, columns]`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ShardSpec {
    pub grid: CoreRangeSet,
    pub shape: [usize; 2],
    pub orientation: ShardOrientation,
}

impl ShardSpec {
    pub fn new(grid: CoreRangeSet, shape: [usize; 2], orientation: ShardOrientation) -> Self {
        Self {
            grid,
            shape,
            orientation,
        }
    }
}

/// Where and how a tensor is stored on the device.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MemoryConfig {
    pub memory_layout: TensorMemoryLayout,
    pub buffer_type: BufferType,
    /// Required for sharded tensors; ops that take a sharded output config without a spec
    /// derive one (as TT-NN ops do from their program config).
    pub shard_spec: Option<ShardSpec>,
}

impl MemoryConfig {
    pub const fn interleaved(buffer_type: BufferType) -> Self {
        Self {
            memory_layout: TensorMemoryLayout::Interleaved,
            buffer_type,
            shard_spec: None,
        }
    }

    pub fn sharded(layout: TensorMemoryLayout, buffer_type: BufferType, spec: ShardSpec) -> Self {
        Self {
            memory_layout: layout,
            buffer_type,
            shard_spec: Some(spec),
        }
    }

    pub fn is_sharded(&self) -> bool {
        self.memory_layout.is_sharded()
    }
}

pub const DRAM_MEMORY_CONFIG: MemoryConfig = MemoryConfig::interleaved(BufferType::Dram);
pub const L1_MEMORY_CONFIG: MemoryConfig = MemoryConfig::interleaved(BufferType::L1);
pub const L1_SMALL_MEMORY_CONFIG: MemoryConfig = MemoryConfig::interleaved(BufferType::L1Small);
pub const L1_HEIGHT_SHARDED_MEMORY_CONFIG: MemoryConfig = MemoryConfig {
    memory_layout: TensorMemoryLayout::HeightSharded,
    buffer_type: BufferType::L1,
    shard_spec: None,
};
pub const L1_WIDTH_SHARDED_MEMORY_CONFIG: MemoryConfig = MemoryConfig {
    memory_layout: TensorMemoryLayout::WidthSharded,
    buffer_type: BufferType::L1,
    shard_spec: None,
};
pub const L1_BLOCK_SHARDED_MEMORY_CONFIG: MemoryConfig = MemoryConfig {
    memory_layout: TensorMemoryLayout::BlockSharded,
    buffer_type: BufferType::L1,
    shard_spec: None,
};

/// How a sharded memory config divides a tensor (TT-NN's `ShardStrategy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShardStrategy {
    Height,
    Width,
    Block,
}

/// TT-NN's `create_sharded_memory_config`: an L1 sharded config that splits the 2-D view of
/// `shape` evenly over `num_cores` cores of `grid` (height/width), or over a block grid of
/// `grid` (block). Shards are rounded up to whole tiles for tile layout.
pub fn create_sharded_memory_config(
    shape: Shape,
    grid: CoreCoord,
    num_cores: usize,
    strategy: ShardStrategy,
    orientation: ShardOrientation,
    layout: Layout,
) -> Option<MemoryConfig> {
    let padded = shape.padded(layout);
    let (rows, cols) = (padded.rows(), padded.last());
    let align = if layout == Layout::Tile { TILE_SIZE } else { 1 };
    let round = |v: usize| v.div_ceil(align) * align;
    if num_cores == 0 || num_cores > grid.x * grid.y {
        return None;
    }
    let (spec_grid, shard, layout_kind) = match strategy {
        ShardStrategy::Height => (
            CoreRangeSet::num_cores_to_corerangeset(num_cores, grid),
            [round(rows.div_ceil(num_cores)), cols],
            TensorMemoryLayout::HeightSharded,
        ),
        ShardStrategy::Width => (
            CoreRangeSet::num_cores_to_corerangeset(num_cores, grid),
            [rows, round(cols.div_ceil(num_cores))],
            TensorMemoryLayout::WidthSharded,
        ),
        ShardStrategy::Block => {
            let (gx, gy) = match orientation {
                ShardOrientation::RowMajor => (grid.x, grid.y),
                ShardOrientation::ColMajor => (grid.y, grid.x),
            };
            (
                CoreRangeSet::from_range(CoreRange::new(
                    CoreCoord::new(0, 0),
                    CoreCoord::new(grid.x - 1, grid.y - 1),
                )),
                [round(rows.div_ceil(gy)), round(cols.div_ceil(gx))],
                TensorMemoryLayout::BlockSharded,
            )
        }
    };
    Some(MemoryConfig::sharded(
        layout_kind,
        BufferType::L1,
        ShardSpec::new(spec_grid, shard, orientation),
    ))
}

/// Fidelity of the matrix engine's multiplies (number of mantissa passes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum MathFidelity {
    #[default]
    LoFi,
    HiFi2,
    HiFi3,
    HiFi4,
}

/// Per-op compute settings (TT-NN's `WormholeComputeKernelConfig`; Blackhole uses the same).
/// The host backend always computes in f32, so these only matter on a TT device; they are kept
/// so that the memory plan is the same table on both backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ComputeKernelConfig {
    pub math_fidelity: MathFidelity,
    pub math_approx_mode: bool,
    pub fp32_dest_acc_en: bool,
    pub packer_l1_acc: bool,
    pub dst_full_sync_en: bool,
}

impl Default for ComputeKernelConfig {
    /// TT-NN's defaults for `WormholeComputeKernelConfig`.
    fn default() -> Self {
        Self {
            math_fidelity: MathFidelity::LoFi,
            math_approx_mode: true,
            fp32_dest_acc_en: false,
            packer_l1_acc: false,
            dst_full_sync_en: false,
        }
    }
}

impl ComputeKernelConfig {
    /// tt_transformers' `compute_kernel_config_hifi2`.
    pub fn hifi2() -> Self {
        Self {
            math_fidelity: MathFidelity::HiFi2,
            math_approx_mode: true,
            fp32_dest_acc_en: true,
            packer_l1_acc: true,
            dst_full_sync_en: false,
        }
    }

    /// tt_transformers' `compute_kernel_config_hifi4`.
    pub fn hifi4() -> Self {
        Self {
            math_fidelity: MathFidelity::HiFi4,
            math_approx_mode: false,
            fp32_dest_acc_en: true,
            packer_l1_acc: true,
            dst_full_sync_en: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_padding() {
        let s = Shape::new(&[1, 1, 5, 70]);
        assert_eq!(s.padded(Layout::Tile).dims(), &[1, 1, 32, 96]);
        assert_eq!(s.padded(Layout::RowMajor), s);
        assert_eq!(Shape::new(&[40]).padded(Layout::Tile).dims(), &[32, 64]);
        assert_eq!(s.rows(), 5);
        assert_eq!(s.volume(), 350);
    }

    #[test]
    fn core_range_sets() {
        let g = CoreCoord::new(8, 8);
        let s = CoreRangeSet::num_cores_to_corerangeset(20, g);
        assert_eq!(s.num_cores(), 20);
        assert_eq!(
            s.cores(ShardOrientation::RowMajor)[19],
            CoreCoord::new(3, 2)
        );
        let overlapping = vec![
            CoreRange::new(CoreCoord::new(0, 0), CoreCoord::new(2, 2)),
            CoreRange::new(CoreCoord::new(2, 2), CoreCoord::new(3, 3)),
        ];
        assert!(CoreRangeSet::new(overlapping).is_none());
    }

    #[test]
    fn tile_bytes() {
        assert_eq!(DataType::Bfloat16.tile_size_bytes(), 2048);
        assert_eq!(DataType::Bfloat8B.tile_size_bytes(), 1088);
        assert_eq!(DataType::Bfloat4B.tile_size_bytes(), 576);
        assert_eq!(DataType::Float32.tile_size_bytes(), 4096);
    }
}
