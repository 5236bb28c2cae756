//! `ttnn-sys`: the raw C ABI of the TT-NN shim, and nothing else.
//!
//! This crate owns:
//! - `csrc/ttnn_c.h`, the C ABI between Rust and TT-NN (opaque handles, `u32` trace ids, plain
//!   structs, `int` status plus a thread-local `ttnn_c_last_error()` message);
//! - `csrc/ttnn_c.cpp`, its implementation over the TT-NN C++ API of tt-metal v0.74.0, built into
//!   `libttnn_c.so` by `build.rs` only when `TT_METAL_HOME` is set;
//! - `src/bindings.rs`, the declarations bindgen generates from the header (`cargo xtask
//!   bindgen`; committed, checked by `cargo xtask bindgen --check`).
//!
//! The shim is loaded at run time: [`TtnnC::new`] (or [`TtnnC::from_library`]) opens a library
//! through `libloading` and resolves every entry point, failing if one is missing. Which file to
//! open, the ABI version check ([`TTNN_C_ABI_VERSION`] against `ttnn_c_abi_version()`), error
//! text, handle ownership and everything safe live in the `ttnn` crate.

#[allow(
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    dead_code,
    missing_debug_implementations,
    unsafe_op_in_unsafe_fn,
    clippy::all,
    clippy::undocumented_unsafe_blocks
)]
mod bindings {
    include!("bindings.rs");
}

pub use bindings::*;

/// File names the shim is looked up by, in order: the library `build.rs` produces, and the
/// same with a version suffix as installers name it.
pub const LIB_NAMES: &[&str] = &["libttnn_c.so", "libttnn_c.so.1"];
