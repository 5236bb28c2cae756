//! `ttnn-sys`: the raw C ABI of the TT-NN shim (`csrc/ttnn_c.h`), its C++ implementation over
//! TT-NN, and the bindgen-generated declarations. Nothing else: the safe API is `ttnn`.
//!
//! The shim and its bindings arrive with the Tenstorrent backend; until then this crate is
//! empty on purpose, so that the workspace layout is final.
