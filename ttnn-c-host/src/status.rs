//! Status codes, the thread-local last-error message, and the panic barrier every entry point
//! runs behind.

use std::cell::RefCell;
use std::ffi::{CString, c_char, c_int};
use std::panic::{AssertUnwindSafe, catch_unwind};

use ttnn_sys::{
    TTNN_C_STATUS_BUFFER_SIZE, TTNN_C_STATUS_INVALID_ARGUMENT, TTNN_C_STATUS_OK,
    TTNN_C_STATUS_TTNN_ERROR, TTNN_C_STATUS_UNKNOWN_EXCEPTION, TTNN_C_STATUS_UNSUPPORTED,
};

/// Why an entry point failed; each kind maps to one header status.
#[derive(Debug)]
pub(crate) enum Failure {
    /// A NULL required pointer, an unknown enum value, a bad rank, a size mismatch, or a handle
    /// that is not live (`TTNN_C_STATUS_INVALID_ARGUMENT`).
    InvalidArgument(String),
    /// The `ttnn` op failed: where TT-NN throws (`TTNN_C_STATUS_TTNN_ERROR`).
    Ttnn(ttnn::Error),
    /// A failure the provider detects where TT-NN would throw (trace state, command queues):
    /// also `TTNN_C_STATUS_TTNN_ERROR`.
    State(String),
    /// `ttnn_c_tensor_read` with the wrong buffer size (`TTNN_C_STATUS_BUFFER_SIZE`).
    BufferSize(String),
    /// An argument combination the host provider cannot carry out (`TTNN_C_STATUS_UNSUPPORTED`).
    Unsupported(String),
}

impl From<ttnn::Error> for Failure {
    fn from(e: ttnn::Error) -> Self {
        Self::Ttnn(e)
    }
}

impl Failure {
    fn status(&self) -> c_int {
        let s = match self {
            Self::InvalidArgument(_) => TTNN_C_STATUS_INVALID_ARGUMENT,
            Self::Ttnn(_) | Self::State(_) => TTNN_C_STATUS_TTNN_ERROR,
            Self::BufferSize(_) => TTNN_C_STATUS_BUFFER_SIZE,
            Self::Unsupported(_) => TTNN_C_STATUS_UNSUPPORTED,
        };
        s as c_int
    }

    fn message(&self) -> String {
        match self {
            Self::Ttnn(e) => e.to_string(),
            Self::InvalidArgument(m)
            | Self::State(m)
            | Self::BufferSize(m)
            | Self::Unsupported(m) => m.clone(),
        }
    }
}

pub(crate) type Res<T> = Result<T, Failure>;

pub(crate) fn invalid(message: impl Into<String>) -> Failure {
    Failure::InvalidArgument(message.into())
}

thread_local! {
    /// This thread's last failure, "<entry point>: <message>". The pointer handed out by
    /// `ttnn_c_last_error` stays valid until the next status-returning call on this thread
    /// replaces the string (the header's contract).
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(text: String) {
    // An interior NUL would end the C string early; the text is for humans, so drop them.
    let text = CString::new(text.replace('\0', "")).unwrap_or_default();
    // `try_with`: during thread teardown the slot may be gone; then there is no one to read it.
    let _ = LAST_ERROR.try_with(|e| *e.borrow_mut() = text);
}

/// The pointer `ttnn_c_last_error` returns.
pub(crate) fn last_error_ptr() -> *const c_char {
    LAST_ERROR
        .try_with(|e| e.borrow().as_ptr())
        .unwrap_or(c"".as_ptr())
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// Runs an entry point's body: clears this thread's last error, catches any panic (nothing may
/// unwind into C), and turns a failure into its status with the message "<entry>: <text>".
pub(crate) fn guard(entry: &'static str, body: impl FnOnce() -> Res<()>) -> c_int {
    set_last_error(String::new());
    // AssertUnwindSafe: after a panic the provider's shared state is only the handle registry
    // (whose lock tolerates poisoning) and ttnn objects, which stay memory-safe; the caller
    // gets an error status and may carry on, as after a C++ exception in the real shim.
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => TTNN_C_STATUS_OK as c_int,
        Ok(Err(f)) => {
            set_last_error(format!("{entry}: {}", f.message()));
            f.status()
        }
        Err(payload) => {
            set_last_error(format!("{entry}: panic: {}", panic_text(payload.as_ref())));
            TTNN_C_STATUS_UNKNOWN_EXCEPTION as c_int
        }
    }
}

/// The barrier of the `void` functions (frees, close): a panic is swallowed, since these
/// functions cannot report failure and must not unwind.
pub(crate) fn guard_void(body: impl FnOnce()) {
    let _ = catch_unwind(AssertUnwindSafe(body));
}
