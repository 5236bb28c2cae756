//! Library, device and trace entry points.

use std::ffi::{c_char, c_int};

use ttnn_sys as sys;
use ttnn_sys::{ttnn_c_core_coord, ttnn_c_device, ttnn_c_memory_stats};

use crate::convert::Out;
use crate::handles::{self, DeviceState, SendTrace};
use crate::status::{Failure, guard, guard_void, invalid, last_error_ptr};

/// What `ttnn_c_implementation` reports.
const IMPLEMENTATION: &std::ffi::CStr =
    c"ttnn-c-host: the ttnn host backend behind the TT-NN C ABI (test provider, no Tenstorrent card)";

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_abi_version() -> u32 {
    sys::TTNN_C_ABI_VERSION
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_implementation() -> *const c_char {
    IMPLEMENTATION.as_ptr()
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_last_error() -> *const c_char {
    last_error_ptr()
}

// ---------------------------------------------------------------------------------------------
// Device

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_device_open(
    device_id: u32,
    l1_small_size: u64,
    trace_region_size: u64,
    num_command_queues: u32,
    out: *mut *mut ttnn_c_device,
) -> c_int {
    guard("ttnn_c_device_open", || {
        // SAFETY: per ttnn_c.h, `out` is NULL or writable.
        let out = unsafe { Out::new(out, "out") }?;
        if !(1..=2).contains(&num_command_queues) {
            return Err(invalid(format!(
                "num_command_queues must be 1 or 2, got {num_command_queues}"
            )));
        }
        if device_id != 0 {
            return Err(Failure::State(format!(
                "no device {device_id}: the host provider models one chip, device 0"
            )));
        }
        let spec = ttnn::DeviceSpec {
            l1_small_size,
            trace_region_size,
            ..ttnn::DeviceSpec::default()
        };
        let device = ttnn::Device::open(spec)?;
        out.set(handles::new_device(DeviceState::new(
            device,
            num_command_queues,
        )));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_device_close(device: *mut ttnn_c_device) {
    guard_void(|| handles::free_device(device));
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_device_compute_grid(
    device: *const ttnn_c_device,
    out: *mut ttnn_c_core_coord,
) -> c_int {
    guard("ttnn_c_device_compute_grid", || {
        // SAFETY: per ttnn_c.h, `out` is NULL or writable.
        let out = unsafe { Out::new(out, "out") }?;
        let d = handles::device(device, "device")?;
        let g = d.device.compute_with_storage_grid_size();
        out.set(ttnn_c_core_coord {
            x: g.x as u32,
            y: g.y as u32,
        });
        Ok(())
    })
}

/// Per-bank statistics from `Device::memory_report()`, as TT-NN's allocator reports them for
/// one DRAM channel or one core's L1. The host allocator does not fragment, so the largest free
/// block is all the free memory. L1: the fullest core (TT allocates L1 addresses in lockstep
/// over the cores, so that core bounds the next allocation). L1_SMALL: the average per core (the
/// report keeps only totals). TRACE: the trace region, with nothing allocated (the host does not
/// account trace buffers).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_device_memory_stats(
    device: *const ttnn_c_device,
    buffer_type: u32,
    out: *mut ttnn_c_memory_stats,
) -> c_int {
    guard("ttnn_c_device_memory_stats", || {
        // SAFETY: per ttnn_c.h, `out` is NULL or writable.
        let out = unsafe { Out::new(out, "out") }?;
        let d = handles::device(device, "device")?;
        let spec = d.device.spec();
        let report = d.device.memory_report();
        let cores = spec.chip.num_cores() as u64;
        let (total, allocated) = match buffer_type {
            sys::TTNN_C_BUFFER_TYPE_DRAM => {
                let banks = spec.chip.dram_banks as u64;
                (report.dram.capacity / banks, report.dram.in_use / banks)
            }
            sys::TTNN_C_BUFFER_TYPE_L1 => (report.l1_max_core.capacity, report.l1_max_core.in_use),
            sys::TTNN_C_BUFFER_TYPE_L1_SMALL => (
                spec.l1_small_size,
                report.l1_small.in_use.div_ceil(cores.max(1)),
            ),
            sys::TTNN_C_BUFFER_TYPE_TRACE => (spec.trace_region_size, 0),
            other => return Err(invalid(format!("unknown buffer type {other}"))),
        };
        let free = total.saturating_sub(allocated);
        out.set(ttnn_c_memory_stats {
            total_allocatable_size_bytes: total,
            total_allocated_bytes: allocated,
            total_free_bytes: free,
            largest_free_block_bytes: free,
        });
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Traces
//
// The C ABI names traces by `uint32_t` id and keeps them on the device; `ttnn` hands back a
// `Trace` value. Each device handle keeps the capture in progress and a map id -> `Trace`.
// Ids are `ttnn`'s, process-wide as on TT (see `handles::Traces`).

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_begin_trace_capture(
    device: *mut ttnn_c_device,
    cq_id: u32,
    out_trace_id: *mut u32,
) -> c_int {
    guard("ttnn_c_begin_trace_capture", || {
        // SAFETY: per ttnn_c.h, `out_trace_id` is NULL or writable.
        let out = unsafe { Out::new(out_trace_id, "out_trace_id") }?;
        let d = handles::device(device, "device")?;
        let cq = d.command_queue(cq_id)?;
        let mut traces = d.traces();
        let id = ttnn::begin_trace_capture(&d.device, cq)?;
        traces.capturing = Some(id);
        out.set(id.0);
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_end_trace_capture(
    device: *mut ttnn_c_device,
    trace_id: u32,
    cq_id: u32,
) -> c_int {
    guard("ttnn_c_end_trace_capture", || {
        let d = handles::device(device, "device")?;
        let cq = d.command_queue(cq_id)?;
        let mut traces = d.traces();
        let id = match traces.capturing {
            Some(id) if id.0 == trace_id => id,
            Some(id) => {
                return Err(Failure::State(format!(
                    "trace {} is being captured, not trace {trace_id}",
                    id.0
                )));
            }
            None => {
                return Err(Failure::State(format!(
                    "no trace capture is active (trace {trace_id})"
                )));
            }
        };
        let trace = ttnn::end_trace_capture(&d.device, id, cq)?;
        traces.capturing = None;
        traces.captured.insert(trace_id, SendTrace(trace));
        Ok(())
    })
}

/// Why `trace_id` is not a captured trace of the device.
fn not_captured(traces: &handles::Traces, trace_id: u32) -> Failure {
    match traces.capturing {
        Some(id) if id.0 == trace_id => {
            Failure::State(format!("trace {trace_id} is still being captured"))
        }
        _ => Failure::State(format!(
            "trace {trace_id} is not a captured trace of this device (never captured, or released)"
        )),
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_execute_trace(
    device: *mut ttnn_c_device,
    trace_id: u32,
    cq_id: u32,
    blocking: u8,
) -> c_int {
    guard("ttnn_c_execute_trace", || {
        let d = handles::device(device, "device")?;
        let cq = d.command_queue(cq_id)?;
        // The lock is held for the replay: one replay of a device's traces at a time.
        let traces = d.traces();
        let trace = traces
            .captured
            .get(&trace_id)
            .ok_or_else(|| not_captured(&traces, trace_id))?;
        ttnn::execute_trace(&d.device, &trace.0, cq, blocking != 0)?;
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_release_trace(device: *mut ttnn_c_device, trace_id: u32) -> c_int {
    guard("ttnn_c_release_trace", || {
        if device.is_null() {
            return Ok(());
        }
        let d = handles::device(device, "device")?;
        let trace = {
            let mut traces = d.traces();
            match traces.captured.remove(&trace_id) {
                Some(t) => t,
                None => return Err(not_captured(&traces, trace_id)),
            }
        };
        ttnn::release_trace(trace.0);
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Test-only extensions (not in ttnn_c.h; load them by name)

/// Handles (devices and tensors) created and not yet freed, in this process. Test-only: a test
/// that runs alone checks that it is back to its starting value.
#[unsafe(no_mangle)]
pub extern "C" fn ttnn_c_host_live_handles() -> u64 {
    handles::live_handles()
}

/// Handles created minus handles freed by the calling thread. Test-only: libtest runs each test
/// on its own thread, so a test that keeps its handles on its thread can check for leaks with 0
/// while other tests run in parallel.
#[unsafe(no_mangle)]
pub extern "C" fn ttnn_c_host_thread_handle_balance() -> i64 {
    handles::thread_balance()
}

/// Frees (tensor free, device close) on the calling thread of handles that were not live: double
/// frees and stale handles, which the provider ignores instead of crashing. Test-only.
#[unsafe(no_mangle)]
pub extern "C" fn ttnn_c_host_thread_bad_frees() -> u64 {
    handles::thread_bad_frees()
}

/// Runs a body that panics behind the barrier every entry point uses and returns its status
/// (`TTNN_C_STATUS_UNKNOWN_EXCEPTION`, with the panic message in `ttnn_c_last_error`).
/// Test-only: no input makes a real entry point panic on purpose, so this is how the tests see
/// that a panic never unwinds into the caller.
#[unsafe(no_mangle)]
pub extern "C" fn ttnn_c_host_test_panic() -> c_int {
    // The default hook would print the deliberate panic to stderr like a real one; silence it
    // for this call (the hook is this library's own: it links its own copy of std).
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let status = guard("ttnn_c_host_test_panic", || {
        panic!("deliberate panic (test of the barrier)")
    });
    std::panic::set_hook(hook);
    status
}
