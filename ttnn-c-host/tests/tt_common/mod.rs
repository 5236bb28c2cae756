//! Shared helpers of the Tenstorrent-backend tests: the provider library (`libttnn_c_host.so`)
//! opened as a `ttnn` Tenstorrent device, its test-only handle counters, a host device to
//! compare with, and exact comparisons of results.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock};

use ttnn::{BackendKind, DataType, Device, DeviceSpec, Layout, MemoryConfig, Shape, Tensor};

/// The file cargo builds for the ttnn-c-host crate.
const LIB: &str = "libttnn_c_host.so";

/// The provider next to this test binary (`target/<profile>/deps/`, where cargo puts the cdylib
/// it builds for this package's tests) or in its parent (`target/<profile>/`, where
/// `cargo build -p ttnn-c-host` puts it). Panics, naming both and the command, when absent.
pub fn provider_path() -> PathBuf {
    static PATH: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = PATH.get_or_init(|| {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let dir = exe.parent().ok_or("the test binary has no directory")?;
        let tried: Vec<PathBuf> = [Some(dir), dir.parent()]
            .into_iter()
            .flatten()
            .map(|d| d.join(LIB))
            .collect();
        tried.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
            format!(
                "the host-backed TT-NN C ABI provider {LIB} is missing (looked at {}); build it with `cargo build -p ttnn-c-host` (same profile and target dir as the tests)",
                tried
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    });
    match found {
        Ok(p) => p.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// The provider's test-only counters (not in `ttnn_c.h`, so loaded by name).
pub struct Counters {
    live: unsafe extern "C" fn() -> u64,
    bad_frees: unsafe extern "C" fn() -> u64,
    _lib: libloading::Library,
}

pub fn counters() -> &'static Counters {
    static C: OnceLock<Counters> = OnceLock::new();
    C.get_or_init(|| {
        let path = provider_path();
        // SAFETY: the provider is the workspace's own library; opening it again returns the
        // process's one copy (the one the Tenstorrent backend loads), whose initialisers are
        // plain Rust statics.
        let lib = unsafe { libloading::Library::new(&path) }.expect("open the provider");
        // SAFETY: both extensions are `extern "C" fn() -> u64` in ttnn-c-host/src/device.rs.
        let (live, bad_frees) = unsafe {
            let live: libloading::Symbol<'_, unsafe extern "C" fn() -> u64> = lib
                .get(b"ttnn_c_host_live_handles\0")
                .expect("ttnn_c_host_live_handles");
            let bad: libloading::Symbol<'_, unsafe extern "C" fn() -> u64> = lib
                .get(b"ttnn_c_host_thread_bad_frees\0")
                .expect("ttnn_c_host_thread_bad_frees");
            (*live, *bad)
        };
        Counters {
            live,
            bad_frees,
            _lib: lib,
        }
    })
}

impl Counters {
    /// Handles (devices and tensors) the provider holds, process-wide.
    pub fn live(&self) -> u64 {
        // SAFETY: takes nothing, reads an atomic.
        unsafe { (self.live)() }
    }

    /// Frees of handles that were not live, on this thread (double frees, stale handles).
    pub fn bad_frees(&self) -> u64 {
        // SAFETY: takes nothing, reads a thread-local.
        unsafe { (self.bad_frees)() }
    }
}

/// One test at a time: each checks that the provider's process-wide handle count is back to
/// zero when it ends, which parallel tests would disturb.
pub struct Serial(#[allow(dead_code)] MutexGuard<'static, ()>);

pub fn serial() -> Serial {
    static LOCK: Mutex<()> = Mutex::new(());
    let g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    assert_eq!(
        counters().live(),
        0,
        "a previous test left provider handles alive"
    );
    Serial(g)
}

/// Asserts that every handle the test made was freed exactly once.
pub fn assert_no_leaks() {
    let c = counters();
    assert_eq!(c.live(), 0, "provider handles still alive (leak)");
    assert_eq!(c.bad_frees(), 0, "double or stale frees");
}

/// A Tenstorrent-backend device on the provider.
pub fn tt_device() -> Device {
    Device::open(
        DeviceSpec::default()
            .with_backend(BackendKind::Tenstorrent)
            .with_ttnn_lib(provider_path()),
    )
    .expect("open the provider as a Tenstorrent device")
}

/// The host backend the provider runs on (same chip model), two kernel threads.
pub fn host_device() -> Device {
    Device::open(DeviceSpec::default().with_threads(2)).expect("open host device")
}

pub fn upload(
    device: &Device,
    values: &[f32],
    shape: &[usize],
    dtype: DataType,
    layout: Layout,
    mc: &MemoryConfig,
) -> Tensor {
    Tensor::from_slice(values, Shape::new(shape), dtype, layout)
        .expect("host tensor")
        .to_device(device, mc)
        .expect("to_device")
}

/// Integer tensor upload (row-major, DRAM).
pub fn upload_ints<T: ttnn::Element>(
    device: &Device,
    values: &[T],
    shape: &[usize],
    dtype: DataType,
) -> Tensor {
    Tensor::from_slice(values, Shape::new(shape), dtype, Layout::RowMajor)
        .expect("host tensor")
        .to_device(device, &ttnn::DRAM_MEMORY_CONFIG)
        .expect("to_device")
}

/// Every element's bits (f32 bits for float types, the integer for integer types), so that
/// comparisons are exact (NaN payloads and -0.0 included).
pub fn bits(t: &Tensor) -> Vec<u64> {
    match t.dtype() {
        DataType::Uint32 => t
            .to_vec::<u32>()
            .expect("read")
            .into_iter()
            .map(u64::from)
            .collect(),
        DataType::Int32 => t
            .to_vec::<i32>()
            .expect("read")
            .into_iter()
            .map(|v| v as u32 as u64)
            .collect(),
        DataType::Uint16 => t
            .to_vec::<u16>()
            .expect("read")
            .into_iter()
            .map(u64::from)
            .collect(),
        DataType::Uint8 => t
            .to_vec::<u8>()
            .expect("read")
            .into_iter()
            .map(u64::from)
            .collect(),
        DataType::Ternary => t
            .to_vec::<i8>()
            .expect("read")
            .into_iter()
            .map(|v| v as u8 as u64)
            .collect(),
        _ => t
            .to_vec::<f32>()
            .expect("read")
            .into_iter()
            .map(|v| u64::from(v.to_bits()))
            .collect(),
    }
}

/// Asserts two results are the same tensor: shape, dtype, layout, memory config and every bit.
pub fn assert_same(what: &str, host: &Tensor, tt: &Tensor) {
    assert_eq!(host.shape(), tt.shape(), "{what}: shape");
    assert_eq!(host.dtype(), tt.dtype(), "{what}: dtype");
    assert_eq!(host.layout(), tt.layout(), "{what}: layout");
    assert_eq!(
        host.memory_config(),
        tt.memory_config(),
        "{what}: memory config"
    );
    let (h, t) = (bits(host), bits(tt));
    if let Some(i) = (0..h.len()).find(|&i| h[i] != t[i]) {
        panic!(
            "{what}: element {i} differs: host bits {:#x}, tenstorrent bits {:#x}",
            h[i], t[i]
        );
    }
    assert_eq!(h.len(), t.len(), "{what}: length");
}

/// Deterministic pseudo-random numbers for test data (SplitMix64).
#[derive(Clone, Debug)]
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

    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// `n` values uniform in [-scale, scale).
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform() * scale).collect()
    }

    /// `n` values in {-1, 0, 1}.
    pub fn ternary(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| (self.next_u64() % 3) as f32 - 1.0).collect()
    }
}
