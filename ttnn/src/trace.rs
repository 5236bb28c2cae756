//! Trace capture and replay (TT-NN's `begin_trace_capture` / `end_trace_capture` /
//! `execute_trace` / `release_trace`).
//!
//! During capture, ops are recorded with their buffers and not run, as on a TT device: their
//! outputs hold nothing useful until the trace is executed. Each replay re-runs the recorded
//! ops on the same buffers, overwriting the outputs allocated during capture. Inputs change
//! between replays only through [`crate::copy_host_to_device`]. Writing to or reading from the
//! device while capturing, and nested capture, are errors.
//!
//! On the Tenstorrent backend the trace is TT-NN's, by id; the `Trace` also holds every tensor
//! the captured ops used, so that their buffers outlive the trace as on the host backend.

use std::marker::PhantomData;

use crate::device::{BackendImpl, Device};
use crate::error::{Error, Result};
use crate::host::HostTrace;
use crate::tt::TtTrace;

/// A captured trace's backend state.
enum TraceImpl {
    Host(HostTrace),
    Tt(TtTrace),
}

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
    inner: TraceImpl,
    _not_send: PhantomData<*const ()>,
}

impl std::fmt::Debug for Trace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trace")
            .field("id", &self.id)
            .field("device", &self.device.id())
            .field("ops", &self.num_ops())
            .finish()
    }
}

impl Trace {
    pub fn id(&self) -> TraceId {
        self.id
    }

    /// Number of ops recorded (on the Tenstorrent backend: calls into TT-NN while capturing).
    pub fn num_ops(&self) -> usize {
        match &self.inner {
            TraceImpl::Host(h) => h.num_commands(),
            TraceImpl::Tt(t) => t.num_ops(),
        }
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
    match device.backend_impl() {
        BackendImpl::Host(host) => host.begin_capture(op).map(TraceId),
        BackendImpl::Tt(tt) => tt.dev.begin_capture(op, cq_id).map(TraceId),
    }
}

/// Stops recording and returns the trace.
pub fn end_trace_capture(device: &Device, trace_id: TraceId, cq_id: u8) -> Result<Trace> {
    let op = "end_trace_capture";
    check_cq(op, cq_id)?;
    let inner = match device.backend_impl() {
        BackendImpl::Host(host) => TraceImpl::Host(host.end_capture(op, trace_id.0)?),
        BackendImpl::Tt(tt) => TraceImpl::Tt(tt.dev.end_capture(op, trace_id.0, cq_id)?),
    };
    Ok(Trace {
        device: device.clone(),
        id: trace_id,
        inner,
        _not_send: PhantomData,
    })
}

/// Replays `trace`. The host backend always completes before returning, so there `blocking`
/// only documents intent; the Tenstorrent backend passes it to TT-NN.
pub fn execute_trace(device: &Device, trace: &Trace, cq_id: u8, blocking: bool) -> Result<()> {
    let op = "execute_trace";
    check_cq(op, cq_id)?;
    if *device != trace.device {
        return Err(Error::TraceState {
            op,
            reason: "the trace was captured on another device".into(),
        });
    }
    match (device.backend_impl(), &trace.inner) {
        (BackendImpl::Host(host), TraceImpl::Host(t)) => host.replay(op, t),
        (BackendImpl::Tt(tt), TraceImpl::Tt(t)) if std::sync::Arc::ptr_eq(&tt.dev, t.device()) => {
            tt.dev.execute(op, t, cq_id, blocking)
        }
        _ => Err(Error::TraceState {
            op,
            reason: "the trace belongs to another backend".into(),
        }),
    }
}

/// Releases a trace (same as dropping it).
pub fn release_trace(trace: Trace) {
    drop(trace);
}
