//! Handles: the registry that owns every object handed out, the live-handle counters, and the
//! per-device trace table.
//!
//! A handle is an opaque token (a non-null, never-reused number typed as a pointer), and the
//! object it names (a `ttnn::Tensor`, or a device with its traces) lives boxed in a process-wide
//! registry keyed by that token. The provider never dereferences a handle, so a freed, doubly
//! freed, never-issued or wrong-kind handle is found in the registry lookup and becomes
//! `TTNN_C_STATUS_INVALID_ARGUMENT` instead of undefined behaviour. This is stricter than
//! TT-NN's shim, where such a handle is a dangling pointer. Tokens are never reused (an
//! address-keyed registry would let a stale handle alias a new object allocated at the same
//! address).

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ttnn_sys::{ttnn_c_device, ttnn_c_tensor};

use crate::status::{Failure, Res, invalid};

/// What a handle names.
enum Object {
    Device(Arc<DeviceState>),
    Tensor(ttnn::Tensor),
}

struct Registry {
    next_token: usize,
    live: BTreeMap<usize, Object>,
}

/// Tokens start well above page 0 and step by 16, so they look like aligned heap pointers to
/// any code that prints or compares them.
const FIRST_TOKEN: usize = 0x1000;
const TOKEN_STEP: usize = 16;

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    next_token: FIRST_TOKEN,
    live: BTreeMap::new(),
});

/// Handles created and not yet freed, process-wide.
static LIVE_HANDLES: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Handles created minus handles freed by this thread: a per-test count when tests run in
    /// parallel threads.
    static THREAD_BALANCE: Cell<i64> = const { Cell::new(0) };
    /// Frees on this thread of handles that were not live (double frees, stale handles).
    static THREAD_BAD_FREES: Cell<u64> = const { Cell::new(0) };
}

fn registry() -> MutexGuard<'static, Registry> {
    // A panic while the lock was held cannot leave the map half-updated (every critical section
    // is one insert or remove), so poisoning is ignored.
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

fn bump_thread(cell: &'static std::thread::LocalKey<Cell<i64>>, by: i64) {
    let _ = cell.try_with(|c| c.set(c.get() + by));
}

fn insert(object: Object) -> usize {
    let token = {
        let mut r = registry();
        let token = r.next_token;
        r.next_token += TOKEN_STEP;
        r.live.insert(token, object);
        token
    };
    LIVE_HANDLES.fetch_add(1, Ordering::Relaxed);
    bump_thread(&THREAD_BALANCE, 1);
    token
}

/// Removes a live handle of the expected kind; the object is returned so the caller drops it
/// outside the registry lock (dropping a device joins its worker threads).
fn remove(token: usize, is_kind: impl Fn(&Object) -> bool) -> Option<Object> {
    let removed = {
        let mut r = registry();
        match r.live.get(&token) {
            Some(o) if is_kind(o) => r.live.remove(&token),
            _ => None,
        }
    };
    match removed {
        Some(o) => {
            LIVE_HANDLES.fetch_sub(1, Ordering::Relaxed);
            bump_thread(&THREAD_BALANCE, -1);
            Some(o)
        }
        None => {
            let _ = THREAD_BAD_FREES.try_with(|c| c.set(c.get() + 1));
            None
        }
    }
}

fn dead(what: &str, kind: &str, token: usize) -> Failure {
    invalid(format!(
        "{what} ({token:#x}) is not a live {kind} handle (freed, never created, or another kind of handle)"
    ))
}

/// The tensor named by `handle` (a new reference to the same buffer).
pub(crate) fn tensor(handle: *const ttnn_c_tensor, what: &str) -> Res<ttnn::Tensor> {
    if handle.is_null() {
        return Err(invalid(format!("{what} is NULL")));
    }
    let token = handle.addr();
    match registry().live.get(&token) {
        Some(Object::Tensor(t)) => Ok(t.clone()),
        _ => Err(dead(what, "tensor", token)),
    }
}

/// An optional tensor argument (NULL: not given).
pub(crate) fn opt_tensor(handle: *const ttnn_c_tensor, what: &str) -> Res<Option<ttnn::Tensor>> {
    if handle.is_null() {
        return Ok(None);
    }
    tensor(handle, what).map(Some)
}

/// The device named by `handle`.
pub(crate) fn device(handle: *const ttnn_c_device, what: &str) -> Res<Arc<DeviceState>> {
    if handle.is_null() {
        return Err(invalid(format!("{what} is NULL")));
    }
    let token = handle.addr();
    match registry().live.get(&token) {
        Some(Object::Device(d)) => Ok(Arc::clone(d)),
        _ => Err(dead(what, "device", token)),
    }
}

/// A new handle owning `t`.
pub(crate) fn new_tensor(t: ttnn::Tensor) -> *mut ttnn_c_tensor {
    std::ptr::without_provenance_mut(insert(Object::Tensor(t)))
}

/// A new handle owning the device.
pub(crate) fn new_device(d: DeviceState) -> *mut ttnn_c_device {
    std::ptr::without_provenance_mut(insert(Object::Device(Arc::new(d))))
}

/// Frees a tensor handle. NULL is a no-op; a handle that is not a live tensor is counted as a
/// bad free and otherwise ignored (the function cannot fail, per the header).
pub(crate) fn free_tensor(handle: *mut ttnn_c_tensor) {
    if handle.is_null() {
        return;
    }
    drop(remove(handle.addr(), |o| matches!(o, Object::Tensor(_))));
}

/// Closes a device handle, releasing its traces; as [`free_tensor`] otherwise. Tensors created
/// on the device keep the host device alive until they are freed (more lenient than TT-NN,
/// where the caller must free them first).
pub(crate) fn free_device(handle: *mut ttnn_c_device) {
    if handle.is_null() {
        return;
    }
    drop(remove(handle.addr(), |o| matches!(o, Object::Device(_))));
}

pub(crate) fn live_handles() -> u64 {
    LIVE_HANDLES.load(Ordering::Relaxed)
}

pub(crate) fn thread_balance() -> i64 {
    THREAD_BALANCE.try_with(Cell::get).unwrap_or(0)
}

pub(crate) fn thread_bad_frees() -> u64 {
    THREAD_BAD_FREES.try_with(Cell::get).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Devices and traces

/// A captured `ttnn::Trace`, movable between threads.
pub(crate) struct SendTrace(pub ttnn::Trace);

// SAFETY: `ttnn::Trace` is `!Send` by policy (a `PhantomData<*const ()>` marker: TT-NN does not
// promise cross-thread replay on a card), not because its contents are thread-bound: on the
// host backend it holds a `ttnn::Device` (an `Arc` of `Send + Sync` state) and the recorded
// commands (`Mutex<Vec<Box<dyn HostCommand>>>`, every command `Send`). The provider only opens
// host devices, keeps each trace behind its device's mutex (one thread touches it at a time),
// and C callers may use a device from any thread, as TT-NN's C++ API allows.
unsafe impl Send for SendTrace {}

/// Trace bookkeeping of one device. The C ABI's `uint32_t` id is `ttnn`'s `TraceId`, which the
/// host backend issues from one process-wide counter starting at 0, as tt-metal's
/// `MeshTrace::next_id()` does: unique across devices, never reused after a release, and
/// consumed even by a `begin_trace_capture` that fails.
#[derive(Default)]
pub(crate) struct Traces {
    /// The capture in progress.
    pub capturing: Option<ttnn::TraceId>,
    /// Captured traces by id (`ttnn` hands traces back by value; the C ABI keeps them on the
    /// device).
    pub captured: HashMap<u32, SendTrace>,
}

/// What a device handle owns.
pub(crate) struct DeviceState {
    pub device: ttnn::Device,
    pub num_command_queues: u32,
    pub traces: Mutex<Traces>,
}

impl DeviceState {
    pub fn new(device: ttnn::Device, num_command_queues: u32) -> Self {
        Self {
            device,
            num_command_queues,
            traces: Mutex::new(Traces::default()),
        }
    }

    pub fn traces(&self) -> MutexGuard<'_, Traces> {
        // A panic during a replay leaves the table itself consistent.
        self.traces.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `cq_id` as `ttnn` takes it, if the device has that queue (TT-NN fails on a queue the
    /// device was not opened with).
    pub fn command_queue(&self, cq_id: u32) -> Res<u8> {
        if cq_id >= self.num_command_queues {
            return Err(Failure::State(format!(
                "command queue {cq_id} does not exist: the device was opened with {} command queue(s)",
                self.num_command_queues
            )));
        }
        u8::try_from(cq_id).map_err(|_| invalid(format!("cq_id {cq_id} is out of range")))
    }
}
