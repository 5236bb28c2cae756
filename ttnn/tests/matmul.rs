//! `linear` / `matmul` against a naive f64 reference, plus validation, sharded outputs, traces,
//! batch and thread invariance, and an allocation-free replay.

mod common;

use common::{Rng, device, upload};
use proptest::prelude::*;
use ttnn::ops::matmul::{
    LinearArgs, MatmulArgs, MatmulMultiCoreReuseMultiCast1DProgramConfig, MatmulProgramConfig,
    linear, matmul,
};
use ttnn::{
    CoreCoord, DRAM_MEMORY_CONFIG, DataType, Device, DeviceSpec, L1_WIDTH_SHARDED_MEMORY_CONFIG,
    Layout, Tensor, TensorMemoryLayout, UnaryOp, begin_trace_capture, copy_host_to_device,
    end_trace_capture, execute_trace,
};

// --- A per-thread counting allocator, to check that replaying a trace allocates nothing. ---

#[path = "common/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::{Counting, allocations_on_this_thread as allocations_in};

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn allocation_counter_counts() {
    counting_alloc::assert_counting();
}

// --- Reference ---

/// The values a tensor of `dtype` really holds for `v` (bf16 / block-float rounding).
fn decoded(v: &[f32], shape: &[usize], dtype: DataType) -> Vec<f32> {
    Tensor::from_slice(v, shape, dtype, Layout::Tile)
        .expect("host tensor")
        .to_vec::<f32>()
        .expect("read back")
}

fn act_f64(op: UnaryOp, x: f64) -> f64 {
    match op {
        UnaryOp::Relu => x.max(0.0),
        UnaryOp::Square => x * x,
        UnaryOp::Neg => -x,
        UnaryOp::Silu => x / (1.0 + (-x).exp()),
        UnaryOp::Exp => x.exp(),
        UnaryOp::Abs => x.abs(),
        UnaryOp::Reciprocal => 1.0 / x,
        UnaryOp::Round => x.round_ties_even(),
    }
}

/// Sizes of one reference matmul.
#[derive(Clone, Copy, Debug)]
struct Dims {
    batch: usize,
    bcast_b: bool,
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
}

/// `act(A' @ B' + bias)` in f64, and per element the f32 error bound of the sum:
/// `(K + 2) * 2^-24 * (sum_k |a b| + |bias|)` (Higham's gamma_K for recursive summation, plus one
/// rounding for the bias), which covers any fixed summation order.
///
/// `int16_a`: the host's block-float `[N, K]` path, which quantizes each A row to int16 with
/// step `sc = absmax_row / 32767` (half-even rounding: |error| <= sc / 2 per value, plus a few
/// f32 ulps of the value for the scale's own rounding), adds `sum_k |b| (sc / 2 + 4 * 2^-24 |a|)`.
fn reference(
    a: &[f32],
    b: &[f32],
    bias: Option<&[f32]>,
    acts: &[UnaryOp],
    d: Dims,
    int16_a: bool,
) -> (Vec<f64>, Vec<f64>) {
    let mut want = Vec::with_capacity(d.batch * d.m * d.n);
    let mut bound = Vec::with_capacity(d.batch * d.m * d.n);
    let u = (d.k as f64 + 2.0) * 2f64.powi(-24);
    for bi in 0..d.batch {
        let bb = if d.bcast_b { 0 } else { bi };
        for mm in 0..d.m {
            for j in 0..d.n {
                let (mut acc, mut mag, mut qerr) = (0f64, 0f64, 0f64);
                let a_at = |kk: usize| {
                    let v = if d.ta {
                        a[(bi * d.k + kk) * d.m + mm]
                    } else {
                        a[(bi * d.m + mm) * d.k + kk]
                    };
                    v as f64
                };
                let sc = (0..d.k).fold(0f64, |x, kk| x.max(a_at(kk).abs())) / 32767.0;
                for kk in 0..d.k {
                    let av = a_at(kk);
                    let bv = if d.tb {
                        b[(bb * d.n + j) * d.k + kk]
                    } else {
                        b[(bb * d.k + kk) * d.n + j]
                    } as f64;
                    acc += av * bv;
                    mag += (av * bv).abs();
                    qerr += bv.abs() * (0.5 * sc + 4.0 * 2f64.powi(-24) * av.abs());
                }
                if int16_a {
                    mag += qerr / u;
                }
                if let Some(bias) = bias {
                    acc += bias[j] as f64;
                    mag += (bias[j] as f64).abs();
                }
                let mut v = acc;
                for &op in acts {
                    v = act_f64(op, v);
                }
                want.push(v);
                bound.push(u * mag);
            }
        }
    }
    (want, bound)
}

/// Checks `got` against `want` within `bound` (the sum's error; activations are 1.1-Lipschitz at
/// most, and their own f32 evaluation adds a few ulps) plus the output dtype's rounding.
fn check(got: &[f32], want: &[f64], bound: &[f64], out: DataType, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let out_rel = match out {
        DataType::Float32 => 0.0,
        // bf16 keeps 8 significant bits: rounding is within 2^-8 relative.
        _ => 1.0 / 256.0,
    };
    for (i, ((&g, &w), &e)) in got.iter().zip(want).zip(bound).enumerate() {
        let tol = 1.2 * e + 4.0 * 2f64.powi(-24) * w.abs() + out_rel * (w.abs() + 1.2 * e) + 1e-30;
        let err = (g as f64 - w).abs();
        assert!(
            err <= tol,
            "{what}: element {i}: got {g}, want {w}, |diff| {err:e} > tol {tol:e}"
        );
    }
}

const WEIGHT_TYPES: [DataType; 4] = [
    DataType::Float32,
    DataType::Bfloat16,
    DataType::Bfloat8B,
    DataType::Bfloat4B,
];

/// Shapes of A and B for a batch layout: 0: `[M,K] x [K,N]`; 1: `[B,M,K] x [K,N]` (bcast);
/// 2: `[1,B,M,K] x [1,B,K,N]` (bmm); 3: `[B,M,K] x [1,K,N]` (bcast, same rank); 4: `[M,K] x
/// [1,1,K,N]` (B of higher rank). Stored dims swap with the transposes.
fn shapes(kind: usize, batch: usize, d: &Dims) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
    let a_mat = if d.ta { [d.k, d.m] } else { [d.m, d.k] };
    let b_mat = if d.tb { [d.n, d.k] } else { [d.k, d.n] };
    let (a_lead, b_lead, out_lead): (Vec<usize>, Vec<usize>, Vec<usize>) = match kind {
        0 => (vec![], vec![], vec![]),
        1 => (vec![batch], vec![], vec![batch]),
        2 => (vec![1, batch], vec![1, batch], vec![1, batch]),
        3 => (vec![batch], vec![1], vec![batch]),
        _ => (vec![], vec![1, 1], vec![1, 1]),
    };
    let cat = |lead: &[usize], mat: [usize; 2]| [lead, &mat[..]].concat();
    (
        cat(&a_lead, a_mat),
        cat(&b_lead, b_mat),
        cat(&out_lead, [d.m, d.n]),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn linear_matches_f64_reference(
        m in 1usize..70,
        k in 1usize..300,
        n in 1usize..200,
        kind in 0usize..5,
        batch in 1usize..4,
        ta in any::<bool>(),
        tb in any::<bool>(),
        w_type in 0usize..4,
        a_bf16 in any::<bool>(),
        bias_kind in 0usize..3,
        act in 0usize..3,
        out_bf16 in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let dev = device();
        let mut rng = Rng::new(seed);
        let batch = if kind == 0 || kind == 4 { 1 } else { batch };
        let mut d = Dims { batch, bcast_b: kind != 2, m, k, n, ta, tb };
        let (a_shape, b_shape, out_shape) = shapes(kind, batch, &d);
        d.bcast_b = kind != 2 || batch == 1;
        let a_type = if a_bf16 { DataType::Bfloat16 } else { DataType::Float32 };
        let w_type = WEIGHT_TYPES[w_type];
        let a: Vec<f32> = rng.vec(a_shape.iter().product(), 1.0);
        let b: Vec<f32> = rng.vec(b_shape.iter().product(), 1.0);
        let ta_dev = upload(&dev, &a, &a_shape, a_type, Layout::Tile, &DRAM_MEMORY_CONFIG);
        let tb_dev = upload(&dev, &b, &b_shape, w_type, Layout::Tile, &DRAM_MEMORY_CONFIG);
        // A bias only where TT allows one: B not batched.
        let bias_vals = rng.vec(n, 1.0);
        let bias_shape: Vec<usize> = if bias_kind == 1 { vec![1, n] } else { vec![1, 1, 1, n] };
        let use_bias = bias_kind != 0 && d.bcast_b;
        let bias_dev = use_bias.then(|| {
            upload(&dev, &bias_vals, &bias_shape, DataType::Bfloat16, Layout::Tile, &DRAM_MEMORY_CONFIG)
        });
        let acts: Vec<UnaryOp> = match act { 1 => vec![UnaryOp::Relu], 2 => vec![UnaryOp::Silu], _ => vec![] };
        let out_type = if out_bf16 { DataType::Bfloat16 } else { DataType::Float32 };
        let args = LinearArgs {
            bias: bias_dev.as_ref(),
            transpose_a: ta,
            transpose_b: tb,
            dtype: Some(out_type),
            activation: acts.first().copied(),
            ..Default::default()
        };
        let out = linear(&ta_dev, &tb_dev, &args).expect("linear");
        prop_assert_eq!(out.shape().dims().to_vec(), out_shape.clone());
        prop_assert_eq!(out.dtype(), out_type);
        prop_assert_eq!(out.layout(), Layout::Tile);
        prop_assert_eq!(out.memory_config(), Some(&DRAM_MEMORY_CONFIG));
        let bias_dec = use_bias.then(|| decoded(&bias_vals, &bias_shape, DataType::Bfloat16));
        let (want, bound) = reference(
            &decoded(&a, &a_shape, a_type),
            &decoded(&b, &b_shape, w_type),
            bias_dec.as_deref(),
            &acts,
            d,
            tb && matches!(w_type, DataType::Bfloat8B | DataType::Bfloat4B),
        );
        let got = out.to_vec::<f32>().expect("read");
        check(&got, &want, &bound, out_type, &format!("{d:?} kind {kind} {w_type:?}"));
    }
}

/// The lm_head case: a tied embedding `[vocab, hidden]` in bfloat8_b as B with `transpose_b`,
/// large enough to run in parallel; against the decoded weights.
#[test]
fn lm_head_bfp8_transpose_b() {
    let dev = device();
    let mut rng = Rng::new(5);
    let (m, k, n) = (3, 128, 1000);
    let x = rng.vec(m * k, 2.0);
    let emb = rng.vec(n * k, 0.05);
    let xd = upload(
        &dev,
        &x,
        &[1, 1, m, k],
        DataType::Bfloat16,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let ed = upload(
        &dev,
        &emb,
        &[n, k],
        DataType::Bfloat8B,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let args = LinearArgs {
        transpose_b: true,
        dtype: Some(DataType::Float32),
        ..Default::default()
    };
    let out = linear(&xd, &ed, &args).expect("lm_head");
    assert_eq!(out.shape().dims(), &[1, 1, m, n]);
    let d = Dims {
        batch: 1,
        bcast_b: true,
        m,
        k,
        n,
        ta: false,
        tb: true,
    };
    let (want, bound) = reference(
        &decoded(&x, &[m, k], DataType::Bfloat16),
        &decoded(&emb, &[n, k], DataType::Bfloat8B),
        None,
        &[],
        d,
        true,
    );
    check(
        &out.to_vec::<f32>().expect("read"),
        &want,
        &bound,
        DataType::Float32,
        "lm_head",
    );
}

/// One row's result never depends on the other rows computed with it, nor on the thread count.
#[test]
fn batch_and_thread_invariant() {
    let dev2 = device();
    let dev1 = Device::open(DeviceSpec::default().with_threads(1)).expect("device");
    let mut rng = Rng::new(77);
    let (m, k, n) = (37, 200, 300);
    let x = rng.vec(m * k, 1.0);
    for tb in [false, true] {
        let w_shape = if tb { [n, k] } else { [k, n] };
        let w = rng.vec(k * n, 0.1);
        let run = |dev: &Device, rows: &[f32], r: usize| {
            let xd = upload(
                dev,
                rows,
                &[1, 1, r, k],
                DataType::Float32,
                Layout::Tile,
                &DRAM_MEMORY_CONFIG,
            );
            let wd = upload(
                dev,
                &w,
                &w_shape,
                DataType::Bfloat8B,
                Layout::Tile,
                &DRAM_MEMORY_CONFIG,
            );
            let args = LinearArgs {
                transpose_b: tb,
                ..Default::default()
            };
            linear(&xd, &wd, &args)
                .expect("linear")
                .to_vec::<f32>()
                .expect("read")
        };
        let full = run(&dev2, &x, m);
        assert_eq!(
            full,
            run(&dev1, &x, m),
            "thread count changed results (tb={tb})"
        );
        for r in [0, 17, 36] {
            let one = run(&dev2, &x[r * k..(r + 1) * k], 1);
            let same = one
                .iter()
                .zip(&full[r * n..(r + 1) * n])
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "row {r} differs when computed alone (tb={tb})");
        }
    }
}

#[test]
fn rank1_b_and_matmul_transpose_a() {
    let dev = device();
    let mut rng = Rng::new(3);
    let (m, k) = (5, 40);
    let a = rng.vec(m * k, 1.0);
    let v = rng.vec(k, 1.0);
    let ad = upload(
        &dev,
        &a,
        &[m, k],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let vd = upload(
        &dev,
        &v,
        &[k],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let out = matmul(&ad, &vd, &MatmulArgs::default()).expect("matvec");
    assert_eq!(out.shape().dims(), &[m]);
    let d = Dims {
        batch: 1,
        bcast_b: true,
        m,
        k,
        n: 1,
        ta: false,
        tb: false,
    };
    let (want, bound) = reference(&a, &v, None, &[], d, false);
    check(
        &out.to_vec::<f32>().expect("read"),
        &want,
        &bound,
        DataType::Float32,
        "matvec",
    );

    // A^T A with the same tensor passed twice.
    let out = matmul(
        &ad,
        &ad,
        &MatmulArgs {
            transpose_a: true,
            ..Default::default()
        },
    )
    .expect("a^T a");
    assert_eq!(out.shape().dims(), &[k, k]);
    let d = Dims {
        batch: 1,
        bcast_b: true,
        m: k,
        k: m,
        n: k,
        ta: true,
        tb: false,
    };
    let (want, bound) = reference(&a, &a, None, &[], d, false);
    check(
        &out.to_vec::<f32>().expect("read"),
        &want,
        &bound,
        DataType::Float32,
        "a^T a",
    );
}

fn one_d_config(per_core_n: usize, untilize_out: bool) -> MatmulProgramConfig {
    MatmulMultiCoreReuseMultiCast1DProgramConfig {
        compute_with_storage_grid_size: CoreCoord::new(8, 8),
        in0_block_w: 2,
        out_subblock_h: 1,
        out_subblock_w: 2,
        per_core_m: 1,
        per_core_n,
        fuse_batch: true,
        fused_activation: Some(UnaryOp::Relu),
        mcast_in0: true,
        untilize_out,
    }
    .into()
}

/// A sharded output config without a spec gets one: from a 1-D program config (width shards of
/// per_core_N tiles), else an even split; the program config's fused activation runs before
/// `activation`; `untilize_out` gives a row-major output.
#[test]
fn sharded_outputs_program_config_and_fused_activation() {
    let dev = device();
    let mut rng = Rng::new(11);
    let (m, k, n) = (32, 128, 256);
    let x = rng.vec(m * k, 1.0);
    let w = rng.vec(k * n, 0.2);
    let xd = upload(
        &dev,
        &x,
        &[1, 1, m, k],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let wd = upload(
        &dev,
        &w,
        &[1, 1, k, n],
        DataType::Bfloat8B,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let d = Dims {
        batch: 1,
        bcast_b: true,
        m,
        k,
        n,
        ta: false,
        tb: false,
    };
    let w_dec = decoded(&w, &[k, n], DataType::Bfloat8B);

    let args = LinearArgs {
        memory_config: Some(L1_WIDTH_SHARDED_MEMORY_CONFIG),
        program_config: Some(one_d_config(2, false)),
        activation: Some(UnaryOp::Neg),
        ..Default::default()
    };
    let out = linear(&xd, &wd, &args).expect("width-sharded linear");
    let mc = out.memory_config().expect("device tensor");
    assert_eq!(mc.memory_layout, TensorMemoryLayout::WidthSharded);
    let spec = mc.shard_spec.as_ref().expect("derived shard spec");
    assert_eq!(spec.shape, [32, 64]);
    assert_eq!(spec.grid.num_cores(), 4);
    let (want, bound) = reference(&x, &w_dec, None, &[UnaryOp::Relu, UnaryOp::Neg], d, false);
    check(
        &out.to_vec::<f32>().expect("read"),
        &want,
        &bound,
        DataType::Float32,
        "sharded",
    );

    // No program config: an even split of the output's 8 tile columns.
    let args = LinearArgs {
        memory_config: Some(L1_WIDTH_SHARDED_MEMORY_CONFIG),
        ..Default::default()
    };
    let out = linear(&xd, &wd, &args).expect("width-sharded, no program config");
    let spec = out
        .memory_config()
        .and_then(|m| m.shard_spec.clone())
        .expect("spec");
    assert_eq!(spec.shape, [32, 32]);
    assert_eq!(spec.grid.num_cores(), 8);

    let args = LinearArgs {
        program_config: Some(one_d_config(2, true)),
        dtype: Some(DataType::Bfloat16),
        ..Default::default()
    };
    let out = linear(&xd, &wd, &args).expect("untilize_out");
    assert_eq!(out.layout(), Layout::RowMajor);
    let (want, bound) = reference(&x, &w_dec, None, &[UnaryOp::Relu], d, false);
    check(
        &out.to_vec::<f32>().expect("read"),
        &want,
        &bound,
        DataType::Bfloat16,
        "untilize",
    );
}

/// bfloat8_b output: each group of 16 output values shares an exponent, so values are good to
/// 2^-6 of their group's largest magnitude (7 bits incl. sign-magnitude rounding).
#[test]
fn bfp8_output() {
    let dev = device();
    let mut rng = Rng::new(21);
    let (m, k, n) = (4, 64, 48);
    let x = rng.vec(m * k, 1.0);
    let w = rng.vec(k * n, 1.0);
    let xd = upload(
        &dev,
        &x,
        &[m, k],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let wd = upload(
        &dev,
        &w,
        &[k, n],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let args = LinearArgs {
        dtype: Some(DataType::Bfloat8B),
        ..Default::default()
    };
    let out = linear(&xd, &wd, &args).expect("bfp8 out");
    assert_eq!(out.dtype(), DataType::Bfloat8B);
    let d = Dims {
        batch: 1,
        bcast_b: true,
        m,
        k,
        n,
        ta: false,
        tb: false,
    };
    let (want, _) = reference(&x, &w, None, &[], d, false);
    let got = out.to_vec::<f32>().expect("read");
    for (g, (gw, ww)) in got.chunks(16).zip(want.chunks(16)).enumerate() {
        let gmax = ww.iter().fold(0f64, |a, v| a.max(v.abs()));
        for (&a, &b) in gw.iter().zip(ww) {
            assert!(
                (a as f64 - b).abs() <= gmax * 2f64.powi(-6) + 1e-6,
                "group {g}: {a} vs {b}"
            );
        }
    }
}

/// A traced linear replays with fresh inputs (the output is recomputed, not accumulated into),
/// and replaying allocates nothing.
#[test]
fn trace_replay_recomputes_without_allocating() {
    let dev = device();
    let mut rng = Rng::new(8);
    let (m, k, n) = (32, 256, 320);
    for tb in [false, true] {
        let w_shape = if tb { [n, k] } else { [k, n] };
        let w = rng.vec(k * n, 0.1);
        let bias = rng.vec(n, 1.0);
        let wd = upload(
            &dev,
            &w,
            &w_shape,
            DataType::Bfloat8B,
            Layout::Tile,
            &DRAM_MEMORY_CONFIG,
        );
        let bd = upload(
            &dev,
            &bias,
            &[1, n],
            DataType::Float32,
            Layout::Tile,
            &DRAM_MEMORY_CONFIG,
        );
        let x0 = rng.vec(m * k, 1.0);
        let mut xd = upload(
            &dev,
            &x0,
            &[1, 1, m, k],
            DataType::Bfloat16,
            Layout::Tile,
            &DRAM_MEMORY_CONFIG,
        );
        let args = LinearArgs {
            bias: Some(&bd),
            transpose_b: tb,
            activation: Some(UnaryOp::Relu),
            dtype: Some(DataType::Bfloat16),
            ..Default::default()
        };
        let id = begin_trace_capture(&dev, 0).expect("begin");
        let out = linear(&xd, &wd, &args).expect("captured linear");
        let trace = end_trace_capture(&dev, id, 0).expect("end");
        let w_dec = decoded(&w, &w_shape, DataType::Bfloat8B);
        let d = Dims {
            batch: 1,
            bcast_b: true,
            m,
            k,
            n,
            ta: false,
            tb,
        };
        for step in 0..3 {
            let x = rng.vec(m * k, 1.0);
            let host = Tensor::from_slice(&x, [1, 1, m, k], DataType::Bfloat16, Layout::Tile)
                .expect("host");
            copy_host_to_device(&host, &mut xd).expect("refresh input");
            let allocs = allocations_in(|| execute_trace(&dev, &trace, 0, true).expect("replay"));
            assert_eq!(allocs, 0, "replay allocated (tb={tb}, step {step})");
            let (want, bound) = reference(
                &decoded(&x, &[m, k], DataType::Bfloat16),
                &w_dec,
                Some(&bias),
                &[UnaryOp::Relu],
                d,
                tb,
            );
            let got = out.to_vec::<f32>().expect("read");
            check(
                &got,
                &want,
                &bound,
                DataType::Bfloat16,
                &format!("replay {step} tb={tb}"),
            );
        }
    }
}

// --- Validation ---

fn err_text(r: ttnn::Result<Tensor>) -> String {
    match r {
        Ok(t) => panic!("expected an error, got a tensor of shape {:?}", t.shape()),
        Err(e) => e.to_string(),
    }
}

fn assert_err(r: ttnn::Result<Tensor>, op: &str, needles: &[&str]) {
    let msg = err_text(r);
    assert!(msg.starts_with(op), "message does not name {op}: {msg}");
    for n in needles {
        assert!(msg.contains(n), "message lacks {n:?}: {msg}");
    }
}

#[test]
fn validation_errors_name_the_op() {
    let dev = device();
    let f32_dev = |shape: &[usize]| {
        let n = shape.iter().product();
        upload(
            &dev,
            &vec![0.5; n],
            shape,
            DataType::Float32,
            Layout::Tile,
            &DRAM_MEMORY_CONFIG,
        )
    };
    let a = f32_dev(&[2, 32, 64]);
    let b = f32_dev(&[64, 96]);

    // Inner dims.
    let bad_k = f32_dev(&[63, 96]);
    assert_err(
        matmul(&a, &bad_k, &MatmulArgs::default()),
        "ttnn::matmul",
        &["b", "64"],
    );
    assert_err(
        linear(
            &a,
            &b,
            &LinearArgs {
                transpose_b: true,
                ..Default::default()
            },
        ),
        "ttnn::linear",
        &["b", "transpose_b=true"],
    );

    // Layout.
    let rm = upload(
        &dev,
        &vec![0.0; 64 * 96],
        &[64, 96],
        DataType::Float32,
        Layout::RowMajor,
        &DRAM_MEMORY_CONFIG,
    );
    assert_err(
        linear(&a, &rm, &LinearArgs::default()),
        "ttnn::linear",
        &["b", "RowMajor"],
    );

    // Host input.
    let host = Tensor::from_slice(
        &vec![0.0f32; 64 * 96],
        [64, 96],
        DataType::Float32,
        Layout::Tile,
    )
    .expect("host");
    assert_err(
        matmul(&a, &host, &MatmulArgs::default()),
        "ttnn::matmul",
        &["b", "device"],
    );

    // Integer input.
    let ints = Tensor::from_slice(
        &vec![1u32; 64 * 96],
        [64, 96],
        DataType::Uint32,
        Layout::Tile,
    )
    .expect("host")
    .to_device(&dev, &DRAM_MEMORY_CONFIG)
    .expect("device");
    assert_err(
        matmul(&a, &ints, &MatmulArgs::default()),
        "ttnn::matmul",
        &["Uint32"],
    );

    // Batch dims: neither batch 1 nor identical.
    let b3 = f32_dev(&[3, 64, 96]);
    assert_err(
        matmul(&a, &b3, &MatmulArgs::default()),
        "ttnn::matmul",
        &["batch"],
    );
    let b_rank4 = f32_dev(&[1, 2, 64, 96]);
    assert_err(
        matmul(&a, &b_rank4, &MatmulArgs::default()),
        "ttnn::matmul",
        &["batch"],
    );

    // Bias: two rows, wrong width, batched B, host bias.
    for bias_shape in [[2, 96], [1, 200]] {
        let bias = f32_dev(&bias_shape);
        assert_err(
            linear(
                &a,
                &b,
                &LinearArgs {
                    bias: Some(&bias),
                    ..Default::default()
                },
            ),
            "ttnn::linear",
            &["bias"],
        );
    }
    let bias = f32_dev(&[1, 96]);
    let b2 = f32_dev(&[2, 64, 96]);
    assert_err(
        linear(
            &a,
            &b2,
            &LinearArgs {
                bias: Some(&bias),
                ..Default::default()
            },
        ),
        "ttnn::linear",
        &["batched"],
    );
    let host_bias =
        Tensor::from_slice(&[0.0f32; 96], [1, 96], DataType::Float32, Layout::Tile).expect("host");
    assert_err(
        linear(
            &a,
            &b,
            &LinearArgs {
                bias: Some(&host_bias),
                ..Default::default()
            },
        ),
        "ttnn::linear",
        &["bias", "device"],
    );

    // Output dtype, core grid.
    assert_err(
        matmul(
            &a,
            &b,
            &MatmulArgs {
                dtype: Some(DataType::Uint32),
                ..Default::default()
            },
        ),
        "ttnn::matmul",
        &["output"],
    );
    assert_err(
        matmul(
            &a,
            &b,
            &MatmulArgs {
                core_grid: Some(CoreCoord::new(9, 1)),
                ..Default::default()
            },
        ),
        "ttnn::matmul",
        &["core_grid"],
    );

    // Program configs: Kt (2 tiles) not divisible by in0_block_w 3; subblock of 4x4 > 8
    // registers; untilize_out without a dtype.
    let pc = |in0_block_w, h, w| {
        MatmulProgramConfig::MultiCoreReuseMultiCast1D(
            MatmulMultiCoreReuseMultiCast1DProgramConfig {
                compute_with_storage_grid_size: CoreCoord::new(8, 8),
                in0_block_w,
                out_subblock_h: h,
                out_subblock_w: w,
                per_core_m: 4,
                per_core_n: 4,
                fuse_batch: true,
                fused_activation: None,
                mcast_in0: true,
                untilize_out: false,
            },
        )
    };
    assert_err(
        matmul(
            &a,
            &b,
            &MatmulArgs {
                program_config: Some(pc(3, 1, 1)),
                ..Default::default()
            },
        ),
        "ttnn::matmul",
        &["in0_block_w"],
    );
    assert_err(
        matmul(
            &a,
            &b,
            &MatmulArgs {
                program_config: Some(pc(1, 4, 4)),
                ..Default::default()
            },
        ),
        "ttnn::matmul",
        &["out_subblock"],
    );
    assert_err(
        matmul(
            &a,
            &b,
            &MatmulArgs {
                program_config: Some(one_d_config(2, true)),
                ..Default::default()
            },
        ),
        "ttnn::matmul",
        &["untilize_out"],
    );
}
