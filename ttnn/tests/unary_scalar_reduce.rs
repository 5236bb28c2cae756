//! The unary ops beyond relu/square (`neg`, `silu`, `exp`, `abs`, `reciprocal`, `round`),
//! `clamp`, the scalar binary ops, `max` over a dimension, device `to_layout` and
//! `reshape_padded`, against naive f64 references.

mod common;

use common::{Rng, assert_close, device, upload};
use proptest::prelude::*;
use ttnn::{
    BinaryArgs, DRAM_MEMORY_CONFIG, DataType, Layout, ReduceArgs, Tensor, UnaryArgs, UnaryOp,
};

/// bf16 keeps 8 significant bits: relative error <= 2^-8 after rounding.
const BF16_RTOL: f64 = 1.0 / 256.0;

fn unary_f64(op: UnaryOp, x: f64) -> f64 {
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

const NEW_UNARY: [UnaryOp; 6] = [
    UnaryOp::Neg,
    UnaryOp::Silu,
    UnaryOp::Exp,
    UnaryOp::Abs,
    UnaryOp::Reciprocal,
    UnaryOp::Round,
];

fn run_unary(op: UnaryOp, t: &Tensor, args: &UnaryArgs) -> ttnn::Result<Tensor> {
    match op {
        UnaryOp::Neg => ttnn::neg(t, args),
        UnaryOp::Silu => ttnn::silu(t, args),
        UnaryOp::Exp => ttnn::exp(t, args),
        UnaryOp::Abs => ttnn::abs(t, args),
        UnaryOp::Reciprocal => ttnn::reciprocal(t, args),
        UnaryOp::Round => ttnn::round(t, args),
        UnaryOp::Relu => ttnn::relu(t, args),
        UnaryOp::Square => ttnn::square(t, args),
    }
}

fn shape_strategy() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..24, 1..5)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn new_unary_ops_match_f64(len in 1usize..300, seed in any::<u64>(), which in 0usize..6, bf16_out in any::<bool>()) {
        let dev = device();
        let op = NEW_UNARY[which];
        let x = Rng::new(seed).vec(len, 6.0);
        let t = upload(&dev, &x, &[1, len], DataType::Float32, Layout::Tile, &DRAM_MEMORY_CONFIG);
        let dtype = if bf16_out { DataType::Bfloat16 } else { DataType::Float32 };
        let out = run_unary(op, &t, &UnaryArgs { dtype: Some(dtype), ..Default::default() }).expect("op");
        prop_assert_eq!(out.dtype(), dtype);
        let want: Vec<f64> = x.iter().map(|&v| unary_f64(op, v as f64)).collect();
        // neg, abs, round and reciprocal are exact (or correctly rounded) in f32; exp and silu
        // go through libm's expf (within an ulp or two) and silu adds a division.
        let f32_rtol = match op {
            UnaryOp::Exp | UnaryOp::Silu => 1e-6,
            _ => 6e-8,
        };
        let rtol = if bf16_out { BF16_RTOL + f32_rtol } else { f32_rtol };
        assert_close(&out.to_vec::<f32>().expect("read"), &want, 1e-30, rtol, "unary");
    }

    #[test]
    fn unary_ops_read_bf16_inputs(len in 1usize..100, seed in any::<u64>(), which in 0usize..6) {
        let dev = device();
        let op = NEW_UNARY[which];
        let x = Rng::new(seed).vec(len, 6.0);
        let t = upload(&dev, &x, &[len], DataType::Bfloat16, Layout::RowMajor, &DRAM_MEMORY_CONFIG);
        let out = run_unary(op, &t, &UnaryArgs::default()).expect("op");
        prop_assert_eq!(out.dtype(), DataType::Bfloat16);
        prop_assert_eq!(out.layout(), Layout::RowMajor);
        let want: Vec<f64> = x
            .iter()
            .map(|&v| unary_f64(op, half::bf16::from_f32(v).to_f64()))
            .collect();
        assert_close(&out.to_vec::<f32>().expect("read"), &want, 1e-30, BF16_RTOL + 1e-6, "unary bf16");
    }

    #[test]
    fn clamp_matches_torch_rules(len in 1usize..300, seed in any::<u64>(), lo in -4.0f32..4.0, width in -1.0f32..4.0) {
        let dev = device();
        let hi = lo + width; // width < 0 exercises min > max
        let x = Rng::new(seed).vec(len, 6.0);
        let t = upload(&dev, &x, &[len, 1], DataType::Float32, Layout::Tile, &DRAM_MEMORY_CONFIG);
        let out = ttnn::clamp(&t, lo, hi, &UnaryArgs::default()).expect("clamp");
        let want: Vec<f64> = x
            .iter()
            .map(|&v| {
                let v = if v < lo { lo } else { v };
                (if v > hi { hi } else { v }) as f64
            })
            .collect();
        assert_close(&out.to_vec::<f32>().expect("read"), &want, 0.0, 0.0, "clamp");
    }

    #[test]
    fn scalar_binary_ops_match_f64(
        shape in shape_strategy(),
        seed in any::<u64>(),
        op in 0usize..3,
        b in -3.0f32..3.0,
        act in any::<bool>(),
        bf16_out in any::<bool>(),
    ) {
        let dev = device();
        let n: usize = shape.iter().product();
        let a = Rng::new(seed).vec(n, 3.0);
        let ta = upload(&dev, &a, &shape, DataType::Float32, Layout::Tile, &DRAM_MEMORY_CONFIG);
        let dtype = if bf16_out { DataType::Bfloat16 } else { DataType::Float32 };
        let acts = if act { vec![UnaryOp::Relu, UnaryOp::Square] } else { vec![] };
        let args = BinaryArgs { dtype: Some(dtype), input_tensor_a_activations: acts, ..Default::default() };
        let out = match op {
            0 => ttnn::add_scalar(&ta, b, &args),
            1 => ttnn::subtract_scalar(&ta, b, &args),
            _ => ttnn::multiply_scalar(&ta, b, &args),
        }
        .expect("op");
        prop_assert_eq!(out.shape().dims().to_vec(), shape.clone());
        prop_assert_eq!(out.dtype(), dtype);
        let want: Vec<f64> = a
            .iter()
            .map(|&v| {
                let x = if act { (v as f64).max(0.0).powi(2) } else { v as f64 };
                let y = b as f64;
                match op { 0 => x + y, 1 => x - y, _ => x * y }
            })
            .collect();
        // Two f32 roundings at most (activation, op), relative to the operands' magnitude.
        let rtol = if bf16_out { BF16_RTOL + 1e-6 } else { 1e-6 };
        assert_close(&out.to_vec::<f32>().expect("read"), &want, 1e-5, rtol, "binary scalar");
    }

    #[test]
    fn max_over_any_dim(
        shape in shape_strategy(),
        seed in any::<u64>(),
        dim_pick in any::<prop::sample::Index>(),
        negative in any::<bool>(),
        keepdim in any::<bool>(),
        bf16 in any::<bool>(),
    ) {
        let dev = device();
        let rank = shape.len();
        prop_assume!(keepdim || rank > 1);
        let d = dim_pick.index(rank);
        let dim = if negative { d as i32 - rank as i32 } else { d as i32 };
        let n: usize = shape.iter().product();
        let x = Rng::new(seed).vec(n, 5.0);
        let dtype = if bf16 { DataType::Bfloat16 } else { DataType::Float32 };
        let t = upload(&dev, &x, &shape, dtype, Layout::Tile, &DRAM_MEMORY_CONFIG);
        let out = ttnn::max(&t, dim, &ReduceArgs { keepdim, ..Default::default() }).expect("max");
        let mut want_shape = shape.clone();
        if keepdim { want_shape[d] = 1; } else { want_shape.remove(d); }
        prop_assert_eq!(out.shape().dims().to_vec(), want_shape);
        prop_assert_eq!(out.dtype(), dtype);
        prop_assert_eq!(out.layout(), Layout::Tile);
        let stored: Vec<f64> = Tensor::from_slice(&x, &shape[..], dtype, Layout::Tile)
            .expect("host")
            .to_vec::<f32>()
            .expect("read")
            .into_iter()
            .map(f64::from)
            .collect();
        let outer: usize = shape[..d].iter().product();
        let inner: usize = shape[d + 1..].iter().product();
        let mut want = vec![f64::NEG_INFINITY; outer * inner];
        for o in 0..outer {
            for r in 0..shape[d] {
                for i in 0..inner {
                    let w = &mut want[o * inner + i];
                    *w = w.max(stored[(o * shape[d] + r) * inner + i]);
                }
            }
        }
        // The max of stored values is one of them: exact.
        assert_close(&out.to_vec::<f32>().expect("read"), &want, 0.0, 0.0, "max");
    }
}

#[test]
fn round_is_half_to_even_and_reciprocal_is_ieee() {
    let dev = device();
    let x = [0.5f32, 1.5, 2.5, -0.5, -1.5, -2.5, 2.4999, 0.0, -0.0, 7.0];
    let t = upload(
        &dev,
        &x,
        &[x.len()],
        DataType::Float32,
        Layout::RowMajor,
        &DRAM_MEMORY_CONFIG,
    );
    let r = ttnn::round(&t, &UnaryArgs::default())
        .expect("round")
        .to_vec::<f32>()
        .expect("read");
    assert_eq!(
        r,
        vec![0.0, 2.0, 2.0, -0.0, -2.0, -2.0, 2.0, 0.0, -0.0, 7.0]
    );
    let q = ttnn::reciprocal(&t, &UnaryArgs::default())
        .expect("reciprocal")
        .to_vec::<f32>()
        .expect("read");
    assert_eq!(q[7], f32::INFINITY);
    assert_eq!(q[8], f32::NEG_INFINITY);
    assert_eq!(q[1], 1.0 / 1.5);
}

#[test]
fn clamp_propagates_nan_and_max_ignores_it() {
    let dev = device();
    let x = [f32::NAN, -9.0, 9.0, 0.25];
    let t = upload(
        &dev,
        &x,
        &[1, 4],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let c = ttnn::clamp(&t, -1.0, 1.0, &UnaryArgs::default())
        .expect("clamp")
        .to_vec::<f32>()
        .expect("read");
    assert!(c[0].is_nan());
    assert_eq!(&c[1..], &[-1.0, 1.0, 0.25]);
    let m = ttnn::max(&t, -1, &ReduceArgs::default()).expect("max");
    assert_eq!(m.shape().dims(), &[1]);
    assert_eq!(m.to_vec::<f32>().expect("read"), vec![9.0]);
    let all_nan = upload(
        &dev,
        &[f32::NAN; 3],
        &[3, 1],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let m = ttnn::max(&all_nan, 0, &ReduceArgs::default()).expect("max");
    assert!(m.to_vec::<f32>().expect("read")[0].is_nan());
}

#[test]
fn max_and_unary_errors_name_the_op() {
    let dev = device();
    let t = upload(
        &dev,
        &[1.0, 2.0],
        &[2],
        DataType::Float32,
        Layout::RowMajor,
        &DRAM_MEMORY_CONFIG,
    );
    let e = ttnn::max(&t, 1, &ReduceArgs::default()).unwrap_err();
    assert!(
        e.to_string().starts_with("ttnn::max:") && e.to_string().contains("dim 1"),
        "{e}"
    );
    let e = ttnn::max(&t, -1, &ReduceArgs::default()).unwrap_err();
    assert!(e.to_string().contains("keepdim"), "{e}");
    let host = Tensor::from_slice(&[1.0f32], [1], DataType::Float32, Layout::RowMajor)
        .expect("host tensor");
    let e = ttnn::abs(&host, &UnaryArgs::default()).unwrap_err();
    assert!(e.to_string().starts_with("ttnn::abs:"), "{e}");
    let ints = upload(
        &dev,
        &[1.0, 2.0],
        &[2],
        DataType::Int32,
        Layout::RowMajor,
        &DRAM_MEMORY_CONFIG,
    );
    let e = ttnn::add_scalar(&ints, 1.0, &BinaryArgs::default()).unwrap_err();
    assert!(e.to_string().starts_with("ttnn::add:"), "{e}");
}

#[test]
fn to_layout_on_the_device_is_bit_exact_and_traceable() {
    let dev = device();
    let x = Rng::new(7).vec(5 * 70, 2.0);
    let tile = upload(
        &dev,
        &x,
        &[1, 5, 70],
        DataType::Bfloat16,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let rm = ttnn::to_layout(&tile, Layout::RowMajor).expect("untilize");
    assert_eq!(rm.layout(), Layout::RowMajor);
    assert_eq!(rm.padded_shape().dims(), &[1, 5, 70]);
    assert!(!rm.shares_buffer_with(&tile));
    assert_eq!(
        rm.to_vec::<half::bf16>().expect("read"),
        tile.to_vec::<half::bf16>().expect("read")
    );
    let back = ttnn::to_layout(&rm, Layout::Tile).expect("tilize");
    assert_eq!(back.padded_shape().dims(), &[1, 32, 96]);
    assert_eq!(
        back.to_vec::<half::bf16>().expect("read"),
        tile.to_vec::<half::bf16>().expect("read")
    );
    // Same layout: the same buffer, as TT-NN returns the input.
    assert!(
        ttnn::to_layout(&tile, Layout::Tile)
            .expect("no-op")
            .shares_buffer_with(&tile)
    );
    // Host tensors convert without a device.
    let host = Tensor::from_slice(&x, [5, 70], DataType::Float32, Layout::Tile).expect("host");
    assert_eq!(
        ttnn::to_layout(&host, Layout::RowMajor)
            .expect("host")
            .layout(),
        Layout::RowMajor
    );
    // Block floats exist only in TILE layout.
    let bfp8 = upload(
        &dev,
        &x,
        &[5, 70],
        DataType::Bfloat8B,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let e = ttnn::to_layout(&bfp8, Layout::RowMajor).unwrap_err();
    assert!(e.to_string().starts_with("ttnn::to_layout:"), "{e}");

    // Inside a trace the conversion is recorded and replayed.
    let mut input = upload(
        &dev,
        &[0.0; 4],
        &[2, 2],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let id = ttnn::begin_trace_capture(&dev, 0).expect("begin");
    let out = ttnn::to_layout(&input, Layout::RowMajor).expect("captured");
    let trace = ttnn::end_trace_capture(&dev, id, 0).expect("end");
    let fresh = Tensor::from_slice(
        &[1.0f32, 2.0, 3.0, 4.0],
        [2, 2],
        DataType::Float32,
        Layout::Tile,
    )
    .expect("host");
    ttnn::copy_host_to_device(&fresh, &mut input).expect("write");
    ttnn::execute_trace(&dev, &trace, 0, true).expect("replay");
    assert_eq!(out.to_vec::<f32>().expect("read"), vec![1.0, 2.0, 3.0, 4.0]);
}

#[test]
fn reshape_padded_takes_only_the_layouts_padding() {
    let dev = device();
    let t = upload(
        &dev,
        &[1.0; 64],
        &[1, 1, 1, 64],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let v = ttnn::reshape_padded(&t, [1, 1, 2, 32], [1, 1, 32, 32]).expect("tile padding");
    assert_eq!(v.shape().dims(), &[1, 1, 2, 32]);
    assert_eq!(v.padded_shape().dims(), &[1, 1, 32, 32]);
    assert!(v.shares_buffer_with(&t));
    let e = ttnn::reshape_padded(&t, [1, 1, 2, 32], [1, 1, 64, 32]).unwrap_err();
    assert!(
        e.to_string().contains("[1, 1, 32, 32]") && e.to_string().starts_with("ttnn::reshape:"),
        "{e}"
    );
    let e = ttnn::reshape_padded(&t, [1, 1, 2, 32], [1, 32, 32]).unwrap_err();
    assert!(e.to_string().contains("padded shape"), "{e}");
}
