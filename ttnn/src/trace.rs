//! Trace capture and replay (TT-NN's `begin_trace_capture` / `end_trace_capture` /
//! `execute_trace` / `release_trace`).
//!
//! During capture, ops are recorded with their buffers and not run, as on a TT device: their
//! outputs hold nothing useful until the trace is executed. Each replay re-runs the recorded
//! ops on the same buffers, overwriting the outputs allocated during capture. Inputs change
//! between replays only through [`crate::copy_host_to_device`]. Writing to or reading from the
//! device while capturing, and nested capture, are errors.

use std::marker::PhantomData;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::host::HostTrace;

/// Id of a trace being captured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceId(pub u32);

/// A captured trace. Released (its buffers and trace memory returned) when dropped.
///
/// Neither `Send` nor `Sync`: TT-NN traces belong to the command queue of the thread that
/// captured them; replaying from another thread is not something the device API promises.
pub struct Trace {
    device: Device,
    id: TraceId,
    inner: HostTrace,
    _not_send: PhantomData<*const ()>,
}

impl std::fmt::Debug for Trace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trace")
            .field("id", &self.id)
            .field("device", &self.device.id())
            .field("ops", &self.inner.num_commands())
            .finish()
    }
}

impl Trace {
    pub fn id(&self) -> TraceId {
        self.id
    }

    /// Number of ops recorded.
    pub fn num_ops(&self) -> usize {
        self.inner.num_commands()
    }

    pub fn device(&self) -> &Device {
        &self.device
    }
}

fn check_cq(op: &'static str, cq_id: u8) -> Result<()> {
    if cq_id > 1 {
        return Err(Error::arg(
            op,
            format!("command queue {cq_id} does not exist (0 or 1)"),
        ));
    }
    Ok(())
}

/// Starts recording ops on `device`'s command queue `cq_id`.
pub fn begin_trace_capture(device: &Device, cq_id: u8) -> Result<TraceId> {
    let op = "begin_trace_capture";
    check_cq(op, cq_id)?;
    if device.spec().trace_region_size == 0 {
        return Err(Error::TraceState {
            op,
            reason: "the device was opened with trace_region_size 0".into(),
        });
    }
    device.host().begin_capture(op).map(TraceId)
}

/// Stops recording and returns the trace.
pub fn end_trace_capture(device: &Device, trace_id: TraceId, cq_id: u8) -> Result<Trace> {
    let op = "end_trace_capture";
    check_cq(op, cq_id)?;
    let inner = device.host().end_capture(op, trace_id.0)?;
    Ok(Trace {
        device: device.clone(),
        id: trace_id,
        inner,
        _not_send: PhantomData,
    })
}

/// Replays `trace`. The host backend always completes before returning, so `blocking` only
/// documents intent.
pub fn execute_trace(device: &Device, trace: &Trace, cq_id: u8, blocking: bool) -> Result<()> {
    let op = "execute_trace";
    let _ = blocking;
    check_cq(op, cq_id)?;
    if *device != trace.device {
        return Err(Error::TraceState {
            op,
            reason: "the trace was captured on another device".into(),
        });
    }
    device.host().replay(op, &trace.inner)
}

/// Releases a trace (same as dropping it).
pub fn release_trace(trace: Trace) {
    drop(trace);
}
