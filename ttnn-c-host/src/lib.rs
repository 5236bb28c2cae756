//! `ttnn-c-host`: the TT-NN C ABI (`ttnn-sys/csrc/ttnn_c.h`, version 1) implemented on the
//! `ttnn` host backend, built as `libttnn_c_host.so`.
//!
//! It stands in for `libttnn_c.so` (the C++ shim over TT-NN) wherever there is no Tenstorrent
//! card: loaded through the same `ttnn_sys::TtnnC` loader, it lets `cargo test` run the
//! Tenstorrent backend's Rust side (marshalling, handle lifetimes, error paths, trace ids) end to
//! end, with the host backend's ops doing the work. Every entry point of the header is here, with
//! the header's exact signature (checked at compile time against the generated loader struct,
//! see `signatures_match_the_header` below).
//!
//! Behaviour, entry point by entry point, is the `ttnn` op of the same TT-NN name; where the
//! header leaves a choice, the provider does what TT-NN does:
//! - **Status and messages.** Every status-returning entry point runs behind one barrier
//!   (`status::guard`): it clears the thread's last error, catches panics (nothing unwinds into
//!   C: a panic is `TTNN_C_STATUS_UNKNOWN_EXCEPTION`), and records "`<entry point>: <message>`"
//!   for `ttnn_c_last_error`, where the message of a failed op is the `ttnn` error's text (which
//!   itself starts with the op, e.g. `ttnn_c_binary: ttnn::add: b: ...`). `ttnn` errors are
//!   `TTNN_C_STATUS_TTNN_ERROR` (TT-NN throws); NULL required pointers, unknown enum values, bad
//!   ranks, size mismatches and dead handles are `TTNN_C_STATUS_INVALID_ARGUMENT`.
//! - **Handles** (`handles`): opaque tokens naming objects in a registry, never dereferenced, so
//!   a double free, a freed or a foreign handle is an error status (or, for the `void` frees, a
//!   counted no-op), never undefined behaviour: stricter than TT-NN.
//! - **Trace ids**: one process-wide counter from 0, as tt-metal's `MeshTrace::next_id()`;
//!   executing, ending or releasing an id that is not in that state is an error.
//! - **Devices**: only device 0 exists (one modelled Wormhole n150); 1 or 2 command queues.
//!
//! Test-only extensions, not in the header (load them by name): `ttnn_c_host_live_handles`,
//! `ttnn_c_host_thread_handle_balance`, `ttnn_c_host_thread_bad_frees`, `ttnn_c_host_test_panic`
//! (see `device.rs`).
//!
//! # Safety
//!
//! Every entry point is an `unsafe extern "C" fn` whose contract is the header's: each pointer
//! argument is NULL or valid for the reads (or writes) the header describes for it, with the
//! element counts it names; handles are those the library returned (the provider checks them).

mod convert;
mod device;
mod handles;
mod ops;
mod status;
mod tensor;

/// Lists every entry point of the header once: `signatures_match_the_header` pairs each with the
/// field of the same name in bindgen's `TtnnC` loader struct, so a signature that differs from
/// the header (as bindgen read it) does not compile; `ENTRY_POINTS` lets a test compare the list
/// with the header's declarations.
macro_rules! entry_points {
    ($($name:ident),* $(,)?) => {
        #[allow(dead_code)] // never called: it exists to be type-checked
        fn signatures_match_the_header(lib: &ttnn_sys::TtnnC) {
            use crate::device::*;
            use crate::ops::*;
            use crate::tensor::*;
            // An array's elements must have one type: the loader field's fn-pointer type, to
            // which our fn item coerces only when the signatures are identical.
            $( let _ = [lib.$name, $name]; )*
        }

        /// The names of the header's entry points, as this crate implements them.
        pub const ENTRY_POINTS: &[&str] = &[$(stringify!($name)),*];
    };
}

entry_points!(
    ttnn_c_abi_version,
    ttnn_c_implementation,
    ttnn_c_last_error,
    ttnn_c_device_open,
    ttnn_c_device_close,
    ttnn_c_device_compute_grid,
    ttnn_c_device_memory_stats,
    ttnn_c_tensor_from_host,
    ttnn_c_tensor_free,
    ttnn_c_tensor_clone,
    ttnn_c_tensor_to_device,
    ttnn_c_tensor_from_device,
    ttnn_c_tensor_to_layout,
    ttnn_c_copy_host_to_device,
    ttnn_c_tensor_read_info,
    ttnn_c_tensor_read,
    ttnn_c_tensor_shape,
    ttnn_c_tensor_padded_shape,
    ttnn_c_tensor_dtype,
    ttnn_c_tensor_layout,
    ttnn_c_tensor_is_on_device,
    ttnn_c_tensor_memory_config,
    ttnn_c_reshape,
    ttnn_c_linear,
    ttnn_c_matmul,
    ttnn_c_rms_norm,
    ttnn_c_embedding,
    ttnn_c_binary,
    ttnn_c_binary_scalar,
    ttnn_c_unary,
    ttnn_c_unary_chain,
    ttnn_c_clamp,
    ttnn_c_max,
    ttnn_c_typecast,
    ttnn_c_to_memory_config,
    ttnn_c_slice,
    ttnn_c_zeros,
    ttnn_c_copy,
    ttnn_c_nlp_create_qkv_heads_decode,
    ttnn_c_nlp_concat_heads_decode,
    ttnn_c_nlp_create_qkv_heads,
    ttnn_c_nlp_concat_heads,
    ttnn_c_rotary_embedding_llama,
    ttnn_c_paged_update_cache,
    ttnn_c_paged_fill_cache,
    ttnn_c_paged_sdpa_decode,
    ttnn_c_sdpa_decode,
    ttnn_c_sdpa,
    ttnn_c_chunked_sdpa,
    ttnn_c_argmax,
    ttnn_c_topk,
    ttnn_c_sampling,
    ttnn_c_plus_one,
    ttnn_c_begin_trace_capture,
    ttnn_c_end_trace_capture,
    ttnn_c_execute_trace,
    ttnn_c_release_trace,
);

/// The file name cargo gives this library.
pub const LIB_NAME: &str = "libttnn_c_host.so";
