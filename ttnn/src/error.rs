//! The one error type of `ttnn`: every failure names the op (or API call) it came from.

use crate::types::{BufferType, DataType, Layout, Shape};

/// Result alias used throughout `ttnn`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `ttnn`. Variants carry the op name so that an error read in a
/// log says where it happened, as TT-NN's `TT_FATAL` messages do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A buffer did not fit in the modelled memory.
    #[error(
        "{op}: out of {buffer_type:?} memory: requested {requested} bytes, {available} bytes available{}",
        core.map(|c| format!(" on core {c}")).unwrap_or_default()
    )]
    OutOfMemory {
        op: &'static str,
        buffer_type: BufferType,
        requested: u64,
        available: u64,
        /// The core whose L1 overflowed (L1 buffers only).
        core: Option<crate::types::CoreCoord>,
    },
    /// An input tensor had the wrong shape.
    #[error("{op}: {what}: expected shape {expected}, got {got:?}")]
    ShapeMismatch {
        op: &'static str,
        what: String,
        expected: String,
        got: Vec<usize>,
    },
    /// An input tensor had a data type the op does not take.
    #[error("{op}: {what}: data type {got:?} is not supported (expected {expected})")]
    UnsupportedDataType {
        op: &'static str,
        what: String,
        got: DataType,
        expected: String,
    },
    /// An input tensor had the wrong layout.
    #[error("{op}: {what}: layout {got:?} is not supported (expected {expected:?})")]
    LayoutMismatch {
        op: &'static str,
        what: String,
        got: Layout,
        expected: Layout,
    },
    /// A memory config was not valid for the tensor or the op.
    #[error("{op}: invalid memory config: {reason}")]
    InvalidMemoryConfig { op: &'static str, reason: String },
    /// An argument (other than a tensor's shape, dtype or layout) was out of range.
    #[error("{op}: invalid argument: {reason}")]
    InvalidArgument { op: &'static str, reason: String },
    /// An op needs a tensor on a device, or on the same device as its other inputs.
    #[error("{op}: {what} must be on {expected}")]
    WrongStorage {
        op: &'static str,
        what: String,
        expected: &'static str,
    },
    /// Host data could not be converted to the requested data type.
    #[error("{op}: cannot convert {from} to {to:?}: {reason}")]
    Conversion {
        op: &'static str,
        from: &'static str,
        to: DataType,
        reason: String,
    },
    /// A call that is not allowed while a trace is being captured (host writes, reads, nested capture).
    #[error("{op}: not allowed while trace {trace_id} is being captured")]
    TraceCaptureActive { op: &'static str, trace_id: u32 },
    /// A trace call that does not match the device's capture state.
    #[error("{op}: {reason}")]
    TraceState { op: &'static str, reason: String },
    /// An op, or one of its arguments, is not implemented by the backend the device runs on.
    #[error("{op}: {what} is not supported by the {backend} backend")]
    NotSupported {
        op: &'static str,
        /// What is unsupported: "the op", or the argument (e.g. "user_seeds").
        what: String,
        backend: &'static str,
    },
    /// No TT-NN shim library (`libttnn_c.so`) was found for the Tenstorrent backend.
    #[error(
        "Device::open: the TT-NN shim library was not found; tried: {}. Build it with `cargo build -p ttnn-sys` and TT_METAL_HOME set (ttnn-sys/README.md), or point DeviceSpec::ttnn_lib or TTNN_C_LIB at it",
        tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    LibraryNotFound {
        /// Every path looked at, in order.
        tried: Vec<std::path::PathBuf>,
    },
    /// A shim library was found but could not be loaded (not a shared library, unresolved
    /// dependencies, a missing entry point).
    #[error("Device::open: cannot load {}: {reason}", path.display())]
    LibraryLoad {
        path: std::path::PathBuf,
        reason: String,
    },
    /// The shim library implements another version of the C ABI than this build expects.
    #[error(
        "Device::open: {} implements TT-NN C ABI version {found}, this build of ttnn expects version {expected}; rebuild the shim from this checkout (cargo build -p ttnn-sys)",
        path.display()
    )]
    AbiVersionMismatch {
        path: std::path::PathBuf,
        expected: u32,
        found: u32,
    },
    /// A failure reported by a backend (for the Tenstorrent backend, the shim's message).
    #[error("{op}: {backend} backend error: {message}")]
    Backend {
        op: &'static str,
        backend: &'static str,
        message: String,
    },
}

impl Error {
    pub(crate) fn arg(op: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            op,
            reason: reason.into(),
        }
    }

    pub(crate) fn mem_config(op: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidMemoryConfig {
            op,
            reason: reason.into(),
        }
    }

    pub(crate) fn shape(
        op: &'static str,
        what: impl Into<String>,
        expected: impl Into<String>,
        got: Shape,
    ) -> Self {
        Self::ShapeMismatch {
            op,
            what: what.into(),
            expected: expected.into(),
            got: got.dims().to_vec(),
        }
    }

    pub(crate) fn dtype(
        op: &'static str,
        what: impl Into<String>,
        got: DataType,
        expected: impl Into<String>,
    ) -> Self {
        Self::UnsupportedDataType {
            op,
            what: what.into(),
            got,
            expected: expected.into(),
        }
    }
}
