//! `rotary_embedding_llama` against the interleaved-pair RoPE formula (f64), its equivalence to
//! HF's rotate-half RoPE after the Q/K row permutation, and its validation.

mod common;

use common::{Rng, assert_close, device, upload, upload_f32};
use proptest::prelude::*;
use ttnn::ops::rotary::{
    RotaryEmbeddingLlamaArgs, get_rot_transformation_mat, rotary_embedding_llama,
};
use ttnn::{
    BufferType, ComputeKernelConfig, CoreCoord, CoreRangeSet, DRAM_MEMORY_CONFIG, DataType, Device,
    Layout, MemoryConfig, ShardOrientation, ShardSpec, Tensor, TensorMemoryLayout,
};

fn hs(n: usize, shard: [usize; 2]) -> MemoryConfig {
    MemoryConfig::sharded(
        TensorMemoryLayout::HeightSharded,
        BufferType::L1,
        ShardSpec::new(
            CoreRangeSet::num_cores_to_corerangeset(n, CoreCoord::new(8, 8)),
            shard,
            ShardOrientation::RowMajor,
        ),
    )
}

fn vals(t: &Tensor) -> Vec<f32> {
    t.to_vec::<f32>().expect("read back")
}

/// Meta-format tables `[positions, hd]`: `cos[p][2i] = cos[p][2i+1] = cos(p * theta^(-2i/hd))`.
fn meta_tables(positions: &[usize], hd: usize, theta: f64) -> (Vec<f32>, Vec<f32>) {
    let mut c = Vec::new();
    let mut s = Vec::new();
    for &p in positions {
        for j in 0..hd {
            let i = j / 2;
            let f = p as f64 * theta.powf(-2.0 * i as f64 / hd as f64);
            c.push(f.cos() as f32);
            s.push(f.sin() as f32);
        }
    }
    (c, s)
}

/// The interleaved-pair formula on one row, in f64.
fn rope_row(x: &[f32], c: &[f32], s: &[f32]) -> Vec<f64> {
    let mut out = vec![0f64; x.len()];
    for i in 0..x.len() / 2 {
        let (a, b) = (x[2 * i] as f64, x[2 * i + 1] as f64);
        out[2 * i] = a * c[2 * i] as f64 - b * s[2 * i] as f64;
        out[2 * i + 1] = b * c[2 * i + 1] as f64 + a * s[2 * i + 1] as f64;
    }
    out
}

fn trans(dev: &Device, dtype: DataType, mc: &MemoryConfig, repeat: usize) -> Tensor {
    let m = vals(&get_rot_transformation_mat(DataType::Float32).expect("mat"));
    let rep: Vec<f32> = (0..repeat).flat_map(|_| m.clone()).collect();
    upload(dev, &rep, &[1, 1, 32 * repeat, 32], dtype, Layout::Tile, mc)
}

#[test]
fn transformation_matrix() {
    let t = get_rot_transformation_mat(DataType::Bfloat16).expect("mat");
    assert_eq!(t.shape().dims(), &[1, 1, 32, 32]);
    assert_eq!(t.dtype(), DataType::Bfloat16);
    assert_eq!(t.layout(), Layout::Tile);
    let m = vals(&t);
    for i in 0..32 {
        for j in 0..32 {
            let want = if i % 2 == 0 && j == i + 1 {
                1.0
            } else if i % 2 == 1 && j + 1 == i {
                -1.0
            } else {
                0.0
            };
            assert_eq!(m[i * 32 + j], want, "M[{i}][{j}]");
        }
    }
}

/// f32: two products and a sum of O(1) values, a few ulps (1e-6). bf16: inputs are read back
/// (so the reference sees the rounded values) and the output is rounded to bf16 (relative 2^-8).
fn tol(dtype: DataType) -> (f64, f64) {
    if dtype == DataType::Float32 {
        (2e-6, 1e-6)
    } else {
        (1e-6, 8e-3)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn prefill_matches_formula(
        seed in 0u64..1000,
        b in 1usize..3,
        nh in 1usize..5,
        s in 1usize..70,
        extra in 0usize..5,
        hd in prop::sample::select(vec![32usize, 64, 128]),
        per_head in any::<bool>(),
        bf16 in any::<bool>(),
    ) {
        let dev = device();
        let mut rng = Rng::new(seed);
        let dt = if bf16 { DataType::Bfloat16 } else { DataType::Float32 };
        let up = |v: &[f32], sh: &[usize]| upload(&dev, v, sh, dt, Layout::Tile, &DRAM_MEMORY_CONFIG);
        let x = up(&rng.vec(b * nh * s * hd, 2.0), &[b, nh, s, hd]);
        let ch = if per_head { nh } else { 1 };
        let sc = s + extra;
        // Per-head tables: distinct random tables per head so a wrong head index shows.
        let c = up(&rng.vec(ch * sc * hd, 1.0), &[1, ch, sc, hd]);
        let sn = up(&rng.vec(ch * sc * hd, 1.0), &[1, ch, sc, hd]);
        let t = trans(&dev, dt, &DRAM_MEMORY_CONFIG, 1);
        let out = rotary_embedding_llama(&x, &c, &sn, &t, &RotaryEmbeddingLlamaArgs::default())
            .expect("rope prefill");
        prop_assert_eq!(out.shape(), x.shape());
        prop_assert_eq!(out.dtype(), dt);
        let (xv, cv, sv) = (vals(&x), vals(&c), vals(&sn));
        let mut want = Vec::new();
        for bi in 0..b {
            for h in 0..nh {
                for si in 0..s {
                    let r = ((bi * nh + h) * s + si) * hd;
                    let tr = (if per_head { h * sc } else { 0 } + si) * hd;
                    want.extend(rope_row(&xv[r..r + hd], &cv[tr..tr + hd], &sv[tr..tr + hd]));
                }
            }
        }
        let (atol, rtol) = tol(dt);
        assert_close(&vals(&out), &want, atol, rtol, "prefill");
    }

    #[test]
    fn decode_matches_formula(
        seed in 0u64..1000,
        b in 1usize..7,
        nh in 1usize..9,
        hd in prop::sample::select(vec![32usize, 64, 128]),
        bf16 in any::<bool>(),
    ) {
        let dev = device();
        let mut rng = Rng::new(seed);
        let dt = if bf16 { DataType::Bfloat16 } else { DataType::Float32 };
        let mc = hs(b, [32, hd]);
        let x = upload(&dev, &rng.vec(b * nh * hd, 2.0), &[1, b, nh, hd], dt, Layout::Tile, &mc);
        let positions: Vec<usize> = (0..b).map(|_| rng.below(4096) as usize).collect();
        let (cv, sv) = meta_tables(&positions, hd, 500_000.0);
        let c = upload(&dev, &cv, &[1, b, 1, hd], dt, Layout::Tile, &mc);
        let sn = upload(&dev, &sv, &[1, b, 1, hd], dt, Layout::Tile, &mc);
        let t = trans(&dev, dt, &hs(b, [32, 32]), b);
        let out = rotary_embedding_llama(
            &x,
            &c,
            &sn,
            &t,
            &RotaryEmbeddingLlamaArgs { is_decode_mode: true, ..Default::default() },
        )
        .expect("rope decode");
        prop_assert_eq!(out.memory_config(), x.memory_config());
        let (xv, cv, sv) = (vals(&x), vals(&c), vals(&sn));
        let mut want = Vec::new();
        for u in 0..b {
            for h in 0..nh {
                let r = (u * nh + h) * hd;
                want.extend(rope_row(&xv[r..r + hd], &cv[u * hd..(u + 1) * hd], &sv[u * hd..(u + 1) * hd]));
            }
        }
        let (atol, rtol) = tol(dt);
        assert_close(&vals(&out), &want, atol, rtol, "decode");
    }
}

/// With Q/K rows permuted from HF's rotate-half order to interleaved pairs (tt_transformers'
/// `reverse_permute`), the op equals HF's RoPE (cos/sin = cat(freqs, freqs), rotate_half).
#[test]
fn equals_hf_rope_after_reverse_permute() {
    let dev = device();
    let mut rng = Rng::new(11);
    let (nh, s, hd, theta) = (3, 45, 128, 500_000.0f64);
    let q_hf = rng.vec(nh * s * hd, 1.0);
    // HF reference, in f64.
    let mut want_hf = vec![0f64; nh * s * hd];
    for h in 0..nh {
        for p in 0..s {
            let r = (h * s + p) * hd;
            for i in 0..hd {
                let fi = i % (hd / 2);
                let f = p as f64 * theta.powf(-2.0 * fi as f64 / hd as f64);
                let rot = if i < hd / 2 {
                    -(q_hf[r + i + hd / 2] as f64)
                } else {
                    q_hf[r + i - hd / 2] as f64
                };
                want_hf[r + i] = q_hf[r + i] as f64 * f.cos() + rot * f.sin();
            }
        }
    }
    // reverse_permute within each head: new[2i] = old[i], new[2i+1] = old[i + hd/2].
    let perm = |v: &[f32]| -> Vec<f32> {
        let mut out = vec![0f32; v.len()];
        for (r, row) in v.chunks(hd).enumerate() {
            for i in 0..hd / 2 {
                out[r * hd + 2 * i] = row[i];
                out[r * hd + 2 * i + 1] = row[i + hd / 2];
            }
        }
        out
    };
    let x = upload_f32(&dev, &perm(&q_hf), &[1, nh, s, hd]);
    let positions: Vec<usize> = (0..s).collect();
    let (cv, sv) = meta_tables(&positions, hd, theta);
    let c = upload_f32(&dev, &cv, &[1, 1, s, hd]);
    let sn = upload_f32(&dev, &sv, &[1, 1, s, hd]);
    let t = trans(&dev, DataType::Float32, &DRAM_MEMORY_CONFIG, 1);
    let out = vals(&rotary_embedding_llama(&x, &c, &sn, &t, &Default::default()).expect("rope"));
    let want: Vec<f64> = {
        let w32: Vec<f32> = want_hf.iter().map(|&x| x as f32).collect();
        perm(&w32).iter().map(|&x| x as f64).collect()
    };
    // The tables are f32-rounded cos/sin of f64 angles: error ~1e-7 per product.
    assert_close(&out, &want, 1e-5, 1e-5, "HF equivalence");
}

/// A general (non-permutation) transformation matrix gives `x*cos + (x @ M)*sin` per chunk.
#[test]
fn general_transformation_matrix() {
    let dev = device();
    let mut rng = Rng::new(5);
    let (s, hd) = (5, 64);
    let m = rng.vec(32 * 32, 1.0);
    let xv = rng.vec(s * hd, 1.0);
    let cv = rng.vec(s * hd, 1.0);
    let sv = rng.vec(s * hd, 1.0);
    let out = vals(
        &rotary_embedding_llama(
            &upload_f32(&dev, &xv, &[1, 1, s, hd]),
            &upload_f32(&dev, &cv, &[1, 1, s, hd]),
            &upload_f32(&dev, &sv, &[1, 1, s, hd]),
            &upload_f32(&dev, &m, &[1, 1, 32, 32]),
            &Default::default(),
        )
        .expect("rope"),
    );
    let mut want = Vec::new();
    for r in 0..s {
        for j in 0..hd {
            let (c0, jj) = (j / 32 * 32, j % 32);
            let rot: f64 = (0..32)
                .map(|i| xv[r * hd + c0 + i] as f64 * m[i * 32 + jj] as f64)
                .sum();
            let k = r * hd + j;
            want.push(xv[k] as f64 * cv[k] as f64 + rot * sv[k] as f64);
        }
    }
    assert_close(&out, &want, 2e-5, 1e-5, "general matrix");
}

fn err_text<T: std::fmt::Debug>(r: ttnn::Result<T>) -> String {
    r.expect_err("expected an error").to_string()
}

#[test]
fn validation_errors() {
    let dev = device();
    let op = "ttnn::experimental::rotary_embedding_llama";
    let z = |n: usize| vec![0f32; n];
    let (nh, s, hd) = (2, 40, 64);
    let x = upload_f32(&dev, &z(nh * s * hd), &[1, nh, s, hd]);
    let c = upload_f32(&dev, &z(s * hd), &[1, 1, s, hd]);
    let t = trans(&dev, DataType::Float32, &DRAM_MEMORY_CONFIG, 1);
    let pre = RotaryEmbeddingLlamaArgs::default();
    rotary_embedding_llama(&x, &c, &c, &t, &pre).expect("valid");
    let check = |r: ttnn::Result<Tensor>, what: &str| {
        let e = err_text(r);
        assert!(e.contains(op), "{e}");
        assert!(e.contains(what), "expected '{what}' in: {e}");
    };
    // Layout, dtype, host tensor.
    let x_rm = upload(
        &dev,
        &z(nh * s * hd),
        &[1, nh, s, hd],
        DataType::Float32,
        Layout::RowMajor,
        &DRAM_MEMORY_CONFIG,
    );
    check(rotary_embedding_llama(&x_rm, &c, &c, &t, &pre), "layout");
    let x_b8 = upload(
        &dev,
        &z(nh * s * hd),
        &[1, nh, s, hd],
        DataType::Bfloat8B,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    check(rotary_embedding_llama(&x_b8, &c, &c, &t, &pre), "Bfloat8B");
    let x_host = Tensor::from_slice(
        &z(nh * s * hd),
        [1, nh, s, hd],
        DataType::Float32,
        Layout::Tile,
    )
    .expect("t");
    check(rotary_embedding_llama(&x_host, &c, &c, &t, &pre), "device");
    // Head dim rules.
    let x48 = upload_f32(&dev, &z(s * 48), &[1, 1, s, 48]);
    let c48 = upload_f32(&dev, &z(s * 48), &[1, 1, s, 48]);
    check(
        rotary_embedding_llama(&x48, &c48, &c48, &t, &pre),
        "multiple of 32",
    );
    let x288 = upload_f32(&dev, &z(s * 288), &[1, 1, s, 288]);
    let c288 = upload_f32(&dev, &z(s * 288), &[1, 1, s, 288]);
    check(
        rotary_embedding_llama(&x288, &c288, &c288, &t, &pre),
        "at most 256",
    );
    let x160 = upload_f32(&dev, &z(s * 160), &[1, 1, s, 160]);
    let c160 = upload_f32(&dev, &z(s * 160), &[1, 1, s, 160]);
    let fp32 = RotaryEmbeddingLlamaArgs {
        compute_kernel_config: Some(ComputeKernelConfig::hifi4()),
        ..Default::default()
    };
    check(
        rotary_embedding_llama(&x160, &c160, &c160, &t, &fp32),
        "fp32_dest_acc_en",
    );
    rotary_embedding_llama(&x, &c, &c, &t, &fp32).expect("fp32 acc is fine for hd <= 128");
    // cos/sin shapes.
    let c_short = upload_f32(&dev, &z(30 * hd), &[1, 1, 30, hd]);
    check(
        rotary_embedding_llama(&x, &c, &c_short, &t, &pre),
        "sin_cache",
    );
    check(
        rotary_embedding_llama(&x, &c_short, &c_short, &t, &pre),
        "cos_cache",
    );
    let c3 = upload_f32(&dev, &z(3 * s * hd), &[1, 3, s, hd]);
    check(rotary_embedding_llama(&x, &c3, &c3, &t, &pre), "cos_cache");
    let c_hd = upload_f32(&dev, &z(s * 32), &[1, 1, s, 32]);
    check(
        rotary_embedding_llama(&x, &c_hd, &c_hd, &t, &pre),
        "head dim",
    );
    // Transformation matrix.
    let t64 = upload_f32(&dev, &z(64 * 32), &[1, 1, 64, 32]);
    check(rotary_embedding_llama(&x, &c, &c, &t64, &pre), "trans_mat");
    // Prefill needs interleaved input and tables with the input's layout; output layout.
    let x_sh = upload(
        &dev,
        &z(nh * s * hd),
        &[1, nh, s, hd],
        DataType::Float32,
        Layout::Tile,
        &hs(4, [32, hd]),
    );
    check(
        rotary_embedding_llama(&x_sh, &c, &c, &t, &pre),
        "interleaved",
    );
    let c_sh = upload(
        &dev,
        &z(s * hd),
        &[1, 1, s, hd],
        DataType::Float32,
        Layout::Tile,
        &hs(2, [32, hd]),
    );
    check(
        rotary_embedding_llama(&x, &c_sh, &c_sh, &t, &pre),
        "memory layout",
    );
    let out_sh = RotaryEmbeddingLlamaArgs {
        memory_config: Some(hs(4, [32, hd])),
        ..Default::default()
    };
    check(
        rotary_embedding_llama(&x, &c, &c, &t, &out_sh),
        "memory layout",
    );

    // Decode.
    let b = 3;
    let dec = RotaryEmbeddingLlamaArgs {
        is_decode_mode: true,
        ..Default::default()
    };
    let mc = hs(b, [32, hd]);
    let xd = upload(
        &dev,
        &z(b * nh * hd),
        &[1, b, nh, hd],
        DataType::Float32,
        Layout::Tile,
        &mc,
    );
    let cd = upload(
        &dev,
        &z(b * hd),
        &[1, b, 1, hd],
        DataType::Float32,
        Layout::Tile,
        &mc,
    );
    let td = trans(&dev, DataType::Float32, &hs(b, [32, 32]), b);
    rotary_embedding_llama(&xd, &cd, &cd, &td, &dec).expect("valid decode");
    let xd_dram = upload_f32(&dev, &z(b * nh * hd), &[1, b, nh, hd]);
    check(
        rotary_embedding_llama(&xd_dram, &cd, &cd, &td, &dec),
        "HEIGHT_SHARDED",
    );
    check(
        rotary_embedding_llama(&xd, &cd, &cd, &t, &dec),
        "HEIGHT_SHARDED",
    );
    let x2 = upload(
        &dev,
        &z(2 * b * nh * hd),
        &[2, b, nh, hd],
        DataType::Float32,
        Layout::Tile,
        &hs(2 * b, [32, hd]),
    );
    check(
        rotary_embedding_llama(&x2, &cd, &cd, &td, &dec),
        "decode mode",
    );
    let c2 = upload(
        &dev,
        &z(2 * hd),
        &[1, 2, 1, hd],
        DataType::Float32,
        Layout::Tile,
        &hs(2, [32, hd]),
    );
    check(
        rotary_embedding_llama(&xd, &c2, &c2, &td, &dec),
        "cos_cache",
    );
    let c_tall = upload(
        &dev,
        &z(b * 64 * hd),
        &[1, b, 64, hd],
        DataType::Float32,
        Layout::Tile,
        &hs(b, [64, hd]),
    );
    check(
        rotary_embedding_llama(&xd, &c_tall, &c_tall, &td, &dec),
        "shard height",
    );
    let t_wide = upload(
        &dev,
        &z(b * 64 * 32),
        &[1, 1, 64 * b, 32],
        DataType::Float32,
        Layout::Tile,
        &hs(b, [64, 32]),
    );
    check(
        rotary_embedding_llama(&xd, &cd, &cd, &t_wide, &dec),
        "trans_mat",
    );
    // More users than cores (65 users in shards of two on 33 cores of the 8x8 grid).
    let xb = upload(
        &dev,
        &z(65 * hd),
        &[1, 65, 1, hd],
        DataType::Float32,
        Layout::Tile,
        &hs(33, [64, hd]),
    );
    check(
        rotary_embedding_llama(&xb, &cd, &cd, &td, &dec),
        "at most 64 users",
    );
    // Another device.
    let other = device();
    let c_other = upload_f32(&other, &z(s * hd), &[1, 1, s, hd]);
    check(
        rotary_embedding_llama(&x, &c_other, &c_other, &t, &pre),
        "same device",
    );
}
