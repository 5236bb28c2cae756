//! `ttnn`: TT-NN in Rust.
//!
//! This crate owns the tensor API that the BitNet model is written against, in TT-NN's own
//! vocabulary (`Device`, `Tensor`, `MemoryConfig`, `ShardSpec`, traces, and ops such as
//! `linear`, `rms_norm`, `rotary_embedding_llama`, `paged_update_cache`,
//! `paged_scaled_dot_product_attention_decode`), plus `experimental::bitlinear`, the one op
//! TT-NN lacks. It knows nothing about BitNet.
//!
//! Backends (`BackendKind`, chosen in `DeviceSpec`; both always built):
//! - **host** (the default): a functional model of a Tenstorrent chip on the CPU.
//!   It accounts DRAM and per-core L1 as the modelled chip would, records and replays traces,
//!   and runs every op with CPU kernels. Its storage is its own business: ternary weights on
//!   the device are repacked by `to_device` into the layout its kernels read
//!   (`TernaryLayout`: 5 bits per 3 values for a table-lookup GEMV, as a magnitude and sign or
//!   as one base-3 code, or 2 bits per value).
//! - **tenstorrent**: a Tenstorrent chip through TT-NN, via the C ABI of `ttnn-sys`
//!   (`libttnn_c.so`, loaded by `Device::open`; no SDK is needed to compile). Each op validates
//!   its arguments once, as for the host, then calls the shim; `Ternary` tensors are stored as
//!   BFLOAT4_B and `experimental::bitlinear` is lowered to stock TT-NN ops.
//!
//! ```
//! use ttnn::{DataType, Device, DeviceSpec, Layout, Tensor, DRAM_MEMORY_CONFIG};
//! # fn main() -> ttnn::Result<()> {
//! let device = Device::open(DeviceSpec::default())?;
//! let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0], [1, 4], DataType::Float32, Layout::RowMajor)?
//!     .to_device(&device, &DRAM_MEMORY_CONFIG)?;
//! let b = ttnn::add(&a, &a, &Default::default())?;
//! assert_eq!(b.to_vec::<f32>()?, vec![2.0, 4.0, 6.0, 8.0]);
//! # Ok(()) }
//! ```

pub mod device;
pub mod error;
mod host;
pub mod ops;
pub mod tensor;
pub mod trace;
mod tt;
pub mod types;

pub use device::{
    BackendKind, BufferFootprint, ChipSpec, Device, DeviceSpec, MemoryReport, MemoryUsage, OpTime,
    TernaryLayout,
};
pub use error::{Error, Result};
pub use host::data::{Element, SharedBytes, SharedSource};
pub use host::physical_cores;
pub use ops::*;
pub use tensor::{Tensor, copy_host_to_device};
pub use trace::{
    Trace, TraceId, begin_trace_capture, end_trace_capture, execute_trace, release_trace,
};
pub use tt::{TT_METAL_HOME_LIB_DIRS, shim_candidates};
pub use types::*;

pub use ops::creation::zeros;
pub use ops::data_movement::{
    SliceArgs, copy, reshape, reshape_padded, slice, to_layout, to_memory_config, unsqueeze_to_4d,
};
pub use ops::embedding::{EmbeddingArgs, EmbeddingsType, embedding};
pub use ops::matmul::{LinearArgs, MatmulArgs, MatmulProgramConfig, linear, matmul};
pub use ops::norm::{LayerNormProgramConfig, RmsNormArgs, rms_norm};
pub use ops::reduction::{ReduceArgs, max};
pub use ops::sampling::{
    ArgmaxArgs, PlusOneArgs, SamplingArgs, TopkArgs, argmax, plus_one, sampling, topk,
};

/// TT-NN's `ttnn::experimental` ops (and `bitlinear`, the op TT-NN lacks), under the names
/// tt_transformers calls them by.
pub mod experimental {
    pub use crate::ops::bitlinear::{
        ActivationQuant, BitLinearArgs, InputRmsNorm, QuantizeActivationsArgs, WeightScaleMode,
        bitlinear, quantize_activations_int8,
    };
    pub use crate::ops::data_movement::{
        NlpConcatHeadsDecodeArgs, NlpCreateQkvHeadsArgs, NlpCreateQkvHeadsDecodeArgs,
        nlp_concat_heads, nlp_concat_heads_decode, nlp_create_qkv_heads,
        nlp_create_qkv_heads_decode,
    };
    pub use crate::ops::kv_cache::{
        PagedFillCacheArgs, PagedUpdateCacheArgs, paged_fill_cache, paged_update_cache,
    };
    pub use crate::ops::rotary::{
        RotaryEmbeddingLlamaArgs, get_rot_transformation_mat, rotary_embedding_llama,
    };
}

/// TT-NN's `ttnn::transformer` ops: scaled dot-product attention in its prefill, chunked and
/// (paged) decode forms.
pub mod transformer {
    pub use crate::ops::attention::{
        ChunkedSdpaArgs, PagedSdpaDecodeArgs, SdpaArgs, SdpaDecodeArgs, SdpaProgramConfig,
        chunked_scaled_dot_product_attention, paged_scaled_dot_product_attention_decode,
        scaled_dot_product_attention, scaled_dot_product_attention_decode,
    };
}
