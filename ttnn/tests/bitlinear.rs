//! `experimental::bitlinear` and `quantize_activations_int8` against an f64 reference with the
//! same (exact) quantization, the HF oracle goldens, validation, traces and invariance checks.

mod common;

use common::{Rng, device, upload, upload_f32};
use half::bf16;
use proptest::prelude::*;
use safetensors::{Dtype, SafeTensors};
use ttnn::ops::bitlinear::{
    BitLinearArgs, InputRmsNorm, QuantizeActivationsArgs, WeightScaleMode, bitlinear,
    quantize_activations_int8,
};
use ttnn::ops::norm::{RmsNormArgs, rms_norm};
use ttnn::{
    DRAM_MEMORY_CONFIG, DataType, Device, DeviceSpec, L1_WIDTH_SHARDED_MEMORY_CONFIG, Layout,
    Tensor, TensorMemoryLayout, TernaryLayout, begin_trace_capture, copy_host_to_device,
    end_trace_capture, execute_trace,
};

const OP: &str = "ttnn::experimental::bitlinear";
const QOP: &str = "ttnn::experimental::quantize_activations_int8";

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

/// HF's ActQuant in f32, written out independently of the crate: `(q, s)` for one row. torch
/// evaluates HF's `127 / absmax` as `absmax.reciprocal() * 127` (two roundings).
fn ref_quant(x: &[f32]) -> (Vec<i32>, f32) {
    let absmax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let s = (1.0f32 / absmax.max(1e-5)) * 127.0;
    let q = x
        .iter()
        .map(|&v| (v * s).round_ties_even().clamp(-128.0, 127.0) as i32)
        .collect();
    (q, s)
}

/// Reference outputs: exact integer accumulators, then the scaling in f64.
fn reference(
    x: &[f32],
    t: &[i8],
    k: usize,
    n: usize,
    ws: f32,
    mode: WeightScaleMode,
) -> (Vec<i32>, Vec<f32>, Vec<f64>) {
    let rows = x.len() / k;
    let (mut qs, mut ss, mut ys) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..rows {
        let (q, s) = ref_quant(&x[r * k..(r + 1) * k]);
        for j in 0..n {
            let acc: i64 = q
                .iter()
                .zip(&t[j * k..(j + 1) * k])
                .map(|(&a, &b)| a as i64 * b as i64)
                .sum();
            ys.push(match mode {
                WeightScaleMode::Multiply => acc as f64 / s as f64 * ws as f64,
                WeightScaleMode::Divide => acc as f64 / (ws as f64 * s as f64),
            });
        }
        qs.extend(q);
        ss.push(s);
    }
    (qs, ss, ys)
}

fn ternary_dev(dev: &Device, t: &[i8], shape: &[usize]) -> Tensor {
    Tensor::from_slice(t, shape, DataType::Ternary, Layout::Tile)
        .expect("ternary host tensor")
        .to_device(dev, &DRAM_MEMORY_CONFIG)
        .expect("to_device")
}

/// `got` within `rtol` of `want` (relative per element; exact zeros must be exact).
fn check_rel(got: &[f32], want: &[f64], rtol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        assert!(
            err <= rtol * w.abs(),
            "{what}: element {i}: got {g}, want {w}, |diff| {err:e} > {rtol:e} * |want|"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    /// q and s are exact; y differs from the f64 reference only by the final f32 scaling
    /// (`acc as f32` is exact for |acc| < 2^24; one division and one multiplication round, so
    /// |rel err| <= 2 * 2^-24 ~ 1.2e-7; 1e-6 leaves margin). A bf16 output adds its unit roundoff, 2^-8 relative (8 significant bits).
    #[test]
    fn bitlinear_matches_reference(
        m in 1usize..70,
        k in 1usize..300,
        n in 1usize..200,
        kind in 0usize..3,
        batch in 1usize..3,
        x_bf16 in any::<bool>(),
        divide in any::<bool>(),
        out_bf16 in any::<bool>(),
        magnitude in -3i32..4,
        zero_row in any::<bool>(),
        layout in 0usize..3,
        seed in any::<u64>(),
    ) {
        let layout = [TernaryLayout::Bits2, TernaryLayout::Lut3, TernaryLayout::Base3][layout];
        let dev = Device::open(DeviceSpec::default().with_threads(2).with_ternary_layout(layout))
            .expect("device");
        let mut rng = Rng::new(seed);
        let (x_shape, w_shape): (Vec<usize>, Vec<usize>) = match kind {
            0 => (vec![m, k], vec![n, k]),
            1 => (vec![1, 1, m, k], vec![1, 1, n, k]),
            _ => (vec![batch, m, k], vec![n, k]),
        };
        let rows: usize = x_shape[..x_shape.len() - 1].iter().product();
        let mut x = rng.vec(rows * k, 10f32.powi(magnitude));
        if zero_row {
            x[..k].fill(0.0);
        }
        let t: Vec<i8> = (0..n * k).map(|_| rng.below(3) as i8 - 1).collect();
        let ws = 10f32.powf(rng.uniform() * 2.0);
        let mode = if divide { WeightScaleMode::Divide } else { WeightScaleMode::Multiply };
        let x_type = if x_bf16 { DataType::Bfloat16 } else { DataType::Float32 };
        let out_type = if out_bf16 { DataType::Bfloat16 } else { DataType::Float32 };
        let xd = upload(&dev, &x, &x_shape, x_type, Layout::Tile, &DRAM_MEMORY_CONFIG);
        let wd = ternary_dev(&dev, &t, &w_shape);
        let args = BitLinearArgs { weight_scale: ws, scale_mode: mode, dtype: Some(out_type), ..Default::default() };
        let y = bitlinear(&xd, &wd, &args).expect("bitlinear");
        let mut y_shape = x_shape.clone();
        *y_shape.last_mut().expect("rank >= 2") = n;
        prop_assert_eq!(y.shape().dims().to_vec(), y_shape.clone());
        prop_assert_eq!(y.dtype(), out_type);
        prop_assert_eq!(y.memory_config(), Some(&DRAM_MEMORY_CONFIG));

        let x_dec = xd.to_vec::<f32>().expect("read x");
        let (q_want, s_want, y_want) = reference(&x_dec, &t, k, n, ws, mode);
        let (q, s) = quantize_activations_int8(&xd, &Default::default()).expect("quantize");
        prop_assert_eq!(q.dtype(), DataType::Int32);
        prop_assert_eq!(q.shape().dims().to_vec(), x_shape.clone());
        let mut s_shape = x_shape.clone();
        *s_shape.last_mut().expect("rank >= 2") = 1;
        prop_assert_eq!(s.shape().dims().to_vec(), s_shape.clone());
        prop_assert_eq!(q.to_vec::<i32>().expect("q"), q_want);
        let s_got = s.to_vec::<f32>().expect("s");
        prop_assert!(s_got.iter().zip(&s_want).all(|(a, b)| a.to_bits() == b.to_bits()));
        let rtol = if out_bf16 { 1e-6 + 1.0 / 256.0 } else { 1e-6 };
        check_rel(&y.to_vec::<f32>().expect("y"), &y_want, rtol, &format!("{x_shape:?} x {w_shape:?} {mode:?}"));
        if zero_row {
            prop_assert_eq!(s_got[0], 1.27e7);
        }
    }
}

/// Gamma as the model stores it (`[1, 1, K/32, 32]` row-major, or `[K]` when K is not a multiple
/// of 32), or as a TILE row.
fn gamma_dev(dev: &Device, g: &[f32], tile: bool) -> Tensor {
    let k = g.len();
    let (shape, layout): (Vec<usize>, Layout) = if tile {
        (vec![1, 1, 1, k], Layout::Tile)
    } else if k.is_multiple_of(32) {
        (vec![1, 1, k / 32, 32], Layout::RowMajor)
    } else {
        (vec![k], Layout::RowMajor)
    };
    upload(
        dev,
        g,
        &shape,
        DataType::Float32,
        layout,
        &DRAM_MEMORY_CONFIG,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// The fused input norm gives the bits of `rms_norm` followed by `bitlinear`, on one and two
    /// threads, for rows alone (decode) and in batches past the parallel quantization (rows x K
    /// >= 2^16), with f32 and bf16 inputs (the separate norm rounds its output to bf16).
    #[test]
    fn input_rms_norm_equals_rms_norm_then_bitlinear(
        m in prop_oneof![1usize..6, 30usize..50],
        k in prop_oneof![1usize..300, Just(2560usize)],
        n in 1usize..80,
        gamma_kind in 0usize..3,
        x_bf16 in any::<bool>(),
        eps_exp in -12i32..-1,
        seed in any::<u64>(),
    ) {
        let dev2 = device();
        let dev1 = Device::open(DeviceSpec::default().with_threads(1)).expect("device");
        let mut rng = Rng::new(seed);
        let x = rng.vec(m * k, 4.0);
        let g = rng.vec(k, 2.0);
        let t: Vec<i8> = (0..n * k).map(|_| rng.below(3) as i8 - 1).collect();
        let x_type = if x_bf16 { DataType::Bfloat16 } else { DataType::Float32 };
        let epsilon = 10f32.powi(eps_exp);
        for dev in [&dev2, &dev1] {
            let xd = upload(dev, &x, &[1, 1, m, k], x_type, Layout::Tile, &DRAM_MEMORY_CONFIG);
            let wd = ternary_dev(dev, &t, &[n, k]);
            let gd = (gamma_kind > 0).then(|| gamma_dev(dev, &g, gamma_kind == 2));
            let normed = rms_norm(
                &xd,
                &RmsNormArgs { epsilon, weight: gd.as_ref(), ..Default::default() },
            )
            .expect("rms_norm");
            let args = BitLinearArgs { weight_scale: 0.3, ..Default::default() };
            let want = bitlinear(&normed, &wd, &args).expect("bitlinear").to_vec::<f32>().expect("y");
            let fused_args = BitLinearArgs {
                input_rms_norm: Some(InputRmsNorm { weight: gd.as_ref(), epsilon, memory_config: None }),
                ..args
            };
            let got = bitlinear(&xd, &wd, &fused_args).expect("fused").to_vec::<f32>().expect("y");
            prop_assert_eq!(got.len(), want.len());
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                prop_assert_eq!(a.to_bits(), b.to_bits(), "element {} ({} threads): {} vs {}", i, dev.num_threads(), a, b);
            }
        }
    }
}

/// A trace with the fused norm replays from the refreshed input without allocating, and bad
/// norm arguments are refused with the op's name.
#[test]
fn input_rms_norm_replays_and_validates() {
    let dev = device();
    let mut rng = Rng::new(17);
    let (k, n) = (2560, 96);
    let t: Vec<i8> = (0..n * k).map(|_| rng.below(3) as i8 - 1).collect();
    let wd = ternary_dev(&dev, &t, &[n, k]);
    let g = rng.vec(k, 1.5);
    let gd = gamma_dev(&dev, &g, false);
    let mut xd = upload_f32(&dev, &rng.vec(k, 1.0), &[1, 1, 1, k]);
    let norm = InputRmsNorm {
        weight: Some(&gd),
        epsilon: 1e-5,
        memory_config: None,
    };
    let args = BitLinearArgs {
        weight_scale: 0.5,
        input_rms_norm: Some(norm.clone()),
        ..Default::default()
    };
    let id = begin_trace_capture(&dev, 0).expect("begin");
    let y = bitlinear(&xd, &wd, &args).expect("captured bitlinear");
    let trace = end_trace_capture(&dev, id, 0).expect("end");
    for step in 0..3 {
        let host = Tensor::from_slice(
            &rng.vec(k, 3.0),
            [1, 1, 1, k],
            DataType::Float32,
            Layout::Tile,
        )
        .expect("host");
        copy_host_to_device(&host, &mut xd).expect("refresh");
        let allocs = allocations_in(|| execute_trace(&dev, &trace, 0, true).expect("replay"));
        assert_eq!(allocs, 0, "replay {step} allocated");
        let normed = rms_norm(
            &xd,
            &RmsNormArgs {
                epsilon: 1e-5,
                weight: Some(&gd),
                ..Default::default()
            },
        )
        .expect("rms_norm");
        let plain = BitLinearArgs {
            input_rms_norm: None,
            ..args.clone()
        };
        let want = bitlinear(&normed, &wd, &plain).expect("bitlinear");
        assert_eq!(
            y.to_vec::<f32>().expect("y"),
            want.to_vec::<f32>().expect("want"),
            "replay {step}"
        );
    }

    // The input as its own gamma (one buffer read twice: the kernel must not lock it twice).
    let self_gamma = BitLinearArgs {
        input_rms_norm: Some(InputRmsNorm {
            weight: Some(&xd),
            ..norm.clone()
        }),
        ..Default::default()
    };
    let normed = rms_norm(
        &xd,
        &RmsNormArgs {
            epsilon: 1e-5,
            weight: Some(&xd),
            ..Default::default()
        },
    )
    .expect("rms_norm");
    assert_eq!(
        bitlinear(&xd, &wd, &self_gamma)
            .expect("self gamma")
            .to_vec::<f32>()
            .expect("y"),
        bitlinear(&normed, &wd, &Default::default())
            .expect("bitlinear")
            .to_vec::<f32>()
            .expect("want"),
    );

    let short = gamma_dev(&dev, &g[..k - 32], false);
    for (bad, needles) in [
        (
            InputRmsNorm {
                epsilon: -1.0,
                ..norm.clone()
            },
            &["input_rms_norm.epsilon", "-1"][..],
        ),
        (
            InputRmsNorm {
                epsilon: f32::NAN,
                ..norm.clone()
            },
            &["input_rms_norm.epsilon"][..],
        ),
        (
            InputRmsNorm {
                weight: Some(&short),
                ..norm.clone()
            },
            &["input_rms_norm.weight"][..],
        ),
    ] {
        let args = BitLinearArgs {
            input_rms_norm: Some(bad),
            ..Default::default()
        };
        assert_err(bitlinear(&xd, &wd, &args), OP, needles);
    }
}

/// Shapes past the GEMM tiling (K blocks of up to 4096 values, 16 weight rows, quads of
/// activation rows): K = 4200 splits in two blocks and a partial chunk, 37 outputs leave a
/// partial tile, 7 rows a partial quad; exact integer sums make the result the reference's.
/// The same shapes through the `Lut3` and `Base3` GEMMs (partial blocks of 32 rows, runs of
/// blocks), and `Base3` GEMVs (four blocks per kernel call, then the remainder).
#[test]
fn gemm_tiles_match_reference() {
    for (m, k, n, seed, layout) in [
        (7usize, 4200usize, 37usize, 1u64, TernaryLayout::Bits2),
        (9, 6912, 20, 2, TernaryLayout::Bits2),
        (4, 4097, 16, 3, TernaryLayout::Bits2),
        (7, 4200, 37, 1, TernaryLayout::Lut3),
        (9, 6912, 300, 2, TernaryLayout::Lut3),
        (4, 4097, 16, 3, TernaryLayout::Lut3),
        (7, 4200, 37, 1, TernaryLayout::Base3),
        (9, 6912, 300, 2, TernaryLayout::Base3),
        (4, 4097, 16, 3, TernaryLayout::Base3),
        // Past one kernel call's 128 activation rows (each call decodes its block once).
        (130, 300, 40, 6, TernaryLayout::Lut3),
        (130, 300, 40, 6, TernaryLayout::Base3),
        // GEMVs: quads of blocks and a partial quad, two threads.
        (1, 2560, 700, 4, TernaryLayout::Base3),
        (2, 6912, 260, 5, TernaryLayout::Base3),
    ] {
        let dev = Device::open(
            DeviceSpec::default()
                .with_threads(2)
                .with_ternary_layout(layout),
        )
        .expect("device");
        let mut rng = Rng::new(seed);
        let x = rng.vec(m * k, 1.0);
        let t: Vec<i8> = (0..n * k).map(|_| rng.below(3) as i8 - 1).collect();
        let xd = upload_f32(&dev, &x, &[m, k]);
        let wd = ternary_dev(&dev, &t, &[n, k]);
        let args = BitLinearArgs {
            weight_scale: 0.75,
            ..Default::default()
        };
        let y = bitlinear(&xd, &wd, &args).expect("bitlinear");
        let (_, _, want) = reference(&x, &t, k, n, 0.75, WeightScaleMode::Multiply);
        check_rel(
            &y.to_vec::<f32>().expect("y"),
            &want,
            1e-6,
            &format!("{m}x{k} @ {n}x{k} {layout:?}"),
        );
    }
}

/// Round half to even on exact ties: with absmax 127, s = 1 and x * s = x; with absmax 254,
/// s = 0.5 exactly and 5 * 0.5 = 2.5 -> 2, 7 * 0.5 = 3.5 -> 4. An identity weight passes q
/// through, so y = q / s * ws exactly.
#[test]
fn ties_round_half_to_even() {
    let dev = device();
    let k = 10;
    let x = [
        [127.0f32, 2.5, 3.5, -2.5, 0.5, -0.5, 1.5, -1.5, 126.5, -3.5],
        [254.0, 5.0, 7.0, -5.0, 1.0, -1.0, 3.0, -3.0, 253.0, -7.0],
    ]
    .concat();
    let q_want = [127, 2, 4, -2, 0, 0, 2, -2, 126, -4];
    let xd = upload(
        &dev,
        &x,
        &[2, k],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let (q, s) = quantize_activations_int8(&xd, &Default::default()).expect("quantize");
    assert_eq!(q.to_vec::<i32>().expect("q"), [q_want, q_want].concat());
    assert_eq!(s.to_vec::<f32>().expect("s"), vec![1.0, 0.5]);
    // Weight: identity on the first 5 features, minus identity on the next 5.
    let mut t = vec![0i8; k * k];
    for j in 0..k {
        t[j * k + j] = if j < 5 { 1 } else { -1 };
    }
    let wd = ternary_dev(&dev, &t, &[k, k]);
    let args = BitLinearArgs {
        weight_scale: 0.25,
        ..Default::default()
    };
    let y = bitlinear(&xd, &wd, &args)
        .expect("bitlinear")
        .to_vec::<f32>()
        .expect("y");
    for (r, s) in [1.0f32, 0.5].iter().enumerate() {
        for j in 0..k {
            let sign = if j < 5 { 1.0 } else { -1.0 };
            assert_eq!(
                y[r * k + j],
                sign * q_want[j] as f32 / s * 0.25,
                "row {r} col {j}"
            );
        }
    }
}

/// An all-zero row: absmax clamps to 1e-5 (s = 1.27e7), q = 0, output 0, no NaN.
#[test]
fn zero_row_gives_zero() {
    let dev = device();
    let (k, n) = (64, 40);
    let mut rng = Rng::new(2);
    let x = vec![0.0f32; k];
    let t: Vec<i8> = (0..n * k).map(|_| rng.below(3) as i8 - 1).collect();
    let xd = upload(
        &dev,
        &x,
        &[1, k],
        DataType::Bfloat16,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let wd = ternary_dev(&dev, &t, &[n, k]);
    for mode in [WeightScaleMode::Multiply, WeightScaleMode::Divide] {
        let args = BitLinearArgs {
            weight_scale: 3.0,
            scale_mode: mode,
            ..Default::default()
        };
        let y = bitlinear(&xd, &wd, &args)
            .expect("bitlinear")
            .to_vec::<f32>()
            .expect("y");
        assert!(y.iter().all(|&v| v == 0.0), "{mode:?}: {y:?}");
    }
    let (_, s) = quantize_activations_int8(&xd, &Default::default()).expect("quantize");
    assert_eq!(s.to_vec::<f32>().expect("s"), vec![1.27e7]);
}

/// Divide mode on a hand-computed example: q = [127, -64, 32], t = [[1, -1, 0], [0, 1, 1]],
/// acc = [191, -32], s = 1, weight_scale 4 -> y = acc / 4.
#[test]
fn divide_mode_by_hand() {
    let dev = device();
    let xd = upload(
        &dev,
        &[127.0, -64.0, 32.0],
        &[1, 3],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let wd = ternary_dev(&dev, &[1, -1, 0, 0, 1, 1], &[2, 3]);
    let args = BitLinearArgs {
        weight_scale: 4.0,
        scale_mode: WeightScaleMode::Divide,
        ..Default::default()
    };
    let y = bitlinear(&xd, &wd, &args).expect("bitlinear");
    assert_eq!(
        y.to_vec::<f32>().expect("y"),
        vec![191.0 / 4.0, -32.0 / 4.0]
    );
    let args = BitLinearArgs {
        weight_scale: 4.0,
        ..Default::default()
    };
    let y = bitlinear(&xd, &wd, &args).expect("bitlinear");
    assert_eq!(
        y.to_vec::<f32>().expect("y"),
        vec![191.0 * 4.0, -32.0 * 4.0]
    );
}

/// Bit-identical across thread counts, ternary layouts and whether a row is computed alone or
/// in a batch; large enough for the parallel paths (quantization and the N split).
#[test]
fn batch_and_thread_invariant() {
    let dev2 = device();
    let dev1 = Device::open(DeviceSpec::default().with_threads(1)).expect("device");
    let bits2 = Device::open(
        DeviceSpec::default()
            .with_threads(2)
            .with_ternary_layout(TernaryLayout::Bits2),
    )
    .expect("device");
    let mut rng = Rng::new(99);
    let (m, k, n) = (40, 640, 256);
    let x = rng.vec(m * k, 3.0);
    let t: Vec<i8> = (0..n * k).map(|_| rng.below(3) as i8 - 1).collect();
    let run = |dev: &Device, rows: &[f32], r: usize| {
        let xd = upload(
            dev,
            rows,
            &[1, 1, r, k],
            DataType::Float32,
            Layout::Tile,
            &DRAM_MEMORY_CONFIG,
        );
        let wd = ternary_dev(dev, &t, &[n, k]);
        let args = BitLinearArgs {
            weight_scale: 0.037,
            ..Default::default()
        };
        bitlinear(&xd, &wd, &args)
            .expect("bitlinear")
            .to_vec::<f32>()
            .expect("y")
    };
    let full = run(&dev2, &x, m);
    assert_eq!(full, run(&dev1, &x, m));
    assert_eq!(full, run(&bits2, &x, m));
    for r in [0, 21, 39] {
        let one = run(&dev2, &x[r * k..(r + 1) * k], 1);
        assert!(
            one.iter()
                .zip(&full[r * n..(r + 1) * n])
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "row {r}"
        );
    }
}

/// Replays recompute from the refreshed input and allocate nothing; a sharded output config
/// without a spec gets one.
#[test]
fn trace_replay_and_sharded_output() {
    let dev = device();
    let mut rng = Rng::new(4);
    let (m, k, n) = (32, 256, 320);
    let t: Vec<i8> = (0..n * k).map(|_| rng.below(3) as i8 - 1).collect();
    let wd = ternary_dev(&dev, &t, &[1, 1, n, k]);
    let mut xd = upload(
        &dev,
        &rng.vec(m * k, 1.0),
        &[1, 1, m, k],
        DataType::Bfloat16,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let args = BitLinearArgs {
        weight_scale: 0.5,
        memory_config: Some(L1_WIDTH_SHARDED_MEMORY_CONFIG),
        dtype: Some(DataType::Bfloat16),
        ..Default::default()
    };
    let id = begin_trace_capture(&dev, 0).expect("begin");
    let y = bitlinear(&xd, &wd, &args).expect("captured bitlinear");
    let trace = end_trace_capture(&dev, id, 0).expect("end");
    let mc = y.memory_config().expect("device");
    assert_eq!(mc.memory_layout, TensorMemoryLayout::WidthSharded);
    assert!(mc.shard_spec.is_some());
    for step in 0..3 {
        let x = rng.vec(m * k, 1.0);
        let host =
            Tensor::from_slice(&x, [1, 1, m, k], DataType::Bfloat16, Layout::Tile).expect("host");
        copy_host_to_device(&host, &mut xd).expect("refresh");
        let allocs = allocations_in(|| execute_trace(&dev, &trace, 0, true).expect("replay"));
        assert_eq!(allocs, 0, "replay {step} allocated");
        let x_dec = host.to_vec::<f32>().expect("x");
        let (_, _, want) = reference(&x_dec, &t, k, n, 0.5, WeightScaleMode::Multiply);
        check_rel(
            &y.to_vec::<f32>().expect("y"),
            &want,
            1e-6 + 1.0 / 256.0,
            &format!("replay {step}"),
        );
    }
}

fn assert_err<T: std::fmt::Debug>(r: ttnn::Result<T>, op: &str, needles: &[&str]) {
    let msg = match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.to_string(),
    };
    assert!(msg.starts_with(op), "message does not name {op}: {msg}");
    for n in needles {
        assert!(msg.contains(n), "message lacks {n:?}: {msg}");
    }
}

#[test]
fn validation_errors_name_the_op() {
    let dev = device();
    let (m, k, n) = (4, 64, 32);
    let x = vec![0.25f32; m * k];
    let xd = upload(
        &dev,
        &x,
        &[m, k],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let t = vec![1i8; n * k];
    let wd = ternary_dev(&dev, &t, &[n, k]);
    let ok = BitLinearArgs::default();

    let w_bf16 = upload(
        &dev,
        &vec![1.0; n * k],
        &[n, k],
        DataType::Bfloat16,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    assert_err(bitlinear(&xd, &w_bf16, &ok), OP, &["weight", "Ternary"]);
    let w_badk = ternary_dev(&dev, &vec![0i8; n * (k + 1)], &[n, k + 1]);
    assert_err(bitlinear(&xd, &w_badk, &ok), OP, &["weight", "64"]);
    let w_batched = ternary_dev(&dev, &vec![0i8; 2 * n * k], &[2, n, k]);
    assert_err(bitlinear(&xd, &w_batched, &ok), OP, &["weight"]);
    let host_x = Tensor::from_slice(&x, [m, k], DataType::Float32, Layout::Tile).expect("host");
    assert_err(bitlinear(&host_x, &wd, &ok), OP, &["input", "device"]);
    let host_w = Tensor::from_slice(&t, [n, k], DataType::Ternary, Layout::Tile).expect("host");
    assert_err(bitlinear(&xd, &host_w, &ok), OP, &["weight", "device"]);
    let x_rm = upload(
        &dev,
        &x,
        &[m, k],
        DataType::Float32,
        Layout::RowMajor,
        &DRAM_MEMORY_CONFIG,
    );
    assert_err(bitlinear(&x_rm, &wd, &ok), OP, &["input", "RowMajor"]);
    let x_bfp8 = upload(
        &dev,
        &x,
        &[m, k],
        DataType::Bfloat8B,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    assert_err(bitlinear(&x_bfp8, &wd, &ok), OP, &["input", "Bfloat8B"]);
    for ws in [f32::NAN, f32::INFINITY, 0.0] {
        let args = BitLinearArgs {
            weight_scale: ws,
            ..Default::default()
        };
        assert_err(bitlinear(&xd, &wd, &args), OP, &["weight_scale"]);
    }
    let args = BitLinearArgs {
        dtype: Some(DataType::Int32),
        ..Default::default()
    };
    assert_err(bitlinear(&xd, &wd, &args), OP, &["output"]);

    let qargs = QuantizeActivationsArgs::default();
    assert_err(
        quantize_activations_int8(&host_x, &qargs),
        QOP,
        &["input", "device"],
    );
    assert_err(
        quantize_activations_int8(&x_rm, &qargs),
        QOP,
        &["input", "RowMajor"],
    );
}

// --- HF oracle goldens (tests/fixtures, copied from the project's oracle) ---

fn fixture(path: &str) -> Vec<u8> {
    let p = format!("{}/../tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("read {p}: {e}"))
}

/// A tensor of a safetensors file as f32 values (F32, BF16, I8 and U8 dtypes), with its shape.
fn load(st: &SafeTensors<'_>, name: &str) -> (Vec<f32>, Vec<usize>) {
    let v = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    let d = v.data();
    let vals = match v.dtype() {
        Dtype::F32 => d
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::BF16 => d
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::I8 => d.iter().map(|&b| b as i8 as f32).collect(),
        Dtype::U8 => d.iter().map(|&b| b as f32).collect(),
        other => panic!("{name}: unexpected dtype {other:?}"),
    };
    (vals, v.shape().to_vec())
}

/// HF's packed ternary `[out/4, in]` unpacked to `[out, in]` (FORWARD_MATH.md: the byte at
/// `(r, c)` holds rows r, r+R, r+2R, r+3R of column c in bits 0-1, 2-3, 4-5, 6-7, code t + 1).
fn unpack_hf(packed: &[f32], shape: &[usize]) -> Vec<i8> {
    let (r_rows, cols) = (shape[0], shape[1]);
    let mut out = vec![0i8; 4 * r_rows * cols];
    for i in 0..4 {
        for r in 0..r_rows {
            for c in 0..cols {
                let byte = packed[r * cols + c] as u8;
                out[(i * r_rows + r) * cols + c] = ((byte >> (2 * i)) & 3) as i8 - 1;
            }
        }
    }
    out
}

/// The "2b4t" variant (AutoBitLinear, Multiply): q and s bit-exact; y within 2e-6 of max |y|
/// per element. HF computes `F.linear(q / s, T) * weight_scale`, summing the fake-quantized
/// f32 values q/s in its own order, so it differs from `acc / s * ws` by f32 summation error
/// (observed: 2.4e-7 of max |y|).
#[test]
fn oracle_autobitlinear_2b4t() {
    let dev = device();
    let bytes = fixture("unit_linear.safetensors");
    let st = SafeTensors::deserialize(&bytes).expect("safetensors");
    for layer in ["self_attn.q_proj", "mlp.down_proj"] {
        let key = |t: &str| format!("2b4t-format.layer0.{layer}.{t}");
        let (x, xs) = load(&st, &key("x"));
        let (t, ts) = load(&st, &key("ternary"));
        let (ws, _) = load(&st, &key("weight_scale"));
        let (xq, _) = load(&st, &key("x_q"));
        let (xscale, _) = load(&st, &key("x_scale"));
        let (y, ys) = load(&st, &key("y"));
        let (n, k) = (ts[0], ts[1]);
        assert_eq!((xs[1], ys[1]), (k, n));
        let xd = upload(
            &dev,
            &x,
            &xs,
            DataType::Float32,
            Layout::Tile,
            &DRAM_MEMORY_CONFIG,
        );
        let t8: Vec<i8> = t.iter().map(|&v| v as i8).collect();
        let wd = ternary_dev(&dev, &t8, &[n, k]);

        let (q, s) = quantize_activations_int8(&xd, &Default::default()).expect("quantize");
        let q: Vec<f32> = q
            .to_vec::<i32>()
            .expect("q")
            .iter()
            .map(|&v| v as f32)
            .collect();
        assert_eq!(q, xq, "{layer}: int8 activations");
        let s = s.to_vec::<f32>().expect("s");
        assert!(
            s.iter()
                .zip(&xscale)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{layer}: {s:?} vs {xscale:?}"
        );

        let args = BitLinearArgs {
            weight_scale: ws[0],
            ..Default::default()
        };
        let got = bitlinear(&xd, &wd, &args)
            .expect("bitlinear")
            .to_vec::<f32>()
            .expect("y");
        let ymax = y.iter().fold(0f32, |a, v| a.max(v.abs()));
        let worst = got
            .iter()
            .zip(&y)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            worst <= 2e-6 * ymax,
            "{layer}: max |diff| {worst:e} vs max |y| {ymax}"
        );
    }
}

/// The "bitlinear" variant (HF BitLinear, Divide). The unit file holds x and y only; its
/// weights are the packed tensors of the same checkpoint family: the packed codes equal the
/// 2b4t ones (`tiny-2b4t-format/model.safetensors`, the same `pack_weights` of the same master),
/// and its `weight_scale` is `bf16(scale)` with `scale = 1 / mean |W|` of the bf16 master
/// (`tiny-online-bf16`), where the 2b4t file stores `bf16(1 / scale)` (gen_oracle.py,
/// `write_variant`). Both derivations are checked against the 2b4t data before use. HF computes
/// `F.linear(q, T) / (weight_scale * s)` with exact integer sums and the same f32 scaling, so y
/// matches bit for bit. (With `s = 127 / absmax` as one division instead of torch's
/// `reciprocal(absmax) * 127`, two rows of down_proj would be 1-2 ulp off.)
#[test]
fn oracle_bitlinear_divide() {
    let dev = device();
    let unit = fixture("unit_linear.safetensors");
    let unit = SafeTensors::deserialize(&unit).expect("unit_linear");
    let packed = fixture("tiny-2b4t-format/model.safetensors");
    let packed = SafeTensors::deserialize(&packed).expect("2b4t model");
    let master = fixture("tiny-online-bf16/model.safetensors");
    let master = SafeTensors::deserialize(&master).expect("online model");
    for layer in ["self_attn.q_proj", "mlp.down_proj"] {
        let (p, ps) = load(&packed, &format!("model.layers.0.{layer}.weight"));
        let t = unpack_hf(&p, &ps);
        let (t_2b4t, ts) = load(&unit, &format!("2b4t-format.layer0.{layer}.ternary"));
        assert!(
            t.iter().zip(&t_2b4t).all(|(&a, &b)| a as f32 == b),
            "{layer}: unpacking"
        );
        let (n, k) = (ts[0], ts[1]);

        // WeightQuant's scale from the master: 1 / mean |W| in f32.
        let (w, _) = load(&master, &format!("model.layers.0.{layer}.weight"));
        let mean = (w.iter().map(|v| v.abs() as f64).sum::<f64>() / w.len() as f64) as f32;
        let scale = 1.0f32 / mean.max(1e-5);
        let codes_ok = w
            .iter()
            .zip(&t)
            .all(|(&v, &c)| (v * scale).round_ties_even().clamp(-1.0, 1.0) == c as f32);
        assert!(
            codes_ok,
            "{layer}: the derived scale does not reproduce the codes"
        );
        let (ws_2b4t, _) = load(&unit, &format!("2b4t-format.layer0.{layer}.weight_scale"));
        assert_eq!(
            bf16::from_f32(1.0 / scale).to_f32(),
            ws_2b4t[0],
            "{layer}: 2b4t scale"
        );
        let ws = bf16::from_f32(scale).to_f32();

        let (x, xs) = load(&unit, &format!("bitlinear-packed.layer0.{layer}.x"));
        let (y, _) = load(&unit, &format!("bitlinear-packed.layer0.{layer}.y"));
        let xd = upload(
            &dev,
            &x,
            &xs,
            DataType::Float32,
            Layout::Tile,
            &DRAM_MEMORY_CONFIG,
        );
        let wd = ternary_dev(&dev, &t, &[n, k]);
        let args = BitLinearArgs {
            weight_scale: ws,
            scale_mode: WeightScaleMode::Divide,
            ..Default::default()
        };
        let got = bitlinear(&xd, &wd, &args)
            .expect("bitlinear")
            .to_vec::<f32>()
            .expect("y");
        let same = got.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{layer}: not bit-identical to HF");
    }
}

/// Per-channel scales let one op compute several projections of one input (fused QKV) with the
/// very bits each separate op would give.
#[test]
fn per_channel_scales_equal_separate_layers() {
    let dev = device();
    let mut rng = Rng::new(21);
    let (m, k) = (5, 70);
    let x = upload(
        &dev,
        &rng.vec(m * k, 2.0),
        &[1, 1, m, k],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let sizes = [(24usize, 0.031f32), (8, 0.5), (8, 0.0071)];
    let mut all_t = Vec::new();
    let mut all_s = Vec::new();
    let mut separate = Vec::new();
    for &(n, scale) in &sizes {
        let t: Vec<i8> = (0..n * k).map(|_| rng.below(3) as i8 - 1).collect();
        let w = ternary_dev(&dev, &t, &[n, k]);
        let y = bitlinear(
            &x,
            &w,
            &BitLinearArgs {
                weight_scale: scale,
                ..Default::default()
            },
        )
        .expect("separate");
        separate.push((n, y.to_vec::<f32>().expect("read")));
        all_t.extend(t);
        all_s.extend(std::iter::repeat_n(scale, n));
    }
    let n_total: usize = sizes.iter().map(|s| s.0).sum();
    let w = ternary_dev(&dev, &all_t, &[n_total, k]);
    let scales = upload(
        &dev,
        &all_s,
        &[n_total],
        DataType::Float32,
        Layout::RowMajor,
        &DRAM_MEMORY_CONFIG,
    );
    let fused = bitlinear(
        &x,
        &w,
        &BitLinearArgs {
            weight_scales: Some(&scales),
            ..Default::default()
        },
    )
    .expect("fused")
    .to_vec::<f32>()
    .expect("read");
    let mut col = 0;
    for (n, y) in separate {
        for r in 0..m {
            for j in 0..n {
                assert_eq!(
                    fused[r * n_total + col + j].to_bits(),
                    y[r * n + j].to_bits()
                );
            }
        }
        col += n;
    }
    let bad = upload(
        &dev,
        &all_s[..3],
        &[3],
        DataType::Float32,
        Layout::RowMajor,
        &DRAM_MEMORY_CONFIG,
    );
    let e = bitlinear(
        &x,
        &w,
        &BitLinearArgs {
            weight_scales: Some(&bad),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("weight_scales"), "{e}");
}
