/*
 * ttnn_c.h -- the C ABI of the TT-NN shim (bitnet-tt-rs, crate ttnn-sys).
 *
 * This header is the whole contract between the Rust `ttnn` crate (Tenstorrent backend) and
 * libttnn_c.so. It is plain C99: opaque handles, fixed-width integers, plain structs. No C++
 * type crosses it and no tt-metal header is included, so bindgen reads it alone.
 *
 * Implementations:
 *   - csrc/ttnn_c.cpp, over the TT-NN C++ API of tt-metal v0.74.0 (see that file);
 *   - a host-backed provider built on the `ttnn` host backend (tests).
 *
 * Conventions
 *   - Every entry point is a no-throw boundary: nothing unwinds out of the library. The
 *     functions that cannot fail (version, messages, frees) are marked TTNN_C_NOEXCEPT.
 *   - Every entry point returns `int` status: TTNN_C_STATUS_OK (0) on success, another
 *     TTNN_C_STATUS_* on failure. Results are written through out-parameters, and only on
 *     success.
 *   - After a failure, ttnn_c_last_error() returns a NUL-terminated message naming the entry
 *     point ("ttnn_c_linear: ..."). The text lives in a buffer owned by the library, one per
 *     thread, valid until the next call into the library from that thread: copy it at once.
 *     Nothing is ever freed across this boundary except through the ttnn_c_*_free/close
 *     functions below.
 *   - Optional arguments are pointers: NULL means "not given" (TT-NN's std::nullopt / the op's
 *     default). Booleans are uint8_t (0 or 1).
 *   - Enumerations are uint32_t values; the named enums below only name the constants.
 *   - Shapes are arrays of uint32_t with a separate rank (1..TTNN_C_MAX_RANK).
 *   - Every handle returned through an out-parameter is new and owned by the caller, who frees
 *     it exactly once with ttnn_c_tensor_free / ttnn_c_device_close. Tensor handles are
 *     reference-counted views (as ttnn::Tensor is): an in-place op that "returns the same
 *     tensor" hands back a new handle sharing the buffer. Free functions accept NULL and never
 *     fail.
 *   - A device must outlive every tensor handle created on it (the Rust side guarantees this by
 *     holding the device in an Arc).
 */
#ifndef TTNN_C_H
#define TTNN_C_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
#define TTNN_C_NOEXCEPT noexcept
extern "C" {
#else
#define TTNN_C_NOEXCEPT
#endif

/* Version of this ABI. Bumped on every incompatible change; ttnn_c_abi_version() returns the
 * value the library was built with, and the loader refuses a mismatch. */
#define TTNN_C_ABI_VERSION 1

/* Largest tensor rank carried by the ABI. */
#define TTNN_C_MAX_RANK 8
/* Most core rectangles a shard spec can hold. */
#define TTNN_C_MAX_CORE_RANGES 16

/* ---------------------------------------------------------------------------------------- */
/* Opaque handles                                                                           */
/* ---------------------------------------------------------------------------------------- */

typedef struct ttnn_c_device ttnn_c_device;
typedef struct ttnn_c_tensor ttnn_c_tensor;

/* ---------------------------------------------------------------------------------------- */
/* Status codes                                                                             */
/* ---------------------------------------------------------------------------------------- */

enum ttnn_c_status {
    TTNN_C_STATUS_OK = 0,
    /* A null required pointer, an out-of-range enum value, a bad rank, a size mismatch. */
    TTNN_C_STATUS_INVALID_ARGUMENT = 1,
    /* TT-NN threw a std::exception (TT_FATAL / TT_THROW); the message is in ttnn_c_last_error. */
    TTNN_C_STATUS_TTNN_ERROR = 2,
    /* Something other than a std::exception was thrown. */
    TTNN_C_STATUS_UNKNOWN_EXCEPTION = 3,
    /* The caller's buffer does not have the size ttnn_c_tensor_read_info reported. */
    TTNN_C_STATUS_BUFFER_SIZE = 4,
    /* The implementation does not support this argument combination. */
    TTNN_C_STATUS_UNSUPPORTED = 5
};

/* ---------------------------------------------------------------------------------------- */
/* Enumerations (values of uint32_t fields and arguments)                                   */
/* ---------------------------------------------------------------------------------------- */

/* Element types, numbered as tt::tt_metal::DataType. */
enum ttnn_c_dtype {
    TTNN_C_DTYPE_BFLOAT16 = 0,
    TTNN_C_DTYPE_FLOAT32 = 1,
    TTNN_C_DTYPE_UINT32 = 2,
    TTNN_C_DTYPE_BFLOAT8_B = 3,
    TTNN_C_DTYPE_BFLOAT4_B = 4,
    TTNN_C_DTYPE_UINT8 = 5,
    TTNN_C_DTYPE_UINT16 = 6,
    TTNN_C_DTYPE_INT32 = 7
};

enum ttnn_c_layout {
    TTNN_C_LAYOUT_ROW_MAJOR = 0,
    TTNN_C_LAYOUT_TILE = 1
};

enum ttnn_c_tensor_memory_layout {
    TTNN_C_TENSOR_MEMORY_LAYOUT_INTERLEAVED = 0,
    TTNN_C_TENSOR_MEMORY_LAYOUT_HEIGHT_SHARDED = 1,
    TTNN_C_TENSOR_MEMORY_LAYOUT_WIDTH_SHARDED = 2,
    TTNN_C_TENSOR_MEMORY_LAYOUT_BLOCK_SHARDED = 3
};

enum ttnn_c_buffer_type {
    TTNN_C_BUFFER_TYPE_DRAM = 0,
    TTNN_C_BUFFER_TYPE_L1 = 1,
    TTNN_C_BUFFER_TYPE_L1_SMALL = 2,
    /* Only for ttnn_c_device_memory_stats. */
    TTNN_C_BUFFER_TYPE_TRACE = 3
};

enum ttnn_c_shard_orientation {
    TTNN_C_SHARD_ORIENTATION_ROW_MAJOR = 0,
    TTNN_C_SHARD_ORIENTATION_COL_MAJOR = 1
};

enum ttnn_c_math_fidelity {
    TTNN_C_MATH_FIDELITY_LOFI = 0,
    TTNN_C_MATH_FIDELITY_HIFI2 = 2,
    TTNN_C_MATH_FIDELITY_HIFI3 = 3,
    TTNN_C_MATH_FIDELITY_HIFI4 = 4
};

/* Unary functions: alone (ttnn_c_unary), chained (ttnn_c_unary_chain), fused in front of a
 * binary op (input_tensor_a_activations) or after a matmul (activation / fused_activation).
 * TTNN_C_UNARY_NONE means "no activation" where a single activation is optional. */
enum ttnn_c_unary_op {
    TTNN_C_UNARY_NONE = 0,
    TTNN_C_UNARY_RELU = 1,
    TTNN_C_UNARY_SQUARE = 2,
    TTNN_C_UNARY_NEG = 3,
    TTNN_C_UNARY_SILU = 4,
    TTNN_C_UNARY_EXP = 5,
    TTNN_C_UNARY_ABS = 6,
    TTNN_C_UNARY_RECIPROCAL = 7,
    /* Round half to even to an integer value (ttnn::round with decimals = 0). */
    TTNN_C_UNARY_ROUND = 8
};

enum ttnn_c_binary_op {
    TTNN_C_BINARY_ADD = 0,
    TTNN_C_BINARY_SUBTRACT = 1,
    TTNN_C_BINARY_MULTIPLY = 2
};

enum ttnn_c_embeddings_type {
    TTNN_C_EMBEDDINGS_TYPE_GENERIC = 0,
    TTNN_C_EMBEDDINGS_TYPE_PADDED = 1,
    TTNN_C_EMBEDDINGS_TYPE_BINARY = 2
};

enum ttnn_c_matmul_program_config_kind {
    TTNN_C_MATMUL_PROGRAM_CONFIG_MULTI_CORE = 0,
    TTNN_C_MATMUL_PROGRAM_CONFIG_MULTI_CORE_REUSE = 1,
    TTNN_C_MATMUL_PROGRAM_CONFIG_MULTI_CORE_REUSE_MULTICAST = 2,
    TTNN_C_MATMUL_PROGRAM_CONFIG_MULTI_CORE_REUSE_MULTICAST_1D = 3,
    TTNN_C_MATMUL_PROGRAM_CONFIG_MULTI_CORE_REUSE_MULTICAST_DRAM_SHARDED = 4
};

enum ttnn_c_layernorm_program_config_kind {
    TTNN_C_LAYERNORM_PROGRAM_CONFIG_DEFAULT = 0,
    TTNN_C_LAYERNORM_PROGRAM_CONFIG_SHARDED_MULTI_CORE = 1
};

/* ---------------------------------------------------------------------------------------- */
/* Plain structs                                                                            */
/* ---------------------------------------------------------------------------------------- */

typedef struct ttnn_c_core_coord {
    uint32_t x;
    uint32_t y;
} ttnn_c_core_coord;

/* An inclusive rectangle of Tensix cores (logical coordinates). */
typedef struct ttnn_c_core_range {
    ttnn_c_core_coord start;
    ttnn_c_core_coord end;
} ttnn_c_core_range;

/* tt::tt_metal::ShardSpec: the cores (rectangles, in shard order) and each core's shard
 * [height, width] in elements of the tensor's 2-D view. */
typedef struct ttnn_c_shard_spec {
    uint32_t num_core_ranges;
    ttnn_c_core_range core_ranges[TTNN_C_MAX_CORE_RANGES];
    uint32_t shape[2];
    uint32_t orientation; /* ttnn_c_shard_orientation */
} ttnn_c_shard_spec;

/* tt::tt_metal::MemoryConfig. A sharded layout without a shard spec is the "hint" form
 * (e.g. L1_WIDTH_SHARDED_MEMORY_CONFIG) that some ops complete themselves. */
typedef struct ttnn_c_memory_config {
    uint32_t memory_layout; /* ttnn_c_tensor_memory_layout */
    uint32_t buffer_type;   /* ttnn_c_buffer_type (not TRACE) */
    uint8_t has_shard_spec;
    ttnn_c_shard_spec shard_spec;
} ttnn_c_memory_config;

/* ttnn::WormholeComputeKernelConfig (Blackhole uses the same). */
typedef struct ttnn_c_compute_kernel_config {
    uint32_t math_fidelity; /* ttnn_c_math_fidelity */
    uint8_t math_approx_mode;
    uint8_t fp32_dest_acc_en;
    uint8_t packer_l1_acc;
    uint8_t dst_full_sync_en;
} ttnn_c_compute_kernel_config;

/* ttnn::operations::matmul::MatmulProgramConfig, one struct for all kinds: fields a kind does
 * not have are ignored. Sizes are in tiles. */
typedef struct ttnn_c_matmul_program_config {
    uint32_t kind; /* ttnn_c_matmul_program_config_kind */
    ttnn_c_core_coord compute_with_storage_grid_size;
    uint32_t in0_block_w;
    uint32_t out_subblock_h;
    uint32_t out_subblock_w;
    uint32_t per_core_m;
    uint32_t per_core_n;
    uint8_t transpose_mcast; /* MULTICAST */
    uint8_t fuse_batch;      /* MULTICAST, MULTICAST_1D */
    uint8_t mcast_in0;       /* MULTICAST_1D */
    uint8_t untilize_out;    /* MULTICAST_1D */
    uint32_t fused_activation; /* ttnn_c_unary_op; TTNN_C_UNARY_NONE for none */
} ttnn_c_matmul_program_config;

/* ttnn's LayerNormProgramConfig (used by rms_norm). */
typedef struct ttnn_c_layernorm_program_config {
    uint32_t kind; /* ttnn_c_layernorm_program_config_kind */
    ttnn_c_core_coord compute_with_storage_grid_size; /* SHARDED_MULTI_CORE */
    uint32_t subblock_w;                              /* SHARDED_MULTI_CORE */
    uint32_t block_h;                                 /* SHARDED_MULTI_CORE */
    uint32_t block_w;                                 /* SHARDED_MULTI_CORE */
    uint8_t inplace;                                  /* SHARDED_MULTI_CORE */
    uint8_t use_welford;
} ttnn_c_layernorm_program_config;

/* ttnn::operations::transformer::SDPAProgramConfig. */
typedef struct ttnn_c_sdpa_program_config {
    ttnn_c_core_coord compute_with_storage_grid_size;
    uint32_t q_chunk_size;
    uint32_t k_chunk_size;
    uint8_t has_exp_approx_mode;
    uint8_t exp_approx_mode;
    uint8_t has_max_cores_per_head_batch;
    uint32_t max_cores_per_head_batch;
} ttnn_c_sdpa_program_config;

/* One buffer type's allocator statistics (tt::tt_metal Statistics), bytes, for one bank. */
typedef struct ttnn_c_memory_stats {
    uint64_t total_allocatable_size_bytes;
    uint64_t total_allocated_bytes;
    uint64_t total_free_bytes;
    uint64_t largest_free_block_bytes;
} ttnn_c_memory_stats;

/* ---------------------------------------------------------------------------------------- */
/* Library                                                                                  */
/* ---------------------------------------------------------------------------------------- */

/* TTNN_C_ABI_VERSION as the library was built. Never fails. */
uint32_t ttnn_c_abi_version(void) TTNN_C_NOEXCEPT;

/* A static, NUL-terminated description of the implementation (e.g. "tt-metal v0.74.0" or
 * "host provider"). Never fails; never freed. */
const char *ttnn_c_implementation(void) TTNN_C_NOEXCEPT;

/* The message of the last failure on this thread ("" if none since the last call). Owned by
 * the library (thread-local); valid until this thread's next call into the library. */
const char *ttnn_c_last_error(void) TTNN_C_NOEXCEPT;

/* ---------------------------------------------------------------------------------------- */
/* Device                                                                                   */
/* ---------------------------------------------------------------------------------------- */

/* Opens chip `device_id` as a 1x1 mesh (ttnn::open_mesh_device). */
int ttnn_c_device_open(uint32_t device_id, uint64_t l1_small_size, uint64_t trace_region_size,
                       uint32_t num_command_queues, ttnn_c_device **out);

/* Closes the device and frees the handle. NULL is a no-op; never fails. */
void ttnn_c_device_close(ttnn_c_device *device) TTNN_C_NOEXCEPT;

/* compute_with_storage_grid_size(). */
int ttnn_c_device_compute_grid(const ttnn_c_device *device, ttnn_c_core_coord *out);

/* Allocator statistics of one buffer type (per bank: DRAM channel or L1 of one core). */
int ttnn_c_device_memory_stats(const ttnn_c_device *device, uint32_t buffer_type,
                               ttnn_c_memory_stats *out);

/* ---------------------------------------------------------------------------------------- */
/* Tensors                                                                                  */
/* ---------------------------------------------------------------------------------------- */

/* A tensor from `nbytes` bytes of row-major host data holding the logical elements of `shape`.
 * The bytes are elements of `dtype`, except for BFLOAT8_B / BFLOAT4_B, which take FLOAT32 data
 * and quantize it. `layout` is the tensor's layout (block floats need TILE). With `device`
 * NULL the result is a host tensor (memory_config must be NULL); otherwise it is created on
 * the device with `memory_config` (NULL: DRAM interleaved). */
int ttnn_c_tensor_from_host(const void *data, size_t nbytes, uint32_t dtype, const uint32_t *shape,
                            uint32_t rank, uint32_t layout, ttnn_c_device *device,
                            const ttnn_c_memory_config *memory_config, ttnn_c_tensor **out);

/* Frees a tensor handle (the buffer goes when its last handle does). NULL is a no-op. */
void ttnn_c_tensor_free(ttnn_c_tensor *tensor) TTNN_C_NOEXCEPT;

/* A new handle to the same tensor (shares the buffer). */
int ttnn_c_tensor_clone(const ttnn_c_tensor *tensor, ttnn_c_tensor **out);

/* Host tensor -> device tensor with `memory_config` (NULL: DRAM interleaved). */
int ttnn_c_tensor_to_device(const ttnn_c_tensor *tensor, ttnn_c_device *device,
                            const ttnn_c_memory_config *memory_config, ttnn_c_tensor **out);

/* Device tensor -> host tensor (TT-NN's from_device / cpu()). */
int ttnn_c_tensor_from_device(const ttnn_c_tensor *tensor, uint8_t blocking, ttnn_c_tensor **out);

/* Converts the layout (ttnn::to_layout); host or device. */
int ttnn_c_tensor_to_layout(const ttnn_c_tensor *tensor, uint32_t layout, ttnn_c_tensor **out);

/* Overwrites the buffer of an existing device tensor with a host tensor of the same spec
 * (TT-NN's copy_host_to_device_tensor: how trace inputs are refreshed). */
int ttnn_c_copy_host_to_device(const ttnn_c_tensor *host_tensor, ttnn_c_tensor *device_tensor);

/* What ttnn_c_tensor_read writes: the element type of the data (the tensor's dtype, FLOAT32
 * for block floats), the number of logical elements and the byte count. */
int ttnn_c_tensor_read_info(const ttnn_c_tensor *tensor, uint32_t *out_dtype,
                            uint64_t *out_num_elements, uint64_t *out_nbytes);

/* Copies the logical elements, row-major, into `dst` (exactly the nbytes of
 * ttnn_c_tensor_read_info; otherwise TTNN_C_STATUS_BUFFER_SIZE). Reads a device tensor back. */
int ttnn_c_tensor_read(const ttnn_c_tensor *tensor, void *dst, size_t nbytes);

/* Logical and padded shape: `out_shape` holds TTNN_C_MAX_RANK entries. */
int ttnn_c_tensor_shape(const ttnn_c_tensor *tensor, uint32_t *out_shape, uint32_t *out_rank);
int ttnn_c_tensor_padded_shape(const ttnn_c_tensor *tensor, uint32_t *out_shape,
                               uint32_t *out_rank);
int ttnn_c_tensor_dtype(const ttnn_c_tensor *tensor, uint32_t *out);
int ttnn_c_tensor_layout(const ttnn_c_tensor *tensor, uint32_t *out);
/* 1 if the tensor lives on a device. */
int ttnn_c_tensor_is_on_device(const ttnn_c_tensor *tensor, uint8_t *out);
/* Memory config of a device tensor (TTNN_C_STATUS_INVALID_ARGUMENT for a host tensor). */
int ttnn_c_tensor_memory_config(const ttnn_c_tensor *tensor, ttnn_c_memory_config *out);

/* ttnn::reshape: a view with a new logical shape (same volume), optionally with an explicit
 * padded shape of the same rank (NULL: derived). */
int ttnn_c_reshape(const ttnn_c_tensor *tensor, const uint32_t *shape, uint32_t rank,
                   const uint32_t *padded_shape, ttnn_c_tensor **out);

/* ---------------------------------------------------------------------------------------- */
/* Ops                                                                                      */
/* ---------------------------------------------------------------------------------------- */

/* ttnn::linear: act(A' @ B' + bias). bias, memory_config, dtype, program_config,
 * compute_kernel_config and core_grid optional; activation is a ttnn_c_unary_op (NONE: none). */
int ttnn_c_linear(const ttnn_c_tensor *a, const ttnn_c_tensor *b, const ttnn_c_tensor *bias,
                  uint8_t transpose_a, uint8_t transpose_b,
                  const ttnn_c_memory_config *memory_config, const uint32_t *dtype,
                  const ttnn_c_matmul_program_config *program_config, uint32_t activation,
                  const ttnn_c_compute_kernel_config *compute_kernel_config,
                  const ttnn_c_core_coord *core_grid, ttnn_c_tensor **out);

/* ttnn::matmul: ttnn_c_linear without bias. */
int ttnn_c_matmul(const ttnn_c_tensor *a, const ttnn_c_tensor *b, uint8_t transpose_a,
                  uint8_t transpose_b, const ttnn_c_memory_config *memory_config,
                  const uint32_t *dtype, const ttnn_c_matmul_program_config *program_config,
                  uint32_t activation, const ttnn_c_compute_kernel_config *compute_kernel_config,
                  const ttnn_c_core_coord *core_grid, ttnn_c_tensor **out);

/* ttnn::rms_norm over the last dim of (input [+ residual]), times weight [+ bias]. */
int ttnn_c_rms_norm(const ttnn_c_tensor *input, float epsilon, const ttnn_c_tensor *weight,
                    const ttnn_c_tensor *bias, const ttnn_c_tensor *residual_input_tensor,
                    const ttnn_c_memory_config *memory_config,
                    const ttnn_c_layernorm_program_config *program_config,
                    const ttnn_c_compute_kernel_config *compute_kernel_config,
                    ttnn_c_tensor **out);

/* ttnn::embedding: rows of weight by input ids. padding_idx, layout, dtype, memory_config
 * optional; embeddings_type is a ttnn_c_embeddings_type. */
int ttnn_c_embedding(const ttnn_c_tensor *input_ids, const ttnn_c_tensor *weight,
                     const uint32_t *padding_idx, const uint32_t *layout,
                     uint32_t embeddings_type, const uint32_t *dtype,
                     const ttnn_c_memory_config *memory_config, ttnn_c_tensor **out);

/* ttnn::add / subtract / multiply, tensor-tensor (broadcasting as TT-NN), with the unary ops
 * `input_tensor_a_activations[0..num_activations)` applied to `a` first (may be NULL when
 * num_activations is 0). */
int ttnn_c_binary(uint32_t op, const ttnn_c_tensor *a, const ttnn_c_tensor *b,
                  const uint32_t *dtype, const ttnn_c_memory_config *memory_config,
                  const uint32_t *input_tensor_a_activations, uint32_t num_activations,
                  ttnn_c_tensor **out);

/* The same with a scalar right-hand side. */
int ttnn_c_binary_scalar(uint32_t op, const ttnn_c_tensor *a, float b, const uint32_t *dtype,
                         const ttnn_c_memory_config *memory_config,
                         const uint32_t *input_tensor_a_activations, uint32_t num_activations,
                         ttnn_c_tensor **out);

/* One unary op (relu, square, neg, silu, exp, abs, reciprocal, round). */
int ttnn_c_unary(uint32_t op, const ttnn_c_tensor *input,
                 const ttnn_c_memory_config *memory_config, ttnn_c_tensor **out);

/* ttnn::unary_chain: ops[0], then ops[1], ... in one kernel. */
int ttnn_c_unary_chain(const ttnn_c_tensor *input, const uint32_t *ops, uint32_t num_ops,
                       const ttnn_c_memory_config *memory_config, ttnn_c_tensor **out);

/* ttnn::clamp(input, min, max). */
int ttnn_c_clamp(const ttnn_c_tensor *input, float min, float max,
                 const ttnn_c_memory_config *memory_config, ttnn_c_tensor **out);

/* ttnn::max over dimension `dim` (negative counts from the end; the model uses -1). */
int ttnn_c_max(const ttnn_c_tensor *input, int32_t dim, uint8_t keepdim,
               const ttnn_c_memory_config *memory_config, ttnn_c_tensor **out);

/* ttnn::typecast. */
int ttnn_c_typecast(const ttnn_c_tensor *input, uint32_t dtype,
                    const ttnn_c_memory_config *memory_config, ttnn_c_tensor **out);

/* ttnn::to_memory_config (interleaved <-> sharded, reshard, move), optional dtype change. */
int ttnn_c_to_memory_config(const ttnn_c_tensor *input, const ttnn_c_memory_config *memory_config,
                            const uint32_t *dtype, ttnn_c_tensor **out);

/* ttnn::slice: input[starts[i]..ends[i] step steps[i]] for every dim (steps NULL: all 1);
 * each array has `rank` entries (the input's rank). */
int ttnn_c_slice(const ttnn_c_tensor *input, const uint32_t *starts, const uint32_t *ends,
                 const uint32_t *steps, uint32_t rank, const ttnn_c_memory_config *memory_config,
                 ttnn_c_tensor **out);

/* ttnn::zeros on a device. */
int ttnn_c_zeros(const uint32_t *shape, uint32_t rank, uint32_t dtype, uint32_t layout,
                 ttnn_c_device *device, const ttnn_c_memory_config *memory_config,
                 ttnn_c_tensor **out);

/* ttnn::copy(src, dst): dst's buffer <- src (in place). `out` (optional) receives a new
 * handle to dst. */
int ttnn_c_copy(const ttnn_c_tensor *src, ttnn_c_tensor *dst, ttnn_c_tensor **out);

/* ttnn::experimental::nlp_create_qkv_heads_decode: [1,1,B,(nh+2nkv)*hd] -> Q [1,B,nh,hd],
 * K, V [1,B,nkv,hd], L1 height-sharded. */
int ttnn_c_nlp_create_qkv_heads_decode(const ttnn_c_tensor *input, uint32_t num_heads,
                                       const uint32_t *num_kv_heads,
                                       const uint8_t *overlap_qk_coregrid,
                                       const ttnn_c_tensor *batch_offset,
                                       const uint32_t *slice_size,
                                       const ttnn_c_memory_config *memory_config,
                                       ttnn_c_tensor **out_q, ttnn_c_tensor **out_k,
                                       ttnn_c_tensor **out_v);

/* ttnn::experimental::nlp_concat_heads_decode: [1,B,nh(pad 32),hd] height-sharded ->
 * [1,1,B(pad 32),nh*hd] width-sharded. sub_core_grids optional (NULL / 0 ranges). */
int ttnn_c_nlp_concat_heads_decode(const ttnn_c_tensor *input, uint32_t num_heads,
                                   const ttnn_c_memory_config *memory_config,
                                   const ttnn_c_core_range *sub_core_grids,
                                   uint32_t num_sub_core_grids, ttnn_c_tensor **out);

/* ttnn::experimental::nlp_create_qkv_heads (prefill): [B,1,S,(nh+2nkv)*hd] (or Q and a
 * separate KV input) -> Q [B,nh,S,hd], K [B,nkv,S,hd] (or [B,nkv,hd,S] when transposed),
 * V [B,nkv,S,hd]. */
int ttnn_c_nlp_create_qkv_heads(const ttnn_c_tensor *input, const ttnn_c_tensor *input_kv,
                                uint32_t num_heads, const uint32_t *num_kv_heads,
                                uint8_t transpose_k_heads,
                                const ttnn_c_memory_config *memory_config, ttnn_c_tensor **out_q,
                                ttnn_c_tensor **out_k, ttnn_c_tensor **out_v);

/* ttnn::experimental::nlp_concat_heads (prefill): [B,nh,S,hd] -> [B,1,S,nh*hd]. */
int ttnn_c_nlp_concat_heads(const ttnn_c_tensor *input, const ttnn_c_memory_config *memory_config,
                            ttnn_c_tensor **out);

/* ttnn::experimental::rotary_embedding_llama (interleaved-pair RoPE via trans_mat). */
int ttnn_c_rotary_embedding_llama(const ttnn_c_tensor *input, const ttnn_c_tensor *cos_cache,
                                  const ttnn_c_tensor *sin_cache, const ttnn_c_tensor *trans_mat,
                                  uint8_t is_decode_mode,
                                  const ttnn_c_memory_config *memory_config,
                                  const ttnn_c_compute_kernel_config *compute_kernel_config,
                                  ttnn_c_tensor **out);

/* ttnn::experimental::paged_update_cache (in place on cache): exactly one of
 * update_idxs[0..num_update_idxs) and update_idxs_tensor. `out` optional (handle to cache). */
int ttnn_c_paged_update_cache(ttnn_c_tensor *cache, const ttnn_c_tensor *input,
                              const uint32_t *update_idxs, uint32_t num_update_idxs,
                              const ttnn_c_tensor *update_idxs_tensor, uint8_t share_cache,
                              const ttnn_c_tensor *page_table, uint32_t batch_offset,
                              const ttnn_c_compute_kernel_config *compute_kernel_config,
                              ttnn_c_tensor **out);

/* ttnn::experimental::paged_fill_cache (in place on cache): page-table row batch_idx (or the
 * value of batch_idx_tensor). `out` optional (handle to cache). */
int ttnn_c_paged_fill_cache(ttnn_c_tensor *cache, const ttnn_c_tensor *input,
                            const ttnn_c_tensor *page_table, const ttnn_c_tensor *batch_idx_tensor,
                            uint32_t batch_idx,
                            const ttnn_c_compute_kernel_config *compute_kernel_config,
                            ttnn_c_tensor **out);

/* ttnn::transformer::paged_scaled_dot_product_attention_decode. */
int ttnn_c_paged_sdpa_decode(const ttnn_c_tensor *q, const ttnn_c_tensor *k,
                             const ttnn_c_tensor *v, const ttnn_c_tensor *page_table_tensor,
                             uint8_t is_causal, const ttnn_c_tensor *attn_mask,
                             const ttnn_c_tensor *cur_pos_tensor, const float *scale,
                             const uint32_t *sliding_window_size,
                             const ttnn_c_memory_config *memory_config,
                             const ttnn_c_sdpa_program_config *program_config,
                             const ttnn_c_compute_kernel_config *compute_kernel_config,
                             ttnn_c_tensor **out);

/* ttnn::transformer::scaled_dot_product_attention_decode (unpaged cache); cur_pos may be
 * NULL when num_cur_pos is 0. */
int ttnn_c_sdpa_decode(const ttnn_c_tensor *q, const ttnn_c_tensor *k, const ttnn_c_tensor *v,
                       uint8_t is_causal, const ttnn_c_tensor *attn_mask, const uint32_t *cur_pos,
                       uint32_t num_cur_pos, const ttnn_c_tensor *cur_pos_tensor,
                       const float *scale, const uint32_t *sliding_window_size,
                       const ttnn_c_memory_config *memory_config,
                       const ttnn_c_sdpa_program_config *program_config,
                       const ttnn_c_compute_kernel_config *compute_kernel_config,
                       ttnn_c_tensor **out);

/* ttnn::transformer::scaled_dot_product_attention (prefill). */
int ttnn_c_sdpa(const ttnn_c_tensor *q, const ttnn_c_tensor *k, const ttnn_c_tensor *v,
                const ttnn_c_tensor *attn_mask, uint8_t is_causal, const float *scale,
                const uint32_t *sliding_window_size, const ttnn_c_memory_config *memory_config,
                const ttnn_c_sdpa_program_config *program_config,
                const ttnn_c_compute_kernel_config *compute_kernel_config, ttnn_c_tensor **out);

/* ttnn::transformer::chunked_scaled_dot_product_attention (paged K/V, causal from
 * chunk_start_idx). */
int ttnn_c_chunked_sdpa(const ttnn_c_tensor *q, const ttnn_c_tensor *k, const ttnn_c_tensor *v,
                        const ttnn_c_tensor *page_table_tensor, int64_t chunk_start_idx,
                        const float *scale, const ttnn_c_memory_config *memory_config,
                        const ttnn_c_sdpa_program_config *program_config,
                        const ttnn_c_compute_kernel_config *compute_kernel_config,
                        ttnn_c_tensor **out);

/* ttnn::argmax over `dim` (NULL: all elements, row-major input only). */
int ttnn_c_argmax(const ttnn_c_tensor *input, const int32_t *dim, uint8_t keepdim,
                  uint8_t use_multicore, const ttnn_c_memory_config *memory_config,
                  ttnn_c_tensor **out);

/* ttnn::topk: values and indices of the k largest (or smallest) along dim. */
int ttnn_c_topk(const ttnn_c_tensor *input, uint32_t k, int32_t dim, uint8_t largest,
                uint8_t sorted, const ttnn_c_memory_config *memory_config,
                const ttnn_c_tensor *indices_tensor, ttnn_c_tensor **out_values,
                ttnn_c_tensor **out_indices);

/* ttnn::sampling: per user, top-k / top-p / temperature sampling of input_indices by
 * input_values; k, p, temp are [32] tensors. With output_tensor the ids are written into it
 * (and `out` is a handle to it). */
int ttnn_c_sampling(const ttnn_c_tensor *input_values, const ttnn_c_tensor *input_indices,
                    const ttnn_c_tensor *k, const ttnn_c_tensor *p, const ttnn_c_tensor *temp,
                    const uint32_t *seed, ttnn_c_tensor *output_tensor, ttnn_c_tensor **out);

/* ttnn::plus_one (in place): every element += 1 (skipping negatives when asked). `out`
 * optional (handle to input). */
int ttnn_c_plus_one(ttnn_c_tensor *input, uint8_t skip_negative_entries, ttnn_c_tensor **out);

/* ---------------------------------------------------------------------------------------- */
/* Traces                                                                                   */
/* ---------------------------------------------------------------------------------------- */

int ttnn_c_begin_trace_capture(ttnn_c_device *device, uint32_t cq_id, uint32_t *out_trace_id);
int ttnn_c_end_trace_capture(ttnn_c_device *device, uint32_t trace_id, uint32_t cq_id);
int ttnn_c_execute_trace(ttnn_c_device *device, uint32_t trace_id, uint32_t cq_id,
                         uint8_t blocking);
/* Releases a captured trace. A NULL device is a no-op. */
int ttnn_c_release_trace(ttnn_c_device *device, uint32_t trace_id);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* TTNN_C_H */
