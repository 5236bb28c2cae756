//! `Device`: an opened (real or modelled) Tenstorrent chip, its memory accounting and backend.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::host::HostDevice;
use crate::tt::{TtBackend, TtDevice};
use crate::types::{
    BufferType, CoreCoord, DataType, Layout, MemoryConfig, Shape, TILE_SIZE, TensorMemoryLayout,
};

/// Figures of a Tenstorrent chip that the host backend models: the compute grid, L1 per core,
/// DRAM size and banks. Public so that tests can model a chip with a deliberately small L1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChipSpec {
    pub name: &'static str,
    /// Tensix compute grid as TT-NN reports it (`compute_with_storage_grid_size`).
    pub grid: CoreCoord,
    /// L1 SRAM per Tensix core, bytes.
    pub l1_size_per_core: u64,
    /// L1 bytes per core that firmware and kernels reserve below the allocator's base.
    pub l1_reserved_per_core: u64,
    /// Device DRAM, bytes.
    pub dram_size: u64,
    /// DRAM banks that interleaved buffers are spread over.
    pub dram_banks: usize,
    /// Peak DRAM bandwidth, bytes/s (for reports; the host does not throttle).
    pub dram_bandwidth: u64,
    /// Buffer address alignment in DRAM and in L1, bytes.
    pub dram_alignment: u64,
    pub l1_alignment: u64,
}

impl ChipSpec {
    /// Wormhole n150 (one Wormhole B0 chip).
    ///
    /// Sources: docs.tenstorrent.com/aibs/wormhole/specifications.html (12 GB GDDR6, 288 GB/s);
    /// tt-metal `tt_metal/soc_descriptors/wormhole_b0_80_arch.yaml` (`worker_l1_size: 1499136`,
    /// 12 `dram_views` of 1 GiB: the allocator's 12 banks); `tt_metal/core_descriptors/
    /// wormhole_b0_80_arch.yaml` (`nebula_x1` compute grid 8x8); the L1 reserved below the
    /// allocator's base is MEM_MAP_END of `wormhole/dev_mem_map.h` plus the 69 KiB kernel-config
    /// ring of the HAL (about 103 KiB; it moves between tt-metal releases).
    pub fn wormhole_n150() -> Self {
        Self {
            name: "wormhole_b0 (n150)",
            grid: CoreCoord::new(8, 8),
            l1_size_per_core: 1464 * 1024,
            l1_reserved_per_core: 103_424,
            dram_size: 12 * 1024 * 1024 * 1024,
            dram_banks: 12,
            dram_bandwidth: 288_000_000_000,
            dram_alignment: 32,
            l1_alignment: 16,
        }
    }

    /// Blackhole p150a (one Blackhole chip).
    ///
    /// Sources: docs.tenstorrent.com Blackhole specifications (32 GB GDDR6, 512 GB/s);
    /// tt-metal `tt_metal/soc_descriptors/blackhole_140_arch.yaml` (`worker_l1_size: 1572864`,
    /// 8 `dram_views`: the allocator's 8 banks); `tt_metal/core_descriptors/blackhole_140_arch.yaml`
    /// (compute grid 11x10 with two harvested columns, which p150 firmware since v19.5.0 enforces,
    /// tt-metal PR #47015; 13x10 on older firmware); reserved L1 from `blackhole/dev_mem_map.h`
    /// plus the HAL's kernel-config ring (about 109 KiB).
    pub fn blackhole_p150a() -> Self {
        Self {
            name: "blackhole (p150a)",
            grid: CoreCoord::new(11, 10),
            l1_size_per_core: 1536 * 1024,
            l1_reserved_per_core: 111_360,
            dram_size: 32 * 1024 * 1024 * 1024,
            dram_banks: 8,
            dram_bandwidth: 512_000_000_000,
            dram_alignment: 64,
            l1_alignment: 16,
        }
    }

    /// Number of Tensix cores in the compute grid.
    pub fn num_cores(&self) -> usize {
        self.grid.x * self.grid.y
    }
}

/// Instruction sets the host backend's kernels can use, best last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HostIsa {
    /// Portable Rust (the reference every SIMD path is tested against).
    Scalar,
    /// x86-64 AVX2 with FMA (256-bit integer SIMD, `maddubs`; every AVX2 CPU has FMA).
    Avx2,
    /// x86-64 AVX-512 F/BW with VNNI (`vpdpbusd`). Where the CPU also has VBMI and GFNI (Ice
    /// Lake, Zen 4 and later), the `Lut3` GEMV uses them too; otherwise it runs the AVX2 one.
    /// The `Base3` kernels need VBMI2 as well (the same CPUs).
    Avx512Vnni,
}

impl HostIsa {
    /// Whether this CPU can run the path.
    pub fn is_supported(self) -> bool {
        match self {
            Self::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Self::Avx512Vnni => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
                    && std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The best path this CPU supports.
    pub fn detect() -> Self {
        [Self::Avx512Vnni, Self::Avx2]
            .into_iter()
            .find(|i| i.is_supported())
            .unwrap_or(Self::Scalar)
    }

    /// Every path this CPU supports (for tests that compare them).
    pub fn supported_list() -> Vec<Self> {
        [Self::Scalar, Self::Avx2, Self::Avx512Vnni]
            .into_iter()
            .filter(|i| i.is_supported())
            .collect()
    }

    /// `BITNET_HOST_ISA` (`scalar`, `avx2`, `avx512vnni`), read when a `DeviceSpec` is made:
    /// how a user or a test forces a path.
    pub fn from_env() -> Option<Self> {
        std::env::var("BITNET_HOST_ISA")
            .ok()
            .and_then(|v| v.parse().ok())
    }
}

impl std::str::FromStr for HostIsa {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "scalar" => Ok(Self::Scalar),
            "avx2" => Ok(Self::Avx2),
            "avx512vnni" | "avx512" => Ok(Self::Avx512Vnni),
            other => Err(format!(
                "unknown host ISA {other:?} (scalar, avx2, avx512vnni)"
            )),
        }
    }
}

/// How the host backend stores ternary weights on its device (host tensors are always
/// [`TernaryLayout::Bits2`]; `to_device` repacks).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum TernaryLayout {
    /// 2 bits per value, one row after the other: the `maddubs` kernels' layout.
    Bits2,
    /// 5 bits per 3 values (1.67 bits per weight) in blocks of 32 rows, read by a table-lookup
    /// GEMV (bitnet.cpp's TL2 idea): a sixth less memory and weight traffic than `Bits2`. Each
    /// group is a 4-bit magnitude and a sign, which `pshufb` (AVX2) looks up.
    #[default]
    Lut3,
    /// `Lut3`'s blocks and size, each group stored as one 5-bit code (its balanced-ternary
    /// value) in 16-bit words, which AVX-512 `vpermw` looks up 32 rows at a time: about twice
    /// the `Lut3` GEMV's arithmetic rate. The preferred layout where the CPU has AVX-512 BW,
    /// VNNI and VBMI2 ([`TernaryLayout::preferred`]); other paths run its scalar kernel.
    Base3,
}

impl TernaryLayout {
    /// Bytes a `rows x row_len` ternary matrix takes in this layout (padding included).
    pub fn stored_bytes(self, rows: usize, row_len: usize) -> usize {
        match self {
            Self::Bits2 => rows * crate::host::ternary::TernaryData::row_bytes(row_len),
            Self::Lut3 | Self::Base3 => crate::host::ternary_lut::storage_bytes(rows, row_len),
        }
    }

    /// The layout with the fastest kernels on `isa` on this CPU: `Base3` where its AVX-512
    /// kernels run, else `Lut3`.
    pub fn preferred(isa: HostIsa) -> Self {
        if crate::host::kernels::ternary_lut::has_base3_kernels(isa) {
            Self::Base3
        } else {
            Self::Lut3
        }
    }

    /// `BITNET_HOST_TERNARY_LAYOUT` (`bits2`, `lut3`, `base3`), read when a `DeviceSpec` is made.
    pub fn from_env() -> Option<Self> {
        std::env::var("BITNET_HOST_TERNARY_LAYOUT")
            .ok()
            .and_then(|v| v.parse().ok())
    }
}

impl std::str::FromStr for TernaryLayout {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "bits2" => Ok(Self::Bits2),
            "lut3" => Ok(Self::Lut3),
            "base3" => Ok(Self::Base3),
            other => Err(format!(
                "unknown ternary layout {other:?} (bits2, lut3, base3)"
            )),
        }
    }
}

/// Which backend runs a device's ops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BackendKind {
    /// The CPU: a functional model of the chip and a fast inference engine.
    #[default]
    Host,
    /// A Tenstorrent chip through TT-NN, via the C ABI shim `libttnn_c.so` (ttnn-sys), loaded
    /// when the device opens (see [`DeviceSpec::ttnn_lib`] for where it is looked for).
    Tenstorrent,
}

impl BackendKind {
    /// The name errors and reports use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::Tenstorrent => crate::tt::BACKEND,
        }
    }
}

/// Everything `Device::open` needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceSpec {
    pub backend: BackendKind,
    pub chip: ChipSpec,
    /// Bytes per core reserved for the `L1Small` buffer type (TT-NN's `l1_small_size`).
    pub l1_small_size: u64,
    /// Bytes of DRAM reserved for captured traces (TT-NN's `trace_region_size`).
    pub trace_region_size: u64,
    /// Host backend: worker threads (including the caller). `None`: one per physical core.
    pub num_threads: Option<usize>,
    /// Host backend: the kernel instruction set. `None`: the best this CPU supports.
    /// `DeviceSpec::default()` takes it from `BITNET_HOST_ISA` when set.
    pub host_isa: Option<HostIsa>,
    /// Host backend: how ternary weights are stored. `None`: `BITNET_HOST_TERNARY_LAYOUT` when
    /// set, else the best for the ISA ([`TernaryLayout::preferred`]).
    pub host_ternary_layout: Option<TernaryLayout>,
    /// Tenstorrent backend: the TT-NN shim library to load. `None` searches, in order:
    /// `$TTNN_C_LIB`; `libttnn_c.so` (or `.so.1`) next to the running executable, then in its
    /// parent directory (where `cargo build -p ttnn-sys` puts it for test binaries in
    /// `target/<profile>/deps/`); then under `$TT_METAL_HOME` in `build/lib`,
    /// `build_Release/lib`, `build_RelWithDebInfo/lib`, `build_Debug/lib`. A path given here (or
    /// in `TTNN_C_LIB`) is the only one tried. The variables are read by `Device::open` only.
    pub ttnn_lib: Option<PathBuf>,
    /// Tenstorrent backend: which chip to open (TT-NN's `device_id`).
    pub device_id: u32,
}

impl Default for DeviceSpec {
    /// A Wormhole n150 on the host backend with tt_transformers' text-demo reservations
    /// (`trace_region_size` 30 MB, no L1_SMALL region).
    fn default() -> Self {
        Self {
            backend: BackendKind::Host,
            chip: ChipSpec::wormhole_n150(),
            l1_small_size: 0,
            trace_region_size: 30_000_000,
            num_threads: None,
            host_isa: HostIsa::from_env(),
            host_ternary_layout: TernaryLayout::from_env(),
            ttnn_lib: None,
            device_id: 0,
        }
    }
}

impl DeviceSpec {
    pub fn with_chip(mut self, chip: ChipSpec) -> Self {
        self.chip = chip;
        self
    }

    pub fn with_threads(mut self, threads: usize) -> Self {
        self.num_threads = Some(threads);
        self
    }

    /// The host backend storing ternary weights in `layout`.
    pub fn with_ternary_layout(mut self, layout: TernaryLayout) -> Self {
        self.host_ternary_layout = Some(layout);
        self
    }

    pub fn with_backend(mut self, backend: BackendKind) -> Self {
        self.backend = backend;
        self
    }

    /// The Tenstorrent backend with the shim at `path` (see [`DeviceSpec::ttnn_lib`]).
    pub fn with_ttnn_lib(mut self, path: impl Into<PathBuf>) -> Self {
        self.ttnn_lib = Some(path.into());
        self
    }
}

/// One command name's share of the host backend's time (see [`Device::op_profile`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpTime {
    /// The command: the op, with its shape where that decides its cost
    /// (`BitLinear 2560x6912`: K x N).
    pub name: String,
    /// Times it ran.
    pub calls: u64,
    /// Wall time of all those runs.
    pub total: std::time::Duration,
}

/// How much memory a buffer takes and where (see [`Device::buffer_footprint`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferFootprint {
    pub buffer_type: BufferType,
    /// Bytes over all banks or cores, padding and alignment included.
    pub total_bytes: u64,
    /// L1 buffers: bytes on each core that holds part of the buffer (0 for DRAM).
    pub bytes_per_core: u64,
    /// L1 buffers: how many cores hold part of it (0 for DRAM).
    pub num_cores: usize,
}

/// Memory in use, at peak and in all, for one kind of memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MemoryUsage {
    pub in_use: u64,
    pub peak: u64,
    pub capacity: u64,
}

/// `Device::memory_report()`: DRAM and L1 (summed over cores; `l1_max_core` is the fullest core).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MemoryReport {
    pub dram: MemoryUsage,
    pub l1: MemoryUsage,
    pub l1_max_core: MemoryUsage,
    pub l1_small: MemoryUsage,
    /// Traces captured and not yet released.
    pub live_traces: usize,
}

static NEXT_DEVICE_ID: AtomicU32 = AtomicU32::new(0);

pub(crate) struct DeviceInner {
    pub id: u32,
    pub spec: DeviceSpec,
    pub allocator: Arc<Mutex<Allocator>>,
    pub backend: BackendImpl,
}

pub(crate) enum BackendImpl {
    Host(HostDevice),
    Tt(TtBackend),
}

/// An open device. Cheap to clone (shared handle); tensors and traces keep it alive.
#[derive(Clone)]
pub struct Device {
    pub(crate) inner: Arc<DeviceInner>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("id", &self.inner.id)
            .field("backend", &self.inner.spec.backend)
            .field("chip", &self.inner.spec.chip.name)
            .finish()
    }
}

impl PartialEq for Device {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}
impl Eq for Device {}

impl Device {
    /// Opens a device as `spec` describes.
    pub fn open(spec: DeviceSpec) -> Result<Self> {
        let chip = &spec.chip;
        let op = "Device::open";
        if chip.grid.x == 0 || chip.grid.y == 0 || chip.dram_banks == 0 {
            return Err(Error::arg(
                op,
                "the chip needs a non-empty grid and at least one DRAM bank",
            ));
        }
        let l1_avail = chip
            .l1_size_per_core
            .checked_sub(chip.l1_reserved_per_core + spec.l1_small_size)
            .ok_or_else(|| {
                Error::arg(
                    op,
                    format!(
                        "l1_small_size {} leaves no L1 on a core of {} bytes ({} reserved)",
                        spec.l1_small_size, chip.l1_size_per_core, chip.l1_reserved_per_core
                    ),
                )
            })?;
        let dram_avail = chip
            .dram_size
            .checked_sub(spec.trace_region_size)
            .ok_or_else(|| {
                Error::arg(
                    op,
                    format!(
                        "trace_region_size {} exceeds DRAM ({} bytes)",
                        spec.trace_region_size, chip.dram_size
                    ),
                )
            })?;
        let allocator = Arc::new(Mutex::new(Allocator::new(
            chip.num_cores(),
            l1_avail,
            spec.l1_small_size,
            dram_avail,
        )));
        let mut spec = spec;
        let backend = match spec.backend {
            BackendKind::Host => BackendImpl::Host(HostDevice::new(&spec)?),
            BackendKind::Tenstorrent => {
                let dev = TtDevice::open(&spec)?;
                // Shard specs and plans are derived from the real grid (harvesting varies).
                spec.chip.grid = dev.grid();
                BackendImpl::Tt(TtBackend { dev: Arc::new(dev) })
            }
        };
        Ok(Self {
            inner: Arc::new(DeviceInner {
                id: NEXT_DEVICE_ID.fetch_add(1, Ordering::Relaxed),
                spec,
                allocator,
                backend,
            }),
        })
    }

    /// The device's id (unique in this process).
    pub fn id(&self) -> u32 {
        self.inner.id
    }

    pub fn spec(&self) -> &DeviceSpec {
        &self.inner.spec
    }

    pub fn backend(&self) -> BackendKind {
        self.inner.spec.backend
    }

    /// TT-NN's `compute_with_storage_grid_size()` (on the Tenstorrent backend, the chip's, as
    /// the library reported it at open).
    pub fn compute_with_storage_grid_size(&self) -> CoreCoord {
        self.inner.spec.chip.grid
    }

    /// Whether `bitlinear`'s `input_rms_norm` runs inside the bitlinear kernel (the host
    /// backend) rather than as a separate `rms_norm` first (a Tenstorrent chip, where TT-NN has
    /// no such kernel). A model passes its norms into the BitLinears only when this holds;
    /// otherwise a norm read by several BitLinears would run once per reader.
    pub fn fuses_bitlinear_input_norm(&self) -> bool {
        self.inner.spec.backend == BackendKind::Host
    }

    /// The float dtype this device computes activations in natively: Float32 on the host
    /// backend (its kernels compute in f32), Bfloat16 on a Tenstorrent chip. What a model uses
    /// for activations unless told otherwise.
    pub fn compute_dtype(&self) -> DataType {
        match self.inner.spec.backend {
            BackendKind::Host => DataType::Float32,
            BackendKind::Tenstorrent => DataType::Bfloat16,
        }
    }

    /// The instruction set the host backend's kernels use (`None` on the Tenstorrent backend,
    /// whose kernels run on the chip).
    pub fn host_isa(&self) -> Option<HostIsa> {
        match &self.inner.backend {
            BackendImpl::Host(h) => Some(h.isa),
            BackendImpl::Tt(_) => None,
        }
    }

    /// How the host backend stores ternary weights (`None` on the Tenstorrent backend).
    pub fn host_ternary_layout(&self) -> Option<TernaryLayout> {
        match &self.inner.backend {
            BackendImpl::Host(h) => Some(h.ternary_layout),
            BackendImpl::Tt(_) => None,
        }
    }

    /// Worker threads the host backend runs kernels on (0 on the Tenstorrent backend, whose
    /// kernels run on the chip).
    pub fn num_threads(&self) -> usize {
        match &self.inner.backend {
            BackendImpl::Host(h) => h.pool.num_threads(),
            BackendImpl::Tt(_) => 0,
        }
    }

    /// The Tenstorrent backend's shim: its path and what it says it implements. `None` on the
    /// host backend.
    pub fn ttnn_library(&self) -> Option<(std::path::PathBuf, String)> {
        match &self.inner.backend {
            BackendImpl::Host(_) => None,
            BackendImpl::Tt(tt) => Some((
                tt.dev.library_path().to_path_buf(),
                tt.dev.implementation().to_string(),
            )),
        }
    }

    /// Memory in use, peak and capacity. On the Tenstorrent backend the figures come from
    /// TT-NN's allocator statistics (see [`Device::try_memory_report`]); a failed query reports
    /// zeros.
    pub fn memory_report(&self) -> MemoryReport {
        self.try_memory_report().unwrap_or_default()
    }

    /// [`Device::memory_report`], with the Tenstorrent backend's query errors. TT-NN reports
    /// per-bank figures: totals are scaled by the chip's DRAM banks and the core grid, and peaks
    /// are sampled when a report is made.
    pub fn try_memory_report(&self) -> Result<MemoryReport> {
        match &self.inner.backend {
            BackendImpl::Host(h) => {
                let a = self
                    .inner
                    .allocator
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let mut r = a.report();
                r.live_traces = h.live_traces();
                Ok(r)
            }
            BackendImpl::Tt(tt) => tt.dev.memory_report(&self.inner.spec.chip),
        }
    }

    /// Host backend: starts or stops the op profile, the wall time of every command run
    /// (eagerly or in a trace replay), summed per command name. Off when a device opens;
    /// profiling costs two clock reads per command. The Tenstorrent backend has tt-metal's
    /// device profiler (Tracy) for this and fails with `NotSupported`.
    pub fn set_op_profiling(&self, on: bool) -> Result<()> {
        match &self.inner.backend {
            BackendImpl::Host(h) => {
                h.set_op_profiling(on);
                Ok(())
            }
            BackendImpl::Tt(_) => Err(Error::NotSupported {
                op: "Device::set_op_profiling",
                what: "the op profile (use tt-metal's device profiler)".into(),
                backend: "tenstorrent",
            }),
        }
    }

    /// The op profile since the last [`Device::reset_op_profile`]: one entry per command name
    /// that ran, in order of first appearance (empty when profiling never ran, and on the
    /// Tenstorrent backend).
    pub fn op_profile(&self) -> Vec<OpTime> {
        match &self.inner.backend {
            BackendImpl::Host(h) => h.op_profile(),
            BackendImpl::Tt(_) => Vec::new(),
        }
    }

    /// Zeroes the op profile (to measure one phase).
    pub fn reset_op_profile(&self) {
        if let BackendImpl::Host(h) = &self.inner.backend {
            h.reset_op_profile();
        }
    }

    /// Resets peak figures to the current use (to measure one phase).
    pub fn reset_peak_memory(&self) {
        match &self.inner.backend {
            BackendImpl::Host(_) => self
                .inner
                .allocator
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .reset_peaks(),
            BackendImpl::Tt(tt) => tt.dev.reset_peaks(&self.inner.spec.chip),
        }
    }

    /// The backend that runs this device's ops; each op matches on it once.
    pub(crate) fn backend_impl(&self) -> &BackendImpl {
        &self.inner.backend
    }

    /// Fails with `TraceCaptureActive` while a trace is being captured (host writes and reads,
    /// device allocation from host data).
    pub(crate) fn ensure_not_capturing(&self, op: &'static str) -> Result<()> {
        match &self.inner.backend {
            BackendImpl::Host(h) => h.ensure_not_capturing(op),
            BackendImpl::Tt(tt) => tt.dev.ensure_not_capturing(op),
        }
    }

    /// Where a tensor of `shape`/`dtype`/`layout` would go under `mc`, without allocating it:
    /// what a memory plan checks before the first op runs. Errors for an invalid config.
    pub fn buffer_footprint(
        &self,
        shape: Shape,
        dtype: DataType,
        layout: Layout,
        mc: &MemoryConfig,
    ) -> Result<BufferFootprint> {
        let plan = buffer_plan(
            "Device::buffer_footprint",
            &self.inner.spec.chip,
            shape,
            dtype,
            layout,
            mc,
        )?;
        Ok(match plan {
            BufferPlan::Dram { bytes } => BufferFootprint {
                buffer_type: BufferType::Dram,
                total_bytes: bytes,
                bytes_per_core: 0,
                num_cores: 0,
            },
            BufferPlan::L1 {
                small,
                ref cores,
                bytes_per_core,
            } => BufferFootprint {
                buffer_type: if small {
                    BufferType::L1Small
                } else {
                    BufferType::L1
                },
                total_bytes: plan.total_bytes(),
                bytes_per_core,
                num_cores: cores.len(),
            },
        })
    }

    /// Reserves device memory for a tensor of `shape`/`dtype`/`layout` under `mc`, as the chip's
    /// allocator would: pages (tiles, or rows for row-major) interleaved over banks, or shards on
    /// the cores the shard spec names.
    pub(crate) fn allocate(
        &self,
        op: &'static str,
        shape: Shape,
        dtype: DataType,
        layout: Layout,
        mc: &MemoryConfig,
    ) -> Result<Allocation> {
        let plan = buffer_plan(op, &self.inner.spec.chip, shape, dtype, layout, mc)?;
        let mut a = self
            .inner
            .allocator
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        a.reserve(op, &plan, &self.inner.spec.chip)?;
        Ok(Allocation {
            allocator: Arc::clone(&self.inner.allocator),
            plan,
        })
    }
}

/// Where a buffer's bytes go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum BufferPlan {
    Dram {
        bytes: u64,
    },
    /// Same number of bytes on each listed core (core indices, row-major over the grid).
    L1 {
        small: bool,
        cores: Vec<usize>,
        bytes_per_core: u64,
    },
}

impl BufferPlan {
    pub fn total_bytes(&self) -> u64 {
        match self {
            Self::Dram { bytes } => *bytes,
            Self::L1 {
                cores,
                bytes_per_core,
                ..
            } => cores.len() as u64 * bytes_per_core,
        }
    }
}

fn align(v: u64, a: u64) -> u64 {
    v.div_ceil(a.max(1)) * a.max(1)
}

/// Bytes of a TT buffer holding a tensor of `shape`/`dtype`/`layout` (all its pages).
pub(crate) fn buffer_bytes(shape: Shape, dtype: DataType, layout: Layout) -> u64 {
    let (page, n) = pages(shape, dtype, layout);
    page * n
}

/// The page size and page count of a tensor as a TT buffer stores it.
fn pages(shape: Shape, dtype: DataType, layout: Layout) -> (u64, u64) {
    match layout {
        Layout::Tile => {
            let p = shape.padded(Layout::Tile);
            (
                dtype.tile_size_bytes() as u64,
                (p.volume() / (TILE_SIZE * TILE_SIZE)) as u64,
            )
        }
        Layout::RowMajor => (dtype.row_bytes(shape.last()) as u64, shape.rows() as u64),
    }
}

/// Validates `mc` for the tensor and computes where its bytes go.
pub(crate) fn buffer_plan(
    op: &'static str,
    chip: &ChipSpec,
    shape: Shape,
    dtype: DataType,
    layout: Layout,
    mc: &MemoryConfig,
) -> Result<BufferPlan> {
    if dtype.requires_tile_layout() && layout != Layout::Tile {
        return Err(Error::LayoutMismatch {
            op,
            what: format!("a {dtype:?} tensor"),
            got: layout,
            expected: Layout::Tile,
        });
    }
    let (page_size, num_pages) = pages(shape, dtype, layout);
    let alignment = match mc.buffer_type {
        BufferType::Dram => chip.dram_alignment,
        BufferType::L1 | BufferType::L1Small => chip.l1_alignment,
    };
    let page = align(page_size.max(1), alignment);
    if !mc.is_sharded() {
        if mc.shard_spec.is_some() {
            return Err(Error::mem_config(
                op,
                "an interleaved memory config cannot have a shard spec",
            ));
        }
        return Ok(match mc.buffer_type {
            BufferType::Dram => {
                let banks = chip.dram_banks as u64;
                BufferPlan::Dram {
                    bytes: num_pages.div_ceil(banks) * page * banks,
                }
            }
            BufferType::L1 | BufferType::L1Small => {
                let n = chip.num_cores();
                BufferPlan::L1 {
                    small: mc.buffer_type == BufferType::L1Small,
                    cores: (0..n).collect(),
                    bytes_per_core: num_pages.div_ceil(n as u64) * page,
                }
            }
        });
    }
    let spec = mc.shard_spec.as_ref().ok_or_else(|| {
        Error::mem_config(op, format!("{:?} needs a shard spec", mc.memory_layout))
    })?;
    let padded = shape.padded(layout);
    let (height, width) = (padded.rows(), padded.last());
    let [sh, sw] = spec.shape;
    if sh == 0 || sw == 0 {
        return Err(Error::mem_config(
            op,
            format!("shard shape {:?} is empty", spec.shape),
        ));
    }
    if layout == Layout::Tile && (sh % TILE_SIZE != 0 || sw % TILE_SIZE != 0) {
        return Err(Error::mem_config(
            op,
            format!(
                "shard shape {:?} must be whole 32x32 tiles for tile layout",
                spec.shape
            ),
        ));
    }
    let n_cores = spec.grid.num_cores();
    let (shards_h, shards_w) = (height.div_ceil(sh), width.div_ceil(sw));
    match mc.memory_layout {
        TensorMemoryLayout::HeightSharded => {
            if sw != width {
                return Err(Error::mem_config(
                    op,
                    format!(
                        "height sharding needs shard width {width} (the tensor's width), got {sw}"
                    ),
                ));
            }
            if shards_h > n_cores {
                return Err(Error::mem_config(
                    op,
                    format!(
                        "{shards_h} height shards of {sh} rows need more than the {n_cores} cores in the shard grid"
                    ),
                ));
            }
        }
        TensorMemoryLayout::WidthSharded => {
            if sh != height {
                return Err(Error::mem_config(
                    op,
                    format!(
                        "width sharding needs shard height {height} (the tensor's height), got {sh}"
                    ),
                ));
            }
            if shards_w > n_cores {
                return Err(Error::mem_config(
                    op,
                    format!(
                        "{shards_w} width shards of {sw} columns need more than the {n_cores} cores in the shard grid"
                    ),
                ));
            }
        }
        TensorMemoryLayout::BlockSharded => {
            let bb = spec
                .grid
                .bounding_box()
                .ok_or_else(|| Error::mem_config(op, "empty shard grid"))?;
            let (gx, gy) = (bb.end.x - bb.start.x + 1, bb.end.y - bb.start.y + 1);
            let (cols, rows) = match spec.orientation {
                crate::types::ShardOrientation::RowMajor => (gx, gy),
                crate::types::ShardOrientation::ColMajor => (gy, gx),
            };
            if spec.grid.ranges().len() != 1 || shards_w > cols || shards_h > rows {
                return Err(Error::mem_config(
                    op,
                    format!(
                        "block sharding of a {height}x{width} view into {sh}x{sw} shards needs a {shards_h}x{shards_w} core rectangle; the grid is {rows}x{cols}"
                    ),
                ));
            }
        }
        TensorMemoryLayout::Interleaved => unreachable!("checked above"),
    }
    let shard_bytes = match layout {
        Layout::Tile => (sh * sw / (TILE_SIZE * TILE_SIZE)) as u64 * dtype.tile_size_bytes() as u64,
        Layout::RowMajor => sh as u64 * align(dtype.row_bytes(sw) as u64, alignment),
    };
    match mc.buffer_type {
        BufferType::Dram => {
            if n_cores > chip.dram_banks {
                return Err(Error::mem_config(
                    op,
                    format!(
                        "a DRAM-sharded grid of {n_cores} exceeds the {} DRAM banks",
                        chip.dram_banks
                    ),
                ));
            }
            Ok(BufferPlan::Dram {
                bytes: shard_bytes * n_cores as u64,
            })
        }
        BufferType::L1 | BufferType::L1Small => {
            let mut cores = Vec::with_capacity(n_cores);
            for c in spec.grid.cores(spec.orientation) {
                if c.x >= chip.grid.x || c.y >= chip.grid.y {
                    return Err(Error::mem_config(
                        op,
                        format!(
                            "shard grid core {c} is outside the {}x{} compute grid",
                            chip.grid.x, chip.grid.y
                        ),
                    ));
                }
                cores.push(c.y * chip.grid.x + c.x);
            }
            Ok(BufferPlan::L1 {
                small: mc.buffer_type == BufferType::L1Small,
                cores,
                bytes_per_core: align(shard_bytes, alignment),
            })
        }
    }
}

/// Counters of what is allocated where.
#[derive(Debug)]
pub(crate) struct Allocator {
    dram: MemoryUsage,
    l1_capacity_per_core: u64,
    l1_small_capacity_per_core: u64,
    l1_used: Vec<u64>,
    l1_small_used: Vec<u64>,
    l1_total: MemoryUsage,
    l1_core_peak: u64,
    l1_small_total: MemoryUsage,
}

impl Allocator {
    fn new(cores: usize, l1_per_core: u64, l1_small_per_core: u64, dram: u64) -> Self {
        Self {
            dram: MemoryUsage {
                in_use: 0,
                peak: 0,
                capacity: dram,
            },
            l1_capacity_per_core: l1_per_core,
            l1_small_capacity_per_core: l1_small_per_core,
            l1_used: vec![0; cores],
            l1_small_used: vec![0; cores],
            l1_total: MemoryUsage {
                in_use: 0,
                peak: 0,
                capacity: l1_per_core * cores as u64,
            },
            l1_core_peak: 0,
            l1_small_total: MemoryUsage {
                in_use: 0,
                peak: 0,
                capacity: l1_small_per_core * cores as u64,
            },
        }
    }

    fn reserve(&mut self, op: &'static str, plan: &BufferPlan, chip: &ChipSpec) -> Result<()> {
        match plan {
            BufferPlan::Dram { bytes } => {
                let avail = self.dram.capacity - self.dram.in_use;
                if *bytes > avail {
                    return Err(Error::OutOfMemory {
                        op,
                        buffer_type: BufferType::Dram,
                        requested: *bytes,
                        available: avail,
                        core: None,
                    });
                }
                self.dram.in_use += bytes;
                self.dram.peak = self.dram.peak.max(self.dram.in_use);
            }
            BufferPlan::L1 {
                small,
                cores,
                bytes_per_core,
            } => {
                let (used, cap, bt) = if *small {
                    (
                        &mut self.l1_small_used,
                        self.l1_small_capacity_per_core,
                        BufferType::L1Small,
                    )
                } else {
                    (&mut self.l1_used, self.l1_capacity_per_core, BufferType::L1)
                };
                for &c in cores {
                    let avail = cap - used[c];
                    if *bytes_per_core > avail {
                        return Err(Error::OutOfMemory {
                            op,
                            buffer_type: bt,
                            requested: *bytes_per_core,
                            available: avail,
                            core: Some(CoreCoord::new(c % chip.grid.x, c / chip.grid.x)),
                        });
                    }
                }
                let mut max_core = 0;
                for &c in cores {
                    used[c] += bytes_per_core;
                    max_core = max_core.max(used[c]);
                }
                let total = plan.total_bytes();
                let t = if *small {
                    &mut self.l1_small_total
                } else {
                    &mut self.l1_total
                };
                t.in_use += total;
                t.peak = t.peak.max(t.in_use);
                if !*small {
                    self.l1_core_peak = self.l1_core_peak.max(max_core);
                }
            }
        }
        Ok(())
    }

    fn release(&mut self, plan: &BufferPlan) {
        match plan {
            BufferPlan::Dram { bytes } => self.dram.in_use -= bytes,
            BufferPlan::L1 {
                small,
                cores,
                bytes_per_core,
            } => {
                let used = if *small {
                    &mut self.l1_small_used
                } else {
                    &mut self.l1_used
                };
                for &c in cores {
                    used[c] -= bytes_per_core;
                }
                let t = if *small {
                    &mut self.l1_small_total
                } else {
                    &mut self.l1_total
                };
                t.in_use -= plan.total_bytes();
            }
        }
    }

    fn report(&self) -> MemoryReport {
        MemoryReport {
            dram: self.dram,
            l1: self.l1_total,
            l1_max_core: MemoryUsage {
                in_use: self.l1_used.iter().copied().max().unwrap_or(0),
                peak: self.l1_core_peak,
                capacity: self.l1_capacity_per_core,
            },
            l1_small: self.l1_small_total,
            live_traces: 0,
        }
    }

    fn reset_peaks(&mut self) {
        self.dram.peak = self.dram.in_use;
        self.l1_total.peak = self.l1_total.in_use;
        self.l1_small_total.peak = self.l1_small_total.in_use;
        self.l1_core_peak = self.l1_used.iter().copied().max().unwrap_or(0);
    }
}

/// A reservation in device memory; dropping it returns the memory.
#[derive(Debug)]
pub(crate) struct Allocation {
    allocator: Arc<Mutex<Allocator>>,
    plan: BufferPlan,
}

impl Drop for Allocation {
    fn drop(&mut self) {
        self.allocator
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .release(&self.plan);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ternary_layouts_parse_and_base3_is_preferred_only_with_its_kernels() {
        assert_eq!("BASE3".parse::<TernaryLayout>(), Ok(TernaryLayout::Base3));
        assert_eq!("lut3".parse::<TernaryLayout>(), Ok(TernaryLayout::Lut3));
        let e = "lut4".parse::<TernaryLayout>().unwrap_err();
        assert!(e.contains("lut4") && e.contains("base3"), "{e}");
        // Without AVX-512, `Base3` would run its portable kernels: `Lut3` is preferred.
        assert_eq!(
            TernaryLayout::preferred(HostIsa::Scalar),
            TernaryLayout::Lut3
        );
        assert_eq!(TernaryLayout::preferred(HostIsa::Avx2), TernaryLayout::Lut3);
        // The two table layouts take the same bytes.
        assert_eq!(
            TernaryLayout::Base3.stored_bytes(100, 77),
            TernaryLayout::Lut3.stored_bytes(100, 77)
        );
    }
}
