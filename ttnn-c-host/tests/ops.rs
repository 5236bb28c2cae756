//! The op entry points against the same `ttnn` ops called directly, bit for bit: elementwise,
//! reductions, matmul/linear, rms_norm, embedding, typecast and data movement; and the errors
//! they report.

mod common;

use std::ptr;

use common::{CTensor, Devices, Dual, Rng, c_mc, session, u32s};
use ttnn::experimental::{
    NlpConcatHeadsDecodeArgs, NlpCreateQkvHeadsArgs, NlpCreateQkvHeadsDecodeArgs,
};
use ttnn::{
    BinaryArgs, BufferType, CoreCoord, CoreRange, CoreRangeSet, DRAM_MEMORY_CONFIG, DataType,
    EmbeddingArgs, EmbeddingsType, L1_HEIGHT_SHARDED_MEMORY_CONFIG, L1_MEMORY_CONFIG, Layout,
    LinearArgs, MatmulArgs, MatmulProgramConfig, MemoryConfig, ReduceArgs, RmsNormArgs,
    ShardOrientation, ShardSpec, SliceArgs, TensorMemoryLayout, UnaryArgs, UnaryOp,
};
use ttnn_sys as sys;
use ttnn_sys::ttnn_c_tensor;

const INVALID: i32 = sys::TTNN_C_STATUS_INVALID_ARGUMENT as i32;
const TTNN_ERROR: i32 = sys::TTNN_C_STATUS_TTNN_ERROR as i32;

const UNARY: [(u32, UnaryOp); 8] = [
    (sys::TTNN_C_UNARY_RELU, UnaryOp::Relu),
    (sys::TTNN_C_UNARY_SQUARE, UnaryOp::Square),
    (sys::TTNN_C_UNARY_NEG, UnaryOp::Neg),
    (sys::TTNN_C_UNARY_SILU, UnaryOp::Silu),
    (sys::TTNN_C_UNARY_EXP, UnaryOp::Exp),
    (sys::TTNN_C_UNARY_ABS, UnaryOp::Abs),
    (sys::TTNN_C_UNARY_RECIPROCAL, UnaryOp::Reciprocal),
    (sys::TTNN_C_UNARY_ROUND, UnaryOp::Round),
];

fn unary_direct(op: UnaryOp, t: &ttnn::Tensor) -> ttnn::Tensor {
    let a = UnaryArgs::default();
    match op {
        UnaryOp::Relu => ttnn::relu(t, &a),
        UnaryOp::Square => ttnn::square(t, &a),
        UnaryOp::Neg => ttnn::neg(t, &a),
        UnaryOp::Silu => ttnn::silu(t, &a),
        UnaryOp::Exp => ttnn::exp(t, &a),
        UnaryOp::Abs => ttnn::abs(t, &a),
        UnaryOp::Reciprocal => ttnn::reciprocal(t, &a),
        UnaryOp::Round => ttnn::round(t, &a),
    }
    .expect("direct unary")
}

fn width_sharded(cores: usize, shard: [usize; 2]) -> MemoryConfig {
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

#[test]
fn elementwise_and_reductions_match_ttnn() {
    let s = session();
    let p = s.p;
    let devs = Devices::open();
    let mut rng = Rng::new(11);
    let a = Dual::upload(
        &devs,
        &rng.vec(2 * 33 * 40, 3.0),
        &[2, 33, 40],
        DataType::Float32,
        Layout::Tile,
        None,
    );
    let b = Dual::upload(
        &devs,
        &rng.vec(40, 3.0),
        &[1, 1, 40],
        DataType::Float32,
        Layout::Tile,
        None,
    );
    let bf16 = sys::TTNN_C_DTYPE_BFLOAT16;
    let acts = [sys::TTNN_C_UNARY_RELU, sys::TTNN_C_UNARY_SQUARE];
    let l1 = Some(c_mc(&L1_MEMORY_CONFIG));
    for (cop, name) in [
        (sys::TTNN_C_BINARY_ADD, "add"),
        (sys::TTNN_C_BINARY_SUBTRACT, "subtract"),
        (sys::TTNN_C_BINARY_MULTIPLY, "multiply"),
    ] {
        let args = BinaryArgs {
            dtype: Some(DataType::Bfloat16),
            memory_config: Some(L1_MEMORY_CONFIG),
            input_tensor_a_activations: vec![UnaryOp::Relu, UnaryOp::Square],
        };
        let c = CTensor::make(|o| {
            // SAFETY: live handles; `bf16`, `l1` and `acts` outlive the call.
            unsafe {
                (p.c.ttnn_c_binary)(
                    cop,
                    a.c.ptr(),
                    b.c.ptr(),
                    &bf16,
                    common::mc_ptr(&l1),
                    acts.as_ptr(),
                    2,
                    o,
                )
            }
        });
        let r = match cop {
            sys::TTNN_C_BINARY_ADD => ttnn::add(&a.r, &b.r, &args),
            sys::TTNN_C_BINARY_SUBTRACT => ttnn::subtract(&a.r, &b.r, &args),
            _ => ttnn::multiply(&a.r, &b.r, &args),
        }
        .expect("direct");
        Dual::of(c, r).assert_same(name);

        let c = CTensor::make(|o| {
            // SAFETY: live handle; NULL optionals; no activations.
            unsafe {
                (p.c.ttnn_c_binary_scalar)(
                    cop,
                    a.c.ptr(),
                    0.75,
                    ptr::null(),
                    ptr::null(),
                    ptr::null(),
                    0,
                    o,
                )
            }
        });
        let args = BinaryArgs::default();
        let r = match cop {
            sys::TTNN_C_BINARY_ADD => ttnn::add_scalar(&a.r, 0.75, &args),
            sys::TTNN_C_BINARY_SUBTRACT => ttnn::subtract_scalar(&a.r, 0.75, &args),
            _ => ttnn::multiply_scalar(&a.r, 0.75, &args),
        }
        .expect("direct");
        Dual::of(c, r).assert_same(&format!("{name} scalar"));
    }
    for (cop, op) in UNARY {
        let c = CTensor::make(|o| {
            // SAFETY: live handle, NULL memory config.
            unsafe { (p.c.ttnn_c_unary)(cop, a.c.ptr(), ptr::null(), o) }
        });
        Dual::of(c, unary_direct(op, &a.r)).assert_same(&format!("{op:?}"));
    }
    let chain = [
        sys::TTNN_C_UNARY_NEG,
        sys::TTNN_C_UNARY_EXP,
        sys::TTNN_C_UNARY_ROUND,
    ];
    let c = CTensor::make(|o| {
        // SAFETY: live handle, 3 ops.
        unsafe { (p.c.ttnn_c_unary_chain)(a.c.ptr(), chain.as_ptr(), 3, ptr::null(), o) }
    });
    let r = ttnn::unary_chain(
        &a.r,
        &[UnaryOp::Neg, UnaryOp::Exp, UnaryOp::Round],
        &UnaryArgs::default(),
    )
    .expect("direct");
    Dual::of(c, r).assert_same("unary_chain");
    let c = CTensor::make(|o| {
        // SAFETY: live handle.
        unsafe { (p.c.ttnn_c_clamp)(a.c.ptr(), -0.5, 1.25, ptr::null(), o) }
    });
    let r = ttnn::clamp(&a.r, -0.5, 1.25, &UnaryArgs::default()).expect("direct");
    Dual::of(c, r).assert_same("clamp");
    for (dim, keepdim) in [(-1, true), (-1, false), (0, false), (1, true)] {
        let c = CTensor::make(|o| {
            // SAFETY: live handle.
            unsafe { (p.c.ttnn_c_max)(a.c.ptr(), dim, u8::from(keepdim), ptr::null(), o) }
        });
        let r = ttnn::max(
            &a.r,
            dim,
            &ReduceArgs {
                keepdim,
                ..Default::default()
            },
        )
        .expect("direct");
        Dual::of(c, r).assert_same(&format!("max dim {dim} keepdim {keepdim}"));
    }
    for dt in [DataType::Bfloat16, DataType::Bfloat8B, DataType::Bfloat4B] {
        let c = CTensor::make(|o| {
            // SAFETY: live handle.
            unsafe { (p.c.ttnn_c_typecast)(a.c.ptr(), common::c_dtype(dt), ptr::null(), o) }
        });
        let r = ttnn::typecast(&a.r, dt, None).expect("direct");
        Dual::of(c, r).assert_same(&format!("typecast {dt:?}"));
    }
    drop((a, b, devs));
    s.finish();
}

#[test]
fn matmul_linear_norm_and_embedding_match_ttnn() {
    let s = session();
    let p = s.p;
    let devs = Devices::open();
    let mut rng = Rng::new(12);
    let x = Dual::upload(
        &devs,
        &rng.vec(32 * 64, 1.0),
        &[1, 1, 32, 64],
        DataType::Float32,
        Layout::Tile,
        None,
    );
    let w = Dual::upload(
        &devs,
        &rng.vec(64 * 128, 0.5),
        &[64, 128],
        DataType::Bfloat8B,
        Layout::Tile,
        None,
    );
    let wt = Dual::upload(
        &devs,
        &rng.vec(128 * 64, 0.5),
        &[128, 64],
        DataType::Bfloat16,
        Layout::Tile,
        None,
    );
    let bias = Dual::upload(
        &devs,
        &rng.vec(128, 0.5),
        &[1, 128],
        DataType::Float32,
        Layout::Tile,
        None,
    );

    // linear with a 1-D program config, a compute kernel config and an activation.
    let pc = sys::ttnn_c_matmul_program_config {
        kind: sys::TTNN_C_MATMUL_PROGRAM_CONFIG_MULTI_CORE_REUSE_MULTICAST_1D,
        compute_with_storage_grid_size: sys::ttnn_c_core_coord { x: 4, y: 1 },
        in0_block_w: 2,
        out_subblock_h: 1,
        out_subblock_w: 1,
        per_core_m: 1,
        per_core_n: 1,
        transpose_mcast: 0,
        fuse_batch: 1,
        mcast_in0: 1,
        untilize_out: 0,
        fused_activation: sys::TTNN_C_UNARY_NONE,
    };
    let ckc = sys::ttnn_c_compute_kernel_config {
        math_fidelity: sys::TTNN_C_MATH_FIDELITY_HIFI2,
        math_approx_mode: 1,
        fp32_dest_acc_en: 1,
        packer_l1_acc: 1,
        dst_full_sync_en: 0,
    };
    let grid = sys::ttnn_c_core_coord { x: 8, y: 8 };
    let c = CTensor::make(|o| {
        // SAFETY: live handles; the structs outlive the call.
        unsafe {
            (p.c.ttnn_c_linear)(
                x.c.ptr(),
                w.c.ptr(),
                bias.c.ptr(),
                0,
                0,
                ptr::null(),
                ptr::null(),
                &pc,
                sys::TTNN_C_UNARY_SILU,
                &ckc,
                &grid,
                o,
            )
        }
    });
    let direct_pc: MatmulProgramConfig =
        ttnn::ops::matmul::MatmulMultiCoreReuseMultiCast1DProgramConfig {
            compute_with_storage_grid_size: CoreCoord::new(4, 1),
            in0_block_w: 2,
            out_subblock_h: 1,
            out_subblock_w: 1,
            per_core_m: 1,
            per_core_n: 1,
            fuse_batch: true,
            fused_activation: None,
            mcast_in0: true,
            untilize_out: false,
        }
        .into();
    let r = ttnn::linear(
        &x.r,
        &w.r,
        &LinearArgs {
            bias: Some(&bias.r),
            program_config: Some(direct_pc),
            activation: Some(UnaryOp::Silu),
            compute_kernel_config: Some(ttnn::ComputeKernelConfig::hifi2()),
            core_grid: Some(CoreCoord::new(8, 8)),
            ..Default::default()
        },
    )
    .expect("direct linear");
    Dual::of(c, r).assert_same("linear");

    // matmul with transpose_b, a dtype and an L1 output.
    let bf16 = sys::TTNN_C_DTYPE_BFLOAT16;
    let l1 = c_mc(&L1_MEMORY_CONFIG);
    let c = CTensor::make(|o| {
        // SAFETY: live handles; the optionals outlive the call.
        unsafe {
            (p.c.ttnn_c_matmul)(
                x.c.ptr(),
                wt.c.ptr(),
                0,
                1,
                &l1,
                &bf16,
                ptr::null(),
                sys::TTNN_C_UNARY_NONE,
                ptr::null(),
                ptr::null(),
                o,
            )
        }
    });
    let r = ttnn::matmul(
        &x.r,
        &wt.r,
        &MatmulArgs {
            transpose_b: true,
            memory_config: Some(L1_MEMORY_CONFIG),
            dtype: Some(DataType::Bfloat16),
            ..Default::default()
        },
    )
    .expect("direct matmul");
    Dual::of(c, r).assert_same("matmul");

    // rms_norm with a row-major gamma ([1, 1, dim/32, 32]) and a residual.
    let gamma = Dual::upload(
        &devs,
        &rng.vec(64, 1.0),
        &[1, 1, 2, 32],
        DataType::Float32,
        Layout::RowMajor,
        None,
    );
    let res = Dual::upload(
        &devs,
        &rng.vec(32 * 64, 1.0),
        &[1, 1, 32, 64],
        DataType::Float32,
        Layout::Tile,
        None,
    );
    let lpc = sys::ttnn_c_layernorm_program_config {
        kind: sys::TTNN_C_LAYERNORM_PROGRAM_CONFIG_DEFAULT,
        ..Default::default()
    };
    let c = CTensor::make(|o| {
        // SAFETY: live handles; the structs outlive the call.
        unsafe {
            (p.c.ttnn_c_rms_norm)(
                x.c.ptr(),
                1e-5,
                gamma.c.ptr(),
                ptr::null(),
                res.c.ptr(),
                ptr::null(),
                &lpc,
                &ckc,
                o,
            )
        }
    });
    let r = ttnn::rms_norm(
        &x.r,
        &RmsNormArgs {
            epsilon: 1e-5,
            weight: Some(&gamma.r),
            residual_input_tensor: Some(&res.r),
            program_config: Some(ttnn::LayerNormProgramConfig::Default { use_welford: false }),
            ..Default::default()
        },
    )
    .expect("direct rms_norm");
    Dual::of(c, r).assert_same("rms_norm");

    // embedding: padded type with a pad id, tile output.
    let ids = Dual::upload(
        &devs,
        &[3.0, 0.0, 15.0, 7.0],
        &[1, 4],
        DataType::Uint32,
        Layout::RowMajor,
        None,
    );
    let table = Dual::upload(
        &devs,
        &rng.vec(16 * 64, 1.0),
        &[16, 64],
        DataType::Bfloat16,
        Layout::RowMajor,
        None,
    );
    let (pad, tile) = (7u32, sys::TTNN_C_LAYOUT_TILE);
    let c = CTensor::make(|o| {
        // SAFETY: live handles; the optionals outlive the call.
        unsafe {
            (p.c.ttnn_c_embedding)(
                ids.c.ptr(),
                table.c.ptr(),
                &pad,
                &tile,
                sys::TTNN_C_EMBEDDINGS_TYPE_PADDED,
                ptr::null(),
                ptr::null(),
                o,
            )
        }
    });
    let r = ttnn::embedding(
        &ids.r,
        &table.r,
        &EmbeddingArgs {
            padding_idx: Some(7),
            layout: Some(Layout::Tile),
            embeddings_type: EmbeddingsType::Padded,
            ..Default::default()
        },
    )
    .expect("direct embedding");
    Dual::of(c, r).assert_same("embedding");
    drop((x, w, wt, bias, gamma, res, ids, table, devs));
    s.finish();
}

#[test]
fn data_movement_and_head_ops_match_ttnn() {
    let s = session();
    let p = s.p;
    let devs = Devices::open();
    let mut rng = Rng::new(13);
    let x = Dual::upload(
        &devs,
        &rng.vec(64 * 256, 1.0),
        &[1, 1, 64, 256],
        DataType::Float32,
        Layout::Tile,
        None,
    );

    // to_memory_config: width-sharded with a dtype change.
    let ws = width_sharded(8, [64, 32]);
    let cws = c_mc(&ws);
    let bf16 = sys::TTNN_C_DTYPE_BFLOAT16;
    let c = CTensor::make(|o| {
        // SAFETY: live handle; the optionals outlive the call.
        unsafe { (p.c.ttnn_c_to_memory_config)(x.c.ptr(), &cws, &bf16, o) }
    });
    let r = ttnn::to_memory_config(&x.r, &ws, Some(DataType::Bfloat16)).expect("direct");
    Dual::of(c, r).assert_same("to_memory_config");

    // slice with no steps and all-1 steps; other steps are UNSUPPORTED.
    let (starts, ends) = (u32s(&[0, 0, 5, 32]), u32s(&[1, 1, 37, 160]));
    let ones = [1u32; 4];
    for steps in [ptr::null(), ones.as_ptr()] {
        let c = CTensor::make(|o| {
            // SAFETY: live handle; 4-entry arrays.
            unsafe {
                (p.c.ttnn_c_slice)(
                    x.c.ptr(),
                    starts.as_ptr(),
                    ends.as_ptr(),
                    steps,
                    4,
                    ptr::null(),
                    o,
                )
            }
        });
        let r = ttnn::slice(
            &x.r,
            &[0, 0, 5, 32],
            &[1, 1, 37, 160],
            &SliceArgs::default(),
        )
        .expect("direct");
        Dual::of(c, r).assert_same("slice");
    }
    let twos = [1u32, 1, 2, 1];
    let e = CTensor::try_make(|o| {
        // SAFETY: as above.
        unsafe {
            (p.c.ttnn_c_slice)(
                x.c.ptr(),
                starts.as_ptr(),
                ends.as_ptr(),
                twos.as_ptr(),
                4,
                ptr::null(),
                o,
            )
        }
    })
    .expect_err("steps");
    assert_eq!(e.0, sys::TTNN_C_STATUS_UNSUPPORTED as i32);
    assert_eq!(
        e.1,
        "ttnn_c_slice: step 2: the host provider slices with step 1 only"
    );

    // zeros, then copy into it (with and without the optional out handle).
    let dims = u32s(&[1, 1, 64, 256]);
    let z = CTensor::make(|o| {
        // SAFETY: 4-entry shape, live device.
        unsafe {
            (p.c.ttnn_c_zeros)(
                dims.as_ptr(),
                4,
                sys::TTNN_C_DTYPE_FLOAT32,
                sys::TTNN_C_LAYOUT_TILE,
                devs.c.0,
                ptr::null(),
                o,
            )
        }
    });
    let rz = ttnn::zeros(
        [1, 1, 64, 256],
        DataType::Float32,
        Layout::Tile,
        &devs.r,
        &DRAM_MEMORY_CONFIG,
    )
    .expect("direct zeros");
    assert_eq!(z.read(), common::ttnn_bytes(&rz));
    // SAFETY: live handles; NULL out (not wanted).
    p.ok(unsafe { (p.c.ttnn_c_copy)(x.c.ptr(), z.ptr(), ptr::null_mut()) });
    let same = CTensor::make(|o| {
        // SAFETY: live handles.
        unsafe { (p.c.ttnn_c_copy)(x.c.ptr(), z.ptr(), o) }
    });
    ttnn::copy(&x.r, &rz).expect("direct copy");
    let zd = Dual::of(z, rz);
    zd.assert_same("copy");
    assert_eq!(same.read(), zd.c.read());

    // Prefill head split and concat: [1, 1, 32, (4 + 2*2) * 32] -> Q [1, 4, 32, 32].
    let (nh, nkv, hd) = (4usize, 2usize, 32usize);
    let qkv = Dual::upload(
        &devs,
        &rng.vec(32 * (nh + 2 * nkv) * hd, 1.0),
        &[1, 1, 32, (nh + 2 * nkv) * hd],
        DataType::Float32,
        Layout::Tile,
        None,
    );
    let nkv32 = nkv as u32;
    let (mut q, mut k, mut v) = (ptr::null_mut(), ptr::null_mut(), ptr::null_mut());
    // SAFETY: live handle, valid out-parameters.
    p.ok(unsafe {
        (p.c.ttnn_c_nlp_create_qkv_heads)(
            qkv.c.ptr(),
            ptr::null(),
            nh as u32,
            &nkv32,
            0,
            ptr::null(),
            &mut q,
            &mut k,
            &mut v,
        )
    });
    let (q, k, v) = (
        CTensor::from_raw(q),
        CTensor::from_raw(k),
        CTensor::from_raw(v),
    );
    let (rq, rk, rv) = ttnn::experimental::nlp_create_qkv_heads(
        &qkv.r,
        nh,
        &NlpCreateQkvHeadsArgs {
            num_kv_heads: Some(nkv),
            transpose_k_heads: false,
            ..Default::default()
        },
    )
    .expect("direct");
    let q = Dual::of(q, rq);
    q.assert_same("prefill q");
    Dual::of(k, rk).assert_same("prefill k");
    Dual::of(v, rv).assert_same("prefill v");
    let c = CTensor::make(|o| {
        // SAFETY: live handle.
        unsafe { (p.c.ttnn_c_nlp_concat_heads)(q.c.ptr(), ptr::null(), o) }
    });
    let r = ttnn::experimental::nlp_concat_heads(&q.r, None).expect("direct");
    Dual::of(c, r).assert_same("nlp_concat_heads");

    drop(q);
    // Decode head split (2 users) and concat onto a sub-grid.
    let users = 2usize;
    let dx = Dual::upload(
        &devs,
        &rng.vec(users * (nh + 2 * nkv) * hd, 1.0),
        &[1, 1, users, (nh + 2 * nkv) * hd],
        DataType::Bfloat16,
        Layout::Tile,
        None,
    );
    let hs = c_mc(&L1_HEIGHT_SHARDED_MEMORY_CONFIG);
    let (mut q, mut k, mut v) = (ptr::null_mut(), ptr::null_mut(), ptr::null_mut());
    // SAFETY: live handle, valid pointers.
    p.ok(unsafe {
        (p.c.ttnn_c_nlp_create_qkv_heads_decode)(
            dx.c.ptr(),
            nh as u32,
            &nkv32,
            ptr::null(),
            ptr::null(),
            ptr::null(),
            &hs,
            &mut q,
            &mut k,
            &mut v,
        )
    });
    let (q, k, v) = (
        CTensor::from_raw(q),
        CTensor::from_raw(k),
        CTensor::from_raw(v),
    );
    let (rq, rk, rv) = ttnn::experimental::nlp_create_qkv_heads_decode(
        &dx.r,
        nh,
        &NlpCreateQkvHeadsDecodeArgs {
            num_kv_heads: Some(nkv),
            memory_config: Some(L1_HEIGHT_SHARDED_MEMORY_CONFIG),
            ..Default::default()
        },
    )
    .expect("direct");
    let q = Dual::of(q, rq);
    q.assert_same("decode q");
    Dual::of(k, rk).assert_same("decode k");
    Dual::of(v, rv).assert_same("decode v");
    let sub = [sys::ttnn_c_core_range {
        start: sys::ttnn_c_core_coord { x: 0, y: 2 },
        end: sys::ttnn_c_core_coord { x: 7, y: 2 },
    }];
    let c = CTensor::make(|o| {
        // SAFETY: live handle, one core range.
        unsafe {
            (p.c.ttnn_c_nlp_concat_heads_decode)(
                q.c.ptr(),
                nh as u32,
                ptr::null(),
                sub.as_ptr(),
                1,
                o,
            )
        }
    });
    let r = ttnn::experimental::nlp_concat_heads_decode(
        &q.r,
        nh,
        &NlpConcatHeadsDecodeArgs {
            sub_core_grids: Some(CoreRangeSet::from_range(CoreRange::new(
                CoreCoord::new(0, 2),
                CoreCoord::new(7, 2),
            ))),
            ..Default::default()
        },
    )
    .expect("direct");
    Dual::of(c, r).assert_same("nlp_concat_heads_decode");
    drop((x, qkv, q, dx, same, zd, devs));
    s.finish();
}

/// A call that writes a tensor handle to its argument and returns a status.
type Call<'a> = Box<dyn Fn(*mut *mut ttnn_c_tensor) -> i32 + 'a>;

fn expect_err(r: Result<CTensor, (i32, String)>) -> (i32, String) {
    r.expect_err("the call must fail")
}

#[test]
fn op_errors_name_the_entry_point_and_the_problem() {
    let s = session();
    let p = s.p;
    let devs = Devices::open();
    let a = Dual::upload(
        &devs,
        &[1.0; 64],
        &[2, 32],
        DataType::Float32,
        Layout::Tile,
        None,
    );
    let b = Dual::upload(
        &devs,
        &[1.0; 96],
        &[3, 32],
        DataType::Float32,
        Layout::Tile,
        None,
    );
    let call = |f: &dyn Fn(*mut *mut ttnn_c_tensor) -> i32| expect_err(CTensor::try_make(f));

    // ttnn validation: the entry point, then ttnn's op and reason.
    let (st, m) = call(&|o| {
        // SAFETY: live handles.
        unsafe {
            (p.c.ttnn_c_binary)(
                sys::TTNN_C_BINARY_ADD,
                a.c.ptr(),
                b.c.ptr(),
                ptr::null(),
                ptr::null(),
                ptr::null(),
                0,
                o,
            )
        }
    });
    assert_eq!(st, TTNN_ERROR);
    assert!(
        m.starts_with("ttnn_c_binary: ttnn::add: b: expected shape"),
        "{m}"
    );
    let (st, m) = call(&|o| {
        // SAFETY: live handles.
        unsafe {
            (p.c.ttnn_c_matmul)(
                a.c.ptr(),
                b.c.ptr(),
                0,
                0,
                ptr::null(),
                ptr::null(),
                ptr::null(),
                0,
                ptr::null(),
                ptr::null(),
                o,
            )
        }
    });
    assert_eq!(st, TTNN_ERROR);
    assert!(m.starts_with("ttnn_c_matmul: ttnn::matmul:"), "{m}");
    let (st, m) = call(&|o| {
        // SAFETY: live handle.
        unsafe { (p.c.ttnn_c_max)(a.c.ptr(), 5, 0, ptr::null(), o) }
    });
    assert_eq!(st, TTNN_ERROR);
    assert_eq!(
        m,
        "ttnn_c_max: ttnn::max: invalid argument: dim 5 is out of range for rank 2"
    );

    // The provider's own argument checks.
    let cases: Vec<(Call<'_>, &str)> = vec![
        (
            // SAFETY: (here and below) live handles, or NULL where NULL is the error tested.
            Box::new(|o| unsafe { (p.c.ttnn_c_unary)(42, a.c.ptr(), ptr::null(), o) }),
            "ttnn_c_unary: unknown unary op 42",
        ),
        (
            // SAFETY: as above.
            Box::new(|o| unsafe {
                (p.c.ttnn_c_unary)(sys::TTNN_C_UNARY_NONE, a.c.ptr(), ptr::null(), o)
            }),
            "ttnn_c_unary: unknown unary op 0",
        ),
        (
            // SAFETY: as above.
            Box::new(|o| unsafe {
                (p.c.ttnn_c_binary_scalar)(
                    9,
                    a.c.ptr(),
                    1.0,
                    ptr::null(),
                    ptr::null(),
                    ptr::null(),
                    0,
                    o,
                )
            }),
            "ttnn_c_binary_scalar: unknown binary op 9",
        ),
        (
            // SAFETY: as above.
            Box::new(|o| unsafe {
                (p.c.ttnn_c_binary)(
                    0,
                    a.c.ptr(),
                    a.c.ptr(),
                    ptr::null(),
                    ptr::null(),
                    ptr::null(),
                    2,
                    o,
                )
            }),
            "ttnn_c_binary: input_tensor_a_activations is NULL but 2 entries were promised",
        ),
        (
            // SAFETY: as above.
            Box::new(|o| unsafe {
                (p.c.ttnn_c_unary_chain)(a.c.ptr(), ptr::null(), 0, ptr::null(), o)
            }),
            "ttnn_c_unary_chain: unary_chain needs at least one op",
        ),
        (
            // SAFETY: as above.
            Box::new(|o| unsafe { (p.c.ttnn_c_clamp)(ptr::null(), 0.0, 1.0, ptr::null(), o) }),
            "ttnn_c_clamp: input is NULL",
        ),
        (
            // SAFETY: as above.
            Box::new(|o| unsafe { (p.c.ttnn_c_typecast)(a.c.ptr(), 77, ptr::null(), o) }),
            "ttnn_c_typecast: unknown dtype 77",
        ),
        (
            // SAFETY: as above.
            Box::new(|o| unsafe {
                (p.c.ttnn_c_to_memory_config)(a.c.ptr(), ptr::null(), ptr::null(), o)
            }),
            "ttnn_c_to_memory_config: memory_config is NULL",
        ),
        (
            // SAFETY: as above.
            Box::new(|o| unsafe {
                (p.c.ttnn_c_embedding)(
                    a.c.ptr(),
                    a.c.ptr(),
                    ptr::null(),
                    ptr::null(),
                    5,
                    ptr::null(),
                    ptr::null(),
                    o,
                )
            }),
            "ttnn_c_embedding: unknown embeddings type 5",
        ),
        (
            // SAFETY: as above.
            Box::new(|o| unsafe {
                (p.c.ttnn_c_chunked_sdpa)(
                    a.c.ptr(),
                    a.c.ptr(),
                    a.c.ptr(),
                    a.c.ptr(),
                    -32,
                    ptr::null(),
                    ptr::null(),
                    ptr::null(),
                    ptr::null(),
                    o,
                )
            }),
            "ttnn_c_chunked_sdpa: chunk_start_idx -32 is negative",
        ),
    ];
    for (f, want) in &cases {
        let (st, m) = call(f.as_ref());
        assert_eq!((st, m.as_str()), (INVALID, *want));
    }
    drop(cases);
    // Struct contents are checked too.
    let bad_pc = sys::ttnn_c_matmul_program_config {
        kind: 12,
        ..Default::default()
    };
    let (st, m) = call(&|o| {
        // SAFETY: live handles; the struct outlives the call.
        unsafe {
            (p.c.ttnn_c_linear)(
                a.c.ptr(),
                a.c.ptr(),
                ptr::null(),
                0,
                1,
                ptr::null(),
                ptr::null(),
                &bad_pc,
                0,
                ptr::null(),
                ptr::null(),
                o,
            )
        }
    });
    assert_eq!(
        (st, m.as_str()),
        (
            INVALID,
            "ttnn_c_linear: unknown matmul program config kind 12"
        )
    );
    let bad_ckc = sys::ttnn_c_compute_kernel_config {
        math_fidelity: 1,
        ..Default::default()
    };
    let (st, m) = call(&|o| {
        // SAFETY: live handles; the struct outlives the call.
        unsafe {
            (p.c.ttnn_c_rms_norm)(
                a.c.ptr(),
                1e-5,
                ptr::null(),
                ptr::null(),
                ptr::null(),
                ptr::null(),
                ptr::null(),
                &bad_ckc,
                o,
            )
        }
    });
    assert_eq!(
        (st, m.as_str()),
        (INVALID, "ttnn_c_rms_norm: unknown math fidelity 1")
    );
    // NULL out-parameters: nothing is created.
    let live = s.live();
    // SAFETY: NULL out is the error tested.
    let st = unsafe {
        (p.c.ttnn_c_unary)(
            sys::TTNN_C_UNARY_RELU,
            a.c.ptr(),
            ptr::null(),
            ptr::null_mut(),
        )
    };
    assert_eq!(st, INVALID);
    assert_eq!(p.last_error(), "ttnn_c_unary: out is NULL");
    assert_eq!(s.live(), live);
    drop((a, b, devs));
    s.finish();
}
