//! `slice` against a naive reference, and `zeros` on the device.

mod common;

use common::{Rng, device, upload};
use proptest::prelude::*;
use ttnn::ops::creation::zeros;
use ttnn::ops::data_movement::{SliceArgs, slice};
use ttnn::{DRAM_MEMORY_CONFIG, DataType, Layout};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn slice_matches_naive(
        dims in prop::collection::vec(1usize..9, 1..5),
        cuts in prop::collection::vec((0.0f64..1.0, 0.0f64..1.0), 4),
        seed in any::<u64>(),
        dtype in prop::sample::select(vec![DataType::Float32, DataType::Bfloat16, DataType::Int32, DataType::Bfloat8B]),
    ) {
        let dev = device();
        let n: usize = dims.iter().product();
        let mut rng = Rng::new(seed);
        let x: Vec<f32> = (0..n).map(|_| (rng.below(200) as f32) - 100.0).collect();
        let t = upload(&dev, &x, &dims, dtype, Layout::Tile, &DRAM_MEMORY_CONFIG);
        let xs = t.to_vec::<f32>().expect("stored values");
        let (mut starts, mut ends) = (vec![], vec![]);
        for (d, &len) in dims.iter().enumerate() {
            let (a, b) = cuts[d];
            let s = (a * len as f64) as usize % len;
            let e = s + 1 + ((b * (len - s) as f64) as usize).min(len - s - 1);
            starts.push(s);
            ends.push(e);
        }
        let out = slice(&t, &starts, &ends, &SliceArgs::default()).expect("slice");
        let out_dims: Vec<usize> = starts.iter().zip(&ends).map(|(s, e)| e - s).collect();
        let out_shape = out.shape();
        prop_assert_eq!(out_shape.dims(), &out_dims[..]);
        let mut want = Vec::new();
        let total: usize = out_dims.iter().product();
        for i in 0..total {
            let (mut rem, mut off, mut stride) = (i, 0, 1);
            let mut idx = vec![0; dims.len()];
            for d in (0..dims.len()).rev() {
                idx[d] = rem % out_dims[d] + starts[d];
                rem /= out_dims[d];
            }
            for d in (0..dims.len()).rev() {
                off += idx[d] * stride;
                stride *= dims[d];
            }
            want.push(xs[off]);
        }
        let got = out.to_vec::<f32>().expect("read");
        if dtype == DataType::Bfloat8B {
            // Re-grouping by 16 can re-quantize: compare within the group's precision.
            for (g, w) in got.iter().zip(&want) {
                prop_assert!((g - w).abs() <= 100.0 / 64.0, "{} vs {}", g, w);
            }
        } else {
            prop_assert_eq!(got, want);
        }
    }
}

#[test]
fn slice_checks_ranges_and_zeros_allocate_on_device() {
    let dev = device();
    let t = upload(
        &dev,
        &[1.0; 6],
        &[2, 3],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let e = slice(&t, &[0, 2], &[2, 2], &SliceArgs::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("ttnn::slice") && e.contains("dimension 1"),
        "{e}"
    );
    let e = slice(&t, &[0], &[1], &SliceArgs::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("2 entries"), "{e}");
    let before = dev.memory_report().dram.in_use;
    let z = zeros(
        [4, 64, 32],
        DataType::Bfloat16,
        Layout::Tile,
        &dev,
        &DRAM_MEMORY_CONFIG,
    )
    .expect("zeros");
    assert!(dev.memory_report().dram.in_use > before);
    assert!(z.to_vec::<f32>().expect("read").iter().all(|&v| v == 0.0));
    let e = zeros(
        [4],
        DataType::Bfloat8B,
        Layout::RowMajor,
        &dev,
        &DRAM_MEMORY_CONFIG,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("ttnn::zeros"), "{e}");
}
