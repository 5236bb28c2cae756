//! Elementwise ops against naive f64 references.

mod common;

use common::{Rng, assert_close, device, upload, upload_f32};
use proptest::prelude::*;
use ttnn::{BinaryArgs, DRAM_MEMORY_CONFIG, DataType, Layout, UnaryArgs, UnaryOp};

fn shape_strategy() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..40, 1..4)
}

/// bf16 keeps 8 significant bits: relative error <= 2^-8 after rounding.
const BF16_RTOL: f64 = 1.0 / 256.0;

fn round_out(v: f64, dtype: DataType) -> f64 {
    match dtype {
        DataType::Bfloat16 => bf16_nearest_even(v),
        _ => v,
    }
}

/// The bf16 nearest to `v` (ties to even), in plain f64 arithmetic. Not `half::bf16::from_f64`:
/// that rounds wrongly at some near-ties (2.914064_f32, bits 0x403a8006, lies above the midpoint
/// 0x403a8000, so it rounds up to 2.921875; `from_f64` gives 2.90625).
fn bf16_nearest_even(v: f64) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    // Exponent of the leading bit, corrected where log2 rounds across a power of two.
    let mut e = v.abs().log2().floor() as i32;
    if 2f64.powi(e) > v.abs() {
        e -= 1;
    } else if 2f64.powi(e + 1) <= v.abs() {
        e += 1;
    }
    // bf16 keeps 8 significant bits (normal range; the tests stay far from subnormals).
    let ulp = 2f64.powi(e - 7);
    (v / ulp).round_ties_even() * ulp
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn binary_ops_broadcast_like_numpy(
        shape in shape_strategy(),
        bmask in prop::collection::vec(any::<bool>(), 3),
        seed in any::<u64>(),
        op in 0usize..3,
        act in any::<bool>(),
        out_bf16 in any::<bool>(),
    ) {
        let dev = device();
        let mut rng = Rng::new(seed);
        let n: usize = shape.iter().product();
        // b keeps a dimension or broadcasts it (size 1), per mask.
        let bshape: Vec<usize> = shape.iter().enumerate().map(|(i, &d)| if bmask[i % 3] { d } else { 1 }).collect();
        let nb: usize = bshape.iter().product();
        let a = rng.vec(n, 3.0);
        let b = rng.vec(nb, 3.0);
        let ta = upload(&dev, &a, &shape, DataType::Float32, Layout::Tile, &DRAM_MEMORY_CONFIG);
        let tb = upload(&dev, &b, &bshape, DataType::Float32, Layout::Tile, &DRAM_MEMORY_CONFIG);
        let dtype = if out_bf16 { DataType::Bfloat16 } else { DataType::Float32 };
        let acts = if act { vec![UnaryOp::Relu, UnaryOp::Square] } else { vec![] };
        let args = BinaryArgs { dtype: Some(dtype), input_tensor_a_activations: acts, ..Default::default() };
        let out = match op {
            0 => ttnn::add(&ta, &tb, &args),
            1 => ttnn::subtract(&ta, &tb, &args),
            _ => ttnn::multiply(&ta, &tb, &args),
        }.expect("op");
        let out_shape = out.shape();
        prop_assert_eq!(out_shape.dims(), &shape[..]);
        prop_assert_eq!(out.dtype(), dtype);
        let mut want = vec![0f64; n];
        let rank = shape.len();
        for (i, w) in want.iter_mut().enumerate() {
            // Index of b under broadcasting.
            let (mut rem, mut bi, mut stride) = (i, 0usize, 1usize);
            let mut coords = vec![0usize; rank];
            for d in (0..rank).rev() {
                coords[d] = rem % shape[d];
                rem /= shape[d];
            }
            for d in (0..rank).rev() {
                if bshape[d] != 1 {
                    bi += coords[d] * stride;
                }
                stride *= bshape[d];
            }
            let mut x = a[i] as f64;
            if act {
                x = x.max(0.0).powi(2);
            }
            let y = b[bi] as f64;
            *w = match op { 0 => x + y, 1 => x - y, _ => x * y };
        }
        // f32 arithmetic: one rounding per op (~1.2e-7 relative, a few ops); a bf16 output adds
        // at most half a bf16 ulp (2^-8 relative).
        let rtol = if out_bf16 { BF16_RTOL + 1e-6 } else { 1e-6 };
        assert_close(&out.to_vec::<f32>().expect("read"), &want, 1e-6, rtol, "binary");
    }

    #[test]
    fn unary_ops_and_typecast(len in 1usize..200, seed in any::<u64>(), which in 0usize..3) {
        let dev = device();
        let x = Rng::new(seed).vec(len, 4.0);
        let t = upload(&dev, &x, &[1, len], DataType::Float32, Layout::Tile, &DRAM_MEMORY_CONFIG);
        let (out, want): (_, Vec<f64>) = match which {
            0 => (ttnn::relu(&t, &UnaryArgs::default()), x.iter().map(|&v| (v as f64).max(0.0)).collect()),
            1 => (ttnn::square(&t, &UnaryArgs::default()), x.iter().map(|&v| (v as f64).powi(2)).collect()),
            _ => (
                ttnn::typecast(&t, DataType::Bfloat16, None),
                x.iter().map(|&v| round_out(v as f64, DataType::Bfloat16)).collect(),
            ),
        };
        let out = out.expect("op");
        assert_close(&out.to_vec::<f32>().expect("read"), &want, 0.0, 1.2e-7, "unary");
    }
}

#[test]
fn typecast_between_integer_and_float_types() {
    let dev = device();
    let t = upload(
        &dev,
        &[3.0, -2.0, 7.0],
        &[3],
        DataType::Int32,
        Layout::RowMajor,
        &DRAM_MEMORY_CONFIG,
    );
    let u = ttnn::typecast(&t, DataType::Uint32, None).expect("typecast");
    assert_eq!(u.to_vec::<u32>().expect("read"), vec![3, (-2i32) as u32, 7]);
    let f = ttnn::typecast(&t, DataType::Float32, None).expect("typecast");
    assert_eq!(f.to_vec::<f32>().expect("read"), vec![3.0, -2.0, 7.0]);
    let back = ttnn::typecast(&f, DataType::Int32, None).expect("typecast");
    assert_eq!(back.to_vec::<i32>().expect("read"), vec![3, -2, 7]);
    // Block floats exist only in tile layout.
    let e = ttnn::typecast(&f, DataType::Bfloat8B, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("ttnn::typecast") && e.contains("Tile"), "{e}");
}

#[test]
fn binary_errors_name_the_op() {
    let dev = device();
    let a = upload(
        &dev,
        &[1.0; 6],
        &[2, 3],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let b = upload(
        &dev,
        &[1.0; 4],
        &[2, 2],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let e = ttnn::add(&a, &b, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("ttnn::add") && e.contains("broadcastable"),
        "{e}"
    );
    let i = upload(
        &dev,
        &[1.0; 6],
        &[2, 3],
        DataType::Int32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let e = ttnn::multiply(&a, &i, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("ttnn::multiply") && e.contains("Int32"), "{e}");
    let host = ttnn::Tensor::from_slice(&[1.0f32; 6], [2, 3], DataType::Float32, Layout::Tile)
        .expect("host");
    let e = ttnn::add(&a, &host, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("ttnn::add") && e.contains("device"), "{e}");
    let other = device();
    let c = upload(
        &other,
        &[1.0; 6],
        &[2, 3],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let e = ttnn::add(&a, &c, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("same device"), "{e}");
}

/// Regression: proptest found a near-tie (len 56, seed 17169737230791528630, element 55) where
/// the old reference, `half::bf16::from_f64`, rounded down; f32 -> bf16 must round to nearest.
#[test]
fn typecast_bf16_rounds_near_ties_to_nearest() {
    let dev = device();
    let x = Rng::new(17169737230791528630).vec(56, 4.0);
    assert_eq!(x[55].to_bits(), 0x403a_8006, "test data changed");
    let t = upload_f32(&dev, &x, &[1, 56]);
    let out = ttnn::typecast(&t, DataType::Bfloat16, None).expect("typecast");
    let got = out.to_vec::<f32>().expect("read");
    assert_eq!(got[55], 2.921875);
    let want: Vec<f64> = x.iter().map(|&v| bf16_nearest_even(v as f64)).collect();
    assert_close(&got, &want, 0.0, 0.0, "typecast");
}

/// Same-shape binary ops on f32 and bf16 storage (the host's fused run path) give exactly the
/// f32 arithmetic of the stored inputs, rounded once to the output type, at lengths around
/// the kernel's 512-value runs and past the size that splits work across threads.
#[test]
fn same_shape_binary_is_f32_arithmetic_rounded_once() {
    use half::bf16;
    let dev = device();
    let mut rng = Rng::new(7);
    let stored = |v: &[f32], dt: DataType| -> Vec<f32> {
        match dt {
            DataType::Bfloat16 => v.iter().map(|&x| bf16::from_f32(x).to_f32()).collect(),
            _ => v.to_vec(),
        }
    };
    let (f32_, bf16_) = (DataType::Float32, DataType::Bfloat16);
    for n in [1usize, 511, 512, 513, 1537, 40_000] {
        for (adt, bdt, odt) in [
            (bf16_, bf16_, bf16_),
            (bf16_, f32_, f32_),
            (f32_, bf16_, bf16_),
        ] {
            let (a, b) = (rng.vec(n, 3.0), rng.vec(n, 3.0));
            let ta = upload(&dev, &a, &[n], adt, Layout::Tile, &DRAM_MEMORY_CONFIG);
            let tb = upload(&dev, &b, &[n], bdt, Layout::Tile, &DRAM_MEMORY_CONFIG);
            let (a, b) = (stored(&a, adt), stored(&b, bdt));
            for (op, act) in [(0, false), (2, true), (1, true)] {
                let acts = if act {
                    vec![UnaryOp::Relu, UnaryOp::Square]
                } else {
                    vec![]
                };
                let args = BinaryArgs {
                    dtype: Some(odt),
                    input_tensor_a_activations: acts,
                    ..Default::default()
                };
                let out = match op {
                    0 => ttnn::add(&ta, &tb, &args),
                    1 => ttnn::subtract(&ta, &tb, &args),
                    _ => ttnn::multiply(&ta, &tb, &args),
                }
                .expect("op");
                let got = out.to_vec::<f32>().expect("read");
                for i in 0..n {
                    let mut x = a[i];
                    if act {
                        x = x.max(0.0);
                        x *= x;
                    }
                    let r = match op {
                        0 => x + b[i],
                        1 => x - b[i],
                        _ => x * b[i],
                    };
                    let want = stored(&[r], odt)[0];
                    assert_eq!(
                        got[i].to_bits(),
                        want.to_bits(),
                        "n {n}, {adt:?} op{op} {bdt:?} -> {odt:?}, element {i}: {} vs {want}",
                        got[i]
                    );
                }
            }
        }
    }
}
