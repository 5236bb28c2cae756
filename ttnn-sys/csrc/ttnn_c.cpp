// ttnn_c.cpp -- implementation of ttnn_c.h over the TT-NN C++ API (C++20).
//
// TARGET: tt-metal v0.74.0 (tag v0.74.0 == v0.74.0-rc8, commit c49bb7625e6a...; the release
// behind the `ttnn` 0.74.0 wheel). Build it against a tt-metal source build of that tag
// (TT_METAL_HOME); ttnn-sys/build.rs does so only when TT_METAL_HOME is set.
//
// STATUS: NOT COMPILED. No tt-metal build, card or simulator exists where this was written, so
// this file has never been through a compiler against tt-metal headers. It is written as we
// believe it compiles against v0.74.0, and it is NOT claimed to compile. Expect a first build
// to need small fixes where TT-NN signatures drifted.
//
// HOW EACH SIGNATURE WAS CHECKED. Every call below cites the header it was checked against, as
// `path @ commit` (commit of the file version read) or `path (index id N)` (the code index's id
// of the file version read, when the index did not report a commit). They were read through a
// code index of tenstorrent/tt-metal that stores file versions from many main-branch commits
// and does not record tags; so a cited version is the newest form we could find there, not a
// version proven to be the one tagged v0.74.0. Where stored versions disagreed, the newer form
// (free functions, `Activation` variants, optional cq ids, MeshDevice) was used, and calls pass
// positional arguments only up to the last one we need, which keeps them valid across the
// drift we saw (struct `invoke` forms and free-function forms take the same leading arguments).
// No tt-metal code is copied here; only call sites are written.
//
// EXCEPTION BARRIER. Every entry point runs its body through `guard(name, fn)`, which catches
// `const std::exception&` and `...`, records "name: message" in a thread-local buffer and
// returns a status; nothing unwinds into the caller. Free functions are noexcept and accept
// NULL.

#include "ttnn_c.h"

#include <array>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <tt-metalium/bfloat16.hpp>
#include <tt-metalium/core_coord.hpp>
#include <tt-metalium/mesh_device.hpp>

#include "ttnn/device.hpp"
#include "ttnn/operations/copy/typecast/typecast.hpp"
#include "ttnn/operations/core/compute_kernel/compute_kernel_config.hpp"
#include "ttnn/operations/core/core.hpp"
#include "ttnn/operations/data_movement/copy/copy.hpp"
#include "ttnn/operations/data_movement/reshape_view/reshape.hpp"
#include "ttnn/operations/data_movement/slice/slice.hpp"
#include "ttnn/operations/eltwise/binary/binary.hpp"
#include "ttnn/operations/eltwise/unary/unary.hpp"
#include "ttnn/operations/embedding/embedding.hpp"
#include "ttnn/operations/experimental/paged_cache/paged_cache.hpp"
#include "ttnn/operations/experimental/plusone/plusone.hpp"
#include "ttnn/operations/experimental/transformer/nlp_concat_heads/nlp_concat_heads.hpp"
#include "ttnn/operations/experimental/transformer/nlp_concat_heads_decode/nlp_concat_heads_decode.hpp"
#include "ttnn/operations/experimental/transformer/nlp_create_qkv_heads/nlp_create_qkv_heads.hpp"
#include "ttnn/operations/experimental/transformer/nlp_create_qkv_heads_decode/nlp_create_qkv_heads_decode.hpp"
#include "ttnn/operations/experimental/transformer/rotary_embedding_llama/rotary_embedding_llama.hpp"
#include "ttnn/operations/matmul/matmul.hpp"
#include "ttnn/operations/normalization/rmsnorm/rmsnorm.hpp"
#include "ttnn/operations/reduction/argmax/argmax.hpp"
#include "ttnn/operations/reduction/generic/generic_reductions.hpp"
#include "ttnn/operations/reduction/sampling/sampling.hpp"
#include "ttnn/operations/reduction/topk/topk.hpp"
#include "ttnn/operations/trace.hpp"
#include "ttnn/operations/transformer/sdpa/sdpa.hpp"
#include "ttnn/operations/transformer/sdpa_decode/sdpa_decode.hpp"
#include "ttnn/tensor/tensor.hpp"

static_assert(TTNN_C_ABI_VERSION == 1, "update ttnn_c_abi_version() and the Rust bindings");

// ------------------------------------------------------------------------------------------
// Handles
// ------------------------------------------------------------------------------------------

struct ttnn_c_device {
    std::shared_ptr<ttnn::MeshDevice> mesh;
};

struct ttnn_c_tensor {
    ttnn::Tensor tensor;
};

namespace {

using tt::tt_metal::BufferType;
using tt::tt_metal::CoreCoord;
using tt::tt_metal::CoreRange;
using tt::tt_metal::CoreRangeSet;
using tt::tt_metal::DataType;
using tt::tt_metal::Layout;
using tt::tt_metal::MemoryConfig;
using tt::tt_metal::ShardOrientation;
using tt::tt_metal::ShardSpec;
using tt::tt_metal::TensorMemoryLayout;
using ttnn::operations::unary::UnaryOpType;

// ------------------------------------------------------------------------------------------
// Error recording and the exception barrier
// ------------------------------------------------------------------------------------------

constexpr std::size_t kErrorCapacity = 4096;
thread_local char g_last_error[kErrorCapacity] = {0};

void clear_error() noexcept { g_last_error[0] = '\0'; }

void set_error(const char* entry_point, const char* message) noexcept {
    // snprintf never throws and always terminates within the buffer.
    std::snprintf(g_last_error, kErrorCapacity, "%s: %s", entry_point, message ? message : "(no message)");
}

// A bad argument detected by the shim itself (not by TT-NN).
struct InvalidArgument : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};

struct Unsupported : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct BufferSize : std::runtime_error {
    using std::runtime_error::runtime_error;
};

template <class F>
int guard(const char* entry_point, F&& body) noexcept {
    clear_error();
    try {
        body();
        return TTNN_C_STATUS_OK;
    } catch (const InvalidArgument& e) {
        set_error(entry_point, e.what());
        return TTNN_C_STATUS_INVALID_ARGUMENT;
    } catch (const Unsupported& e) {
        set_error(entry_point, e.what());
        return TTNN_C_STATUS_UNSUPPORTED;
    } catch (const BufferSize& e) {
        set_error(entry_point, e.what());
        return TTNN_C_STATUS_BUFFER_SIZE;
    } catch (const std::exception& e) {
        set_error(entry_point, e.what());
        return TTNN_C_STATUS_TTNN_ERROR;
    } catch (...) {
        set_error(entry_point, "a C++ exception that is not a std::exception");
        return TTNN_C_STATUS_UNKNOWN_EXCEPTION;
    }
}

template <class T>
T& need(T* p, const char* what) {
    if (p == nullptr) {
        throw InvalidArgument(std::string(what) + " is NULL");
    }
    return *p;
}

template <class T>
const T& need(const T* p, const char* what) {
    if (p == nullptr) {
        throw InvalidArgument(std::string(what) + " is NULL");
    }
    return *p;
}

ttnn_c_tensor* wrap(ttnn::Tensor t) { return new ttnn_c_tensor{std::move(t)}; }

// Writes a new handle to `t` into `out` when `out` is not NULL (optional out-parameters).
void maybe_out(ttnn_c_tensor** out, const ttnn::Tensor& t) {
    if (out != nullptr) {
        *out = wrap(t);
    }
}

std::optional<ttnn::Tensor> opt_tensor(const ttnn_c_tensor* t) {
    if (t == nullptr) {
        return std::nullopt;
    }
    return t->tensor;
}

// ------------------------------------------------------------------------------------------
// Enum and struct conversions (TT-NN enums: ttnn/tensor/types.hpp, tt-metalium buffer_types.hpp)
// ------------------------------------------------------------------------------------------

DataType to_dtype(uint32_t v) {
    switch (v) {
        case TTNN_C_DTYPE_BFLOAT16: return DataType::BFLOAT16;
        case TTNN_C_DTYPE_FLOAT32: return DataType::FLOAT32;
        case TTNN_C_DTYPE_UINT32: return DataType::UINT32;
        case TTNN_C_DTYPE_BFLOAT8_B: return DataType::BFLOAT8_B;
        case TTNN_C_DTYPE_BFLOAT4_B: return DataType::BFLOAT4_B;
        case TTNN_C_DTYPE_UINT8: return DataType::UINT8;
        case TTNN_C_DTYPE_UINT16: return DataType::UINT16;
        case TTNN_C_DTYPE_INT32: return DataType::INT32;
        default: throw InvalidArgument("unknown dtype " + std::to_string(v));
    }
}

uint32_t from_dtype(DataType d) {
    switch (d) {
        case DataType::BFLOAT16: return TTNN_C_DTYPE_BFLOAT16;
        case DataType::FLOAT32: return TTNN_C_DTYPE_FLOAT32;
        case DataType::UINT32: return TTNN_C_DTYPE_UINT32;
        case DataType::BFLOAT8_B: return TTNN_C_DTYPE_BFLOAT8_B;
        case DataType::BFLOAT4_B: return TTNN_C_DTYPE_BFLOAT4_B;
        case DataType::UINT8: return TTNN_C_DTYPE_UINT8;
        case DataType::UINT16: return TTNN_C_DTYPE_UINT16;
        case DataType::INT32: return TTNN_C_DTYPE_INT32;
        default: throw Unsupported("a TT-NN dtype this ABI does not carry");
    }
}

std::optional<DataType> opt_dtype(const uint32_t* v) {
    if (v == nullptr) {
        return std::nullopt;
    }
    return to_dtype(*v);
}

Layout to_layout(uint32_t v) {
    switch (v) {
        case TTNN_C_LAYOUT_ROW_MAJOR: return Layout::ROW_MAJOR;
        case TTNN_C_LAYOUT_TILE: return Layout::TILE;
        default: throw InvalidArgument("unknown layout " + std::to_string(v));
    }
}

uint32_t from_layout(Layout l) {
    switch (l) {
        case Layout::ROW_MAJOR: return TTNN_C_LAYOUT_ROW_MAJOR;
        case Layout::TILE: return TTNN_C_LAYOUT_TILE;
        default: throw Unsupported("a TT-NN layout this ABI does not carry");
    }
}

TensorMemoryLayout to_memory_layout(uint32_t v) {
    switch (v) {
        case TTNN_C_TENSOR_MEMORY_LAYOUT_INTERLEAVED: return TensorMemoryLayout::INTERLEAVED;
        case TTNN_C_TENSOR_MEMORY_LAYOUT_HEIGHT_SHARDED: return TensorMemoryLayout::HEIGHT_SHARDED;
        case TTNN_C_TENSOR_MEMORY_LAYOUT_WIDTH_SHARDED: return TensorMemoryLayout::WIDTH_SHARDED;
        case TTNN_C_TENSOR_MEMORY_LAYOUT_BLOCK_SHARDED: return TensorMemoryLayout::BLOCK_SHARDED;
        default: throw InvalidArgument("unknown tensor memory layout " + std::to_string(v));
    }
}

uint32_t from_memory_layout(TensorMemoryLayout l) {
    switch (l) {
        case TensorMemoryLayout::INTERLEAVED: return TTNN_C_TENSOR_MEMORY_LAYOUT_INTERLEAVED;
        case TensorMemoryLayout::HEIGHT_SHARDED: return TTNN_C_TENSOR_MEMORY_LAYOUT_HEIGHT_SHARDED;
        case TensorMemoryLayout::WIDTH_SHARDED: return TTNN_C_TENSOR_MEMORY_LAYOUT_WIDTH_SHARDED;
        case TensorMemoryLayout::BLOCK_SHARDED: return TTNN_C_TENSOR_MEMORY_LAYOUT_BLOCK_SHARDED;
        default: throw Unsupported("a TT-NN memory layout this ABI does not carry");
    }
}

BufferType to_buffer_type(uint32_t v) {
    switch (v) {
        case TTNN_C_BUFFER_TYPE_DRAM: return BufferType::DRAM;
        case TTNN_C_BUFFER_TYPE_L1: return BufferType::L1;
        case TTNN_C_BUFFER_TYPE_L1_SMALL: return BufferType::L1_SMALL;
        case TTNN_C_BUFFER_TYPE_TRACE: return BufferType::TRACE;
        default: throw InvalidArgument("unknown buffer type " + std::to_string(v));
    }
}

uint32_t from_buffer_type(BufferType b) {
    switch (b) {
        case BufferType::DRAM: return TTNN_C_BUFFER_TYPE_DRAM;
        case BufferType::L1: return TTNN_C_BUFFER_TYPE_L1;
        case BufferType::L1_SMALL: return TTNN_C_BUFFER_TYPE_L1_SMALL;
        case BufferType::TRACE: return TTNN_C_BUFFER_TYPE_TRACE;
        default: throw Unsupported("a TT-NN buffer type this ABI does not carry");
    }
}

ShardOrientation to_orientation(uint32_t v) {
    switch (v) {
        case TTNN_C_SHARD_ORIENTATION_ROW_MAJOR: return ShardOrientation::ROW_MAJOR;
        case TTNN_C_SHARD_ORIENTATION_COL_MAJOR: return ShardOrientation::COL_MAJOR;
        default: throw InvalidArgument("unknown shard orientation " + std::to_string(v));
    }
}

CoreCoord to_core(const ttnn_c_core_coord& c) { return CoreCoord(c.x, c.y); }

CoreRangeSet to_core_range_set(const ttnn_c_core_range* ranges, uint32_t n) {
    std::vector<CoreRange> v;
    v.reserve(n);
    for (uint32_t i = 0; i < n; ++i) {
        v.emplace_back(to_core(ranges[i].start), to_core(ranges[i].end));
    }
    return CoreRangeSet(v);
}

// tt::tt_metal::MemoryConfig(TensorMemoryLayout, BufferType, std::optional<ShardSpec>) and
// ShardSpec(CoreRangeSet, std::array<uint32_t, 2>, ShardOrientation):
// ttnn/api/ttnn/tensor/memory_config/memory_config.hpp, tt-metalium buffer_distribution_spec /
// shard_spec (not re-read for v0.74.0; these constructors are long-standing).
MemoryConfig to_memory_config(const ttnn_c_memory_config& mc) {
    std::optional<ShardSpec> spec;
    if (mc.has_shard_spec != 0) {
        const auto& s = mc.shard_spec;
        if (s.num_core_ranges == 0 || s.num_core_ranges > TTNN_C_MAX_CORE_RANGES) {
            throw InvalidArgument("shard spec needs 1.." + std::to_string(TTNN_C_MAX_CORE_RANGES) + " core ranges");
        }
        spec = ShardSpec(
            to_core_range_set(s.core_ranges, s.num_core_ranges),
            std::array<uint32_t, 2>{s.shape[0], s.shape[1]},
            to_orientation(s.orientation));
    }
    return MemoryConfig(to_memory_layout(mc.memory_layout), to_buffer_type(mc.buffer_type), spec);
}

std::optional<MemoryConfig> opt_mc(const ttnn_c_memory_config* mc) {
    if (mc == nullptr) {
        return std::nullopt;
    }
    return to_memory_config(*mc);
}

ttnn_c_memory_config from_memory_config(const MemoryConfig& mc) {
    ttnn_c_memory_config out{};
    out.memory_layout = from_memory_layout(mc.memory_layout());
    out.buffer_type = from_buffer_type(mc.buffer_type());
    if (const auto& spec = mc.shard_spec(); spec.has_value()) {
        const auto& ranges = spec->grid.ranges();
        if (ranges.size() > TTNN_C_MAX_CORE_RANGES) {
            throw Unsupported("the shard grid has more core ranges than TTNN_C_MAX_CORE_RANGES");
        }
        out.has_shard_spec = 1;
        out.shard_spec.num_core_ranges = static_cast<uint32_t>(ranges.size());
        for (std::size_t i = 0; i < ranges.size(); ++i) {
            out.shard_spec.core_ranges[i] = ttnn_c_core_range{
                {static_cast<uint32_t>(ranges[i].start_coord.x), static_cast<uint32_t>(ranges[i].start_coord.y)},
                {static_cast<uint32_t>(ranges[i].end_coord.x), static_cast<uint32_t>(ranges[i].end_coord.y)}};
        }
        out.shard_spec.shape[0] = spec->shape[0];
        out.shard_spec.shape[1] = spec->shape[1];
        out.shard_spec.orientation = spec->orientation == ShardOrientation::COL_MAJOR
                                         ? TTNN_C_SHARD_ORIENTATION_COL_MAJOR
                                         : TTNN_C_SHARD_ORIENTATION_ROW_MAJOR;
    }
    return out;
}

MathFidelity to_fidelity(uint32_t v) {
    switch (v) {
        case TTNN_C_MATH_FIDELITY_LOFI: return MathFidelity::LoFi;
        case TTNN_C_MATH_FIDELITY_HIFI2: return MathFidelity::HiFi2;
        case TTNN_C_MATH_FIDELITY_HIFI3: return MathFidelity::HiFi3;
        case TTNN_C_MATH_FIDELITY_HIFI4: return MathFidelity::HiFi4;
        default: throw InvalidArgument("unknown math fidelity " + std::to_string(v));
    }
}

// ttnn::WormholeComputeKernelConfig {math_fidelity, math_approx_mode, fp32_dest_acc_en,
// packer_l1_acc, dst_full_sync_en[, throttle_level]}:
// ttnn/cpp/ttnn/operations/core/compute_kernel/compute_kernel_config.hpp (fields as in the
// research notes, /tmp/research/ttnn_ops.md section 10; set by name, so a trailing new field keeps
// its default).
std::optional<ttnn::DeviceComputeKernelConfig> opt_compute(const ttnn_c_compute_kernel_config* c) {
    if (c == nullptr) {
        return std::nullopt;
    }
    ttnn::WormholeComputeKernelConfig k{};
    k.math_fidelity = to_fidelity(c->math_fidelity);
    k.math_approx_mode = c->math_approx_mode != 0;
    k.fp32_dest_acc_en = c->fp32_dest_acc_en != 0;
    k.packer_l1_acc = c->packer_l1_acc != 0;
    k.dst_full_sync_en = c->dst_full_sync_en != 0;
    return ttnn::DeviceComputeKernelConfig{k};
}

UnaryOpType to_unary_type(uint32_t op) {
    switch (op) {
        case TTNN_C_UNARY_RELU: return UnaryOpType::RELU;
        case TTNN_C_UNARY_SQUARE: return UnaryOpType::SQUARE;
        case TTNN_C_UNARY_NEG: return UnaryOpType::NEG;
        case TTNN_C_UNARY_SILU: return UnaryOpType::SILU;
        case TTNN_C_UNARY_EXP: return UnaryOpType::EXP;
        case TTNN_C_UNARY_ABS: return UnaryOpType::ABS;
        case TTNN_C_UNARY_RECIPROCAL: return UnaryOpType::RECIP;
        case TTNN_C_UNARY_ROUND: return UnaryOpType::ROUND;
        default: throw InvalidArgument("unknown unary op " + std::to_string(op));
    }
}

// ttnn::operations::unary::UnaryWithParam(UnaryOpType[, params]): unary/common/unary_op_types.hpp.
std::optional<ttnn::operations::unary::UnaryWithParam> opt_unary(uint32_t op) {
    if (op == TTNN_C_UNARY_NONE) {
        return std::nullopt;
    }
    return ttnn::operations::unary::UnaryWithParam(to_unary_type(op));
}

std::vector<ttnn::operations::unary::EltwiseUnaryWithParam> activations(const uint32_t* ops, uint32_t n) {
    std::vector<ttnn::operations::unary::EltwiseUnaryWithParam> v;
    if (n > 0) {
        need(ops, "input_tensor_a_activations");
    }
    v.reserve(n);
    for (uint32_t i = 0; i < n; ++i) {
        v.emplace_back(to_unary_type(ops[i]));
    }
    return v;
}

ttnn::Shape to_shape(const uint32_t* dims, uint32_t rank, const char* what) {
    if (rank == 0 || rank > TTNN_C_MAX_RANK) {
        throw InvalidArgument(std::string(what) + ": rank must be 1.." + std::to_string(TTNN_C_MAX_RANK));
    }
    need(dims, what);
    ttnn::SmallVector<uint32_t> v(dims, dims + rank);
    return ttnn::Shape(v);
}

void write_shape(const ttnn::Shape& s, uint32_t* out_shape, uint32_t* out_rank) {
    need(out_shape, "out_shape");
    need(out_rank, "out_rank");
    if (s.rank() > TTNN_C_MAX_RANK) {
        throw Unsupported("tensor rank above TTNN_C_MAX_RANK");
    }
    for (std::size_t i = 0; i < s.rank(); ++i) {
        out_shape[i] = s[i];
    }
    *out_rank = static_cast<uint32_t>(s.rank());
}

// ttnn::operations::matmul program configs (matmul/device/config/matmul_program_config_types.hpp;
// member names per the research notes, section 1, and the Rust mirror in ttnn/src/ops/matmul.rs).
// Members are assigned by name on a value-initialized aggregate, so fields added in newer builds
// (out_block_h/w, gather_in0, hop_cores, ...) keep their defaults.
std::optional<ttnn::operations::matmul::MatmulProgramConfig> opt_matmul_pc(const ttnn_c_matmul_program_config* pc) {
    using namespace ttnn::operations::matmul;
    if (pc == nullptr) {
        return std::nullopt;
    }
    switch (pc->kind) {
        case TTNN_C_MATMUL_PROGRAM_CONFIG_MULTI_CORE: return MatmulMultiCoreProgramConfig{};
        case TTNN_C_MATMUL_PROGRAM_CONFIG_MULTI_CORE_REUSE: {
            MatmulMultiCoreReuseProgramConfig c{};
            c.compute_with_storage_grid_size = to_core(pc->compute_with_storage_grid_size);
            c.in0_block_w = pc->in0_block_w;
            c.out_subblock_h = pc->out_subblock_h;
            c.out_subblock_w = pc->out_subblock_w;
            c.per_core_M = pc->per_core_m;
            c.per_core_N = pc->per_core_n;
            return c;
        }
        case TTNN_C_MATMUL_PROGRAM_CONFIG_MULTI_CORE_REUSE_MULTICAST: {
            MatmulMultiCoreReuseMultiCastProgramConfig c{};
            c.compute_with_storage_grid_size = to_core(pc->compute_with_storage_grid_size);
            c.in0_block_w = pc->in0_block_w;
            c.out_subblock_h = pc->out_subblock_h;
            c.out_subblock_w = pc->out_subblock_w;
            c.out_block_h = pc->per_core_m;
            c.out_block_w = pc->per_core_n;
            c.per_core_M = pc->per_core_m;
            c.per_core_N = pc->per_core_n;
            c.transpose_mcast = pc->transpose_mcast != 0;
            c.fused_activation = opt_unary(pc->fused_activation);
            c.fuse_batch = pc->fuse_batch != 0;
            return c;
        }
        case TTNN_C_MATMUL_PROGRAM_CONFIG_MULTI_CORE_REUSE_MULTICAST_1D: {
            MatmulMultiCoreReuseMultiCast1DProgramConfig c{};
            c.compute_with_storage_grid_size = to_core(pc->compute_with_storage_grid_size);
            c.in0_block_w = pc->in0_block_w;
            c.out_subblock_h = pc->out_subblock_h;
            c.out_subblock_w = pc->out_subblock_w;
            c.out_block_h = pc->per_core_m;
            c.out_block_w = pc->per_core_n;
            c.per_core_M = pc->per_core_m;
            c.per_core_N = pc->per_core_n;
            c.fuse_batch = pc->fuse_batch != 0;
            c.fused_activation = opt_unary(pc->fused_activation);
            c.mcast_in0 = pc->mcast_in0 != 0;
            c.untilize_out = pc->untilize_out != 0;
            return c;
        }
        case TTNN_C_MATMUL_PROGRAM_CONFIG_MULTI_CORE_REUSE_MULTICAST_DRAM_SHARDED: {
            MatmulMultiCoreReuseMultiCastDRAMShardedProgramConfig c{};
            c.in0_block_w = pc->in0_block_w;
            c.per_core_M = pc->per_core_m;
            c.per_core_N = pc->per_core_n;
            c.fused_activation = opt_unary(pc->fused_activation);
            return c;
        }
        default: throw InvalidArgument("unknown matmul program config kind " + std::to_string(pc->kind));
    }
}

// LayerNorm program configs, namespace ttnn::prim as in
// ttnn/cpp/ttnn/operations/experimental/quasar/layer_norm/... (index id 71059683249), which
// declares `std::optional<const ttnn::prim::LayerNormProgramConfig>`.
std::optional<ttnn::prim::LayerNormProgramConfig> opt_layernorm_pc(const ttnn_c_layernorm_program_config* pc) {
    if (pc == nullptr) {
        return std::nullopt;
    }
    switch (pc->kind) {
        case TTNN_C_LAYERNORM_PROGRAM_CONFIG_DEFAULT: {
            ttnn::prim::LayerNormDefaultProgramConfig c{};
            c.use_welford = pc->use_welford != 0;
            return c;
        }
        case TTNN_C_LAYERNORM_PROGRAM_CONFIG_SHARDED_MULTI_CORE: {
            ttnn::prim::LayerNormShardedMultiCoreProgramConfig c{};
            c.compute_with_storage_grid_size = to_core(pc->compute_with_storage_grid_size);
            c.subblock_w = pc->subblock_w;
            c.block_h = pc->block_h;
            c.block_w = pc->block_w;
            c.inplace = pc->inplace != 0;
            c.use_welford = pc->use_welford != 0;
            return c;
        }
        default: throw InvalidArgument("unknown layernorm program config kind " + std::to_string(pc->kind));
    }
}

// ttnn::operations::transformer::SDPAProgramConfig: ttnn/cpp/ttnn/operations/transformer/sdpa_config.hpp
// (members compute_with_storage_grid_size, q_chunk_size, k_chunk_size, exp_approx_mode,
// max_cores_per_head_batch as used by tt_transformers' SDPAProgramConfig(...) calls).
std::optional<ttnn::operations::transformer::SDPAProgramConfig> opt_sdpa_pc(const ttnn_c_sdpa_program_config* pc) {
    if (pc == nullptr) {
        return std::nullopt;
    }
    ttnn::operations::transformer::SDPAProgramConfig c{};
    c.compute_with_storage_grid_size = to_core(pc->compute_with_storage_grid_size);
    c.q_chunk_size = pc->q_chunk_size;
    c.k_chunk_size = pc->k_chunk_size;
    if (pc->has_exp_approx_mode != 0) {
        c.exp_approx_mode = pc->exp_approx_mode != 0;
    }
    if (pc->has_max_cores_per_head_batch != 0) {
        c.max_cores_per_head_batch = pc->max_cores_per_head_batch;
    }
    return c;
}

ttnn::MeshDevice& mesh_of(ttnn_c_device* d) {
    auto& dev = need(d, "device");
    if (!dev.mesh) {
        throw InvalidArgument("device is closed");
    }
    return *dev.mesh;
}

const ttnn::MeshDevice& mesh_of(const ttnn_c_device* d) {
    const auto& dev = need(d, "device");
    if (!dev.mesh) {
        throw InvalidArgument("device is closed");
    }
    return *dev.mesh;
}

const ttnn::Tensor& tensor_of(const ttnn_c_tensor* t, const char* what) { return need(t, what).tensor; }

// ------------------------------------------------------------------------------------------
// Host data <-> tensors: ttnn::Tensor::from_vector<T>(const std::vector<T>&, const TensorSpec&,
// MeshDevice* = nullptr, std::optional<QueueId> = nullopt, T pad_value = 0) and
// Tensor::to_vector<T>(std::optional<QueueId>): ttnn/api/ttnn/tensor/tensor.hpp (index id
// 11936685853). TensorSpec(Shape, TensorLayout(DataType, PageConfig(Layout), MemoryConfig)):
// ttnn/tensor/tensor_spec.hpp, tensor/layout/tensor_layout.hpp.
// ------------------------------------------------------------------------------------------

// Bytes per element of the data exchanged with the caller for a tensor dtype.
std::size_t host_element_size(DataType d) {
    switch (d) {
        case DataType::BFLOAT16:
        case DataType::UINT16: return 2;
        case DataType::FLOAT32:
        case DataType::UINT32:
        case DataType::INT32:
        case DataType::BFLOAT8_B:
        case DataType::BFLOAT4_B: return 4;
        case DataType::UINT8: return 1;
        default: throw Unsupported("a TT-NN dtype this ABI does not carry");
    }
}

DataType host_dtype(DataType d) {
    return (d == DataType::BFLOAT8_B || d == DataType::BFLOAT4_B) ? DataType::FLOAT32 : d;
}

template <class T>
std::vector<T> bytes_to_vector(const void* data, std::size_t count) {
    static_assert(std::is_trivially_copyable_v<T>);
    std::vector<T> v(count);
    if (count > 0) {
        std::memcpy(v.data(), data, count * sizeof(T));
    }
    return v;
}

template <class T>
void vector_to_bytes(const std::vector<T>& v, void* dst) {
    if (!v.empty()) {
        std::memcpy(dst, v.data(), v.size() * sizeof(T));
    }
}

ttnn::Tensor tensor_from_bytes(
    const void* data, std::size_t count, const ttnn::TensorSpec& spec, ttnn::MeshDevice* device) {
    using bf16 = ::bfloat16;
    static_assert(sizeof(bf16) == 2, "bfloat16 must be two bytes");
    switch (spec.data_type()) {
        case DataType::BFLOAT16: return ttnn::Tensor::from_vector(bytes_to_vector<bf16>(data, count), spec, device);
        case DataType::FLOAT32:
        case DataType::BFLOAT8_B:
        case DataType::BFLOAT4_B:
            return ttnn::Tensor::from_vector(bytes_to_vector<float>(data, count), spec, device);
        case DataType::UINT32: return ttnn::Tensor::from_vector(bytes_to_vector<uint32_t>(data, count), spec, device);
        case DataType::INT32: return ttnn::Tensor::from_vector(bytes_to_vector<int32_t>(data, count), spec, device);
        case DataType::UINT16: return ttnn::Tensor::from_vector(bytes_to_vector<uint16_t>(data, count), spec, device);
        case DataType::UINT8: return ttnn::Tensor::from_vector(bytes_to_vector<uint8_t>(data, count), spec, device);
        default: throw Unsupported("a TT-NN dtype this ABI does not carry");
    }
}

void tensor_to_bytes(const ttnn::Tensor& t, void* dst) {
    switch (t.dtype()) {
        case DataType::BFLOAT16: vector_to_bytes(t.to_vector<::bfloat16>(), dst); return;
        case DataType::FLOAT32:
        case DataType::BFLOAT8_B:
        case DataType::BFLOAT4_B: vector_to_bytes(t.to_vector<float>(), dst); return;
        case DataType::UINT32: vector_to_bytes(t.to_vector<uint32_t>(), dst); return;
        case DataType::INT32: vector_to_bytes(t.to_vector<int32_t>(), dst); return;
        case DataType::UINT16: vector_to_bytes(t.to_vector<uint16_t>(), dst); return;
        case DataType::UINT8: vector_to_bytes(t.to_vector<uint8_t>(), dst); return;
        default: throw Unsupported("a TT-NN dtype this ABI does not carry");
    }
}

MemoryConfig dram_interleaved() { return MemoryConfig(TensorMemoryLayout::INTERLEAVED, BufferType::DRAM); }

std::optional<const ttnn::Tensor> const_opt(const ttnn_c_tensor* t) {
    std::optional<const ttnn::Tensor> o;
    if (t != nullptr) {
        o.emplace(t->tensor);
    }
    return o;
}

std::optional<float> opt_f32(const float* v) { return v ? std::optional<float>(*v) : std::nullopt; }

std::optional<uint32_t> opt_u32(const uint32_t* v) { return v ? std::optional<uint32_t>(*v) : std::nullopt; }

// Binary ops (see the comment at ttnn_c_binary for the signature checked).
template <class Rhs>
ttnn::Tensor run_binary(
    uint32_t op,
    const ttnn::Tensor& a,
    const Rhs& b,
    const uint32_t* dtype,
    const ttnn_c_memory_config* memory_config,
    const uint32_t* acts,
    uint32_t n) {
    auto lhs_acts = activations(acts, n);
    const ttnn::operations::unary::EltwiseUnaryWithParam* lhs_ptr = lhs_acts.data();
    tt::stl::Span<const ttnn::operations::unary::EltwiseUnaryWithParam> lhs_span(lhs_ptr, lhs_acts.size());
    tt::stl::Span<const ttnn::operations::unary::EltwiseUnaryWithParam> none{};
    std::optional<const DataType> dt;
    if (dtype != nullptr) {
        dt.emplace(to_dtype(*dtype));
    }
    auto mc = opt_mc(memory_config);
    switch (op) {
        case TTNN_C_BINARY_ADD: return ttnn::add(a, b, dt, mc, std::nullopt, none, lhs_span);
        case TTNN_C_BINARY_SUBTRACT: return ttnn::subtract(a, b, dt, mc, std::nullopt, none, lhs_span);
        case TTNN_C_BINARY_MULTIPLY: return ttnn::multiply(a, b, dt, mc, std::nullopt, none, lhs_span);
        default: throw InvalidArgument("unknown binary op " + std::to_string(op));
    }
}

}  // namespace

// ==========================================================================================
// Entry points
// ==========================================================================================

extern "C" {

uint32_t ttnn_c_abi_version(void) noexcept { return TTNN_C_ABI_VERSION; }

const char* ttnn_c_implementation(void) noexcept { return "ttnn_c.cpp over tt-metal v0.74.0 (TT-NN C++ API)"; }

const char* ttnn_c_last_error(void) noexcept { return g_last_error; }

// ---- device --------------------------------------------------------------------------------

// ttnn::open_mesh_device(int device_id, size_t l1_small_size, size_t trace_region_size,
// size_t num_command_queues, const std::optional<DispatchCoreConfig>& = nullopt,
// size_t worker_l1_size = DEFAULT_WORKER_L1_SIZE) -> std::shared_ptr<MeshDevice>:
// ttnn/cpp/ttnn/device.hpp (index id 54958473475) and device.cpp (index id 68614277435,
// create_unit_mesh). Older versions took no num_command_queues (device.hpp @ 019af45c is older
// still: open_device returning Device&).
int ttnn_c_device_open(
    uint32_t device_id,
    uint64_t l1_small_size,
    uint64_t trace_region_size,
    uint32_t num_command_queues,
    ttnn_c_device** out) {
    return guard("ttnn_c_device_open", [&] {
        need(out, "out");
        if (num_command_queues == 0 || num_command_queues > 2) {
            throw InvalidArgument("num_command_queues must be 1 or 2");
        }
        auto mesh = ttnn::open_mesh_device(
            static_cast<int>(device_id),
            static_cast<std::size_t>(l1_small_size),
            static_cast<std::size_t>(trace_region_size),
            static_cast<std::size_t>(num_command_queues));
        *out = new ttnn_c_device{std::move(mesh)};
    });
}

// ttnn::close_device(MeshDevice&): ttnn/cpp/ttnn/device.hpp (index id 54958473475).
void ttnn_c_device_close(ttnn_c_device* device) noexcept {
    if (device == nullptr) {
        return;
    }
    try {
        if (device->mesh) {
            ttnn::close_device(*device->mesh);
        }
    } catch (...) {
        // A close failure is not reportable through a void free function; the handle still goes.
    }
    delete device;
}

// MeshDevice::compute_with_storage_grid_size(): tt-metalium mesh_device.hpp (IDevice interface).
int ttnn_c_device_compute_grid(const ttnn_c_device* device, ttnn_c_core_coord* out) {
    return guard("ttnn_c_device_compute_grid", [&] {
        auto& o = need(out, "out");
        auto grid = mesh_of(device).compute_with_storage_grid_size();
        o.x = static_cast<uint32_t>(grid.x);
        o.y = static_cast<uint32_t>(grid.y);
    });
}

// mesh_device->allocator()->get_statistics(BufferType) -> Statistics {total_allocatable_size_bytes,
// total_allocated_bytes, total_free_bytes, largest_free_block_bytes, ...}: tt-metalium
// allocator_types.hpp (index id 12097073569) and tests/ttnn/unit_tests/gtests distributed test
// (index id 11984347263) calling mesh_device_->allocator()->get_statistics(BufferType::DRAM).
int ttnn_c_device_memory_stats(const ttnn_c_device* device, uint32_t buffer_type, ttnn_c_memory_stats* out) {
    return guard("ttnn_c_device_memory_stats", [&] {
        auto& o = need(out, "out");
        auto stats = mesh_of(device).allocator()->get_statistics(to_buffer_type(buffer_type));
        o.total_allocatable_size_bytes = stats.total_allocatable_size_bytes;
        o.total_allocated_bytes = stats.total_allocated_bytes;
        o.total_free_bytes = stats.total_free_bytes;
        o.largest_free_block_bytes = stats.largest_free_block_bytes;
    });
}

// ---- tensors -------------------------------------------------------------------------------

int ttnn_c_tensor_from_host(
    const void* data,
    size_t nbytes,
    uint32_t dtype,
    const uint32_t* shape,
    uint32_t rank,
    uint32_t layout,
    ttnn_c_device* device,
    const ttnn_c_memory_config* memory_config,
    ttnn_c_tensor** out) {
    return guard("ttnn_c_tensor_from_host", [&] {
        need(out, "out");
        auto dt = to_dtype(dtype);
        auto lay = to_layout(layout);
        auto s = to_shape(shape, rank, "shape");
        auto count = static_cast<std::size_t>(s.volume());
        if (nbytes != count * host_element_size(dt)) {
            throw InvalidArgument(
                "nbytes " + std::to_string(nbytes) + " != " + std::to_string(count) + " elements of " +
                std::to_string(host_element_size(dt)) + " bytes");
        }
        if (count > 0) {
            need(data, "data");
        }
        if (device == nullptr && memory_config != nullptr) {
            throw InvalidArgument("a host tensor takes no memory config");
        }
        auto mc = memory_config ? to_memory_config(*memory_config) : dram_interleaved();
        ttnn::TensorSpec spec(s, tt::tt_metal::TensorLayout(dt, tt::tt_metal::PageConfig(lay), mc));
        ttnn::MeshDevice* dev = device ? &mesh_of(device) : nullptr;
        *out = wrap(tensor_from_bytes(data, count, spec, dev));
    });
}

void ttnn_c_tensor_free(ttnn_c_tensor* tensor) noexcept {
    // ~Tensor releases a reference; it does not throw in any version we read, but the barrier
    // stays: nothing may unwind out of a free function.
    try {
        delete tensor;
    } catch (...) {
    }
}

int ttnn_c_tensor_clone(const ttnn_c_tensor* tensor, ttnn_c_tensor** out) {
    return guard("ttnn_c_tensor_clone", [&] {
        need(out, "out");
        *out = wrap(tensor_of(tensor, "tensor"));
    });
}

// Tensor::to_device(MeshDevice*, const MemoryConfig&, std::optional<QueueId>):
// ttnn/api/ttnn/tensor/tensor.hpp (index id 11936685853).
int ttnn_c_tensor_to_device(
    const ttnn_c_tensor* tensor, ttnn_c_device* device, const ttnn_c_memory_config* memory_config, ttnn_c_tensor** out) {
    return guard("ttnn_c_tensor_to_device", [&] {
        need(out, "out");
        const auto& t = tensor_of(tensor, "tensor");
        auto mc = memory_config ? to_memory_config(*memory_config) : dram_interleaved();
        *out = wrap(t.to_device(&mesh_of(device), mc));
    });
}

// Tensor::cpu(bool blocking, std::optional<QueueId>): ttnn/api/ttnn/tensor/tensor.hpp.
int ttnn_c_tensor_from_device(const ttnn_c_tensor* tensor, uint8_t blocking, ttnn_c_tensor** out) {
    return guard("ttnn_c_tensor_from_device", [&] {
        need(out, "out");
        *out = wrap(tensor_of(tensor, "tensor").cpu(blocking != 0));
    });
}

// ttnn::to_layout(tensor, Layout): ttnn/cpp/ttnn/operations/core/core.hpp @ 0e4fa0f2
// (register_operation "ttnn::to_layout").
int ttnn_c_tensor_to_layout(const ttnn_c_tensor* tensor, uint32_t layout, ttnn_c_tensor** out) {
    return guard("ttnn_c_tensor_to_layout", [&] {
        need(out, "out");
        *out = wrap(ttnn::to_layout(tensor_of(tensor, "tensor"), to_layout(layout)));
    });
}

// ttnn::operations::core::copy_host_to_device_tensor(const Tensor& host, Tensor device[, cq]):
// ttnn/cpp/ttnn/operations/core/core.hpp @ 0e4fa0f2 (an older version; newer ones take an
// optional QueueId in the same position, so the two-argument call holds).
int ttnn_c_copy_host_to_device(const ttnn_c_tensor* host_tensor, ttnn_c_tensor* device_tensor) {
    return guard("ttnn_c_copy_host_to_device", [&] {
        const auto& host = tensor_of(host_tensor, "host_tensor");
        auto& dev = need(device_tensor, "device_tensor").tensor;
        ttnn::operations::core::copy_host_to_device_tensor(host, dev);
    });
}

int ttnn_c_tensor_read_info(
    const ttnn_c_tensor* tensor, uint32_t* out_dtype, uint64_t* out_num_elements, uint64_t* out_nbytes) {
    return guard("ttnn_c_tensor_read_info", [&] {
        const auto& t = tensor_of(tensor, "tensor");
        auto count = static_cast<uint64_t>(t.logical_shape().volume());
        auto hd = host_dtype(t.dtype());
        need(out_dtype, "out_dtype") = from_dtype(hd);
        need(out_num_elements, "out_num_elements") = count;
        need(out_nbytes, "out_nbytes") = count * host_element_size(hd);
    });
}

int ttnn_c_tensor_read(const ttnn_c_tensor* tensor, void* dst, size_t nbytes) {
    return guard("ttnn_c_tensor_read", [&] {
        const auto& t = tensor_of(tensor, "tensor");
        auto expected = static_cast<std::size_t>(t.logical_shape().volume()) * host_element_size(host_dtype(t.dtype()));
        if (nbytes != expected) {
            throw BufferSize("buffer of " + std::to_string(nbytes) + " bytes; the tensor reads " +
                             std::to_string(expected));
        }
        if (expected > 0) {
            need(dst, "dst");
        }
        tensor_to_bytes(t, dst);
    });
}

// Tensor::logical_shape(), padded_shape(), dtype(), layout(), storage_type(), memory_config():
// ttnn/api/ttnn/tensor/tensor.hpp (index id 11936685853 and the slice.cpp versions using
// input_tensor.logical_shape() / layout(), index id 2413835832).
int ttnn_c_tensor_shape(const ttnn_c_tensor* tensor, uint32_t* out_shape, uint32_t* out_rank) {
    return guard("ttnn_c_tensor_shape",
                 [&] { write_shape(tensor_of(tensor, "tensor").logical_shape(), out_shape, out_rank); });
}

int ttnn_c_tensor_padded_shape(const ttnn_c_tensor* tensor, uint32_t* out_shape, uint32_t* out_rank) {
    return guard("ttnn_c_tensor_padded_shape",
                 [&] { write_shape(tensor_of(tensor, "tensor").padded_shape(), out_shape, out_rank); });
}

int ttnn_c_tensor_dtype(const ttnn_c_tensor* tensor, uint32_t* out) {
    return guard("ttnn_c_tensor_dtype", [&] { need(out, "out") = from_dtype(tensor_of(tensor, "tensor").dtype()); });
}

int ttnn_c_tensor_layout(const ttnn_c_tensor* tensor, uint32_t* out) {
    return guard("ttnn_c_tensor_layout", [&] { need(out, "out") = from_layout(tensor_of(tensor, "tensor").layout()); });
}

int ttnn_c_tensor_is_on_device(const ttnn_c_tensor* tensor, uint8_t* out) {
    return guard("ttnn_c_tensor_is_on_device", [&] {
        need(out, "out") = tensor_of(tensor, "tensor").storage_type() == tt::tt_metal::StorageType::DEVICE ? 1 : 0;
    });
}

int ttnn_c_tensor_memory_config(const ttnn_c_tensor* tensor, ttnn_c_memory_config* out) {
    return guard("ttnn_c_tensor_memory_config", [&] {
        const auto& t = tensor_of(tensor, "tensor");
        if (t.storage_type() != tt::tt_metal::StorageType::DEVICE) {
            throw InvalidArgument("a host tensor has no memory config");
        }
        need(out, "out") = from_memory_config(t.memory_config());
    });
}

// ttnn::reshape(tensor, const Shape& logical_shape[, const Shape& padded_shape]):
// ttnn/cpp/ttnn/operations/data_movement/reshape_view/reshape.hpp (included by core.hpp @ 0e4fa0f2).
int ttnn_c_reshape(
    const ttnn_c_tensor* tensor, const uint32_t* shape, uint32_t rank, const uint32_t* padded_shape, ttnn_c_tensor** out) {
    return guard("ttnn_c_reshape", [&] {
        need(out, "out");
        const auto& t = tensor_of(tensor, "tensor");
        auto s = to_shape(shape, rank, "shape");
        if (padded_shape != nullptr) {
            *out = wrap(ttnn::reshape(t, s, to_shape(padded_shape, rank, "padded_shape")));
        } else {
            *out = wrap(ttnn::reshape(t, s));
        }
    });
}

// ---- ops -----------------------------------------------------------------------------------

// ttnn::linear(a, b, const std::optional<const Tensor>& bias, bool transpose_a, bool transpose_b,
// const std::optional<const MemoryConfig>&, std::optional<const DataType>,
// const std::optional<const MatmulProgramConfig>&, const std::optional<const Activation>&
// (Activation = std::variant<std::string, UnaryWithParam>),
// std::optional<const DeviceComputeKernelConfig>, std::optional<const CoreGrid>, ...):
// ttnn/cpp/ttnn/operations/matmul/matmul.hpp (index ids 27488555667 and 55158866616, free
// functions; 7435229235, the struct form with the same argument list; @ 015e459a is older, with
// a string activation).
int ttnn_c_linear(
    const ttnn_c_tensor* a,
    const ttnn_c_tensor* b,
    const ttnn_c_tensor* bias,
    uint8_t transpose_a,
    uint8_t transpose_b,
    const ttnn_c_memory_config* memory_config,
    const uint32_t* dtype,
    const ttnn_c_matmul_program_config* program_config,
    uint32_t activation,
    const ttnn_c_compute_kernel_config* compute_kernel_config,
    const ttnn_c_core_coord* core_grid,
    ttnn_c_tensor** out) {
    return guard("ttnn_c_linear", [&] {
        need(out, "out");
        std::optional<const ttnn::Activation> act;
        if (auto u = opt_unary(activation)) {
            act.emplace(*u);
        }
        std::optional<const ttnn::CoreGrid> grid;
        if (core_grid != nullptr) {
            grid.emplace(core_grid->x, core_grid->y);
        }
        std::optional<const ttnn::Tensor> bias_t;
        if (bias != nullptr) {
            bias_t.emplace(bias->tensor);
        }
        *out = wrap(ttnn::linear(
            tensor_of(a, "a"),
            tensor_of(b, "b"),
            bias_t,
            transpose_a != 0,
            transpose_b != 0,
            opt_mc(memory_config),
            opt_dtype(dtype),
            opt_matmul_pc(program_config),
            act,
            opt_compute(compute_kernel_config),
            grid));
    });
}

// ttnn::matmul: same header and argument list as linear, without bias (see above).
int ttnn_c_matmul(
    const ttnn_c_tensor* a,
    const ttnn_c_tensor* b,
    uint8_t transpose_a,
    uint8_t transpose_b,
    const ttnn_c_memory_config* memory_config,
    const uint32_t* dtype,
    const ttnn_c_matmul_program_config* program_config,
    uint32_t activation,
    const ttnn_c_compute_kernel_config* compute_kernel_config,
    const ttnn_c_core_coord* core_grid,
    ttnn_c_tensor** out) {
    return guard("ttnn_c_matmul", [&] {
        need(out, "out");
        std::optional<const ttnn::Activation> act;
        if (auto u = opt_unary(activation)) {
            act.emplace(*u);
        }
        std::optional<const ttnn::CoreGrid> grid;
        if (core_grid != nullptr) {
            grid.emplace(core_grid->x, core_grid->y);
        }
        *out = wrap(ttnn::matmul(
            tensor_of(a, "a"),
            tensor_of(b, "b"),
            transpose_a != 0,
            transpose_b != 0,
            opt_mc(memory_config),
            opt_dtype(dtype),
            opt_matmul_pc(program_config),
            act,
            opt_compute(compute_kernel_config),
            grid));
    });
}

// ttnn::rms_norm(input, float epsilon = 1e-12, weight, bias, residual_input_tensor,
// memory_config, program_config, compute_kernel_config):
// ttnn/cpp/ttnn/operations/normalization/rmsnorm/rmsnorm.hpp @ 120b164d (struct form; the
// argument list is unchanged in the rmsnorm.cpp invoke of index id 516469725 and in the newer
// free-function norm headers, e.g. the quasar layer_norm of index id 71059683249).
int ttnn_c_rms_norm(
    const ttnn_c_tensor* input,
    float epsilon,
    const ttnn_c_tensor* weight,
    const ttnn_c_tensor* bias,
    const ttnn_c_tensor* residual_input_tensor,
    const ttnn_c_memory_config* memory_config,
    const ttnn_c_layernorm_program_config* program_config,
    const ttnn_c_compute_kernel_config* compute_kernel_config,
    ttnn_c_tensor** out) {
    return guard("ttnn_c_rms_norm", [&] {
        need(out, "out");
        auto to_const_opt = [](const ttnn_c_tensor* t) {
            std::optional<const ttnn::Tensor> o;
            if (t != nullptr) {
                o.emplace(t->tensor);
            }
            return o;
        };
        *out = wrap(ttnn::rms_norm(
            tensor_of(input, "input"),
            epsilon,
            to_const_opt(weight),
            to_const_opt(bias),
            to_const_opt(residual_input_tensor),
            opt_mc(memory_config),
            opt_layernorm_pc(program_config),
            opt_compute(compute_kernel_config)));
    });
}

// ttnn::embedding(input_ids, weight, const std::optional<int>& pad_token, layout, EmbeddingsType,
// std::optional<const DataType> dtype, const std::optional<MemoryConfig>&, optional_output_tensor):
// ttnn/cpp/ttnn/operations/embedding/embedding.hpp @ 049e2880 (older: layout not optional; the
// research notes, section 3, read a newer embedding.cpp @ b9dd0672 with `optional<Layout>`; we
// always pass a layout, resolving "default" to the weight's layout as TT-NN does).
int ttnn_c_embedding(
    const ttnn_c_tensor* input_ids,
    const ttnn_c_tensor* weight,
    const uint32_t* padding_idx,
    const uint32_t* layout,
    uint32_t embeddings_type,
    const uint32_t* dtype,
    const ttnn_c_memory_config* memory_config,
    ttnn_c_tensor** out) {
    return guard("ttnn_c_embedding", [&] {
        need(out, "out");
        const auto& ids = tensor_of(input_ids, "input_ids");
        const auto& w = tensor_of(weight, "weight");
        std::optional<int> pad;
        if (padding_idx != nullptr) {
            pad = static_cast<int>(*padding_idx);
        }
        ttnn::operations::embedding::EmbeddingsType et;
        switch (embeddings_type) {
            case TTNN_C_EMBEDDINGS_TYPE_GENERIC: et = ttnn::operations::embedding::EmbeddingsType::GENERIC; break;
            case TTNN_C_EMBEDDINGS_TYPE_PADDED: et = ttnn::operations::embedding::EmbeddingsType::PADDED; break;
            case TTNN_C_EMBEDDINGS_TYPE_BINARY: et = ttnn::operations::embedding::EmbeddingsType::BINARY; break;
            default: throw InvalidArgument("unknown embeddings type " + std::to_string(embeddings_type));
        }
        Layout lay = layout ? to_layout(*layout) : w.layout();
        *out = wrap(ttnn::embedding(ids, w, pad, lay, et, opt_dtype(dtype), opt_mc(memory_config)));
    });
}

// ttnn::add / subtract / multiply(lhs, rhs (Tensor or float), const std::optional<const DataType>&
// output_dtype, const std::optional<MemoryConfig>&, const std::optional<Tensor>& output,
// Span<const EltwiseUnaryWithParam> post_activations, lhs_activations, rhs_activations,
// std::optional<bool> use_legacy, ...): ttnn/cpp/ttnn/operations/eltwise/binary/binary.hpp
// (index id 51986289206, the TTNN_BINARY_OP_TENSOR_TENSOR / _TENSOR_FLOAT declarations; index
// id 51765315623, the struct form with the same list).

int ttnn_c_binary(
    uint32_t op,
    const ttnn_c_tensor* a,
    const ttnn_c_tensor* b,
    const uint32_t* dtype,
    const ttnn_c_memory_config* memory_config,
    const uint32_t* input_tensor_a_activations,
    uint32_t num_activations,
    ttnn_c_tensor** out) {
    return guard("ttnn_c_binary", [&] {
        need(out, "out");
        *out = wrap(run_binary(
            op, tensor_of(a, "a"), tensor_of(b, "b"), dtype, memory_config, input_tensor_a_activations,
            num_activations));
    });
}

int ttnn_c_binary_scalar(
    uint32_t op,
    const ttnn_c_tensor* a,
    float b,
    const uint32_t* dtype,
    const ttnn_c_memory_config* memory_config,
    const uint32_t* input_tensor_a_activations,
    uint32_t num_activations,
    ttnn_c_tensor** out) {
    return guard("ttnn_c_binary_scalar", [&] {
        need(out, "out");
        *out = wrap(run_binary(
            op, tensor_of(a, "a"), b, dtype, memory_config, input_tensor_a_activations, num_activations));
    });
}

// Unary ops: ttnn::relu/square/neg/silu/abs/reciprocal(input, memory_config, output) (ExecuteUnary,
// Abs), ttnn::exp(input, bool fast_and_approximate_mode, memory_config, output)
// (ExecuteUnaryWithFastAndApproximateMode), ttnn::round(input, std::optional<int32_t> decimals,
// memory_config, output) (ExecuteUnaryWithOptionalIntegerParameter):
// ttnn/cpp/ttnn/operations/eltwise/unary/unary.hpp @ 001a9c01; the `(x, memory_config)` call form
// also appears in complex ops of index id 51831215224 (ttnn::reciprocal / neg / square).
int ttnn_c_unary(uint32_t op, const ttnn_c_tensor* input, const ttnn_c_memory_config* memory_config, ttnn_c_tensor** out) {
    return guard("ttnn_c_unary", [&] {
        need(out, "out");
        const auto& x = tensor_of(input, "input");
        auto mc = opt_mc(memory_config);
        switch (op) {
            case TTNN_C_UNARY_RELU: *out = wrap(ttnn::relu(x, mc)); break;
            case TTNN_C_UNARY_SQUARE: *out = wrap(ttnn::square(x, mc)); break;
            case TTNN_C_UNARY_NEG: *out = wrap(ttnn::neg(x, mc)); break;
            case TTNN_C_UNARY_SILU: *out = wrap(ttnn::silu(x, mc)); break;
            case TTNN_C_UNARY_EXP: *out = wrap(ttnn::exp(x, false, mc)); break;
            case TTNN_C_UNARY_ABS: *out = wrap(ttnn::abs(x, mc)); break;
            case TTNN_C_UNARY_RECIPROCAL: *out = wrap(ttnn::reciprocal(x, mc)); break;
            case TTNN_C_UNARY_ROUND: *out = wrap(ttnn::round(x, std::optional<int32_t>(0), mc)); break;
            default: throw InvalidArgument("unknown unary op " + std::to_string(op));
        }
    });
}

// ttnn::unary_chain(input, const std::vector<UnaryWithParam>& ops_chain, memory_config, output):
// ttnn/cpp/ttnn/operations/eltwise/unary/unary.hpp @ 001a9c01 (Unary_chain).
int ttnn_c_unary_chain(
    const ttnn_c_tensor* input, const uint32_t* ops, uint32_t num_ops, const ttnn_c_memory_config* memory_config, ttnn_c_tensor** out) {
    return guard("ttnn_c_unary_chain", [&] {
        need(out, "out");
        if (num_ops == 0) {
            throw InvalidArgument("unary_chain needs at least one op");
        }
        need(ops, "ops");
        std::vector<ttnn::operations::unary::UnaryWithParam> chain;
        chain.reserve(num_ops);
        for (uint32_t i = 0; i < num_ops; ++i) {
            chain.emplace_back(to_unary_type(ops[i]));
        }
        *out = wrap(ttnn::unary_chain(tensor_of(input, "input"), chain, opt_mc(memory_config)));
    });
}

// ttnn::clamp(input, float min_val, float max_val, memory_config, output):
// ttnn/cpp/ttnn/operations/eltwise/unary/unary.hpp @ 001a9c01 (Clamp).
int ttnn_c_clamp(const ttnn_c_tensor* input, float min, float max, const ttnn_c_memory_config* memory_config, ttnn_c_tensor** out) {
    return guard("ttnn_c_clamp", [&] {
        need(out, "out");
        *out = wrap(ttnn::clamp(tensor_of(input, "input"), min, max, opt_mc(memory_config)));
    });
}

// ttnn::max(input, const std::optional<std::variant<int, std::vector<int>>>& dim, bool keepdim,
// memory_config, compute_kernel_config, float scalar):
// ttnn/cpp/ttnn/operations/reduction/generic/generic_reductions.hpp @ 01c6ad3e (Reduce<Max>).
int ttnn_c_max(const ttnn_c_tensor* input, int32_t dim, uint8_t keepdim, const ttnn_c_memory_config* memory_config, ttnn_c_tensor** out) {
    return guard("ttnn_c_max", [&] {
        need(out, "out");
        *out = wrap(ttnn::max(tensor_of(input, "input"), static_cast<int>(dim), keepdim != 0, opt_mc(memory_config)));
    });
}

// ttnn::typecast(input, const DataType& output_dtype, const std::optional<MemoryConfig>&, ...):
// ttnn/cpp/ttnn/operations/copy/typecast/typecast.hpp @ 06bd3735.
int ttnn_c_typecast(const ttnn_c_tensor* input, uint32_t dtype, const ttnn_c_memory_config* memory_config, ttnn_c_tensor** out) {
    return guard("ttnn_c_typecast", [&] {
        need(out, "out");
        *out = wrap(ttnn::typecast(tensor_of(input, "input"), to_dtype(dtype), opt_mc(memory_config)));
    });
}

// ttnn::to_memory_config(tensor, const MemoryConfig&, std::optional<DataType> dtype, ...):
// ttnn/cpp/ttnn/operations/core/core.hpp @ 0e4fa0f2 (register_operation "ttnn::to_memory_config",
// ToMemoryConfig in core/to_memory_config/to_memory_config_op.hpp).
int ttnn_c_to_memory_config(
    const ttnn_c_tensor* input, const ttnn_c_memory_config* memory_config, const uint32_t* dtype, ttnn_c_tensor** out) {
    return guard("ttnn_c_to_memory_config", [&] {
        need(out, "out");
        auto mc = to_memory_config(need(memory_config, "memory_config"));
        *out = wrap(ttnn::to_memory_config(tensor_of(input, "input"), mc, opt_dtype(dtype)));
    });
}

// ttnn::slice(input, const ttnn::SmallVector<T>& begins, ends, step, memory_config, ...):
// ttnn/cpp/ttnn/operations/data_movement/slice/slice.hpp (index id 10192275077).
int ttnn_c_slice(
    const ttnn_c_tensor* input,
    const uint32_t* starts,
    const uint32_t* ends,
    const uint32_t* steps,
    uint32_t rank,
    const ttnn_c_memory_config* memory_config,
    ttnn_c_tensor** out) {
    return guard("ttnn_c_slice", [&] {
        need(out, "out");
        if (rank == 0 || rank > TTNN_C_MAX_RANK) {
            throw InvalidArgument("rank must be 1.." + std::to_string(TTNN_C_MAX_RANK));
        }
        need(starts, "starts");
        need(ends, "ends");
        ttnn::SmallVector<int32_t> b(rank), e(rank), s(rank, 1);
        for (uint32_t i = 0; i < rank; ++i) {
            b[i] = static_cast<int32_t>(starts[i]);
            e[i] = static_cast<int32_t>(ends[i]);
            if (steps != nullptr) {
                s[i] = static_cast<int32_t>(steps[i]);
            }
        }
        *out = wrap(ttnn::slice(tensor_of(input, "input"), b, e, s, opt_mc(memory_config)));
    });
}

// Zeros on the device through Tensor::from_vector with a device (index id 11936685853): the
// same result as ttnn::zeros (a device buffer filled with zeros) without depending on the
// creation-op signature, which we did not re-read for v0.74.0.
int ttnn_c_zeros(
    const uint32_t* shape,
    uint32_t rank,
    uint32_t dtype,
    uint32_t layout,
    ttnn_c_device* device,
    const ttnn_c_memory_config* memory_config,
    ttnn_c_tensor** out) {
    return guard("ttnn_c_zeros", [&] {
        need(out, "out");
        auto dt = to_dtype(dtype);
        auto s = to_shape(shape, rank, "shape");
        auto mc = memory_config ? to_memory_config(*memory_config) : dram_interleaved();
        ttnn::TensorSpec spec(s, tt::tt_metal::TensorLayout(dt, tt::tt_metal::PageConfig(to_layout(layout)), mc));
        auto count = static_cast<std::size_t>(s.volume());
        std::vector<uint8_t> zeros(count * host_element_size(dt), 0);
        *out = wrap(tensor_from_bytes(zeros.data(), count, spec, &mesh_of(device)));
    });
}

// ttnn::copy(const Tensor& src, const Tensor& dst) -> dst: data_movement/copy/copy.hpp (read
// through the research notes, section 8e; not re-read for v0.74.0).
int ttnn_c_copy(const ttnn_c_tensor* src, ttnn_c_tensor* dst, ttnn_c_tensor** out) {
    return guard("ttnn_c_copy", [&] {
        auto& d = need(dst, "dst").tensor;
        auto result = ttnn::copy(tensor_of(src, "src"), d);
        maybe_out(out, result);
    });
}

// ttnn::experimental::nlp_create_qkv_heads_decode(input, uint32_t num_heads,
// std::optional<const uint32_t> num_kv_heads, std::optional<std::array<Tensor, 3>>&
// optional_output_tensors, std::optional<const bool> overlap_qk_coregrid = true,
// const std::optional<const Tensor>& batch_offset, std::optional<const uint32_t> slice_size,
// const std::optional<MemoryConfig>&) -> std::tuple<Tensor, Tensor, Tensor>:
// .../nlp_create_qkv_heads_decode/nlp_create_qkv_heads_decode.hpp (index id 52140632619; the
// struct form @ 01389051 has the output tensors last).
int ttnn_c_nlp_create_qkv_heads_decode(
    const ttnn_c_tensor* input,
    uint32_t num_heads,
    const uint32_t* num_kv_heads,
    const uint8_t* overlap_qk_coregrid,
    const ttnn_c_tensor* batch_offset,
    const uint32_t* slice_size,
    const ttnn_c_memory_config* memory_config,
    ttnn_c_tensor** out_q,
    ttnn_c_tensor** out_k,
    ttnn_c_tensor** out_v) {
    return guard("ttnn_c_nlp_create_qkv_heads_decode", [&] {
        need(out_q, "out_q");
        need(out_k, "out_k");
        need(out_v, "out_v");
        std::optional<const uint32_t> nkv;
        if (num_kv_heads != nullptr) {
            nkv.emplace(*num_kv_heads);
        }
        std::optional<const bool> overlap = true;
        if (overlap_qk_coregrid != nullptr) {
            overlap.emplace(*overlap_qk_coregrid != 0);
        }
        std::optional<const ttnn::Tensor> offset;
        if (batch_offset != nullptr) {
            offset.emplace(batch_offset->tensor);
        }
        std::optional<const uint32_t> slice;
        if (slice_size != nullptr) {
            slice.emplace(*slice_size);
        }
        std::optional<std::array<ttnn::Tensor, 3>> no_outputs;
        auto [q, k, v] = ttnn::experimental::nlp_create_qkv_heads_decode(
            tensor_of(input, "input"), num_heads, nkv, no_outputs, overlap, offset, slice, opt_mc(memory_config));
        auto* hq = wrap(q);
        auto* hk = wrap(k);
        auto* hv = wrap(v);
        *out_q = hq;
        *out_k = hk;
        *out_v = hv;
    });
}

// ttnn::experimental::nlp_concat_heads_decode(input, uint32_t num_heads, memory_config,
// optional_output_tensor[, sub_core_grids]):
// .../nlp_concat_heads_decode/nlp_concat_heads_decode.hpp @ 10dc125f (without sub_core_grids;
// the research notes, section 4c, read a newer nanobind with `sub_core_grids` after
// output_tensor).
int ttnn_c_nlp_concat_heads_decode(
    const ttnn_c_tensor* input,
    uint32_t num_heads,
    const ttnn_c_memory_config* memory_config,
    const ttnn_c_core_range* sub_core_grids,
    uint32_t num_sub_core_grids,
    ttnn_c_tensor** out) {
    return guard("ttnn_c_nlp_concat_heads_decode", [&] {
        need(out, "out");
        const auto& x = tensor_of(input, "input");
        if (num_sub_core_grids > 0) {
            need(sub_core_grids, "sub_core_grids");
            *out = wrap(ttnn::experimental::nlp_concat_heads_decode(
                x, num_heads, opt_mc(memory_config), std::nullopt,
                std::optional<CoreRangeSet>(to_core_range_set(sub_core_grids, num_sub_core_grids))));
        } else {
            *out = wrap(ttnn::experimental::nlp_concat_heads_decode(x, num_heads, opt_mc(memory_config)));
        }
    });
}

// ttnn::experimental::nlp_create_qkv_heads(input_q, const std::optional<Tensor>& input_kv,
// uint32_t num_q_heads, std::optional<uint32_t> num_kv_heads, bool transpose_k_heads,
// const std::optional<MemoryConfig>&, optional_output_tensors):
// .../nlp_create_qkv_heads/nlp_create_qkv_heads.hpp @ 0abdd1c2.
int ttnn_c_nlp_create_qkv_heads(
    const ttnn_c_tensor* input,
    const ttnn_c_tensor* input_kv,
    uint32_t num_heads,
    const uint32_t* num_kv_heads,
    uint8_t transpose_k_heads,
    const ttnn_c_memory_config* memory_config,
    ttnn_c_tensor** out_q,
    ttnn_c_tensor** out_k,
    ttnn_c_tensor** out_v) {
    return guard("ttnn_c_nlp_create_qkv_heads", [&] {
        need(out_q, "out_q");
        need(out_k, "out_k");
        need(out_v, "out_v");
        std::optional<uint32_t> nkv;
        if (num_kv_heads != nullptr) {
            nkv = *num_kv_heads;
        }
        auto [q, k, v] = ttnn::experimental::nlp_create_qkv_heads(
            tensor_of(input, "input"), opt_tensor(input_kv), num_heads, nkv, transpose_k_heads != 0,
            opt_mc(memory_config));
        auto* hq = wrap(q);
        auto* hk = wrap(k);
        auto* hv = wrap(v);
        *out_q = hq;
        *out_k = hk;
        *out_v = hv;
    });
}

// ttnn::experimental::nlp_concat_heads(input, const std::optional<MemoryConfig>&):
// .../nlp_concat_heads/nlp_concat_heads.hpp @ 06bd3735.
int ttnn_c_nlp_concat_heads(const ttnn_c_tensor* input, const ttnn_c_memory_config* memory_config, ttnn_c_tensor** out) {
    return guard("ttnn_c_nlp_concat_heads", [&] {
        need(out, "out");
        *out = wrap(ttnn::experimental::nlp_concat_heads(tensor_of(input, "input"), opt_mc(memory_config)));
    });
}

// ttnn::experimental::rotary_embedding_llama(input, cos_cache, sin_cache, trans_mat,
// bool is_decode_mode = false, const std::optional<MemoryConfig>&,
// std::optional<const DeviceComputeKernelConfig>):
// .../rotary_embedding_llama/rotary_embedding_llama.hpp @ 09b4c34b.
int ttnn_c_rotary_embedding_llama(
    const ttnn_c_tensor* input,
    const ttnn_c_tensor* cos_cache,
    const ttnn_c_tensor* sin_cache,
    const ttnn_c_tensor* trans_mat,
    uint8_t is_decode_mode,
    const ttnn_c_memory_config* memory_config,
    const ttnn_c_compute_kernel_config* compute_kernel_config,
    ttnn_c_tensor** out) {
    return guard("ttnn_c_rotary_embedding_llama", [&] {
        need(out, "out");
        *out = wrap(ttnn::experimental::rotary_embedding_llama(
            tensor_of(input, "input"),
            tensor_of(cos_cache, "cos_cache"),
            tensor_of(sin_cache, "sin_cache"),
            tensor_of(trans_mat, "trans_mat"),
            is_decode_mode != 0,
            opt_mc(memory_config),
            opt_compute(compute_kernel_config)));
    });
}

// ttnn::experimental::paged_update_cache(cache, input, const std::vector<uint32_t>& update_idxs,
// const std::optional<const Tensor>& update_idxs_tensor, std::optional<bool> share_cache,
// const std::optional<const Tensor>& page_table, uint32_t batch_offset,
// std::optional<const DeviceComputeKernelConfig>, const std::optional<const
// std::set<MeshCoordinate>>& mesh_coords, ...) and paged_fill_cache(cache, input, page_table,
// const std::optional<const Tensor>& batch_idx_tensor, uint32_t batch_idx, compute_kernel_config,
// mesh_coords, ...): ttnn/cpp/ttnn/operations/experimental/paged_cache/paged_cache.hpp @ 00b0fa3f.
int ttnn_c_paged_update_cache(
    ttnn_c_tensor* cache,
    const ttnn_c_tensor* input,
    const uint32_t* update_idxs,
    uint32_t num_update_idxs,
    const ttnn_c_tensor* update_idxs_tensor,
    uint8_t share_cache,
    const ttnn_c_tensor* page_table,
    uint32_t batch_offset,
    const ttnn_c_compute_kernel_config* compute_kernel_config,
    ttnn_c_tensor** out) {
    return guard("ttnn_c_paged_update_cache", [&] {
        const auto& c = need(cache, "cache").tensor;
        std::vector<uint32_t> idxs;
        if (num_update_idxs > 0) {
            need(update_idxs, "update_idxs");
            idxs.assign(update_idxs, update_idxs + num_update_idxs);
        }
        std::optional<const ttnn::Tensor> idx_t;
        if (update_idxs_tensor != nullptr) {
            idx_t.emplace(update_idxs_tensor->tensor);
        }
        std::optional<const ttnn::Tensor> pt;
        if (page_table != nullptr) {
            pt.emplace(page_table->tensor);
        }
        auto result = ttnn::experimental::paged_update_cache(
            c,
            tensor_of(input, "input"),
            idxs,
            idx_t,
            std::optional<bool>(share_cache != 0),
            pt,
            batch_offset,
            opt_compute(compute_kernel_config),
            std::nullopt);
        maybe_out(out, result);
    });
}

int ttnn_c_paged_fill_cache(
    ttnn_c_tensor* cache,
    const ttnn_c_tensor* input,
    const ttnn_c_tensor* page_table,
    const ttnn_c_tensor* batch_idx_tensor,
    uint32_t batch_idx,
    const ttnn_c_compute_kernel_config* compute_kernel_config,
    ttnn_c_tensor** out) {
    return guard("ttnn_c_paged_fill_cache", [&] {
        const auto& c = need(cache, "cache").tensor;
        std::optional<const ttnn::Tensor> bi;
        if (batch_idx_tensor != nullptr) {
            bi.emplace(batch_idx_tensor->tensor);
        }
        auto result = ttnn::experimental::paged_fill_cache(
            c,
            tensor_of(input, "input"),
            tensor_of(page_table, "page_table"),
            bi,
            batch_idx,
            opt_compute(compute_kernel_config),
            std::nullopt);
        maybe_out(out, result);
    });
}


// ttnn::transformer::paged_scaled_dot_product_attention_decode(q, k, v, page_table_tensor,
// bool is_causal = true, attn_mask, cur_pos_tensor, attention_sink, std::optional<float> scale,
// std::optional<uint32_t> sliding_window_size, memory_config, program_config,
// compute_kernel_config) and scaled_dot_product_attention_decode(q, k, v, is_causal, attn_mask,
// const std::vector<uint32_t>& cur_pos, cur_pos_tensor, attention_sink, scale, ...):
// ttnn/cpp/ttnn/operations/transformer/sdpa_decode/sdpa_decode.hpp @ 09b4c34b.
int ttnn_c_paged_sdpa_decode(
    const ttnn_c_tensor* q,
    const ttnn_c_tensor* k,
    const ttnn_c_tensor* v,
    const ttnn_c_tensor* page_table_tensor,
    uint8_t is_causal,
    const ttnn_c_tensor* attn_mask,
    const ttnn_c_tensor* cur_pos_tensor,
    const float* scale,
    const uint32_t* sliding_window_size,
    const ttnn_c_memory_config* memory_config,
    const ttnn_c_sdpa_program_config* program_config,
    const ttnn_c_compute_kernel_config* compute_kernel_config,
    ttnn_c_tensor** out) {
    return guard("ttnn_c_paged_sdpa_decode", [&] {
        need(out, "out");
        *out = wrap(ttnn::transformer::paged_scaled_dot_product_attention_decode(
            tensor_of(q, "q"),
            tensor_of(k, "k"),
            tensor_of(v, "v"),
            tensor_of(page_table_tensor, "page_table_tensor"),
            is_causal != 0,
            const_opt(attn_mask),
            const_opt(cur_pos_tensor),
            std::nullopt /* attention_sink */,
            opt_f32(scale),
            opt_u32(sliding_window_size),
            opt_mc(memory_config),
            opt_sdpa_pc(program_config),
            opt_compute(compute_kernel_config)));
    });
}

int ttnn_c_sdpa_decode(
    const ttnn_c_tensor* q,
    const ttnn_c_tensor* k,
    const ttnn_c_tensor* v,
    uint8_t is_causal,
    const ttnn_c_tensor* attn_mask,
    const uint32_t* cur_pos,
    uint32_t num_cur_pos,
    const ttnn_c_tensor* cur_pos_tensor,
    const float* scale,
    const uint32_t* sliding_window_size,
    const ttnn_c_memory_config* memory_config,
    const ttnn_c_sdpa_program_config* program_config,
    const ttnn_c_compute_kernel_config* compute_kernel_config,
    ttnn_c_tensor** out) {
    return guard("ttnn_c_sdpa_decode", [&] {
        need(out, "out");
        std::vector<uint32_t> pos;
        if (num_cur_pos > 0) {
            need(cur_pos, "cur_pos");
            pos.assign(cur_pos, cur_pos + num_cur_pos);
        }
        *out = wrap(ttnn::transformer::scaled_dot_product_attention_decode(
            tensor_of(q, "q"),
            tensor_of(k, "k"),
            tensor_of(v, "v"),
            is_causal != 0,
            const_opt(attn_mask),
            pos,
            const_opt(cur_pos_tensor),
            std::nullopt /* attention_sink */,
            opt_f32(scale),
            opt_u32(sliding_window_size),
            opt_mc(memory_config),
            opt_sdpa_pc(program_config),
            opt_compute(compute_kernel_config)));
    });
}

// ttnn::transformer::scaled_dot_product_attention(q, k, v, const std::optional<Tensor>& attn_mask,
// bool is_causal = true, std::optional<float> scale, std::optional<uint32_t> sliding_window_size,
// memory_config, program_config, compute_kernel_config, ...) and
// chunked_scaled_dot_product_attention(q, k, v, page_table_tensor, int64_t chunk_start_idx,
// std::optional<float> scale, memory_config, program_config, compute_kernel_config, ...):
// ttnn/cpp/ttnn/operations/transformer/sdpa/sdpa.hpp @ 00863da9.
int ttnn_c_sdpa(
    const ttnn_c_tensor* q,
    const ttnn_c_tensor* k,
    const ttnn_c_tensor* v,
    const ttnn_c_tensor* attn_mask,
    uint8_t is_causal,
    const float* scale,
    const uint32_t* sliding_window_size,
    const ttnn_c_memory_config* memory_config,
    const ttnn_c_sdpa_program_config* program_config,
    const ttnn_c_compute_kernel_config* compute_kernel_config,
    ttnn_c_tensor** out) {
    return guard("ttnn_c_sdpa", [&] {
        need(out, "out");
        *out = wrap(ttnn::transformer::scaled_dot_product_attention(
            tensor_of(q, "q"),
            tensor_of(k, "k"),
            tensor_of(v, "v"),
            opt_tensor(attn_mask),
            is_causal != 0,
            opt_f32(scale),
            opt_u32(sliding_window_size),
            opt_mc(memory_config),
            opt_sdpa_pc(program_config),
            opt_compute(compute_kernel_config)));
    });
}

int ttnn_c_chunked_sdpa(
    const ttnn_c_tensor* q,
    const ttnn_c_tensor* k,
    const ttnn_c_tensor* v,
    const ttnn_c_tensor* page_table_tensor,
    int64_t chunk_start_idx,
    const float* scale,
    const ttnn_c_memory_config* memory_config,
    const ttnn_c_sdpa_program_config* program_config,
    const ttnn_c_compute_kernel_config* compute_kernel_config,
    ttnn_c_tensor** out) {
    return guard("ttnn_c_chunked_sdpa", [&] {
        need(out, "out");
        *out = wrap(ttnn::transformer::chunked_scaled_dot_product_attention(
            tensor_of(q, "q"),
            tensor_of(k, "k"),
            tensor_of(v, "v"),
            tensor_of(page_table_tensor, "page_table_tensor"),
            chunk_start_idx,
            opt_f32(scale),
            opt_mc(memory_config),
            opt_sdpa_pc(program_config),
            opt_compute(compute_kernel_config)));
    });
}

// ttnn::argmax(input, const std::optional<int>& dim, bool keepdim, sub_core_grids,
// bool use_multicore, memory_config, optional_output_tensor):
// ttnn/cpp/ttnn/operations/reduction/argmax/argmax.hpp (index id 27560221495; the struct form of
// index id 25003513647 has the same list; @ 049e2880 is older, without keepdim).
int ttnn_c_argmax(
    const ttnn_c_tensor* input,
    const int32_t* dim,
    uint8_t keepdim,
    uint8_t use_multicore,
    const ttnn_c_memory_config* memory_config,
    ttnn_c_tensor** out) {
    return guard("ttnn_c_argmax", [&] {
        need(out, "out");
        std::optional<int> d;
        if (dim != nullptr) {
            d = static_cast<int>(*dim);
        }
        *out = wrap(ttnn::argmax(
            tensor_of(input, "input"), d, keepdim != 0, std::nullopt, use_multicore != 0, opt_mc(memory_config)));
    });
}

// ttnn::topk(input, uint32_t k, int8_t dim, bool largest, bool sorted, memory_config,
// sub_core_grids, const std::optional<Tensor>& indices_tensor, preallocated_output_tensors,
// bool stable) -> std::vector<Tensor>{values, indices}:
// ttnn/cpp/ttnn/operations/reduction/topk/topk.hpp @ 0062748f.
int ttnn_c_topk(
    const ttnn_c_tensor* input,
    uint32_t k,
    int32_t dim,
    uint8_t largest,
    uint8_t sorted,
    const ttnn_c_memory_config* memory_config,
    const ttnn_c_tensor* indices_tensor,
    ttnn_c_tensor** out_values,
    ttnn_c_tensor** out_indices) {
    return guard("ttnn_c_topk", [&] {
        need(out_values, "out_values");
        need(out_indices, "out_indices");
        if (dim < -128 || dim > 127) {
            throw InvalidArgument("dim out of range");
        }
        auto result = ttnn::topk(
            tensor_of(input, "input"),
            k,
            static_cast<int8_t>(dim),
            largest != 0,
            sorted != 0,
            opt_mc(memory_config),
            std::nullopt,
            opt_tensor(indices_tensor));
        if (result.size() != 2) {
            throw std::runtime_error("ttnn::topk returned " + std::to_string(result.size()) + " tensors, expected 2");
        }
        auto* hv = wrap(result[0]);
        auto* hi = wrap(result[1]);
        *out_values = hv;
        *out_indices = hi;
    });
}

// ttnn::sampling(input_values, input_indices, const Tensor& k, const Tensor& p, const Tensor& temp,
// const std::optional<uint32_t>& seed, sub_core_grids, const std::optional<Tensor>& output_tensor):
// ttnn/cpp/ttnn/operations/reduction/sampling/sampling.hpp @ 0074cd62.
int ttnn_c_sampling(
    const ttnn_c_tensor* input_values,
    const ttnn_c_tensor* input_indices,
    const ttnn_c_tensor* k,
    const ttnn_c_tensor* p,
    const ttnn_c_tensor* temp,
    const uint32_t* seed,
    ttnn_c_tensor* output_tensor,
    ttnn_c_tensor** out) {
    return guard("ttnn_c_sampling", [&] {
        if (output_tensor == nullptr) {
            need(out, "out");
        }
        std::optional<ttnn::Tensor> dst;
        if (output_tensor != nullptr) {
            dst = output_tensor->tensor;
        }
        auto result = ttnn::sampling(
            tensor_of(input_values, "input_values"),
            tensor_of(input_indices, "input_indices"),
            tensor_of(k, "k"),
            tensor_of(p, "p"),
            tensor_of(temp, "temp"),
            opt_u32(seed),
            std::nullopt,
            dst);
        maybe_out(out, result);
    });
}

// ttnn::operations::experimental::plus_one(input, sub_core_grids, bool skip_negative_entries):
// ttnn/cpp/ttnn/operations/experimental/plusone/plusone.hpp (index id 53023203650; the struct
// form registered as ttnn::plus_one in index id 204941495 takes the same list).
int ttnn_c_plus_one(ttnn_c_tensor* input, uint8_t skip_negative_entries, ttnn_c_tensor** out) {
    return guard("ttnn_c_plus_one", [&] {
        const auto& x = need(input, "input").tensor;
        auto result = ttnn::operations::experimental::plus_one(x, std::nullopt, skip_negative_entries != 0);
        maybe_out(out, result);
    });
}

// ---- traces --------------------------------------------------------------------------------

// ttnn::operations::trace::{begin_trace_capture(MeshDevice*, std::optional<QueueId>) -> MeshTraceId,
// end_trace_capture(MeshDevice*, MeshTraceId, std::optional<QueueId>),
// execute_trace(MeshDevice*, MeshTraceId, std::optional<QueueId>, bool blocking),
// release_trace(MeshDevice*, MeshTraceId)}: ttnn/cpp/ttnn/operations/trace.hpp @ 06bd3735
// (@ d9916961 is older: QueueId not optional; an explicit QueueId works with both).
// MeshTraceId is a strong type over uint32_t; `.get()` as in tt-mlir's runtime
// (index id 44687091: `traceId.get()`).
int ttnn_c_begin_trace_capture(ttnn_c_device* device, uint32_t cq_id, uint32_t* out_trace_id) {
    return guard("ttnn_c_begin_trace_capture", [&] {
        auto& id = need(out_trace_id, "out_trace_id");
        auto tid = ttnn::operations::trace::begin_trace_capture(&mesh_of(device), ttnn::QueueId(cq_id));
        id = static_cast<uint32_t>(tid.get());
    });
}

int ttnn_c_end_trace_capture(ttnn_c_device* device, uint32_t trace_id, uint32_t cq_id) {
    return guard("ttnn_c_end_trace_capture", [&] {
        ttnn::operations::trace::end_trace_capture(&mesh_of(device), ttnn::MeshTraceId(trace_id), ttnn::QueueId(cq_id));
    });
}

int ttnn_c_execute_trace(ttnn_c_device* device, uint32_t trace_id, uint32_t cq_id, uint8_t blocking) {
    return guard("ttnn_c_execute_trace", [&] {
        ttnn::operations::trace::execute_trace(
            &mesh_of(device), ttnn::MeshTraceId(trace_id), ttnn::QueueId(cq_id), blocking != 0);
    });
}

int ttnn_c_release_trace(ttnn_c_device* device, uint32_t trace_id) {
    return guard("ttnn_c_release_trace", [&] {
        if (device == nullptr) {
            return;
        }
        ttnn::operations::trace::release_trace(&mesh_of(device), ttnn::MeshTraceId(trace_id));
    });
}

}  // extern "C"
