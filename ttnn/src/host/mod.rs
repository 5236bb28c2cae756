//! The host backend: a functional model of a TT device on the CPU, and a fast engine.
//!
//! Ops validate their arguments once (in `crate::ops`), allocate their outputs, and hand the
//! backend a [`HostCommand`]: the work to do, holding its input and output buffers and any
//! scratch it needs. Outside a trace the command runs at once; during capture it is recorded
//! (not run, as on a TT device) and a replay runs the recorded commands again with no
//! allocation and no validation.

pub(crate) mod blockfloat;
pub(crate) mod data;
pub(crate) mod hugepage;
pub(crate) mod kernels;
pub(crate) mod pool;
pub(crate) mod ternary;
pub(crate) mod ternary_lut;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use crate::device::{DeviceSpec, HostIsa, OpTime, TernaryLayout};
use crate::error::{Error, Result};
use crate::types::MemoryConfig;
use data::HostData;
use pool::ThreadPool;

/// A device buffer of the host backend: its contents (the reservation in modelled memory is
/// held by the tensor handles, see `tensor::Storage`).
#[derive(Debug)]
pub(crate) struct HostBuffer {
    data: RwLock<HostData>,
    pub memory_config: MemoryConfig,
}

impl HostBuffer {
    pub fn new(data: HostData, memory_config: MemoryConfig) -> Self {
        Self {
            data: RwLock::new(data),
            memory_config,
        }
    }

    /// Shared access to the contents. Lock poisoning is ignored: a panicking kernel leaves
    /// garbage values, not broken invariants.
    pub fn read(&self) -> RwLockReadGuard<'_, HostData> {
        self.data.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, HostData> {
        self.data.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a kernel may use while running.
pub(crate) struct HostCtx<'a> {
    pub pool: &'a ThreadPool,
    pub isa: HostIsa,
}

/// One recorded unit of device work.
pub(crate) trait HostCommand: Send + 'static {
    /// Runs the work. Errors are data-dependent failures only (an index out of range in a
    /// tensor); everything static was validated when the command was built.
    fn run(&mut self, ctx: &HostCtx<'_>) -> Result<()>;

    /// What the op profile calls this command: by default its type without the `Cmd` suffix.
    /// Commands whose cost depends on their shape say it (`BitLinear 2560x6912`), so that the
    /// profile separates, say, the FFN's projections from attention's. Called when a command is
    /// recorded or profiled, never in a replay.
    fn name(&self) -> String {
        let t = std::any::type_name::<Self>();
        let t = t.rsplit("::").next().unwrap_or(t);
        t.strip_suffix("Cmd").unwrap_or(t).to_string()
    }
}

/// Wall time per command name while profiling is on (see [`crate::Device::op_profile`]).
///
/// Names are interned when a trace is captured, so a profiled replay only adds to counters:
/// it takes the lock once and allocates nothing. Commands run one after another and each
/// returns when all its workers are done, so a command's wall time is its cost.
#[derive(Default)]
struct OpProfile {
    enabled: AtomicBool,
    /// `(name, calls, total)`, in order of first appearance.
    slots: Mutex<Vec<(String, u64, Duration)>>,
}

impl OpProfile {
    fn slots(&self) -> MutexGuard<'_, Vec<(String, u64, Duration)>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn intern(slots: &mut Vec<(String, u64, Duration)>, name: String) -> usize {
        match slots.iter().position(|s| s.0 == name) {
            Some(i) => i,
            None => {
                slots.push((name, 0, Duration::ZERO));
                slots.len() - 1
            }
        }
    }
}

struct Capture {
    trace_id: u32,
    commands: Vec<Box<dyn HostCommand>>,
}

/// Trace ids, process-wide: tt-metal issues `MeshTraceId`s from one static counter
/// (`MeshTrace::next_id()`, starting at 0) shared by every device, so ids are unique across
/// devices and never reused after a release. The host does the same, so that code written
/// against either backend (and the C ABI's `uint32_t` ids) sees the same numbering.
static NEXT_TRACE_ID: AtomicU32 = AtomicU32::new(0);

/// The host backend's per-device state.
pub(crate) struct HostDevice {
    pub pool: ThreadPool,
    pub isa: HostIsa,
    pub ternary_layout: TernaryLayout,
    capture: Mutex<Option<Capture>>,
    live_traces: Arc<AtomicUsize>,
    profile: OpProfile,
}

impl std::fmt::Debug for HostDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostDevice")
            .field("pool", &self.pool)
            .finish()
    }
}

/// Physical cores of this machine (one kernel thread per core: SMT siblings share the FMA and
/// load units, so a second thread on a core does not speed up bandwidth-bound kernels).
pub fn physical_cores() -> usize {
    num_cpus::get_physical().max(1)
}

impl HostDevice {
    pub fn new(spec: &DeviceSpec) -> Result<Self> {
        let threads = spec.num_threads.unwrap_or_else(physical_cores);
        if threads == 0 {
            return Err(Error::arg("Device::open", "num_threads must be at least 1"));
        }
        let pool = ThreadPool::new(threads).map_err(|e| Error::Backend {
            op: "Device::open",
            backend: "host",
            message: format!("cannot start {threads} worker threads: {e}"),
        })?;
        // The spec's choice, else `BITNET_HOST_ISA` (a value that does not parse is an error,
        // not a silent fallback to another path), else the best this CPU supports.
        let isa = match spec.host_isa {
            Some(isa) => isa,
            None => match std::env::var("BITNET_HOST_ISA") {
                Ok(v) => v.parse::<HostIsa>().map_err(|e| {
                    Error::arg("Device::open", format!("BITNET_HOST_ISA={v:?}: {e}"))
                })?,
                Err(_) => HostIsa::detect(),
            },
        };
        let ternary_layout = match spec.host_ternary_layout {
            Some(l) => l,
            None => match std::env::var("BITNET_HOST_TERNARY_LAYOUT") {
                Ok(v) => v.parse::<TernaryLayout>().map_err(|e| {
                    Error::arg(
                        "Device::open",
                        format!("BITNET_HOST_TERNARY_LAYOUT={v:?}: {e}"),
                    )
                })?,
                Err(_) => TernaryLayout::preferred(isa),
            },
        };
        if !isa.is_supported() {
            return Err(Error::arg(
                "Device::open",
                format!("this CPU cannot run the {isa:?} kernels"),
            ));
        }
        Ok(Self {
            pool,
            isa,
            ternary_layout,
            capture: Mutex::new(None),
            live_traces: Arc::new(AtomicUsize::new(0)),
            profile: OpProfile::default(),
        })
    }

    /// Host data as this device stores it: ternary weights repacked to its layout.
    pub fn adopt(&self, data: HostData) -> HostData {
        match data {
            HostData::Ternary(t) if t.layout != self.ternary_layout => {
                HostData::Ternary(t.to_layout(self.ternary_layout))
            }
            other => other,
        }
    }

    fn capture(&self) -> std::sync::MutexGuard<'_, Option<Capture>> {
        self.capture.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The id of the trace being captured, if any.
    pub fn capturing(&self) -> Option<u32> {
        self.capture().as_ref().map(|c| c.trace_id)
    }

    /// Fails with `TraceCaptureActive` when a capture is running (host writes and reads).
    pub fn ensure_not_capturing(&self, op: &'static str) -> Result<()> {
        match self.capturing() {
            Some(trace_id) => Err(Error::TraceCaptureActive { op, trace_id }),
            None => Ok(()),
        }
    }

    /// Runs `cmd` now, or records it if a trace is being captured.
    pub fn submit<C: HostCommand>(&self, mut cmd: C) -> Result<()> {
        {
            let mut cap = self.capture();
            if let Some(c) = cap.as_mut() {
                c.commands.push(Box::new(cmd));
                return Ok(());
            }
        }
        let ctx = HostCtx {
            pool: &self.pool,
            isa: self.isa,
        };
        if !self.profile.enabled.load(Ordering::Relaxed) {
            return cmd.run(&ctx);
        }
        let t = Instant::now();
        let r = cmd.run(&ctx);
        let elapsed = t.elapsed();
        let mut slots = self.profile.slots();
        let i = OpProfile::intern(&mut slots, cmd.name());
        slots[i].1 += 1;
        slots[i].2 += elapsed;
        r
    }

    /// Starts or stops timing commands (eager and replayed).
    pub fn set_op_profiling(&self, on: bool) {
        self.profile.enabled.store(on, Ordering::Relaxed);
    }

    /// The commands timed since the last reset, by name: those that ran at least once.
    pub fn op_profile(&self) -> Vec<OpTime> {
        self.profile
            .slots()
            .iter()
            .filter(|s| s.1 > 0)
            .map(|(name, calls, total)| OpTime {
                name: name.clone(),
                calls: *calls,
                total: *total,
            })
            .collect()
    }

    /// Zeroes the op profile's counters.
    pub fn reset_op_profile(&self) {
        for s in self.profile.slots().iter_mut() {
            s.1 = 0;
            s.2 = Duration::ZERO;
        }
    }

    pub fn begin_capture(&self, op: &'static str) -> Result<u32> {
        // Taken before the state check, as tt-metal's `BeginTraceCapture` calls
        // `MeshTrace::next_id()` before `begin_mesh_trace` can fail.
        let trace_id = NEXT_TRACE_ID.fetch_add(1, Ordering::Relaxed);
        let mut cap = self.capture();
        if let Some(c) = cap.as_ref() {
            return Err(Error::TraceCaptureActive {
                op,
                trace_id: c.trace_id,
            });
        }
        *cap = Some(Capture {
            trace_id,
            commands: Vec::new(),
        });
        Ok(trace_id)
    }

    pub fn end_capture(&self, op: &'static str, trace_id: u32) -> Result<HostTrace> {
        let mut cap = self.capture();
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
        let c = cap.take().expect("checked above");
        self.live_traces.fetch_add(1, Ordering::Relaxed);
        let profile_slots = {
            let mut slots = self.profile.slots();
            c.commands
                .iter()
                .map(|cmd| OpProfile::intern(&mut slots, cmd.name()))
                .collect()
        };
        Ok(HostTrace {
            commands: Mutex::new(c.commands),
            profile_slots,
            live_traces: Arc::clone(&self.live_traces),
        })
    }

    pub fn live_traces(&self) -> usize {
        self.live_traces.load(Ordering::Relaxed)
    }

    /// Replays a captured trace: every recorded command, in order.
    pub fn replay(&self, op: &'static str, trace: &HostTrace) -> Result<()> {
        self.ensure_not_capturing(op)?;
        let mut cmds = trace.commands.lock().unwrap_or_else(|e| e.into_inner());
        let ctx = HostCtx {
            pool: &self.pool,
            isa: self.isa,
        };
        if !self.profile.enabled.load(Ordering::Relaxed) {
            for c in cmds.iter_mut() {
                c.run(&ctx)?;
            }
            return Ok(());
        }
        let mut slots = self.profile.slots();
        for (c, &i) in cmds.iter_mut().zip(&trace.profile_slots) {
            let t = Instant::now();
            c.run(&ctx)?;
            slots[i].1 += 1;
            slots[i].2 += t.elapsed();
        }
        Ok(())
    }
}

/// A captured trace of the host backend: the commands with their buffers.
pub(crate) struct HostTrace {
    commands: Mutex<Vec<Box<dyn HostCommand>>>,
    /// Each command's slot in the device's op profile.
    profile_slots: Vec<usize>,
    live_traces: Arc<AtomicUsize>,
}

impl HostTrace {
    pub fn num_commands(&self) -> usize {
        self.commands
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

impl Drop for HostTrace {
    fn drop(&mut self) {
        self.live_traces.fetch_sub(1, Ordering::Relaxed);
    }
}
