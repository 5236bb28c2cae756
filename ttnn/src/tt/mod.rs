//! The Tenstorrent backend: TT-NN through the C ABI of `ttnn-sys` (`ttnn_c.h`), loaded at run
//! time. This module is the only code in `ttnn` that calls `ttnn-sys` (cudarc's "result" level:
//! each status becomes a `Result`); the public API stays in `crate::ops`, `crate::tensor` and
//! `crate::trace`, which validate once and then dispatch here.
//!
//! Ownership: the loaded library ([`TtLib`]) is cached per path for the life of the process and
//! never unloaded (tt-metal keeps process-wide state and threads; unloading it under them is not
//! something it supports). A [`TtDevice`] owns the device handle and an `Arc` of its library;
//! every tensor handle ([`TtTensor`]) and trace holds an `Arc` of its `TtDevice`, so the device
//! is closed only after the last of them is freed, and the library outlives them all. `Drop`
//! impls never panic: a failed trace release is recorded and returned by the device's next trace
//! call.

pub(crate) mod convert;
pub(crate) mod ops;

use std::ffi::{CStr, OsStr, OsString, c_int, c_void};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use half::bf16;
use ttnn_sys as sys;

use crate::device::{ChipSpec, Device, DeviceSpec, MemoryReport, MemoryUsage};
use crate::error::{Error, Result};
use crate::host::data::HostData;
use crate::tensor::{DeviceBuffer, Storage, Tensor};
use crate::types::{CoreCoord, DRAM_MEMORY_CONFIG, DataType, Layout, MemoryConfig, Shape};

/// The backend's name in errors.
pub(crate) const BACKEND: &str = "tenstorrent";

/// `ttnn_c_device_open`'s command queues: one, as tt_transformers' text demo opens the device.
const NUM_COMMAND_QUEUES: u32 = 1;

// ---------------------------------------------------------------------------------------------
// Loading

/// `$TT_METAL_HOME` subdirectories searched for the shim, in order: tt-metal's
/// `build_metal.sh` output (`build/` is a symlink to the last build type) and its per-type
/// build directories.
pub const TT_METAL_HOME_LIB_DIRS: &[&str] = &[
    "build/lib",
    "build_Release/lib",
    "build_RelWithDebInfo/lib",
    "build_Debug/lib",
];

/// The paths `Device::open` tries for the TT-NN shim, in order (pure: the caller reads the
/// environment):
/// 1. `explicit` (`DeviceSpec::ttnn_lib`), if given, and nothing else;
/// 2. else `env_lib` (`$TTNN_C_LIB`), if set, and nothing else;
/// 3. else each of [`ttnn_sys::LIB_NAMES`] next to the running executable, then in its parent
///    directory (cargo puts test and bench binaries in `target/<profile>/deps/` and the shim
///    `cargo build -p ttnn-sys` builds in `target/<profile>/`);
/// 4. then each name under `tt_metal_home` (`$TT_METAL_HOME`) in [`TT_METAL_HOME_LIB_DIRS`].
///
/// A path that is given explicitly is the only one tried, so that a typo is an error rather
/// than a silent fallback to another build.
pub fn shim_candidates(
    explicit: Option<&Path>,
    env_lib: Option<&OsStr>,
    exe: Option<&Path>,
    tt_metal_home: Option<&OsStr>,
) -> Vec<PathBuf> {
    if let Some(p) = explicit {
        return vec![p.to_path_buf()];
    }
    if let Some(p) = env_lib.filter(|p| !p.is_empty()) {
        return vec![PathBuf::from(p)];
    }
    let mut out = Vec::new();
    if let Some(dir) = exe.and_then(Path::parent) {
        for d in [Some(dir), dir.parent()].into_iter().flatten() {
            out.extend(sys::LIB_NAMES.iter().map(|n| d.join(n)));
        }
    }
    if let Some(home) = tt_metal_home.filter(|h| !h.is_empty()) {
        let home = Path::new(home);
        for sub in TT_METAL_HOME_LIB_DIRS {
            out.extend(sys::LIB_NAMES.iter().map(|n| home.join(sub).join(n)));
        }
    }
    out
}

/// A loaded shim: the entry points and where they came from.
pub(crate) struct TtLib {
    api: sys::TtnnC,
    path: PathBuf,
    implementation: String,
}

impl std::fmt::Debug for TtLib {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TtLib")
            .field("path", &self.path)
            .field("implementation", &self.implementation)
            .finish()
    }
}

/// Libraries loaded so far, by canonical path: each is loaded once per process and kept.
static LOADED: OnceLock<Mutex<Vec<Arc<TtLib>>>> = OnceLock::new();

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Poisoning only means another thread panicked while holding the lock; the guarded values
    // (handles, counters) stay consistent, so carry on.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Finds and loads the shim (see [`shim_candidates`]); reads `TTNN_C_LIB` and `TT_METAL_HOME`
/// here, at open, and nowhere else.
pub(crate) fn load(explicit: Option<&Path>) -> Result<Arc<TtLib>> {
    let exe = std::env::current_exe().ok();
    let env_lib: Option<OsString> = std::env::var_os("TTNN_C_LIB");
    let home: Option<OsString> = std::env::var_os("TT_METAL_HOME");
    let tried = shim_candidates(
        explicit,
        env_lib.as_deref(),
        exe.as_deref(),
        home.as_deref(),
    );
    let Some(found) = tried.iter().find(|p| p.is_file()) else {
        return Err(Error::LibraryNotFound { tried });
    };
    let path = found.canonicalize().unwrap_or_else(|_| found.clone());
    let mut loaded = lock(LOADED.get_or_init(Default::default));
    if let Some(lib) = loaded.iter().find(|l| l.path == path) {
        return Ok(Arc::clone(lib));
    }
    let lib = Arc::new(TtLib::open(&path)?);
    loaded.push(Arc::clone(&lib));
    Ok(lib)
}

impl TtLib {
    fn open(path: &Path) -> Result<Self> {
        let load_err = |reason: String| Error::LibraryLoad {
            path: path.to_path_buf(),
            reason,
        };
        // SAFETY: loading a shared library runs its initialisers. The file is the one the user
        // designated as the TT-NN shim (explicitly, through TTNN_C_LIB, next to the executable or
        // in the tt-metal build), whose initialisers are tt-metal's; nothing else is loaded.
        let library =
            unsafe { libloading::Library::new(path) }.map_err(|e| load_err(e.to_string()))?;
        // The version is read before any other entry point is resolved, so that a shim of
        // another ABI version is reported as such rather than as a missing symbol.
        let found = {
            // SAFETY: `ttnn_c_abi_version` is declared in every version of ttnn_c.h as
            // `uint32_t ttnn_c_abi_version(void)`, which is the type given here.
            let version: libloading::Symbol<'_, unsafe extern "C" fn() -> u32> =
                unsafe { library.get(b"ttnn_c_abi_version\0") }.map_err(|e| {
                    load_err(format!(
                        "not a TT-NN C ABI library (ttnn_c_abi_version: {e})"
                    ))
                })?;
            // SAFETY: takes no arguments and never fails (TTNN_C_NOEXCEPT in the header).
            unsafe { version() }
        };
        if found != sys::TTNN_C_ABI_VERSION {
            return Err(Error::AbiVersionMismatch {
                path: path.to_path_buf(),
                expected: sys::TTNN_C_ABI_VERSION,
                found,
            });
        }
        // SAFETY: the library implements ABI version TTNN_C_ABI_VERSION (checked above), whose
        // entry points have exactly the types bindgen generated `TtnnC` from.
        let api = unsafe { sys::TtnnC::from_library(library) }
            .map_err(|e| load_err(format!("missing entry point: {e}")))?;
        // SAFETY: never fails; returns a static NUL-terminated string (or, defensively, null).
        let implementation = unsafe { c_string(api.ttnn_c_implementation()) };
        Ok(Self {
            api,
            path: path.to_path_buf(),
            implementation,
        })
    }

    /// The error of a failed call: the shim's thread-local message (copied at once, as the ABI
    /// requires) with the status name.
    fn error(&self, op: &'static str, status: c_int) -> Error {
        // SAFETY: never fails; the message lives in a thread-local buffer of the library, valid
        // until this thread's next call into it, and it is copied before any other call.
        let message = unsafe { c_string(self.api.ttnn_c_last_error()) };
        let status = match status as u32 {
            sys::TTNN_C_STATUS_INVALID_ARGUMENT => "invalid argument",
            sys::TTNN_C_STATUS_TTNN_ERROR => "TT-NN error",
            sys::TTNN_C_STATUS_UNKNOWN_EXCEPTION => "unknown exception",
            sys::TTNN_C_STATUS_BUFFER_SIZE => "buffer size",
            sys::TTNN_C_STATUS_UNSUPPORTED => "unsupported",
            _ => "unknown status",
        };
        Error::Backend {
            op,
            backend: BACKEND,
            message: if message.is_empty() {
                format!("failed with status {status} and no message")
            } else {
                format!("{message} ({status})")
            },
        }
    }
}

/// Copies a NUL-terminated C string (null: empty).
///
/// # Safety
/// `p` is null or points to a NUL-terminated string that stays valid during the call.
unsafe fn c_string(p: *const std::os::raw::c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: non-null and NUL-terminated by the caller's contract.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

fn ok(status: c_int) -> bool {
    status == sys::TTNN_C_STATUS_OK as c_int
}

// ---------------------------------------------------------------------------------------------
// Device

/// An active trace capture: its id and the ops recorded so far.
///
/// Tensor handles are not kept for the trace: a handle dropped during capture frees its buffer
/// in the library, whose allocator hands the address to later ops of the same capture, as
/// TT-NN does when a model deallocates intermediates inside a traced step (the host backend
/// models the same: a trace's working set is its live peak, which the memory plan assumes).
/// As on TT-NN, a tensor allocated after a capture and alive across a replay may share
/// addresses with that trace's intermediates (tt-metal warns that such allocations are
/// unsafe); a trace's inputs and outputs are allocated before it is captured and kept by
/// whoever replays it.
struct Capture {
    trace_id: u32,
    ops: usize,
}

/// Peaks of the memory report, sampled whenever a report is made (TT-NN's allocator reports
/// only current use).
#[derive(Default)]
struct Peaks {
    dram: u64,
    l1: u64,
    l1_core: u64,
    l1_small: u64,
}

/// An open Tenstorrent device: the shim's device handle and its library.
pub(crate) struct TtDevice {
    lib: Arc<TtLib>,
    raw: NonNull<sys::ttnn_c_device>,
    /// Held by every call into the library that touches this device or its tensors (see the
    /// `Send`/`Sync` note below).
    dispatch: Mutex<()>,
    capture: Mutex<Option<Capture>>,
    grid: CoreCoord,
    live_traces: AtomicUsize,
    /// A failure that happened in `Drop` (a trace release), returned by the next trace call.
    deferred: Mutex<Option<Error>>,
    peaks: Mutex<Peaks>,
}

// SAFETY: a TtDevice is a pointer to the shim's heap object wrapping a TT-NN `MeshDevice`, which
// has no thread affinity: tt-metal does its dispatch from whichever thread calls it, and the only
// thread-local state of the shim, the last-error message, is read on the calling thread right
// after each call (`call`). TT-NN does not promise that concurrent calls into one device are
// safe, so every call that touches this device or one of its tensors holds `dispatch`: shared
// use from several threads is serialized, which is what makes `Sync` sound.
unsafe impl Send for TtDevice {}
// SAFETY: see `Send` above: all access to the raw handle goes through `dispatch`.
unsafe impl Sync for TtDevice {}

impl std::fmt::Debug for TtDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TtDevice")
            .field("lib", &self.lib)
            .field("grid", &self.grid)
            .finish()
    }
}

impl Drop for TtDevice {
    fn drop(&mut self) {
        let _g = lock(&self.dispatch);
        // SAFETY: the handle came from ttnn_c_device_open and is closed exactly once, here; every
        // tensor handle and trace of the device held an Arc of it, so all are gone. Never fails.
        unsafe { self.lib.api.ttnn_c_device_close(self.raw.as_ptr()) };
    }
}

impl TtDevice {
    /// Loads the shim and opens chip `spec.device_id` with the spec's reservations.
    pub(crate) fn open(spec: &DeviceSpec) -> Result<Self> {
        let op = "Device::open";
        let lib = load(spec.ttnn_lib.as_deref())?;
        let mut raw: *mut sys::ttnn_c_device = std::ptr::null_mut();
        // SAFETY: plain values and an out-pointer to a local; the library writes a new handle
        // on success only.
        let status = unsafe {
            lib.api.ttnn_c_device_open(
                spec.device_id,
                spec.l1_small_size,
                spec.trace_region_size,
                NUM_COMMAND_QUEUES,
                &mut raw,
            )
        };
        if !ok(status) {
            return Err(lib.error(op, status));
        }
        let raw = NonNull::new(raw).ok_or_else(|| Error::Backend {
            op,
            backend: BACKEND,
            message: "ttnn_c_device_open returned no handle".into(),
        })?;
        let mut dev = Self {
            lib,
            raw,
            dispatch: Mutex::new(()),
            capture: Mutex::new(None),
            grid: CoreCoord::default(),
            live_traces: AtomicUsize::new(0),
            deferred: Mutex::new(None),
            peaks: Mutex::new(Peaks::default()),
        };
        let mut g = sys::ttnn_c_core_coord::default();
        // SAFETY: a live device handle and an out-pointer to a local.
        dev.call(op, |api, d| unsafe {
            api.ttnn_c_device_compute_grid(d, &mut g)
        })?;
        dev.grid = CoreCoord::new(g.x as usize, g.y as usize);
        Ok(dev)
    }

    pub(crate) fn grid(&self) -> CoreCoord {
        self.grid
    }

    /// What the library says it is (e.g. "tt-metal v0.74.0").
    pub(crate) fn implementation(&self) -> &str {
        &self.lib.implementation
    }

    pub(crate) fn library_path(&self) -> &Path {
        &self.lib.path
    }

    /// Runs one call into the library under the dispatch lock and turns its status into a
    /// `Result` carrying the shim's message. `f` gets the entry points and the device handle.
    pub(crate) fn call(
        &self,
        op: &'static str,
        f: impl FnOnce(&sys::TtnnC, *mut sys::ttnn_c_device) -> c_int,
    ) -> Result<()> {
        let _g = lock(&self.dispatch);
        let status = f(&self.lib.api, self.raw.as_ptr());
        if ok(status) {
            Ok(())
        } else {
            Err(self.lib.error(op, status))
        }
    }

    /// [`call`](Self::call) for an op: counted in an active capture.
    fn call_op(
        &self,
        op: &'static str,
        f: impl FnOnce(&sys::TtnnC, *mut sys::ttnn_c_device) -> c_int,
    ) -> Result<()> {
        if let Some(c) = lock(&self.capture).as_mut() {
            c.ops += 1;
        }
        self.call(op, f)
    }

    /// The id of the trace being captured, if any.
    pub(crate) fn capturing(&self) -> Option<u32> {
        lock(&self.capture).as_ref().map(|c| c.trace_id)
    }

    pub(crate) fn ensure_not_capturing(&self, op: &'static str) -> Result<()> {
        match self.capturing() {
            Some(trace_id) => Err(Error::TraceCaptureActive { op, trace_id }),
            None => Ok(()),
        }
    }

    fn take_deferred(&self) -> Result<()> {
        match lock(&self.deferred).take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    // ---- tensors ------------------------------------------------------------------------------

    /// Takes ownership of a tensor handle the library returned and describes it (shape, dtype,
    /// layout, memory config, all as the library reports them). `ternary`: the handle holds a
    /// Ternary tensor (stored as BFLOAT4_B), so that dtype is reported as Ternary.
    pub(crate) fn wrap(
        self: &Arc<Self>,
        device: &Device,
        op: &'static str,
        raw: *mut sys::ttnn_c_tensor,
        ternary: bool,
    ) -> Result<Tensor> {
        let t = self.own(op, raw)?;
        self.wrap_owned(device, op, t, ternary)
    }

    /// [`wrap`](Self::wrap) for a handle already owned by a guard.
    fn wrap_owned(
        self: &Arc<Self>,
        device: &Device,
        op: &'static str,
        mut t: TtTensor,
        ternary: bool,
    ) -> Result<Tensor> {
        let h = t.raw.as_ptr();
        let (mut dims, mut rank) = ([0u32; 8], 0u32);
        let (mut pdims, mut prank) = ([0u32; 8], 0u32);
        let (mut dt, mut lay, mut on_device) = (0u32, 0u32, 0u8);
        let mut mc = sys::ttnn_c_memory_config::default();
        // SAFETY: `h` is the live handle owned by `t`; every out-pointer is a local of the
        // right type (the shape arrays have TTNN_C_MAX_RANK entries).
        self.call(op, |api, _| unsafe {
            let s = api.ttnn_c_tensor_is_on_device(h, &mut on_device);
            if !ok(s) {
                return s;
            }
            let s = api.ttnn_c_tensor_shape(h, dims.as_mut_ptr(), &mut rank);
            if !ok(s) {
                return s;
            }
            let s = api.ttnn_c_tensor_padded_shape(h, pdims.as_mut_ptr(), &mut prank);
            if !ok(s) {
                return s;
            }
            let s = api.ttnn_c_tensor_dtype(h, &mut dt);
            if !ok(s) {
                return s;
            }
            let s = api.ttnn_c_tensor_layout(h, &mut lay);
            if !ok(s) {
                return s;
            }
            if on_device == 0 {
                // A host tensor has no memory config; reported below.
                return sys::TTNN_C_STATUS_OK as c_int;
            }
            api.ttnn_c_tensor_memory_config(h, &mut mc)
        })?;
        if on_device == 0 {
            return Err(Error::Backend {
                op,
                backend: BACKEND,
                message: "the library returned a host tensor where a device tensor was expected"
                    .into(),
            });
        }
        let shape = convert::shape_from(op, &dims, rank)?;
        t.padded_shape = convert::shape_from(op, &pdims, prank)?;
        let mut dtype = convert::dtype_from(op, dt)?;
        if ternary && dtype == DataType::Bfloat4B {
            dtype = DataType::Ternary;
        }
        let layout = convert::layout_from(op, lay)?;
        t.memory_config = convert::memory_config_from(op, &mc)?;
        let t = Arc::new(t);
        Ok(Tensor::from_parts(
            shape,
            dtype,
            layout,
            Storage::Device {
                device: device.clone(),
                buffer: DeviceBuffer::Tt(t),
            },
        ))
    }

    /// An owning guard for a raw handle (freed on drop, also on the error paths of `wrap`).
    fn own(self: &Arc<Self>, op: &'static str, raw: *mut sys::ttnn_c_tensor) -> Result<TtTensor> {
        let raw = NonNull::new(raw).ok_or_else(|| Error::Backend {
            op,
            backend: BACKEND,
            message: "the library returned a null tensor handle".into(),
        })?;
        Ok(TtTensor {
            dev: Arc::clone(self),
            raw,
            memory_config: DRAM_MEMORY_CONFIG,
            padded_shape: Shape::new(&[]),
        })
    }

    /// A host tensor handle from host data. Block floats and Ternary pass f32 values, as the ABI
    /// specifies, and are quantized by the library (Ternary as BFLOAT4_B, exact for -1, 0, +1).
    fn from_host(
        self: &Arc<Self>,
        op: &'static str,
        data: &HostData,
        shape: Shape,
        dtype: DataType,
        layout: Layout,
    ) -> Result<TtTensor> {
        let decoded: Vec<f32>;
        let (ptr, nbytes): (*const c_void, usize) = match data {
            HostData::F32(v) => (v.as_ptr().cast(), std::mem::size_of_val(v.as_slice())),
            HostData::Bf16(v) => (v.as_ptr().cast(), std::mem::size_of_val::<[bf16]>(v)),
            HostData::U32(v) => (v.as_ptr().cast(), std::mem::size_of_val(v.as_slice())),
            HostData::I32(v) => (v.as_ptr().cast(), std::mem::size_of_val(v.as_slice())),
            HostData::U16(v) => (v.as_ptr().cast(), std::mem::size_of_val(v.as_slice())),
            HostData::U8(v) => (v.as_ptr().cast(), std::mem::size_of_val(v.as_slice())),
            HostData::Block(_) | HostData::Ternary(_) => {
                decoded = data.to_f32_vec();
                (
                    decoded.as_ptr().cast(),
                    std::mem::size_of_val(decoded.as_slice()),
                )
            }
        };
        let (dims, rank) = convert::shape(op, shape)?;
        let mut out: *mut sys::ttnn_c_tensor = std::ptr::null_mut();
        // SAFETY: `ptr` points to `nbytes` readable bytes of `data` (or of `decoded`), both alive
        // for the call; `dims` has `rank` valid entries; no device and no memory config (a host
        // tensor); `out` is a local.
        self.call_op(op, |api, _| unsafe {
            api.ttnn_c_tensor_from_host(
                ptr,
                nbytes,
                convert::dtype(dtype),
                dims.as_ptr(),
                rank,
                convert::layout(layout),
                std::ptr::null_mut(),
                std::ptr::null(),
                &mut out,
            )
        })?;
        self.own(op, out)
    }

    /// Uploads host data into a new device tensor (TT-NN's `from_torch(..., device=...)`).
    #[allow(clippy::too_many_arguments)] // a tensor's parts, as `Tensor::to_device` holds them
    pub(crate) fn upload(
        self: &Arc<Self>,
        device: &Device,
        op: &'static str,
        data: &HostData,
        shape: Shape,
        dtype: DataType,
        layout: Layout,
        mc: &MemoryConfig,
    ) -> Result<Tensor> {
        self.ensure_not_capturing(op)?;
        // As TT-NN's `from_torch` then `to_device`: a host tensor, then the move.
        let host = self.from_host(op, data, shape, dtype, layout)?;
        let h = host.raw.as_ptr();
        let c_mc = convert::memory_config(op, mc)?;
        let mut out: *mut sys::ttnn_c_tensor = std::ptr::null_mut();
        // SAFETY: a live host tensor handle, the live device handle, a memory config in a local
        // and an out-pointer to a local.
        self.call_op(op, |api, d| unsafe {
            api.ttnn_c_tensor_to_device(h, d, &c_mc, &mut out)
        })?;
        drop(host);
        self.wrap(device, op, out, dtype == DataType::Ternary)
    }

    /// Overwrites a device tensor's buffer with host data of the same spec
    /// (`copy_host_to_device_tensor`).
    pub(crate) fn write(
        self: &Arc<Self>,
        op: &'static str,
        data: &HostData,
        shape: Shape,
        dtype: DataType,
        layout: Layout,
        dst: &TtTensor,
    ) -> Result<()> {
        self.ensure_not_capturing(op)?;
        let src = self.from_host(op, data, shape, dtype, layout)?;
        let (s, d) = (src.raw.as_ptr(), dst.raw.as_ptr());
        // SAFETY: both handles are live (`src` owned here, `dst` borrowed) and distinct.
        self.call_op(op, |api, _| unsafe { api.ttnn_c_copy_host_to_device(s, d) })
    }

    /// Reads a device tensor back into host storage of `dtype` (block floats and Ternary come
    /// back as f32 and are re-encoded, which is exact for values read from those formats).
    pub(crate) fn read(
        self: &Arc<Self>,
        op: &'static str,
        t: &TtTensor,
        shape: Shape,
        dtype: DataType,
    ) -> Result<HostData> {
        self.ensure_not_capturing(op)?;
        // As TT-NN's `cpu()` then `to_torch`: a blocking move to a host tensor, then its bytes.
        let d = t.raw.as_ptr();
        let mut out: *mut sys::ttnn_c_tensor = std::ptr::null_mut();
        // SAFETY: a live device tensor handle and an out-pointer to a local.
        self.call(op, |api, _| unsafe {
            api.ttnn_c_tensor_from_device(d, 1, &mut out)
        })?;
        let host = self.own(op, out)?;
        let h = host.raw.as_ptr();
        let (mut dt, mut count, mut nbytes) = (0u32, 0u64, 0u64);
        // SAFETY: a live handle and out-pointers to locals.
        self.call(op, |api, _| unsafe {
            api.ttnn_c_tensor_read_info(h, &mut dt, &mut count, &mut nbytes)
        })?;
        let got = convert::dtype_from(op, dt)?;
        let count = usize::try_from(count).map_err(|_| Error::Backend {
            op,
            backend: BACKEND,
            message: format!("{count} elements do not fit in memory"),
        })?;
        if count != shape.volume() {
            return Err(Error::Backend {
                op,
                backend: BACKEND,
                message: format!(
                    "the library reads {count} elements for a tensor of shape {shape} ({} elements)",
                    shape.volume()
                ),
            });
        }
        fn fill<T: Copy + Default>(
            dev: &TtDevice,
            op: &'static str,
            h: *mut sys::ttnn_c_tensor,
            count: usize,
            nbytes: u64,
        ) -> Result<Vec<T>> {
            let mut v = vec![T::default(); count];
            let want = std::mem::size_of_val(v.as_slice());
            if want as u64 != nbytes {
                return Err(Error::Backend {
                    op,
                    backend: BACKEND,
                    message: format!(
                        "the library reads {nbytes} bytes for {count} elements of {} bytes",
                        std::mem::size_of::<T>()
                    ),
                });
            }
            let dst: *mut c_void = v.as_mut_ptr().cast();
            // SAFETY: `dst` points to `want` writable bytes of `v`, the size the library reported
            // for this live handle; any bit pattern is a valid `T` (plain numbers).
            dev.call(op, |api, _| unsafe { api.ttnn_c_tensor_read(h, dst, want) })?;
            Ok(v)
        }
        let data = match got {
            DataType::Float32 => HostData::F32(fill::<f32>(self, op, h, count, nbytes)?),
            DataType::Bfloat16 => HostData::Bf16(fill::<bf16>(self, op, h, count, nbytes)?.into()),
            DataType::Uint32 => HostData::U32(fill::<u32>(self, op, h, count, nbytes)?),
            DataType::Int32 => HostData::I32(fill::<i32>(self, op, h, count, nbytes)?),
            DataType::Uint16 => HostData::U16(fill::<u16>(self, op, h, count, nbytes)?),
            DataType::Uint8 => HostData::U8(fill::<u8>(self, op, h, count, nbytes)?),
            other => {
                return Err(Error::Backend {
                    op,
                    backend: BACKEND,
                    message: format!("the library reads {other:?} data, which has no host form"),
                });
            }
        };
        if data.dtype() == dtype {
            return Ok(data);
        }
        match (&data, dtype) {
            (HostData::F32(v), DataType::Bfloat8B | DataType::Bfloat4B | DataType::Ternary) => {
                HostData::from_f32(op, v, dtype, shape)
            }
            _ => Err(Error::Backend {
                op,
                backend: BACKEND,
                message: format!(
                    "the library reads {:?} data for a {dtype:?} tensor",
                    data.dtype()
                ),
            }),
        }
    }

    // ---- traces ---------------------------------------------------------------------------------

    pub(crate) fn begin_capture(&self, op: &'static str, cq_id: u8) -> Result<u32> {
        self.take_deferred()?;
        // Held across the call: no op can slip between the state check and the capture start.
        let mut cap = lock(&self.capture);
        if let Some(c) = cap.as_ref() {
            return Err(Error::TraceCaptureActive {
                op,
                trace_id: c.trace_id,
            });
        }
        let mut id = 0u32;
        // SAFETY: a live device handle and an out-pointer to a local.
        self.call(op, |api, d| unsafe {
            api.ttnn_c_begin_trace_capture(d, u32::from(cq_id), &mut id)
        })?;
        *cap = Some(Capture {
            trace_id: id,
            ops: 0,
        });
        Ok(id)
    }

    pub(crate) fn end_capture(
        self: &Arc<Self>,
        op: &'static str,
        trace_id: u32,
        cq_id: u8,
    ) -> Result<TtTrace> {
        let mut cap = lock(&self.capture);
        match cap.as_ref() {
            None => {
                return Err(Error::TraceState {
                    op,
                    reason: "no trace capture is active".into(),
                });
            }
            Some(c) if c.trace_id != trace_id => {
                return Err(Error::TraceState {
                    op,
                    reason: format!(
                        "trace {} is being captured, not trace {trace_id}",
                        c.trace_id
                    ),
                });
            }
            Some(_) => {}
        }
        // SAFETY: a live device handle and plain values.
        let ended = self.call(op, |api, d| unsafe {
            api.ttnn_c_end_trace_capture(d, trace_id, u32::from(cq_id))
        });
        // The capture is over either way: after a failed end TT-NN's state is unknown, and
        // keeping the capture open would refuse every later upload.
        let c = cap.take();
        drop(cap);
        ended?;
        let ops = c.map_or(0, |c| c.ops);
        self.live_traces.fetch_add(1, Ordering::Relaxed);
        Ok(TtTrace {
            dev: Arc::clone(self),
            id: trace_id,
            ops,
        })
    }

    pub(crate) fn execute(
        &self,
        op: &'static str,
        trace: &TtTrace,
        cq_id: u8,
        blocking: bool,
    ) -> Result<()> {
        self.take_deferred()?;
        self.ensure_not_capturing(op)?;
        let id = trace.id;
        // SAFETY: a live device handle and plain values; the trace id came from this device's
        // end_trace_capture and is not released (its TtTrace is borrowed).
        self.call_op(op, |api, d| unsafe {
            api.ttnn_c_execute_trace(d, id, u32::from(cq_id), u8::from(blocking))
        })
    }

    pub(crate) fn live_traces(&self) -> usize {
        self.live_traces.load(Ordering::Relaxed)
    }

    // ---- memory ---------------------------------------------------------------------------------

    /// DRAM, L1 and L1_SMALL in use from the allocator's statistics. TT-NN reports them per bank
    /// (one DRAM channel; the L1 of one core), so totals are per-bank figures times the chip's
    /// DRAM banks (`ChipSpec::dram_banks`) and the compute grid's cores; `l1_max_core` is the
    /// per-bank figure itself (allocations are lock-step across L1 banks). Peaks are sampled
    /// at each report.
    pub(crate) fn memory_report(&self, chip: &ChipSpec) -> Result<MemoryReport> {
        let op = "Device::memory_report";
        let stats = |bt: u32| -> Result<sys::ttnn_c_memory_stats> {
            let mut s = sys::ttnn_c_memory_stats::default();
            // SAFETY: a live device handle, a valid buffer type and an out-pointer to a local.
            self.call(op, |api, d| unsafe {
                api.ttnn_c_device_memory_stats(d, bt, &mut s)
            })?;
            Ok(s)
        };
        let dram = stats(sys::TTNN_C_BUFFER_TYPE_DRAM)?;
        let l1 = stats(sys::TTNN_C_BUFFER_TYPE_L1)?;
        let l1_small = stats(sys::TTNN_C_BUFFER_TYPE_L1_SMALL)?;
        let banks = chip.dram_banks as u64;
        let cores = (self.grid.x * self.grid.y) as u64;
        let mut p = lock(&self.peaks);
        let usage = |s: &sys::ttnn_c_memory_stats, n: u64, peak: &mut u64| {
            let in_use = s.total_allocated_bytes.saturating_mul(n);
            *peak = (*peak).max(in_use);
            MemoryUsage {
                in_use,
                peak: *peak,
                capacity: s.total_allocatable_size_bytes.saturating_mul(n),
            }
        };
        let Peaks {
            dram: pd,
            l1: pl,
            l1_core: pc,
            l1_small: ps,
        } = &mut *p;
        Ok(MemoryReport {
            dram: usage(&dram, banks, pd),
            l1: usage(&l1, cores, pl),
            l1_max_core: usage(&l1, 1, pc),
            l1_small: usage(&l1_small, cores, ps),
            live_traces: self.live_traces(),
        })
    }

    /// Resets the sampled peaks to the current use.
    pub(crate) fn reset_peaks(&self, chip: &ChipSpec) {
        *lock(&self.peaks) = Peaks::default();
        // Re-sampling sets each peak to the current use; a failed query leaves them at zero.
        let _ = self.memory_report(chip);
    }
}

/// Pointer to an optional argument (null when absent).
pub(crate) fn opt<T>(v: &Option<T>) -> *const T {
    v.as_ref().map_or(std::ptr::null(), |v| v as *const T)
}

/// The backend's part of a `Device`: the shared device handle. Dropped with the last `Device`
/// clone; it then releases an abandoned capture's kept tensors, which hold the `TtDevice`.
pub(crate) struct TtBackend {
    pub(crate) dev: Arc<TtDevice>,
}

impl std::fmt::Debug for TtBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.dev.fmt(f)
    }
}

// ---------------------------------------------------------------------------------------------
// Tensor handles and traces

/// One tensor handle of the shim, freed on drop. Shared by the `Tensor` clones that use it.
pub(crate) struct TtTensor {
    dev: Arc<TtDevice>,
    raw: NonNull<sys::ttnn_c_tensor>,
    /// As the library reports them when the handle is wrapped (they do not change: ops that
    /// change them return new handles).
    pub(crate) memory_config: MemoryConfig,
    pub(crate) padded_shape: Shape,
}

// SAFETY: the handle points to a heap `ttnn::Tensor` (a reference-counted view of a device
// buffer) with no thread affinity; it is only passed to the library under its device's dispatch
// lock (`TtDevice::call`), including when it is freed, so moving or sharing it across threads
// never makes two calls race.
unsafe impl Send for TtTensor {}
// SAFETY: see `Send` above.
unsafe impl Sync for TtTensor {}

impl std::fmt::Debug for TtTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TtTensor")
            .field("memory_config", &self.memory_config)
            .finish()
    }
}

impl Drop for TtTensor {
    fn drop(&mut self) {
        let _g = lock(&self.dev.dispatch);
        // SAFETY: the handle was returned by the library and is freed exactly once, here; its
        // device is alive (held by `self.dev`). The free function never fails.
        unsafe { self.dev.lib.api.ttnn_c_tensor_free(self.raw.as_ptr()) };
    }
}

impl TtTensor {
    pub(crate) fn device(&self) -> &Arc<TtDevice> {
        &self.dev
    }
}

/// A captured trace of the Tenstorrent backend: its id (released on drop) and its op count.
pub(crate) struct TtTrace {
    dev: Arc<TtDevice>,
    id: u32,
    ops: usize,
}

impl TtTrace {
    pub(crate) fn num_ops(&self) -> usize {
        self.ops
    }

    pub(crate) fn device(&self) -> &Arc<TtDevice> {
        &self.dev
    }
}

impl Drop for TtTrace {
    fn drop(&mut self) {
        let id = self.id;
        // SAFETY: a live device handle; the id came from end_trace_capture and is released once.
        let r = self.dev.call("release_trace", |api, d| unsafe {
            api.ttnn_c_release_trace(d, id)
        });
        self.dev.live_traces.fetch_sub(1, Ordering::Relaxed);
        if let Err(e) = r {
            *lock(&self.dev.deferred) = Some(e);
        }
    }
}

/// The Tenstorrent side of an op: the device handle and the public `Device` that outputs name.
pub(crate) struct Tt<'a> {
    pub(crate) dev: &'a Arc<TtDevice>,
    pub(crate) device: &'a Device,
}

impl<'a> Tt<'a> {
    pub(crate) fn new(backend: &'a TtBackend, device: &'a Device) -> Self {
        Self {
            dev: &backend.dev,
            device,
        }
    }

    /// The raw handle of `t`, a tensor of this device (validated by the op before dispatch),
    /// valid while `t` is borrowed.
    pub(crate) fn h(
        &self,
        op: &'static str,
        what: &str,
        t: &Tensor,
    ) -> Result<*mut sys::ttnn_c_tensor> {
        let tt = t.tt_tensor(op, what)?;
        if !Arc::ptr_eq(&tt.dev, self.dev) {
            return Err(Error::WrongStorage {
                op,
                what: what.to_string(),
                expected: "the same device as the first input",
            });
        }
        Ok(tt.raw.as_ptr())
    }

    /// [`h`](Self::h) for an optional tensor (null when absent).
    pub(crate) fn oh(
        &self,
        op: &'static str,
        what: &str,
        t: Option<&Tensor>,
    ) -> Result<*mut sys::ttnn_c_tensor> {
        t.map_or(Ok(std::ptr::null_mut()), |t| self.h(op, what, t))
    }

    /// Calls an op's entry point (see [`TtDevice::call`]).
    pub(crate) fn call(
        &self,
        op: &'static str,
        f: impl FnOnce(&sys::TtnnC, *mut sys::ttnn_c_device) -> c_int,
    ) -> Result<()> {
        self.dev.call_op(op, f)
    }

    /// Wraps an output handle as a `Tensor` of this device.
    pub(crate) fn wrap(&self, op: &'static str, raw: *mut sys::ttnn_c_tensor) -> Result<Tensor> {
        self.dev.wrap(self.device, op, raw, false)
    }

    /// Frees an output handle the caller does not need (an in-place op's handle to its target).
    pub(crate) fn discard(&self, op: &'static str, raw: *mut sys::ttnn_c_tensor) -> Result<()> {
        if !raw.is_null() {
            drop(self.dev.own(op, raw)?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_path_and_env_are_exclusive() {
        let exe = Path::new("/x/target/debug/deps/t");
        let home = OsStr::new("/tt");
        let c = shim_candidates(
            Some(Path::new("/a/lib.so")),
            Some(OsStr::new("/b.so")),
            Some(exe),
            Some(home),
        );
        assert_eq!(c, vec![PathBuf::from("/a/lib.so")]);
        let c = shim_candidates(None, Some(OsStr::new("/b.so")), Some(exe), Some(home));
        assert_eq!(c, vec![PathBuf::from("/b.so")]);
    }

    #[test]
    fn search_order_exe_dir_parent_then_tt_metal_home() {
        let c = shim_candidates(
            None,
            Some(OsStr::new("")),
            Some(Path::new("/x/target/debug/deps/t")),
            Some(OsStr::new("/tt")),
        );
        let c: Vec<String> = c.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(c[0], "/x/target/debug/deps/libttnn_c.so");
        assert_eq!(c[1], "/x/target/debug/deps/libttnn_c.so.1");
        assert_eq!(c[2], "/x/target/debug/libttnn_c.so");
        assert_eq!(c[4], "/tt/build/lib/libttnn_c.so");
        assert_eq!(c[6], "/tt/build_Release/lib/libttnn_c.so");
        assert_eq!(c.len(), 4 + 2 * TT_METAL_HOME_LIB_DIRS.len());
        assert!(shim_candidates(None, None, None, None).is_empty());
    }

    #[test]
    fn missing_library_lists_every_path_tried() {
        let e = load(Some(Path::new("/nonexistent/libttnn_c.so"))).unwrap_err();
        assert!(
            matches!(&e, Error::LibraryNotFound { tried } if tried.len() == 1),
            "{e}"
        );
        assert!(e.to_string().contains("/nonexistent/libttnn_c.so"), "{e}");
    }

    #[test]
    fn a_file_that_is_not_a_library_is_a_load_error() {
        let p = std::env::temp_dir().join(format!("not-a-lib-{}.so", std::process::id()));
        std::fs::write(&p, b"not an ELF file").expect("write");
        let e = load(Some(&p)).unwrap_err();
        let _ = std::fs::remove_file(&p);
        assert!(matches!(e, Error::LibraryLoad { .. }), "{e}");
    }
}
