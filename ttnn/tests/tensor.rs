//! Tensor construction, dtype conversion, round trips and RAII.

mod common;

use common::{Rng, device};
use proptest::prelude::*;
use ttnn::{DRAM_MEMORY_CONFIG, DataType, Layout, Tensor, copy_host_to_device};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Block floats through the public API: values decode to what the TT encoding gives, and
    /// re-encoding decoded values is exact (they are representable).
    #[test]
    fn block_float_round_trips(rows in 1usize..5, cols in 1usize..80, seed in any::<u64>(), bfp4 in any::<bool>()) {
        let mut rng = Rng::new(seed);
        let x: Vec<f32> = (0..rows * cols).map(|_| rng.uniform() * (1 << rng.below(6)) as f32).collect();
        let dtype = if bfp4 { DataType::Bfloat4B } else { DataType::Bfloat8B };
        let t = Tensor::from_slice(&x, [rows, cols], dtype, Layout::Tile).expect("encode");
        let once = t.to_vec::<f32>().expect("decode");
        let twice = Tensor::from_slice(&once, [rows, cols], dtype, Layout::Tile).expect("re-encode").to_vec::<f32>().expect("decode");
        prop_assert_eq!(&once, &twice);
        // Error bound: half a unit of the group's last mantissa bit, unit = 2^(e_max - (bits-1)).
        let bits = if bfp4 { 3 } else { 7 };
        for r in 0..rows {
            for g in (0..cols).step_by(16) {
                let grp = &x[r * cols + g..r * cols + (g + 16).min(cols)];
                let emax = grp.iter().map(|v| if *v == 0.0 { i32::MIN } else { ((v.to_bits() >> 23) & 0xff) as i32 }).max().unwrap_or(i32::MIN);
                if emax == i32::MIN { continue; }
                let unit = 2f64.powi(emax - 127 - (bits - 1));
                for (i, &v) in grp.iter().enumerate() {
                    let d = once[r * cols + g + i] as f64;
                    // Saturation of the largest value can cost one full unit.
                    prop_assert!((d - v as f64).abs() <= unit + 1e-30, "{} -> {} (unit {})", v, d, unit);
                }
            }
        }
    }

    #[test]
    fn ternary_round_trips_through_the_device(rows in 1usize..6, cols in 1usize..90, seed in any::<u64>()) {
        let dev = device();
        let mut rng = Rng::new(seed);
        let t: Vec<i8> = (0..rows * cols).map(|_| rng.below(3) as i8 - 1).collect();
        let h = Tensor::from_slice(&t, [rows, cols], DataType::Ternary, Layout::Tile).expect("pack");
        let d = h.to_device(&dev, &DRAM_MEMORY_CONFIG).expect("upload");
        prop_assert_eq!(d.to_vec::<i8>().expect("unpack"), t.clone());
        let f: Vec<f32> = t.iter().map(|&v| v as f32).collect();
        prop_assert_eq!(d.to_vec::<f32>().expect("as f32"), f);
    }
}

#[test]
fn conversions_check_their_input() {
    let e = Tensor::from_slice(&[0.5f32, 1.0], [2], DataType::Ternary, Layout::Tile)
        .unwrap_err()
        .to_string();
    assert!(e.contains("0.5 is not -1, 0 or 1"), "{e}");
    // i8 values are checked a chunk at a time: a bad one far from the start is still found.
    let mut v = vec![1i8; 3 * 4096 + 7];
    v[2 * 4096 + 5] = -2;
    let e = Tensor::from_vec(v, [3 * 4096 + 7], DataType::Ternary, Layout::Tile)
        .unwrap_err()
        .to_string();
    assert!(e.contains("-2 is not -1, 0 or 1"), "{e}");
    let e = Tensor::from_slice(&[1.0f32; 3], [2, 2], DataType::Float32, Layout::Tile)
        .unwrap_err()
        .to_string();
    assert!(e.contains("3 values do not fill shape [2, 2]"), "{e}");
    let e = Tensor::from_slice(&[1.0f32; 4], [2, 2], DataType::Bfloat8B, Layout::RowMajor)
        .unwrap_err()
        .to_string();
    assert!(e.contains("Tile"), "{e}");
    let e = Tensor::from_slice(&[300i32], [1], DataType::Uint8, Layout::RowMajor)
        .unwrap_err()
        .to_string();
    assert!(e.contains("300 is out of range"), "{e}");
    let t = Tensor::from_slice(&[1.5f32], [1], DataType::Float32, Layout::RowMajor).expect("f32");
    let e = t.to_vec::<u32>().unwrap_err().to_string();
    assert!(e.contains("u32"), "{e}");
}

#[test]
fn ndarray_in_and_out() {
    let a = ndarray::Array2::from_shape_fn((3, 4), |(i, j)| (i * 4 + j) as f32);
    let t = Tensor::from_array(&a, DataType::Bfloat16, Layout::Tile).expect("from_array");
    assert_eq!(t.shape().dims(), &[3, 4]);
    assert_eq!(t.padded_shape().dims(), &[32, 32]);
    let back = t.to_ndarray::<f32>().expect("to_ndarray");
    assert_eq!(back.into_dimensionality::<ndarray::Ix2>().expect("2-D"), a);
    // A transposed view is read in logical order.
    let tt = Tensor::from_array(&a.t(), DataType::Float32, Layout::RowMajor).expect("from view");
    assert_eq!(tt.to_vec::<f32>().expect("read")[..4], [0.0, 4.0, 8.0, 1.0]);
}

#[test]
fn device_tensors_free_their_memory_and_refresh_in_place() {
    let dev = device();
    let base = dev.memory_report().dram.in_use;
    let h =
        Tensor::from_slice(&[1.0f32, 2.0], [1, 2], DataType::Float32, Layout::Tile).expect("host");
    let mut d = h.to_device(&dev, &DRAM_MEMORY_CONFIG).expect("upload");
    let alias = d.clone();
    assert!(d.is_on_device() && d.shares_buffer_with(&alias));
    let h2 =
        Tensor::from_slice(&[5.0f32, 6.0], [1, 2], DataType::Float32, Layout::Tile).expect("host");
    copy_host_to_device(&h2, &mut d).expect("refresh");
    assert_eq!(alias.to_vec::<f32>().expect("read"), vec![5.0, 6.0]);
    let wrong = Tensor::from_slice(&[5.0f32, 6.0, 7.0], [1, 3], DataType::Float32, Layout::Tile)
        .expect("host");
    let e = copy_host_to_device(&wrong, &mut d).unwrap_err().to_string();
    assert!(
        e.contains("copy_host_to_device") && e.contains("[1, 3]"),
        "{e}"
    );
    let wrong =
        Tensor::from_slice(&[5.0f32, 6.0], [1, 2], DataType::Bfloat16, Layout::Tile).expect("host");
    assert!(copy_host_to_device(&wrong, &mut d).is_err());
    drop(d);
    assert!(
        dev.memory_report().dram.in_use > base,
        "the clone keeps the buffer"
    );
    drop(alias);
    assert_eq!(dev.memory_report().dram.in_use, base);
    let back = h
        .to_device(&dev, &DRAM_MEMORY_CONFIG)
        .expect("upload")
        .to_host()
        .expect("read back");
    assert!(!back.is_on_device());
    assert_eq!(back.to_vec::<f32>().expect("read"), vec![1.0, 2.0]);
}
