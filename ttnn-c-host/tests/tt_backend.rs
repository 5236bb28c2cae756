//! The `ttnn` Tenstorrent backend end to end against the host-backed provider of the C ABI
//! (`libttnn_c_host.so`): `Device::open` loads it as it would load `libttnn_c.so`, and every op
//! goes through the FFI (marshalling, handle ownership, errors, trace ids).
//!
//! Each scenario runs the same op sequence on a host-backend device and on a Tenstorrent-backend
//! device over the provider, and compares every result: shape, dtype, layout, memory config and
//! every bit (the provider runs the host backend's ops, so the FFI path must change nothing).
//! `experimental::bitlinear` is the exception: the Tenstorrent backend lowers it to stock ops
//! (see `bitlinear_lowering_matches_host_within_ulps`). Every test ends with the provider's
//! live-handle count back to zero and no double frees.

/// Helpers for this file, which drives the provider through `ttnn`'s Tenstorrent backend
/// (`common/` drives the C ABI directly).
#[path = "tt_common/mod.rs"]
mod common;

use common::{
    Rng, assert_no_leaks, assert_same, bits, counters, host_device, serial, tt_device, upload,
    upload_ints,
};
use ttnn::experimental::{
    ActivationQuant, BitLinearArgs, NlpConcatHeadsDecodeArgs, NlpCreateQkvHeadsArgs,
    NlpCreateQkvHeadsDecodeArgs, PagedFillCacheArgs, PagedUpdateCacheArgs, QuantizeActivationsArgs,
    RotaryEmbeddingLlamaArgs, WeightScaleMode,
};
use ttnn::ops::matmul::MatmulMultiCoreReuseMultiCast1DProgramConfig;
use ttnn::transformer::{
    ChunkedSdpaArgs, PagedSdpaDecodeArgs, SdpaArgs, SdpaDecodeArgs,
    chunked_scaled_dot_product_attention, paged_scaled_dot_product_attention_decode,
    scaled_dot_product_attention, scaled_dot_product_attention_decode,
};
use ttnn::{
    ArgmaxArgs, BackendKind, BinaryArgs, BufferType, CoreCoord, CoreRangeSet, DRAM_MEMORY_CONFIG,
    DataType, Device, DeviceSpec, EmbeddingArgs, Error, L1_HEIGHT_SHARDED_MEMORY_CONFIG,
    L1_MEMORY_CONFIG, L1_WIDTH_SHARDED_MEMORY_CONFIG, Layout, LinearArgs, MatmulArgs, MemoryConfig,
    PlusOneArgs, ReduceArgs, RmsNormArgs, SamplingArgs, ShardOrientation, ShardSpec, SliceArgs,
    Tensor, TensorMemoryLayout, TopkArgs, UnaryArgs, UnaryOp,
};

type Outputs = Vec<(&'static str, Tensor)>;

/// Runs `scenario` on a host device and on the provider, and asserts that every output is the
/// same tensor; then that no provider handle is left.
fn compare(scenario: fn(&Device) -> Outputs) {
    let _s = serial();
    {
        let (host, tt) = (host_device(), tt_device());
        assert_eq!(tt.backend(), BackendKind::Tenstorrent);
        let h = scenario(&host);
        let t = scenario(&tt);
        assert_eq!(h.len(), t.len());
        for ((name, a), (name_t, b)) in h.iter().zip(&t) {
            assert_eq!(name, name_t);
            assert!(b.is_on_device() || !a.is_on_device(), "{name}: storage");
            assert_same(name, a, b);
        }
    }
    assert_no_leaks();
}

fn hs(cores: usize, shard: [usize; 2]) -> MemoryConfig {
    MemoryConfig::sharded(
        TensorMemoryLayout::HeightSharded,
        BufferType::L1,
        ShardSpec::new(
            CoreRangeSet::num_cores_to_corerangeset(cores, CoreCoord::new(8, 8)),
            shard,
            ShardOrientation::RowMajor,
        ),
    )
}

fn ws(cores: usize, shard: [usize; 2]) -> MemoryConfig {
    MemoryConfig::sharded(
        TensorMemoryLayout::WidthSharded,
        BufferType::L1,
        ShardSpec::new(
            CoreRangeSet::num_cores_to_corerangeset(cores, CoreCoord::new(8, 8)),
            shard,
            ShardOrientation::RowMajor,
        ),
    )
}

fn host_tensor(v: &[f32], shape: &[usize], dtype: DataType, layout: Layout) -> Tensor {
    Tensor::from_slice(v, shape, dtype, layout).expect("host tensor")
}

// ---------------------------------------------------------------------------------------------
// Uploads, readback, data movement

fn uploads(d: &Device) -> Outputs {
    let mut rng = Rng::new(1);
    let v = rng.vec(3 * 70, 3.0);
    let ints: Vec<i32> = (0..210).map(|i| i * 7 - 500).collect();
    let mut out = Outputs::new();
    for (name, dtype, layout) in [
        ("f32 tile", DataType::Float32, Layout::Tile),
        ("f32 row-major", DataType::Float32, Layout::RowMajor),
        ("bf16 tile", DataType::Bfloat16, Layout::Tile),
        ("bfp8_b", DataType::Bfloat8B, Layout::Tile),
        ("bfp4_b", DataType::Bfloat4B, Layout::Tile),
    ] {
        out.push((
            name,
            upload(d, &v, &[3, 70], dtype, layout, &DRAM_MEMORY_CONFIG),
        ));
    }
    out.push((
        "ternary",
        upload(
            d,
            &rng.ternary(64 * 96),
            &[64, 96],
            DataType::Ternary,
            Layout::Tile,
            &DRAM_MEMORY_CONFIG,
        ),
    ));
    out.push(("i32", upload_ints(d, &ints, &[3, 70], DataType::Int32)));
    let u: Vec<u32> = (0..210).collect();
    out.push(("u32", upload_ints(d, &u, &[210], DataType::Uint32)));
    let u16s: Vec<u16> = (0..210).map(|i| i * 300).collect();
    out.push(("u16", upload_ints(d, &u16s, &[2, 105], DataType::Uint16)));
    let u8s: Vec<u8> = (0..210).map(|i| i as u8).collect();
    out.push(("u8", upload_ints(d, &u8s, &[210], DataType::Uint8)));
    out.push((
        "l1 interleaved",
        upload(
            d,
            &v,
            &[3, 70],
            DataType::Float32,
            Layout::Tile,
            &L1_MEMORY_CONFIG,
        ),
    ));
    let w = rng.vec(32 * 256, 1.0);
    out.push((
        "width sharded",
        upload(
            d,
            &w,
            &[1, 1, 32, 256],
            DataType::Bfloat16,
            Layout::Tile,
            &ws(4, [32, 64]),
        ),
    ));
    // An in-place refresh of a device tensor (how trace inputs change).
    let mut t = upload(
        d,
        &v,
        &[3, 70],
        DataType::Bfloat16,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let fresh = host_tensor(
        &rng.vec(210, 1.0),
        &[3, 70],
        DataType::Bfloat16,
        Layout::Tile,
    );
    ttnn::copy_host_to_device(&fresh, &mut t).expect("copy_host_to_device");
    out.push(("copy_host_to_device", t));
    // Readback to a host tensor keeps shape and dtype.
    let back = out[0].1.to_host().expect("to_host");
    assert!(!back.is_on_device());
    assert_eq!(back.to_vec::<f32>().expect("read"), v);
    out
}

#[test]
fn uploads_and_readback_match_host() {
    compare(uploads);
}

fn data_movement(d: &Device) -> Outputs {
    let mut rng = Rng::new(2);
    let x = upload(
        d,
        &rng.vec(2 * 64 * 96, 2.0),
        &[2, 64, 96],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let b8 = upload(
        d,
        &rng.vec(64 * 96, 2.0),
        &[64, 96],
        DataType::Bfloat8B,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let tern = upload(
        d,
        &rng.ternary(64 * 96),
        &[64, 96],
        DataType::Ternary,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let rm = upload(
        d,
        &rng.vec(5 * 40, 1.0),
        &[5, 40],
        DataType::Bfloat16,
        Layout::RowMajor,
        &DRAM_MEMORY_CONFIG,
    );
    let dst = ttnn::zeros(
        [2, 64, 96],
        DataType::Bfloat16,
        Layout::Tile,
        d,
        &DRAM_MEMORY_CONFIG,
    )
    .expect("zeros");
    let copied = ttnn::copy(&x, &dst).expect("copy");
    vec![
        ("reshape", ttnn::reshape(&x, [1, 128, 96]).expect("reshape")),
        (
            "reshape bfp8 width",
            ttnn::reshape(&b8, [32, 192]).expect("reshape"),
        ),
        (
            "reshape ternary",
            ttnn::reshape(&tern, [1, 1, 64, 96]).expect("reshape"),
        ),
        (
            "reshape_padded",
            ttnn::reshape_padded(&x, [2, 1, 64, 96], [2, 1, 64, 96]).expect("reshape_padded"),
        ),
        (
            "unsqueeze_to_4d",
            ttnn::unsqueeze_to_4d(&x).expect("unsqueeze"),
        ),
        (
            "to_layout tile",
            ttnn::to_layout(&rm, Layout::Tile).expect("tilize"),
        ),
        (
            "to_layout row-major",
            ttnn::to_layout(&x, Layout::RowMajor).expect("untilize"),
        ),
        (
            "to_memory_config sharded",
            ttnn::to_memory_config(&x, &hs(4, [32, 96]), None).expect("shard"),
        ),
        (
            "to_memory_config l1 bf16",
            ttnn::to_memory_config(&x, &L1_MEMORY_CONFIG, Some(DataType::Bfloat16)).expect("move"),
        ),
        (
            "to_memory_config same",
            ttnn::to_memory_config(&x, &DRAM_MEMORY_CONFIG, None).expect("same"),
        ),
        (
            "slice",
            ttnn::slice(&x, &[1, 3, 32], &[2, 40, 70], &SliceArgs::default()).expect("slice"),
        ),
        (
            "zeros",
            ttnn::zeros(
                [1, 1, 32, 64],
                DataType::Float32,
                Layout::Tile,
                d,
                &L1_WIDTH_SHARDED_MEMORY_CONFIG,
            )
            .expect("zeros"),
        ),
        (
            "zeros ternary",
            ttnn::zeros(
                [32, 64],
                DataType::Ternary,
                Layout::Tile,
                d,
                &DRAM_MEMORY_CONFIG,
            )
            .expect("zeros"),
        ),
        ("copy", copied),
        ("copy dst", dst),
    ]
}

#[test]
fn data_movement_matches_host() {
    compare(data_movement);
}

// ---------------------------------------------------------------------------------------------
// Elementwise, reductions, matmul, norm, embedding

fn eltwise(d: &Device) -> Outputs {
    let mut rng = Rng::new(3);
    let a = upload(
        d,
        &rng.vec(64 * 96, 3.0),
        &[1, 1, 64, 96],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let b = upload(
        d,
        &rng.vec(64 * 96, 3.0),
        &[1, 1, 64, 96],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let row = upload(
        d,
        &rng.vec(96, 1.0),
        &[1, 96],
        DataType::Bfloat16,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let un = UnaryArgs::default();
    let relu2 = BinaryArgs {
        input_tensor_a_activations: vec![UnaryOp::Relu, UnaryOp::Square],
        ..Default::default()
    };
    let to_bf16 = BinaryArgs {
        dtype: Some(DataType::Bfloat16),
        memory_config: Some(L1_MEMORY_CONFIG),
        ..Default::default()
    };
    vec![
        ("add", ttnn::add(&a, &b, &Default::default()).expect("add")),
        ("add broadcast", ttnn::add(&a, &row, &to_bf16).expect("add")),
        (
            "subtract",
            ttnn::subtract(&a, &b, &Default::default()).expect("subtract"),
        ),
        (
            "multiply relu2",
            ttnn::multiply(&a, &b, &relu2).expect("multiply"),
        ),
        (
            "add_scalar",
            ttnn::add_scalar(&a, 0.5, &Default::default()).expect("add_scalar"),
        ),
        (
            "subtract_scalar",
            ttnn::subtract_scalar(&a, 1.25, &to_bf16).expect("subtract_scalar"),
        ),
        (
            "multiply_scalar",
            ttnn::multiply_scalar(&a, 127.0, &relu2).expect("multiply_scalar"),
        ),
        ("relu", ttnn::relu(&a, &un).expect("relu")),
        ("square", ttnn::square(&a, &un).expect("square")),
        ("neg", ttnn::neg(&a, &un).expect("neg")),
        ("silu", ttnn::silu(&a, &un).expect("silu")),
        ("exp", ttnn::exp(&a, &un).expect("exp")),
        ("abs", ttnn::abs(&a, &un).expect("abs")),
        ("reciprocal", ttnn::reciprocal(&a, &un).expect("reciprocal")),
        ("round", ttnn::round(&a, &un).expect("round")),
        (
            "unary_chain to bf16",
            ttnn::unary_chain(
                &a,
                &[UnaryOp::Abs, UnaryOp::Exp, UnaryOp::Neg],
                &UnaryArgs {
                    dtype: Some(DataType::Bfloat16),
                    ..Default::default()
                },
            )
            .expect("chain"),
        ),
        ("clamp", ttnn::clamp(&a, -1.0, 0.5, &un).expect("clamp")),
        (
            "clamp to bf16",
            ttnn::clamp(
                &a,
                1e-5,
                f32::MAX,
                &UnaryArgs {
                    dtype: Some(DataType::Bfloat16),
                    ..Default::default()
                },
            )
            .expect("clamp"),
        ),
        (
            "max keepdim",
            ttnn::max(
                &a,
                -1,
                &ReduceArgs {
                    keepdim: true,
                    ..Default::default()
                },
            )
            .expect("max"),
        ),
        (
            "max dim 2",
            ttnn::max(&a, 2, &ReduceArgs::default()).expect("max"),
        ),
        (
            "typecast bf16",
            ttnn::typecast(&a, DataType::Bfloat16, None).expect("typecast"),
        ),
        (
            "typecast bfp8",
            ttnn::typecast(&a, DataType::Bfloat8B, Some(&L1_MEMORY_CONFIG)).expect("typecast"),
        ),
        (
            "typecast int32",
            ttnn::typecast(&ttnn::round(&a, &un).expect("round"), DataType::Int32, None)
                .expect("typecast"),
        ),
    ]
}

#[test]
fn eltwise_and_reductions_match_host() {
    compare(eltwise);
}

fn matmul_norm_embedding(d: &Device) -> Outputs {
    let mut rng = Rng::new(4);
    let (m, k, n) = (64, 128, 96);
    let a = upload(
        d,
        &rng.vec(m * k, 1.0),
        &[1, 1, m, k],
        DataType::Bfloat16,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let w = upload(
        d,
        &rng.vec(n * k, 1.0),
        &[n, k],
        DataType::Bfloat8B,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let wt = upload(
        d,
        &rng.vec(k * n, 1.0),
        &[k, n],
        DataType::Bfloat4B,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let bias = upload(
        d,
        &rng.vec(n, 1.0),
        &[1, n],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let linear = ttnn::linear(
        &a,
        &w,
        &LinearArgs {
            bias: Some(&bias),
            transpose_b: true,
            dtype: Some(DataType::Float32),
            activation: Some(UnaryOp::Relu),
            compute_kernel_config: Some(ttnn::ComputeKernelConfig::hifi2()),
            ..Default::default()
        },
    )
    .expect("linear");
    let mm = ttnn::matmul(&a, &wt, &MatmulArgs::default()).expect("matmul");
    let pc = MatmulMultiCoreReuseMultiCast1DProgramConfig {
        compute_with_storage_grid_size: CoreCoord::new(8, 8),
        in0_block_w: 1,
        out_subblock_h: 1,
        out_subblock_w: 1,
        per_core_m: 2,
        per_core_n: 1,
        fuse_batch: true,
        fused_activation: Some(UnaryOp::Silu),
        mcast_in0: true,
        untilize_out: false,
    };
    let sharded = ttnn::linear(
        &a,
        &wt,
        &LinearArgs {
            memory_config: Some(L1_WIDTH_SHARDED_MEMORY_CONFIG),
            program_config: Some(pc.into()),
            core_grid: Some(CoreCoord::new(8, 8)),
            ..Default::default()
        },
    )
    .expect("linear 1d");
    let x = upload(
        d,
        &rng.vec(32 * 256, 2.0),
        &[1, 1, 32, 256],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let res = upload(
        d,
        &rng.vec(32 * 256, 2.0),
        &[1, 1, 32, 256],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let gamma = upload(
        d,
        &rng.vec(256, 1.0),
        &[1, 1, 8, 32],
        DataType::Bfloat16,
        Layout::RowMajor,
        &DRAM_MEMORY_CONFIG,
    );
    let norm = ttnn::rms_norm(
        &x,
        &RmsNormArgs {
            epsilon: 1e-5,
            weight: Some(&gamma),
            residual_input_tensor: Some(&res),
            ..Default::default()
        },
    )
    .expect("rms_norm");
    let table = upload(
        d,
        &rng.vec(50 * 64, 1.0),
        &[50, 64],
        DataType::Bfloat16,
        Layout::RowMajor,
        &DRAM_MEMORY_CONFIG,
    );
    let ids = upload_ints(d, &[3u32, 49, 0, 7, 7], &[1, 5], DataType::Uint32);
    let sids = upload_ints(d, &[3i32, -1, 0, 12], &[1, 4], DataType::Int32);
    vec![
        ("linear", linear),
        ("matmul", mm),
        ("linear 1d sharded", sharded),
        ("rms_norm", norm),
        (
            "embedding",
            ttnn::embedding(&ids, &table, &EmbeddingArgs::default()).expect("embedding"),
        ),
        (
            "embedding tile f32 padded",
            ttnn::embedding(
                &ids,
                &table,
                &EmbeddingArgs {
                    padding_idx: Some(7),
                    layout: Some(Layout::Tile),
                    dtype: Some(DataType::Float32),
                    ..Default::default()
                },
            )
            .expect("embedding"),
        ),
        (
            "embedding negative ids",
            ttnn::embedding(&sids, &table, &EmbeddingArgs::default()).expect("embedding"),
        ),
    ]
}

#[test]
fn matmul_norm_and_embedding_match_host() {
    compare(matmul_norm_embedding);
}

// ---------------------------------------------------------------------------------------------
// Heads, RoPE, KV cache, attention

fn rot_mat(d: &Device, users: usize) -> (Tensor, Tensor) {
    let one = ttnn::experimental::get_rot_transformation_mat(DataType::Bfloat16).expect("trans");
    let v = one.to_vec::<f32>().expect("values");
    let prefill = one.to_device(d, &DRAM_MEMORY_CONFIG).expect("upload");
    let rep: Vec<f32> = (0..users).flat_map(|_| v.iter().copied()).collect();
    let decode = upload(
        d,
        &rep,
        &[1, 1, 32 * users, 32],
        DataType::Bfloat16,
        Layout::Tile,
        &hs(users, [32, 32]),
    );
    (prefill, decode)
}

fn heads_and_rope(d: &Device) -> Outputs {
    let mut rng = Rng::new(5);
    let (users, nh, nkv, hd) = (3, 4, 2, 64);
    let width = (nh + 2 * nkv) * hd;
    let qkv = upload(
        d,
        &rng.vec(users * width, 1.0),
        &[1, 1, users, width],
        DataType::Bfloat16,
        Layout::Tile,
        &L1_MEMORY_CONFIG,
    );
    let (q, k, v) = ttnn::experimental::nlp_create_qkv_heads_decode(
        &qkv,
        nh,
        &NlpCreateQkvHeadsDecodeArgs {
            num_kv_heads: Some(nkv),
            memory_config: Some(L1_HEIGHT_SHARDED_MEMORY_CONFIG),
            ..Default::default()
        },
    )
    .expect("create heads decode");
    let (trans_prefill, trans_decode) = rot_mat(d, users);
    let cos = upload(
        d,
        &rng.vec(users * hd, 1.0),
        &[1, users, 1, hd],
        DataType::Bfloat16,
        Layout::Tile,
        &hs(users, [32, hd]),
    );
    let sin = upload(
        d,
        &rng.vec(users * hd, 1.0),
        &[1, users, 1, hd],
        DataType::Bfloat16,
        Layout::Tile,
        &hs(users, [32, hd]),
    );
    let decode = RotaryEmbeddingLlamaArgs {
        is_decode_mode: true,
        ..Default::default()
    };
    let q_rot = ttnn::experimental::rotary_embedding_llama(&q, &cos, &sin, &trans_decode, &decode)
        .expect("rope decode");
    let concat = ttnn::experimental::nlp_concat_heads_decode(
        &q_rot,
        nh,
        &NlpConcatHeadsDecodeArgs::default(),
    )
    .expect("concat decode");
    let s = 40;
    let x = upload(
        d,
        &rng.vec(s * width, 1.0),
        &[1, 1, s, width],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let (pq, pk, pv) = ttnn::experimental::nlp_create_qkv_heads(
        &x,
        nh,
        &NlpCreateQkvHeadsArgs {
            num_kv_heads: Some(nkv),
            transpose_k_heads: false,
            ..Default::default()
        },
    )
    .expect("create heads");
    let pcos = upload(
        d,
        &rng.vec(s * hd, 1.0),
        &[1, 1, s, hd],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let psin = upload(
        d,
        &rng.vec(s * hd, 1.0),
        &[1, 1, s, hd],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let pq_rot = ttnn::experimental::rotary_embedding_llama(
        &pq,
        &pcos,
        &psin,
        &trans_prefill,
        &Default::default(),
    )
    .expect("rope prefill");
    let pconcat = ttnn::experimental::nlp_concat_heads(&pq_rot, None).expect("concat");
    vec![
        ("q", q),
        ("k", k),
        ("v", v),
        ("q rope decode", q_rot),
        ("concat decode", concat),
        ("prefill q", pq),
        ("prefill k", pk),
        ("prefill v", pv),
        ("q rope prefill", pq_rot),
        ("concat prefill", pconcat),
    ]
}

#[test]
fn heads_and_rope_match_host() {
    compare(heads_and_rope);
}

fn kv_and_attention(d: &Device) -> Outputs {
    let mut rng = Rng::new(6);
    let (b, nh, nkv, hd, bs) = (2, 4, 2, 64, 32);
    let cols = 3;
    let blocks = b * cols + 1;
    let table: Vec<i32> = vec![5, 0, 3, 1, 6, 2];
    let pt = upload_ints(d, &table, &[b, cols], DataType::Int32);
    let zeros = vec![0f32; blocks * nkv * bs * hd];
    let kc = upload(
        d,
        &zeros,
        &[blocks, nkv, bs, hd],
        DataType::Bfloat16,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let vc = upload(
        d,
        &zeros,
        &[blocks, nkv, bs, hd],
        DataType::Bfloat16,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    // Prefill of user 1 (40 positions), then a decode position for both users.
    let s = 40;
    let kp = upload(
        d,
        &rng.vec(nkv * s * hd, 1.0),
        &[1, nkv, s, hd],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let vp = upload(
        d,
        &rng.vec(nkv * s * hd, 1.0),
        &[1, nkv, s, hd],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let fill = PagedFillCacheArgs {
        batch_idx: 1,
        ..Default::default()
    };
    let r = ttnn::experimental::paged_fill_cache(&kc, &kp, &pt, &fill).expect("fill k");
    assert!(r.shares_buffer_with(&kc));
    ttnn::experimental::paged_fill_cache(&vc, &vp, &pt, &fill).expect("fill v");
    let pos = upload_ints(d, &[-1i32, 40], &[b], DataType::Int32);
    let kd = upload(
        d,
        &rng.vec(b * nkv * hd, 1.0),
        &[1, b, nkv, hd],
        DataType::Bfloat16,
        Layout::Tile,
        &hs(b, [32, hd]),
    );
    let vd = upload(
        d,
        &rng.vec(b * nkv * hd, 1.0),
        &[1, b, nkv, hd],
        DataType::Bfloat16,
        Layout::Tile,
        &hs(b, [32, hd]),
    );
    let upd = PagedUpdateCacheArgs {
        update_idxs_tensor: Some(&pos),
        page_table: Some(&pt),
        ..Default::default()
    };
    ttnn::experimental::paged_update_cache(&kc, &kd, &upd).expect("update k");
    ttnn::experimental::paged_update_cache(&vc, &vd, &upd).expect("update v");
    let q = upload(
        d,
        &rng.vec(b * nh * hd, 1.0),
        &[1, b, nh, hd],
        DataType::Bfloat16,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let paged = paged_scaled_dot_product_attention_decode(
        &q,
        &kc,
        &vc,
        &pt,
        &PagedSdpaDecodeArgs {
            cur_pos_tensor: Some(&pos),
            scale: Some(0.125),
            ..Default::default()
        },
    )
    .expect("paged sdpa decode");
    let qc = upload(
        d,
        &rng.vec(nh * 32 * hd, 1.0),
        &[1, nh, 32, hd],
        DataType::Bfloat16,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let pt1 = upload_ints(d, &table[cols..], &[1, cols], DataType::Int32);
    let chunked =
        chunked_scaled_dot_product_attention(&qc, &kc, &vc, &pt1, 0, &ChunkedSdpaArgs::default())
            .expect("chunked");
    // Unpaged: a contiguous cache with a fixed position list.
    let seq = 64;
    let ku = upload(
        d,
        &rng.vec(b * nkv * seq * hd, 1.0),
        &[b, nkv, seq, hd],
        DataType::Bfloat16,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let vu = upload(
        d,
        &rng.vec(b * nkv * seq * hd, 1.0),
        &[b, nkv, seq, hd],
        DataType::Bfloat16,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let unpaged = scaled_dot_product_attention_decode(
        &q,
        &ku,
        &vu,
        &SdpaDecodeArgs {
            cur_pos: vec![10, 63],
            ..Default::default()
        },
    )
    .expect("sdpa decode");
    let unpaged_t = scaled_dot_product_attention_decode(
        &q,
        &ku,
        &vu,
        &SdpaDecodeArgs {
            cur_pos_tensor: Some(&pos),
            sliding_window_size: Some(16),
            ..Default::default()
        },
    )
    .expect("sdpa decode tensor");
    let pq = upload(
        d,
        &rng.vec(nh * s * hd, 1.0),
        &[1, nh, s, hd],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let prefill = scaled_dot_product_attention(&pq, &kp, &vp, &SdpaArgs::default()).expect("sdpa");
    vec![
        ("k cache", kc),
        ("v cache", vc),
        ("paged sdpa decode", paged),
        ("chunked sdpa", chunked),
        ("sdpa decode list", unpaged),
        ("sdpa decode tensor window", unpaged_t),
        ("sdpa prefill", prefill),
    ]
}

#[test]
fn kv_cache_and_attention_match_host() {
    compare(kv_and_attention);
}

// ---------------------------------------------------------------------------------------------
// Token selection

fn token_selection(d: &Device) -> Outputs {
    let mut rng = Rng::new(7);
    let (b, v) = (4, 300);
    let logits = upload(
        d,
        &rng.vec(b * v, 4.0),
        &[1, 1, b, v],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let greedy = ttnn::argmax(
        &logits,
        &ArgmaxArgs {
            dim: Some(-1),
            ..Default::default()
        },
    )
    .expect("argmax");
    let (vals, idx) = ttnn::topk(&logits, 32, &TopkArgs::default()).expect("topk");
    let k = upload_ints(d, &[1u32, 5, 32, 0], &[b], DataType::Uint32);
    let p = upload(
        d,
        &[1.0, 0.9, 0.5, 1.0],
        &[b],
        DataType::Float32,
        Layout::RowMajor,
        &DRAM_MEMORY_CONFIG,
    );
    let t = upload(
        d,
        &[1.0, 2.0, 0.5, 1.0],
        &[b],
        DataType::Float32,
        Layout::RowMajor,
        &DRAM_MEMORY_CONFIG,
    );
    let sampled = ttnn::sampling(
        &vals,
        &idx,
        &k,
        &p,
        &t,
        &SamplingArgs {
            seed: Some(42),
            ..Default::default()
        },
    )
    .expect("sampling");
    let into = upload_ints(d, &[0u32; 4], &[1, b], DataType::Uint32);
    let written = ttnn::sampling(
        &vals,
        &idx,
        &k,
        &p,
        &t,
        &SamplingArgs {
            seed: Some(7),
            output_tensor: Some(&into),
            ..Default::default()
        },
    )
    .expect("sampling into");
    assert!(written.shares_buffer_with(&into));
    let pos = upload_ints(d, &[-1i32, 0, 7, 100], &[b], DataType::Int32);
    ttnn::plus_one(
        &pos,
        &PlusOneArgs {
            skip_negative_entries: true,
        },
    )
    .expect("plus_one");
    let all = upload_ints(d, &[1u32, 2], &[2], DataType::Uint32);
    ttnn::plus_one(&all, &PlusOneArgs::default()).expect("plus_one");
    vec![
        ("argmax", greedy),
        ("topk values", vals),
        ("topk indices", idx),
        ("sampling", sampled),
        ("sampling into", into),
        ("plus_one skip", pos),
        ("plus_one", all),
    ]
}

#[test]
fn token_selection_matches_host() {
    compare(token_selection);
}

// ---------------------------------------------------------------------------------------------
// bitlinear

/// The Tenstorrent backend lowers bitlinear to stock ops. The int8 codes and per-row scales of
/// the quantization are the host's bit for bit (each op is the f32 operation the host kernel
/// performs, in its order), and so is the integer accumulation (exact in f32); only the
/// dequantization multiplies by `1/s` where the host divides by `s`, so outputs agree within a
/// few f32 ulps: |Δ| <= 4 ulp of the output (relative 2^-21), checked per element.
#[test]
fn bitlinear_lowering_matches_host_within_ulps() {
    let _s = serial();
    {
        let (host, tt) = (host_device(), tt_device());
        let mut rng = Rng::new(8);
        let (m, k, n) = (5, 256, 96);
        let xv = rng.vec(m * k, 3.0);
        let wv = rng.ternary(n * k);
        let sv: Vec<f32> = (0..n).map(|i| 0.5 + i as f32 / 64.0).collect();
        let run = |d: &Device, mode: WeightScaleMode, per_channel: bool| -> Tensor {
            let x = upload(
                d,
                &xv,
                &[1, 1, m, k],
                DataType::Float32,
                Layout::Tile,
                &DRAM_MEMORY_CONFIG,
            );
            let w = upload(
                d,
                &wv,
                &[n, k],
                DataType::Ternary,
                Layout::Tile,
                &DRAM_MEMORY_CONFIG,
            );
            let scales = upload(
                d,
                &sv,
                &[n],
                DataType::Float32,
                Layout::RowMajor,
                &DRAM_MEMORY_CONFIG,
            );
            let scales_row = upload(
                d,
                &sv,
                &[1, n],
                DataType::Float32,
                Layout::Tile,
                &DRAM_MEMORY_CONFIG,
            );
            let args = BitLinearArgs {
                weight_scale: 0.37,
                weight_scales: per_channel.then_some(if mode == WeightScaleMode::Divide {
                    &scales
                } else {
                    &scales_row
                }),
                scale_mode: mode,
                ..Default::default()
            };
            ttnn::experimental::bitlinear(&x, &w, &args).expect("bitlinear")
        };
        for mode in [WeightScaleMode::Multiply, WeightScaleMode::Divide] {
            for per_channel in [false, true] {
                let (h, t) = (run(&host, mode, per_channel), run(&tt, mode, per_channel));
                assert_eq!(h.shape(), t.shape());
                assert_eq!(h.dtype(), t.dtype());
                assert_eq!(h.memory_config(), t.memory_config());
                let (hv, tv) = (
                    h.to_vec::<f32>().expect("host"),
                    t.to_vec::<f32>().expect("tt"),
                );
                for (i, (&a, &b)) in hv.iter().zip(&tv).enumerate() {
                    let tol = a.abs() * 2f32.powi(-21) + f32::MIN_POSITIVE;
                    assert!(
                        (a - b).abs() <= tol,
                        "{mode:?} per_channel={per_channel}: element {i}: host {a}, tenstorrent {b}"
                    );
                }
            }
        }
        // The quantization alone is bit-exact.
        let x = |d: &Device| {
            upload(
                d,
                &xv,
                &[1, 1, m, k],
                DataType::Float32,
                Layout::Tile,
                &DRAM_MEMORY_CONFIG,
            )
        };
        let (xh, xt) = (x(&host), x(&tt));
        let (qh, sh) =
            ttnn::experimental::quantize_activations_int8(&xh, &QuantizeActivationsArgs::default())
                .expect("host quant");
        let (qt, st) =
            ttnn::experimental::quantize_activations_int8(&xt, &QuantizeActivationsArgs::default())
                .expect("tt quant");
        assert_same("q", &qh, &qt);
        assert_same("s", &sh, &st);
        // Skip: on the Tenstorrent backend, y = (x . W^T) * scale with the raw activations (the
        // f32 sums of ±x are exact to within the host matmul's own rounding: compare with a
        // host linear of the same operands, bit for bit); refused by the host backend.
        let skip = BitLinearArgs {
            weight_scale: 0.5,
            activation_quant: ActivationQuant::Skip,
            ..Default::default()
        };
        let wt = upload(
            &tt,
            &wv,
            &[n, k],
            DataType::Ternary,
            Layout::Tile,
            &DRAM_MEMORY_CONFIG,
        );
        let got = ttnn::experimental::bitlinear(&xt, &wt, &skip).expect("skip on tt");
        let wb = upload(
            &host,
            &wv,
            &[n, k],
            DataType::Bfloat4B,
            Layout::Tile,
            &DRAM_MEMORY_CONFIG,
        );
        let lin = ttnn::linear(
            &xh,
            &wb,
            &LinearArgs {
                transpose_b: true,
                ..Default::default()
            },
        )
        .expect("host linear");
        let want = ttnn::multiply_scalar(&lin, 0.5, &Default::default()).expect("scale");
        assert_eq!(bits(&got), bits(&want));
        let wh = upload(
            &host,
            &wv,
            &[n, k],
            DataType::Ternary,
            Layout::Tile,
            &DRAM_MEMORY_CONFIG,
        );
        let e = ttnn::experimental::bitlinear(&xh, &wh, &skip).unwrap_err();
        assert!(
            matches!(&e, Error::NotSupported { backend: "host", what, .. } if what.contains("Skip")),
            "{e}"
        );
    }
    assert_no_leaks();
}

// ---------------------------------------------------------------------------------------------
// Traces

/// A decode-like sequence captured once on each backend and replayed with fresh inputs written
/// by `copy_host_to_device`: after every replay the outputs equal the host's bit for bit.
#[test]
fn traces_replay_like_host() {
    let _s = serial();
    {
        let (host, tt) = (host_device(), tt_device());
        let mut rng = Rng::new(9);
        let (b, v, h) = (3, 64, 96);
        let table = rng.vec(v * h, 1.0);
        let wv = rng.vec(v * h, 1.0);
        struct Run {
            dev: Device,
            ids: Tensor,
            pos: Tensor,
            logits: Tensor,
            next: Tensor,
            trace: ttnn::Trace,
        }
        let setup = |dev: &Device| -> Run {
            let emb = upload(
                dev,
                &table,
                &[v, h],
                DataType::Bfloat16,
                Layout::RowMajor,
                &DRAM_MEMORY_CONFIG,
            );
            let w = upload(
                dev,
                &wv,
                &[v, h],
                DataType::Bfloat16,
                Layout::Tile,
                &DRAM_MEMORY_CONFIG,
            );
            let ids = upload_ints(dev, &[0u32; 3], &[1, b], DataType::Uint32);
            let pos = upload_ints(dev, &[0i32, -1, 5], &[b], DataType::Int32);
            let next = upload_ints(dev, &[0u32; 3], &[1, b], DataType::Uint32);
            let id = ttnn::begin_trace_capture(dev, 0).expect("begin");
            // Writes and reads from the host are refused while capturing, on both backends.
            let e = Tensor::zeros([1], DataType::Float32, Layout::RowMajor)
                .expect("host")
                .to_device(dev, &DRAM_MEMORY_CONFIG)
                .unwrap_err();
            assert!(matches!(e, Error::TraceCaptureActive { .. }), "{e}");
            assert!(matches!(
                ids.to_vec::<u32>().unwrap_err(),
                Error::TraceCaptureActive { .. }
            ));
            assert!(matches!(
                ttnn::begin_trace_capture(dev, 0).unwrap_err(),
                Error::TraceCaptureActive { .. }
            ));
            let x = ttnn::embedding(
                &ids,
                &emb,
                &EmbeddingArgs {
                    layout: Some(Layout::Tile),
                    ..Default::default()
                },
            )
            .expect("embedding");
            let logits = ttnn::linear(
                &x,
                &w,
                &LinearArgs {
                    transpose_b: true,
                    ..Default::default()
                },
            )
            .expect("linear");
            let am = ttnn::argmax(
                &logits,
                &ArgmaxArgs {
                    dim: Some(-1),
                    ..Default::default()
                },
            )
            .expect("argmax");
            ttnn::copy(&ttnn::reshape(&am, [1, b]).expect("reshape"), &next).expect("copy");
            ttnn::plus_one(
                &pos,
                &PlusOneArgs {
                    skip_negative_entries: true,
                },
            )
            .expect("plus_one");
            let e = ttnn::end_trace_capture(dev, ttnn::TraceId(id.0 + 1000), 0).unwrap_err();
            assert!(matches!(e, Error::TraceState { .. }), "{e}");
            let trace = ttnn::end_trace_capture(dev, id, 0).expect("end");
            assert!(trace.num_ops() > 0);
            assert_eq!(dev.memory_report().live_traces, 1);
            Run {
                dev: dev.clone(),
                ids,
                pos,
                logits,
                next,
                trace,
            }
        };
        let mut runs = [setup(&host), setup(&tt)];
        for step in 0..3u32 {
            let feed: Vec<u32> = (0..b as u32)
                .map(|i| (i * 17 + step * 5) % v as u32)
                .collect();
            for r in runs.iter_mut() {
                let t = Tensor::from_slice(&feed, [1, b], DataType::Uint32, Layout::RowMajor)
                    .expect("host");
                ttnn::copy_host_to_device(&t, &mut r.ids).expect("refresh");
                ttnn::execute_trace(&r.dev, &r.trace, 0, true).expect("replay");
            }
            let [h, t] = &runs;
            assert_same("logits", &h.logits, &t.logits);
            assert_same("next", &h.next, &t.next);
            assert_same("pos", &h.pos, &t.pos);
        }
        // A trace replays only on its own device.
        let [h, t] = &runs;
        let e = ttnn::execute_trace(&host, &t.trace, 0, true).unwrap_err();
        assert!(matches!(e, Error::TraceState { .. }), "{e}");
        let other = tt_device();
        let e = ttnn::execute_trace(&other, &h.trace, 0, true).unwrap_err();
        assert!(matches!(e, Error::TraceState { .. }), "{e}");
        drop(other);
        // Dropping the traces and their tensors releases them.
        let before = counters().live();
        drop(runs);
        assert!(counters().live() < before);
        assert_eq!(tt.memory_report().live_traces, 0);
        // Trace ids come from TT-NN (the provider's process-wide counter): new ids are new.
        let a = ttnn::begin_trace_capture(&tt, 0).expect("begin");
        let trace_a = ttnn::end_trace_capture(&tt, a, 0).expect("end");
        let b_id = ttnn::begin_trace_capture(&tt, 0).expect("begin");
        let trace_b = ttnn::end_trace_capture(&tt, b_id, 0).expect("end");
        assert_ne!(trace_a.id(), trace_b.id());
        assert_eq!(tt.memory_report().live_traces, 2);
        ttnn::release_trace(trace_a);
        ttnn::release_trace(trace_b);
        assert_eq!(tt.memory_report().live_traces, 0);
    }
    assert_no_leaks();
}

/// A capture's memory is its working set on the Tenstorrent backend too: intermediates dropped
/// during capture are freed in the library (as a model deallocates them inside a traced step on
/// TT-NN) instead of being held for the trace, so after 20 chained ops only the last output
/// remains allocated, as on the host backend; the trace still replays.
#[test]
fn intermediates_dropped_during_capture_free_their_memory() {
    let _s = serial();
    {
        let (host, tt) = (host_device(), tt_device());
        let run = |dev: &Device| {
            let x = upload(
                dev,
                &vec![0.5; 64 * 64],
                &[64, 64],
                DataType::Float32,
                Layout::Tile,
                &L1_MEMORY_CONFIG,
            );
            let l1 = BinaryArgs {
                memory_config: Some(L1_MEMORY_CONFIG),
                ..Default::default()
            };
            let base = dev.memory_report().l1_max_core.in_use;
            let id = ttnn::begin_trace_capture(dev, 0).expect("begin");
            let mut y = x.clone();
            for _ in 0..20 {
                y = ttnn::add(&y, &x, &l1).expect("add");
            }
            let trace = ttnn::end_trace_capture(dev, id, 0).expect("end");
            let held = dev.memory_report().l1_max_core.in_use - base;
            ttnn::execute_trace(dev, &trace, 0, true).expect("replay");
            assert!(y.to_vec::<f32>().expect("read").iter().all(|&v| v == 10.5));
            drop(trace);
            held
        };
        // One [64, 64] f32 tile tensor takes one 4 KiB tile page per L1 bank (allocations are
        // lock-step across banks): only the last output is held (20 pages if the trace kept
        // every intermediate).
        assert_eq!(run(&host), 4096, "host");
        assert_eq!(run(&tt), 4096, "tenstorrent");
    }
    assert_no_leaks();
}

// ---------------------------------------------------------------------------------------------
// Errors, lifetimes, device queries

/// A failure inside the provider arrives as `Error::Backend` with the provider's message
/// (which names the C entry point and the `ttnn` op that failed).
#[test]
fn provider_errors_carry_their_message() {
    let _s = serial();
    {
        // Device 1 does not exist in the provider.
        let e = Device::open(DeviceSpec {
            backend: BackendKind::Tenstorrent,
            ttnn_lib: Some(common::provider_path()),
            device_id: 1,
            ..Default::default()
        })
        .unwrap_err();
        match &e {
            Error::Backend {
                op,
                backend,
                message,
            } => {
                assert_eq!(*op, "Device::open");
                assert_eq!(*backend, "tenstorrent");
                assert!(message.contains("ttnn_c_device_open"), "{message}");
                assert!(message.contains("no device 1"), "{message}");
            }
            other => panic!("expected a backend error, got {other}"),
        }
        // The host rule of reshape_padded is the provider's (the Tenstorrent backend passes the
        // padded shape to TT-NN): its error comes back through the FFI.
        let tt = tt_device();
        let x = upload(
            &tt,
            &[1.0; 64],
            &[2, 32],
            DataType::Float32,
            Layout::Tile,
            &DRAM_MEMORY_CONFIG,
        );
        let e = ttnn::reshape_padded(&x, [2, 32], [2, 64]).unwrap_err();
        match &e {
            Error::Backend { op, message, .. } => {
                assert_eq!(*op, "ttnn::reshape");
                assert!(message.contains("ttnn_c_reshape"), "{message}");
                assert!(message.contains("padding"), "{message}");
            }
            other => panic!("expected a backend error, got {other}"),
        }
        // An error leaves the device usable.
        let y = ttnn::add(&x, &x, &Default::default()).expect("add after an error");
        assert_eq!(y.to_vec::<f32>().expect("read"), vec![2.0; 64]);
        // Validation shared with the host backend fails before any FFI call.
        let e = ttnn::add(
            &x,
            &upload(
                &tt,
                &[1.0; 96],
                &[3, 32],
                DataType::Float32,
                Layout::Tile,
                &DRAM_MEMORY_CONFIG,
            ),
            &Default::default(),
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                Error::ShapeMismatch {
                    op: "ttnn::add",
                    ..
                }
            ),
            "{e}"
        );
        // The host-backend sampling extensions have no TT-NN counterpart.
        let vals = upload(
            &tt,
            &[0.5; 32 * 2],
            &[1, 1, 2, 32],
            DataType::Float32,
            Layout::Tile,
            &DRAM_MEMORY_CONFIG,
        );
        let idx = upload_ints(
            &tt,
            &(0..64).collect::<Vec<u32>>(),
            &[1, 1, 2, 32],
            DataType::Uint32,
        );
        let k = upload_ints(&tt, &[1u32, 1], &[2], DataType::Uint32);
        let p = upload(
            &tt,
            &[1.0, 1.0],
            &[2],
            DataType::Float32,
            Layout::RowMajor,
            &DRAM_MEMORY_CONFIG,
        );
        let seeds = upload_ints(&tt, &[1u32, 2], &[2], DataType::Uint32);
        for (what, args) in [
            (
                "user_seeds",
                SamplingArgs {
                    user_seeds: Some(&seeds),
                    ..Default::default()
                },
            ),
            (
                "user_offsets",
                SamplingArgs {
                    user_offsets: Some(&k),
                    ..Default::default()
                },
            ),
        ] {
            let e = ttnn::sampling(&vals, &idx, &k, &p, &p, &args).unwrap_err();
            match &e {
                Error::NotSupported {
                    op,
                    what: w,
                    backend,
                } => {
                    assert_eq!(*op, "ttnn::sampling");
                    assert_eq!(*backend, "tenstorrent");
                    assert!(w.contains(what), "{w}");
                }
                other => panic!("expected NotSupported, got {other}"),
            }
        }
        // Tensors of two devices do not mix.
        let host = host_device();
        let hx = upload(
            &host,
            &[1.0; 64],
            &[2, 32],
            DataType::Float32,
            Layout::Tile,
            &DRAM_MEMORY_CONFIG,
        );
        let e = ttnn::add(&x, &hx, &Default::default()).unwrap_err();
        assert!(matches!(e, Error::WrongStorage { .. }), "{e}");
    }
    assert_no_leaks();
}

/// Tensors keep their device alive: dropping the `Device` first closes nothing until the last
/// tensor is freed. Library facts and the compute grid come from the provider.
#[test]
fn handles_outlive_the_device_value_and_free_once() {
    let _s = serial();
    {
        let tt = tt_device();
        let (path, implementation) = tt.ttnn_library().expect("a Tenstorrent device");
        assert!(path.ends_with("libttnn_c_host.so"), "{}", path.display());
        assert!(implementation.contains("ttnn-c-host"), "{implementation}");
        assert_eq!(tt.compute_with_storage_grid_size(), CoreCoord::new(8, 8));
        assert_eq!(tt.compute_dtype(), DataType::Bfloat16);
        let x = upload(
            &tt,
            &[3.0; 1024],
            &[32, 32],
            DataType::Float32,
            Layout::Tile,
            &DRAM_MEMORY_CONFIG,
        );
        let clone = x.clone();
        drop(tt);
        // Device handle + one tensor handle, shared by both clones.
        assert_eq!(counters().live(), 2);
        drop(x);
        assert_eq!(counters().live(), 2);
        let y = ttnn::multiply_scalar(&clone, 2.0, &Default::default())
            .expect("use after the Device value is gone");
        assert_eq!(y.to_vec::<f32>().expect("read"), vec![6.0; 1024]);
        drop((clone, y));
    }
    assert_no_leaks();
}

/// The memory report comes from the provider's allocator statistics (per bank, scaled back to
/// totals) and so matches the host backend's accounting for the same buffers.
#[test]
fn memory_report_from_allocator_statistics() {
    let _s = serial();
    {
        let (host, tt) = (host_device(), tt_device());
        let base_t = tt.try_memory_report().expect("report");
        let base_h = host.memory_report();
        assert_eq!(base_t.dram.capacity, base_h.dram.capacity);
        assert_eq!(base_t.l1_max_core.capacity, base_h.l1_max_core.capacity);
        let mk = |d: &Device, mc: &MemoryConfig| {
            upload(
                d,
                &vec![1.0; 12 * 1024],
                &[12 * 32, 32],
                DataType::Float32,
                Layout::Tile,
                mc,
            )
        };
        let (th, tt_dram) = (mk(&host, &DRAM_MEMORY_CONFIG), mk(&tt, &DRAM_MEMORY_CONFIG));
        let (rt, rh) = (tt.memory_report(), host.memory_report());
        assert_eq!(
            rt.dram.in_use - base_t.dram.in_use,
            rh.dram.in_use - base_h.dram.in_use
        );
        assert!(rt.dram.peak >= rt.dram.in_use);
        let sharded = hs(12, [32, 32]);
        let (sh, st) = (mk(&host, &sharded), mk(&tt, &sharded));
        assert_eq!(
            tt.memory_report().l1_max_core.in_use,
            host.memory_report().l1_max_core.in_use
        );
        drop((th, tt_dram, sh, st));
        assert_eq!(tt.memory_report().dram.in_use, base_t.dram.in_use);
        tt.reset_peak_memory();
        assert_eq!(tt.memory_report().dram.peak, base_t.dram.in_use);
    }
    assert_no_leaks();
}

/// Handles may be used from another thread (`Send` + `Sync` through the device's dispatch
/// lock); the ops run there and free there.
#[test]
fn tensors_cross_threads() {
    let _s = serial();
    {
        let tt = tt_device();
        let x = upload(
            &tt,
            &[1.5; 1024],
            &[32, 32],
            DataType::Float32,
            Layout::Tile,
            &DRAM_MEMORY_CONFIG,
        );
        let results: Vec<Vec<f32>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|i| {
                    let x = &x;
                    s.spawn(move || {
                        let y = ttnn::add_scalar(x, i as f32, &Default::default()).expect("add");
                        y.to_vec::<f32>().expect("read")
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("thread")).collect()
        });
        for (i, r) in results.iter().enumerate() {
            assert_eq!(r, &vec![1.5 + i as f32; 1024]);
        }
    }
    assert_no_leaks();
}
