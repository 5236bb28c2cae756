//! Shared helpers: load `libttnn_c_host.so` through ttnn-sys's loader, a per-test session that
//! checks the provider's handle counters, RAII tensor handles, and "dual" tensors that run the
//! same op through the C ABI and through `ttnn` directly so results can be compared bit for bit.
#![allow(dead_code)]

use std::ffi::{CStr, c_int};
use std::path::PathBuf;
use std::ptr;
use std::sync::{Mutex, MutexGuard, OnceLock};

use ttnn::{DataType, Layout, MemoryConfig, Shape, Tensor};
use ttnn_sys as sys;
use ttnn_sys::{TtnnC, ttnn_c_device, ttnn_c_memory_config, ttnn_c_tensor};

/// The provider, loaded once per test binary, and its test-only extension symbols.
pub struct Provider {
    pub c: TtnnC,
    live_handles: extern "C" fn() -> u64,
    thread_balance: extern "C" fn() -> i64,
    thread_bad_frees: extern "C" fn() -> u64,
    pub test_panic: extern "C" fn() -> c_int,
    // Keeps the second `dlopen` reference (for the extension symbols) alive.
    _lib: libloading::Library,
}

/// `target/<profile>/libttnn_c_host.so`: cargo builds the crate's cdylib before its integration
/// tests, which run from `target/<profile>/deps/`.
pub fn library_path() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("deps dir");
    for dir in [deps, deps.parent().expect("profile dir")] {
        let p = dir.join(ttnn_c_host::LIB_NAME);
        if p.exists() {
            return p;
        }
    }
    panic!(
        "{} not found next to {} or in its parent",
        ttnn_c_host::LIB_NAME,
        exe.display()
    );
}

pub fn provider() -> &'static Provider {
    static P: OnceLock<Provider> = OnceLock::new();
    P.get_or_init(|| {
        let path = library_path();
        // SAFETY: the library is this crate's own cdylib; its initializers do nothing unusual.
        let c = unsafe { TtnnC::new(&path) }.expect("load the provider through TtnnC");
        // SAFETY: as above; the same file, opened a second time for the symbols TtnnC lacks.
        let lib = unsafe { libloading::Library::new(&path) }.expect("open the provider");
        // SAFETY: each symbol is defined by the provider with exactly this signature (see
        // ttnn-c-host/src/device.rs); the fn pointers stay valid while `lib` is open.
        unsafe {
            Provider {
                c,
                live_handles: *lib
                    .get::<extern "C" fn() -> u64>(b"ttnn_c_host_live_handles\0")
                    .expect("symbol"),
                thread_balance: *lib
                    .get::<extern "C" fn() -> i64>(b"ttnn_c_host_thread_handle_balance\0")
                    .expect("symbol"),
                thread_bad_frees: *lib
                    .get::<extern "C" fn() -> u64>(b"ttnn_c_host_thread_bad_frees\0")
                    .expect("symbol"),
                test_panic: *lib
                    .get::<extern "C" fn() -> c_int>(b"ttnn_c_host_test_panic\0")
                    .expect("symbol"),
                _lib: lib,
            }
        }
    })
}

impl Provider {
    pub fn live_handles(&self) -> u64 {
        (self.live_handles)()
    }

    pub fn thread_balance(&self) -> i64 {
        (self.thread_balance)()
    }

    pub fn thread_bad_frees(&self) -> u64 {
        (self.thread_bad_frees)()
    }

    /// This thread's last error text.
    pub fn last_error(&self) -> String {
        // SAFETY: the provider returns a NUL-terminated string valid until our next call.
        unsafe { CStr::from_ptr((self.c.ttnn_c_last_error)()) }
            .to_string_lossy()
            .into_owned()
    }

    /// `Ok` for status 0, else the status and the last error text (read at once, as the header
    /// says).
    pub fn check(&self, status: c_int) -> Result<(), (c_int, String)> {
        if status == sys::TTNN_C_STATUS_OK as c_int {
            Ok(())
        } else {
            Err((status, self.last_error()))
        }
    }

    /// Panics with the provider's message unless `status` is 0.
    #[track_caller]
    pub fn ok(&self, status: c_int) {
        if let Err((s, m)) = self.check(status) {
            panic!("provider status {s}: {m}");
        }
    }
}

/// One test's use of the provider. Tests run one at a time (the process-wide handle count is
/// then this test's alone); `finish` checks that the test freed every handle it made and freed
/// none twice.
pub struct Session {
    pub p: &'static Provider,
    start_live: u64,
    start_balance: i64,
    start_bad: u64,
    _serial: MutexGuard<'static, ()>,
}

pub fn session() -> Session {
    static SERIAL: Mutex<()> = Mutex::new(());
    // A failed test poisons the lock; the next test still runs (its own counts are relative).
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let p = provider();
    Session {
        p,
        start_live: p.live_handles(),
        start_balance: p.thread_balance(),
        start_bad: p.thread_bad_frees(),
        _serial: guard,
    }
}

impl Session {
    /// Asserts: every handle made since the session began is freed (process-wide and on this
    /// thread), and no free was of a dead handle.
    #[track_caller]
    pub fn finish(self) {
        assert_eq!(
            self.p.live_handles(),
            self.start_live,
            "live handles in the provider"
        );
        assert_eq!(
            self.p.thread_balance(),
            self.start_balance,
            "handles made minus freed on this thread"
        );
        assert_eq!(
            self.p.thread_bad_frees(),
            self.start_bad,
            "frees of dead handles on this thread"
        );
    }

    /// As [`Session::finish`], for a test that frees `n` dead handles on purpose.
    #[track_caller]
    pub fn finish_with_bad_frees(mut self, n: u64) {
        assert_eq!(self.bad_frees(), n, "deliberate bad frees");
        self.start_bad += n;
        self.finish();
    }

    /// The bad frees counted on this thread since the session began.
    pub fn bad_frees(&self) -> u64 {
        self.p.thread_bad_frees() - self.start_bad
    }

    /// Live handles made since the session began.
    pub fn live(&self) -> u64 {
        self.p.live_handles() - self.start_live
    }
}

// ---------------------------------------------------------------------------------------------
// RAII handles

/// A device handle closed on drop.
pub struct CDevice(pub *mut ttnn_c_device);

impl CDevice {
    pub fn open() -> Self {
        Self::open_with(0, 30_000_000, 1)
    }

    pub fn open_with(l1_small: u64, trace_region: u64, cqs: u32) -> Self {
        let p = provider();
        let mut d = ptr::null_mut();
        // SAFETY: `d` is a valid out-parameter.
        p.ok(unsafe { (p.c.ttnn_c_device_open)(0, l1_small, trace_region, cqs, &mut d) });
        Self(d)
    }
}

impl Drop for CDevice {
    fn drop(&mut self) {
        // SAFETY: our handle, closed once.
        unsafe { (provider().c.ttnn_c_device_close)(self.0) }
    }
}

/// A tensor handle freed on drop.
#[derive(Debug)]
pub struct CTensor(pub *mut ttnn_c_tensor);

impl CTensor {
    /// Wraps a handle the provider returned through an out-parameter.
    pub fn from_raw(h: *mut ttnn_c_tensor) -> Self {
        assert!(!h.is_null(), "the provider returned a NULL handle");
        Self(h)
    }

    /// Runs an op that writes one handle to `out`, wrapping the result.
    #[track_caller]
    pub fn make(f: impl FnOnce(*mut *mut ttnn_c_tensor) -> c_int) -> Self {
        Self::try_make(f).unwrap_or_else(|(s, m)| panic!("provider status {s}: {m}"))
    }

    pub fn try_make(
        f: impl FnOnce(*mut *mut ttnn_c_tensor) -> c_int,
    ) -> Result<Self, (c_int, String)> {
        let mut out = ptr::null_mut();
        provider().check(f(&mut out))?;
        Ok(Self::from_raw(out))
    }

    pub fn ptr(&self) -> *mut ttnn_c_tensor {
        self.0
    }

    pub fn shape(&self) -> Vec<usize> {
        let p = provider();
        let (mut dims, mut rank) = ([0u32; 8], 0u32);
        // SAFETY: 8 entries, as the header asks.
        p.ok(unsafe { (p.c.ttnn_c_tensor_shape)(self.0, dims.as_mut_ptr(), &mut rank) });
        dims[..rank as usize].iter().map(|&d| d as usize).collect()
    }

    pub fn padded_shape(&self) -> Vec<usize> {
        let p = provider();
        let (mut dims, mut rank) = ([0u32; 8], 0u32);
        // SAFETY: 8 entries, as the header asks.
        p.ok(unsafe { (p.c.ttnn_c_tensor_padded_shape)(self.0, dims.as_mut_ptr(), &mut rank) });
        dims[..rank as usize].iter().map(|&d| d as usize).collect()
    }

    pub fn dtype(&self) -> u32 {
        let p = provider();
        let mut d = 0;
        // SAFETY: valid out-parameter.
        p.ok(unsafe { (p.c.ttnn_c_tensor_dtype)(self.0, &mut d) });
        d
    }

    pub fn layout(&self) -> u32 {
        let p = provider();
        let mut l = 0;
        // SAFETY: valid out-parameter.
        p.ok(unsafe { (p.c.ttnn_c_tensor_layout)(self.0, &mut l) });
        l
    }

    pub fn is_on_device(&self) -> bool {
        let p = provider();
        let mut b = 0;
        // SAFETY: valid out-parameter.
        p.ok(unsafe { (p.c.ttnn_c_tensor_is_on_device)(self.0, &mut b) });
        b != 0
    }

    pub fn memory_config(&self) -> Result<ttnn_c_memory_config, (c_int, String)> {
        let p = provider();
        let mut mc = c_mc(&ttnn::DRAM_MEMORY_CONFIG);
        // SAFETY: valid out-parameter.
        p.check(unsafe { (p.c.ttnn_c_tensor_memory_config)(self.0, &mut mc) })?;
        Ok(mc)
    }

    /// (element dtype, element count, bytes) that `read` produces.
    pub fn read_info(&self) -> (u32, u64, u64) {
        let p = provider();
        let (mut d, mut n, mut b) = (0u32, 0u64, 0u64);
        // SAFETY: valid out-parameters.
        p.ok(unsafe { (p.c.ttnn_c_tensor_read_info)(self.0, &mut d, &mut n, &mut b) });
        (d, n, b)
    }

    /// The logical elements as the provider writes them.
    pub fn try_read(&self) -> Result<Vec<u8>, (c_int, String)> {
        let p = provider();
        let (_, _, nbytes) = self.read_info();
        let mut buf = vec![0u8; nbytes as usize];
        // SAFETY: `buf` holds exactly the bytes read_info reported.
        p.check(unsafe { (p.c.ttnn_c_tensor_read)(self.0, buf.as_mut_ptr().cast(), buf.len()) })?;
        Ok(buf)
    }

    #[track_caller]
    pub fn read(&self) -> Vec<u8> {
        self.try_read()
            .unwrap_or_else(|(s, m)| panic!("read: status {s}: {m}"))
    }

    /// The values as f32 (float reads) or converted integers.
    pub fn read_f32(&self) -> Vec<f32> {
        decode_f32(self.read_info().0, &self.read())
    }

    pub fn try_clone(&self) -> Self {
        let p = provider();
        // SAFETY: valid handle and out-parameter.
        Self::make(|o| unsafe { (p.c.ttnn_c_tensor_clone)(self.0, o) })
    }
}

impl Drop for CTensor {
    fn drop(&mut self) {
        // SAFETY: our handle, freed once.
        unsafe { (provider().c.ttnn_c_tensor_free)(self.0) }
    }
}

/// Bytes of a C read as f32 values.
pub fn decode_f32(dtype: u32, bytes: &[u8]) -> Vec<f32> {
    fn chunks<const N: usize>(b: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
        b.chunks_exact(N).map(|c| c.try_into().expect("chunk"))
    }
    match dtype {
        sys::TTNN_C_DTYPE_FLOAT32 => chunks::<4>(bytes).map(f32::from_ne_bytes).collect(),
        sys::TTNN_C_DTYPE_BFLOAT16 => chunks::<2>(bytes)
            .map(|b| half::bf16::from_bits(u16::from_ne_bytes(b)).to_f32())
            .collect(),
        sys::TTNN_C_DTYPE_UINT32 => chunks::<4>(bytes)
            .map(|b| u32::from_ne_bytes(b) as f32)
            .collect(),
        sys::TTNN_C_DTYPE_INT32 => chunks::<4>(bytes)
            .map(|b| i32::from_ne_bytes(b) as f32)
            .collect(),
        sys::TTNN_C_DTYPE_UINT16 => chunks::<2>(bytes)
            .map(|b| u16::from_ne_bytes(b) as f32)
            .collect(),
        sys::TTNN_C_DTYPE_UINT8 => bytes.iter().map(|&b| b as f32).collect(),
        other => panic!("no read dtype {other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Conversions between the test's ttnn values and the C structs

pub fn c_dtype(d: DataType) -> u32 {
    match d {
        DataType::Bfloat16 => sys::TTNN_C_DTYPE_BFLOAT16,
        DataType::Float32 => sys::TTNN_C_DTYPE_FLOAT32,
        DataType::Uint32 => sys::TTNN_C_DTYPE_UINT32,
        DataType::Bfloat8B => sys::TTNN_C_DTYPE_BFLOAT8_B,
        DataType::Bfloat4B => sys::TTNN_C_DTYPE_BFLOAT4_B,
        DataType::Uint8 => sys::TTNN_C_DTYPE_UINT8,
        DataType::Uint16 => sys::TTNN_C_DTYPE_UINT16,
        DataType::Int32 => sys::TTNN_C_DTYPE_INT32,
        DataType::Ternary => panic!("Ternary has no C dtype"),
    }
}

pub fn c_layout(l: Layout) -> u32 {
    match l {
        Layout::RowMajor => sys::TTNN_C_LAYOUT_ROW_MAJOR,
        Layout::Tile => sys::TTNN_C_LAYOUT_TILE,
    }
}

pub fn c_mc(mc: &MemoryConfig) -> ttnn_c_memory_config {
    let zero = sys::ttnn_c_core_coord { x: 0, y: 0 };
    let mut out = ttnn_c_memory_config {
        memory_layout: match mc.memory_layout {
            ttnn::TensorMemoryLayout::Interleaved => sys::TTNN_C_TENSOR_MEMORY_LAYOUT_INTERLEAVED,
            ttnn::TensorMemoryLayout::HeightSharded => {
                sys::TTNN_C_TENSOR_MEMORY_LAYOUT_HEIGHT_SHARDED
            }
            ttnn::TensorMemoryLayout::WidthSharded => {
                sys::TTNN_C_TENSOR_MEMORY_LAYOUT_WIDTH_SHARDED
            }
            ttnn::TensorMemoryLayout::BlockSharded => {
                sys::TTNN_C_TENSOR_MEMORY_LAYOUT_BLOCK_SHARDED
            }
        },
        buffer_type: match mc.buffer_type {
            ttnn::BufferType::Dram => sys::TTNN_C_BUFFER_TYPE_DRAM,
            ttnn::BufferType::L1 => sys::TTNN_C_BUFFER_TYPE_L1,
            ttnn::BufferType::L1Small => sys::TTNN_C_BUFFER_TYPE_L1_SMALL,
        },
        has_shard_spec: 0,
        shard_spec: sys::ttnn_c_shard_spec {
            num_core_ranges: 0,
            core_ranges: [sys::ttnn_c_core_range {
                start: zero,
                end: zero,
            }; 16],
            shape: [0, 0],
            orientation: sys::TTNN_C_SHARD_ORIENTATION_ROW_MAJOR,
        },
    };
    if let Some(s) = &mc.shard_spec {
        out.has_shard_spec = 1;
        out.shard_spec.num_core_ranges = s.grid.ranges().len() as u32;
        for (o, r) in out.shard_spec.core_ranges.iter_mut().zip(s.grid.ranges()) {
            o.start = sys::ttnn_c_core_coord {
                x: r.start.x as u32,
                y: r.start.y as u32,
            };
            o.end = sys::ttnn_c_core_coord {
                x: r.end.x as u32,
                y: r.end.y as u32,
            };
        }
        out.shard_spec.shape = [s.shape[0] as u32, s.shape[1] as u32];
        out.shard_spec.orientation = match s.orientation {
            ttnn::ShardOrientation::RowMajor => sys::TTNN_C_SHARD_ORIENTATION_ROW_MAJOR,
            ttnn::ShardOrientation::ColMajor => sys::TTNN_C_SHARD_ORIENTATION_COL_MAJOR,
        };
    }
    out
}

/// Optional memory config pointer.
pub fn mc_ptr(mc: &Option<ttnn_c_memory_config>) -> *const ttnn_c_memory_config {
    mc.as_ref().map_or(ptr::null(), |m| m as *const _)
}

pub fn u32s(dims: &[usize]) -> Vec<u32> {
    dims.iter().map(|&d| d as u32).collect()
}

/// The bytes the C ABI exchanges for `values` as `dtype` (block floats take f32).
pub fn host_bytes(values: &[f32], dtype: DataType) -> Vec<u8> {
    match dtype {
        DataType::Float32 | DataType::Bfloat8B | DataType::Bfloat4B => {
            values.iter().flat_map(|v| v.to_ne_bytes()).collect()
        }
        DataType::Bfloat16 => values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_bits().to_ne_bytes())
            .collect(),
        DataType::Uint32 => values
            .iter()
            .flat_map(|&v| (v as u32).to_ne_bytes())
            .collect(),
        DataType::Int32 => values
            .iter()
            .flat_map(|&v| (v as i32).to_ne_bytes())
            .collect(),
        DataType::Uint16 => values
            .iter()
            .flat_map(|&v| (v as u16).to_ne_bytes())
            .collect(),
        DataType::Uint8 => values.iter().map(|&v| v as u8).collect(),
        DataType::Ternary => panic!("no C dtype"),
    }
}

/// The bytes `ttnn_c_tensor_read` gives for a `ttnn` tensor (read directly).
pub fn ttnn_bytes(t: &Tensor) -> Vec<u8> {
    match t.dtype() {
        DataType::Float32 | DataType::Bfloat8B | DataType::Bfloat4B => t
            .to_vec::<f32>()
            .expect("read")
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect(),
        DataType::Bfloat16 => t
            .to_vec::<half::bf16>()
            .expect("read")
            .iter()
            .flat_map(|v| v.to_bits().to_ne_bytes())
            .collect(),
        DataType::Uint32 => t
            .to_vec::<u32>()
            .expect("read")
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect(),
        DataType::Int32 => t
            .to_vec::<i32>()
            .expect("read")
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect(),
        DataType::Uint16 => t
            .to_vec::<u16>()
            .expect("read")
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect(),
        DataType::Uint8 => t.to_vec::<u8>().expect("read"),
        DataType::Ternary => panic!("no C dtype"),
    }
}

// ---------------------------------------------------------------------------------------------
// Dual tensors: the same data in the provider and in a directly opened ttnn device

/// A provider device and a `ttnn` device opened the same way.
pub struct Devices {
    pub c: CDevice,
    pub r: ttnn::Device,
}

impl Devices {
    pub fn open() -> Self {
        Self {
            c: CDevice::open(),
            r: ttnn::Device::open(ttnn::DeviceSpec::default()).expect("open ttnn device"),
        }
    }
}

/// One tensor in both worlds.
pub struct Dual {
    pub c: CTensor,
    pub r: Tensor,
}

impl Dual {
    /// Uploads `values` as `dtype`/`layout` under `mc` (NULL: DRAM) to both devices.
    pub fn upload(
        devs: &Devices,
        values: &[f32],
        shape: &[usize],
        dtype: DataType,
        layout: Layout,
        mc: Option<&MemoryConfig>,
    ) -> Self {
        let p = provider();
        let bytes = host_bytes(values, dtype);
        let dims = u32s(shape);
        let cmc = mc.map(c_mc);
        let c = CTensor::make(|o| {
            // SAFETY: `bytes`, `dims` and `cmc` outlive the call; `o` is a valid out-parameter.
            unsafe {
                (p.c.ttnn_c_tensor_from_host)(
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    c_dtype(dtype),
                    dims.as_ptr(),
                    dims.len() as u32,
                    c_layout(layout),
                    devs.c.0,
                    mc_ptr(&cmc),
                    o,
                )
            }
        });
        let host = Tensor::from_slice(values, Shape::new(shape), dtype, layout).expect("host");
        let r = host
            .to_device(&devs.r, mc.unwrap_or(&ttnn::DRAM_MEMORY_CONFIG))
            .expect("to_device");
        Self { c, r }
    }

    /// Pairs a provider result with the direct result of the same op.
    pub fn of(c: CTensor, r: Tensor) -> Self {
        Self { c, r }
    }

    /// Asserts identical shape, padded shape, dtype, layout, placement and bytes.
    #[track_caller]
    pub fn assert_same(&self, what: &str) {
        assert_eq!(self.c.shape(), self.r.shape().dims(), "{what}: shape");
        assert_eq!(
            self.c.padded_shape(),
            self.r.padded_shape().dims(),
            "{what}: padded shape"
        );
        assert_eq!(self.c.dtype(), c_dtype(self.r.dtype()), "{what}: dtype");
        assert_eq!(self.c.layout(), c_layout(self.r.layout()), "{what}: layout");
        assert_eq!(
            self.c.is_on_device(),
            self.r.is_on_device(),
            "{what}: placement"
        );
        if let Some(mc) = self.r.memory_config() {
            let got = self.c.memory_config().expect("memory config");
            assert_eq!(format!("{got:?}"), format!("{:?}", c_mc(mc)), "{what}: mc");
        }
        let (c, r) = (self.c.read(), ttnn_bytes(&self.r));
        assert!(c == r, "{what}: bytes differ");
    }
}

/// Deterministic pseudo-random numbers (SplitMix64).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// `n` values uniform in [-scale, scale).
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale)
            .collect()
    }
}
