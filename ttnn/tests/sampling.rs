//! argmax, topk, sampling and plus_one against naive references.

mod common;

use common::{Rng, device, upload};
use proptest::prelude::*;
use ttnn::ops::sampling::{
    ArgmaxArgs, PlusOneArgs, SamplingArgs, TopkArgs, argmax, plus_one, sampling, topk,
};
use ttnn::{DRAM_MEMORY_CONFIG, DataType, Layout, Tensor};

fn upload_rm<T: ttnn::Element>(
    dev: &ttnn::Device,
    v: &[T],
    shape: &[usize],
    dtype: DataType,
) -> Tensor {
    Tensor::from_slice(v, shape, dtype, Layout::RowMajor)
        .expect("host tensor")
        .to_device(dev, &DRAM_MEMORY_CONFIG)
        .expect("to_device")
}

/// Reference top-k: sort positions by value desc, ties by position asc.
fn naive_topk(row: &[f32], k: usize, largest: bool) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| {
        let (va, vb) = if largest {
            (row[a], row[b])
        } else {
            (-row[a], -row[b])
        };
        vb.partial_cmp(&va)
            .expect("no NaN in test data")
            .then(a.cmp(&b))
    });
    idx.truncate(k);
    idx
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn argmax_matches_naive(rows in 1usize..40, width in 1usize..300, seed in any::<u64>(), keepdim in any::<bool>()) {
        let dev = device();
        let mut rng = Rng::new(seed);
        // Coarse values so that ties happen.
        let x: Vec<f32> = (0..rows * width).map(|_| (rng.below(7) as f32) - 3.0).collect();
        let t = upload(&dev, &x, &[1, rows, width], DataType::Float32, Layout::Tile, &DRAM_MEMORY_CONFIG);
        let out = argmax(&t, &ArgmaxArgs { dim: Some(-1), keepdim, ..Default::default() }).expect("argmax");
        let want_shape: &[usize] = if keepdim { &[1, rows, 1] } else { &[1, rows] };
        let out_shape = out.shape();
        prop_assert_eq!(out_shape.dims(), want_shape);
        prop_assert_eq!(out.dtype(), DataType::Uint32);
        let got = out.to_vec::<u32>().expect("read");
        for r in 0..rows {
            prop_assert_eq!(got[r] as usize, naive_topk(&x[r * width..(r + 1) * width], 1, true)[0]);
        }
    }

    #[test]
    fn topk_matches_naive(rows in 1usize..20, width in 1usize..200, kfrac in 0.0f64..1.0, seed in any::<u64>(), largest in any::<bool>()) {
        let dev = device();
        let mut rng = Rng::new(seed);
        let x: Vec<f32> = (0..rows * width).map(|_| (rng.below(50) as f32) * 0.25).collect();
        let k = 1 + ((width - 1) as f64 * kfrac) as usize;
        let t = upload(&dev, &x, &[rows, width], DataType::Float32, Layout::Tile, &DRAM_MEMORY_CONFIG);
        let (vals, idx) = topk(&t, k as u32, &TopkArgs { largest, ..Default::default() }).expect("topk");
        prop_assert_eq!(idx.dtype(), DataType::Uint16);
        let (v, i) = (vals.to_vec::<f32>().expect("vals"), idx.to_vec::<u32>().expect("idx"));
        for r in 0..rows {
            let row = &x[r * width..(r + 1) * width];
            let want = naive_topk(row, k, largest);
            for j in 0..k {
                prop_assert_eq!(i[r * k + j] as usize, want[j]);
                prop_assert_eq!(v[r * k + j], row[want[j]]);
            }
        }
    }
}

#[test]
fn topk_reports_given_indices_and_bf16_values() {
    let dev = device();
    let x = [0.5f32, 2.0, -1.0, 3.0];
    let t = upload(
        &dev,
        &x,
        &[1, 4],
        DataType::Bfloat16,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let ids = upload(
        &dev,
        &[100.0, 101.0, 102.0, 103.0],
        &[1, 4],
        DataType::Uint32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let (v, i) = topk(
        &t,
        2,
        &TopkArgs {
            indices_tensor: Some(&ids),
            ..Default::default()
        },
    )
    .expect("topk");
    assert_eq!(v.dtype(), DataType::Bfloat16);
    assert_eq!(v.to_vec::<f32>().expect("v"), vec![3.0, 2.0]);
    assert_eq!(i.to_vec::<u32>().expect("i"), vec![103, 101]);
}

#[test]
fn topk_errors_name_the_op() {
    let dev = device();
    let t = upload(
        &dev,
        &[1.0; 8],
        &[2, 4],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let e = topk(&t, 5, &TopkArgs::default()).unwrap_err().to_string();
    assert!(e.contains("ttnn::topk") && e.contains("k = 5"), "{e}");
    let e = topk(
        &t,
        2,
        &TopkArgs {
            dim: 0,
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("ttnn::topk") && e.contains("last dimension"),
        "{e}"
    );
    let host =
        Tensor::from_slice(&[1.0f32; 8], [2, 4], DataType::Float32, Layout::Tile).expect("host");
    let e = topk(&host, 2, &TopkArgs::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("ttnn::topk") && e.contains("device"), "{e}");
}

struct Params {
    k: Tensor,
    p: Tensor,
    temp: Tensor,
}

fn params(dev: &ttnn::Device, k: &[u32], p: &[f32], inv_temp: &[f32]) -> Params {
    let n = k.len();
    Params {
        k: upload_rm(dev, k, &[n], DataType::Uint32),
        p: upload_rm(dev, p, &[n], DataType::Float32),
        temp: upload_rm(dev, inv_temp, &[n], DataType::Float32),
    }
}

#[test]
fn greedy_sampling_equals_argmax() {
    let dev = device();
    let mut rng = Rng::new(7);
    let (users, w) = (5, 32);
    let x = rng.vec(users * w, 4.0);
    let vals = upload(
        &dev,
        &x,
        &[1, 1, users, w],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let ids: Vec<u32> = (0..(users * w) as u32).map(|i| 1000 + i).collect();
    let idx = upload_rm(&dev, &ids, &[1, 1, users, w], DataType::Uint32);
    // k = 1 and p = 0 are both greedy, whatever the temperature.
    for (k, p) in [(1u32, 1.0f32), (32, 0.0)] {
        let pr = params(&dev, &vec![k; users], &vec![p; users], &vec![0.7; users]);
        let out = sampling(
            &vals,
            &idx,
            &pr.k,
            &pr.p,
            &pr.temp,
            &SamplingArgs::default(),
        )
        .expect("sampling");
        let got = out.to_vec::<u32>().expect("read");
        for u in 0..users {
            let best = naive_topk(&x[u * w..(u + 1) * w], 1, true)[0];
            assert_eq!(got[u], ids[u * w + best]);
        }
    }
}

#[test]
fn sampling_is_reproducible_per_user_and_batch_invariant() {
    let dev = device();
    let mut rng = Rng::new(11);
    let w = 32;
    let rows: Vec<Vec<f32>> = (0..4).map(|_| rng.vec(w, 2.0)).collect();
    let draw = |users: &[usize], offset: i32| -> Vec<u32> {
        let x: Vec<f32> = users.iter().flat_map(|&u| rows[u].clone()).collect();
        let n = users.len();
        let vals = upload(
            &dev,
            &x,
            &[1, 1, n, w],
            DataType::Float32,
            Layout::Tile,
            &DRAM_MEMORY_CONFIG,
        );
        let ids: Vec<u32> = (0..n).flat_map(|_| 0..w as u32).collect();
        let idx = upload_rm(&dev, &ids, &[1, 1, n, w], DataType::Uint32);
        let pr = params(&dev, &vec![0; n], &vec![0.9; n], &vec![1.0; n]);
        let seeds = upload_rm(
            &dev,
            &users.iter().map(|&u| 1234 + u as u32).collect::<Vec<_>>(),
            &[n],
            DataType::Uint32,
        );
        let offs = upload_rm(&dev, &vec![offset; n], &[n], DataType::Int32);
        let args = SamplingArgs {
            user_seeds: Some(&seeds),
            user_offsets: Some(&offs),
            ..Default::default()
        };
        sampling(&vals, &idx, &pr.k, &pr.p, &pr.temp, &args)
            .expect("sampling")
            .to_vec::<u32>()
            .expect("read")
    };
    for off in 0..20 {
        let all = draw(&[0, 1, 2, 3], off);
        let some = draw(&[2, 0], off);
        assert_eq!((all[2], all[0]), (some[0], some[1]), "offset {off}");
        assert_eq!(all, draw(&[0, 1, 2, 3], off));
    }
}

#[test]
fn sampling_follows_softmax_with_top_k_and_top_p() {
    let dev = device();
    // Logits ln(4), ln(3), ln(2), ln(1): probabilities 0.4, 0.3, 0.2, 0.1.
    let x: Vec<f32> = [4.0f32, 3.0, 2.0, 1.0].iter().map(|v| v.ln()).collect();
    let n = 4000usize;
    let vals = upload(
        &dev,
        &x.repeat(n),
        &[1, 1, n, 4],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let idx = upload_rm(
        &dev,
        &[0u32, 1, 2, 3].repeat(n),
        &[1, 1, n, 4],
        DataType::Uint32,
    );
    let seeds = upload_rm(
        &dev,
        &(0..n as u32).collect::<Vec<_>>(),
        &[n],
        DataType::Uint32,
    );
    let freq = |k: u32, p: f32| -> [f64; 4] {
        let pr = params(&dev, &vec![k; n], &vec![p; n], &vec![1.0; n]);
        let out = sampling(
            &vals,
            &idx,
            &pr.k,
            &pr.p,
            &pr.temp,
            &SamplingArgs {
                user_seeds: Some(&seeds),
                ..Default::default()
            },
        )
        .expect("sampling")
        .to_vec::<u32>()
        .expect("read");
        let mut f = [0f64; 4];
        for t in out {
            f[t as usize] += 1.0 / n as f64;
        }
        f
    };
    let close = |got: [f64; 4], want: [f64; 4]| {
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 0.03, "got {got:?}, want {want:?}");
        }
    };
    close(freq(0, 1.0), [0.4, 0.3, 0.2, 0.1]);
    // Top-2: renormalised 4/7, 3/7.
    close(freq(2, 1.0), [4.0 / 7.0, 3.0 / 7.0, 0.0, 0.0]);
    // Top-p 0.6: cumulative 0.4, 0.7 > 0.6 -> keep two.
    close(freq(0, 0.6), [4.0 / 7.0, 3.0 / 7.0, 0.0, 0.0]);
}

#[test]
fn sampling_writes_into_an_existing_token_tensor() {
    let dev = device();
    let vals = upload(
        &dev,
        &[0.0, 5.0, 1.0, 9.0, 0.0, 0.0],
        &[1, 1, 2, 3],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let idx = upload_rm(
        &dev,
        &[10u32, 11, 12, 20, 21, 22],
        &[1, 1, 2, 3],
        DataType::Uint32,
    );
    let pr = params(&dev, &[1, 1], &[1.0, 1.0], &[1.0, 1.0]);
    let tokens = upload_rm(&dev, &[0u32, 0], &[1, 1, 1, 2], DataType::Uint32);
    let out = sampling(
        &vals,
        &idx,
        &pr.k,
        &pr.p,
        &pr.temp,
        &SamplingArgs {
            output_tensor: Some(&tokens),
            ..Default::default()
        },
    )
    .expect("sampling");
    assert!(out.shares_buffer_with(&tokens));
    assert_eq!(tokens.to_vec::<u32>().expect("read"), vec![11, 20]);
    let e = sampling(
        &vals,
        &idx,
        &pr.k,
        &pr.p,
        &pr.temp,
        &SamplingArgs {
            output_tensor: Some(&idx),
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("ttnn::sampling"), "{e}");
}

#[test]
fn plus_one_skips_negative_entries_when_asked() {
    let dev = device();
    let pos = upload_rm(&dev, &[0i32, 5, -1, 41], &[4], DataType::Int32);
    plus_one(
        &pos,
        &PlusOneArgs {
            skip_negative_entries: true,
        },
    )
    .expect("plus_one");
    assert_eq!(pos.to_vec::<i32>().expect("read"), vec![1, 6, -1, 42]);
    plus_one(&pos, &PlusOneArgs::default()).expect("plus_one");
    assert_eq!(pos.to_vec::<i32>().expect("read"), vec![2, 7, 0, 43]);
    let f = upload(
        &dev,
        &[1.0],
        &[1],
        DataType::Float32,
        Layout::RowMajor,
        &DRAM_MEMORY_CONFIG,
    );
    let e = plus_one(&f, &PlusOneArgs::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("ttnn::plus_one") && e.contains("Float32"), "{e}");
}
