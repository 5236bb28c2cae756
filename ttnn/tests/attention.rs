//! Attention ops: prefill, chunked and (paged) decode SDPA against naive f64 references, and
//! their bitwise agreement with one another.

mod common;

use common::{Rng, assert_close, device, upload, upload_f32};
use proptest::prelude::*;
use ttnn::ops::attention::{
    ChunkedSdpaArgs, PagedSdpaDecodeArgs, SdpaArgs, SdpaDecodeArgs, SdpaProgramConfig,
    chunked_scaled_dot_product_attention, paged_scaled_dot_product_attention_decode,
    scaled_dot_product_attention, scaled_dot_product_attention_decode,
};
use ttnn::ops::kv_cache::{
    PagedFillCacheArgs, PagedUpdateCacheArgs, paged_fill_cache, paged_update_cache,
};
use ttnn::{
    BufferType, CoreCoord, CoreRangeSet, DRAM_MEMORY_CONFIG, DataType, Device, DeviceSpec, Layout,
    MemoryConfig, ShardOrientation, ShardSpec, Tensor, TensorMemoryLayout,
};

const BS: usize = 32;

/// L1 height-sharded config: `n` cores of the 8x8 grid, shards `shard`.
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

fn ints(dev: &Device, vals: &[i32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(vals, shape, DataType::Int32, Layout::RowMajor)
        .expect("int tensor")
        .to_device(dev, &DRAM_MEMORY_CONFIG)
        .expect("upload ints")
}

fn vals(t: &Tensor) -> Vec<f32> {
    t.to_vec::<f32>().expect("read back")
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// `softmax(scale * q.K^T + bias) V` in f64 over the given rows.
fn naive(q: &[f32], keys: &[&[f32]], values: &[&[f32]], scale: f64, bias: &[f64]) -> Vec<f64> {
    let hd = q.len();
    if keys.is_empty() {
        return vec![0.0; hd];
    }
    let s: Vec<f64> = keys
        .iter()
        .enumerate()
        .map(|(j, k)| {
            q.iter()
                .zip(*k)
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum::<f64>()
                * scale
                + bias.get(j).copied().unwrap_or(0.0)
        })
        .collect();
    let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
    let z: f64 = e.iter().sum();
    (0..hd)
        .map(|d| {
            e.iter()
                .zip(values)
                .map(|(p, v)| p * v[d] as f64)
                .sum::<f64>()
                / z
        })
        .collect()
}

/// A shuffled page table: `users x cols` distinct blocks out of `users * cols + spare`.
fn shuffled_table(rng: &mut Rng, users: usize, cols: usize, spare: usize) -> (Vec<i32>, usize) {
    let total = users * cols + spare;
    let mut perm: Vec<i32> = (0..total as i32).collect();
    for i in (1..total).rev() {
        perm.swap(i, rng.below(i as u64 + 1) as usize);
    }
    (perm[..users * cols].to_vec(), total)
}

#[allow(clippy::too_many_arguments)]
/// The rows of a paged cache (read back, decoded) for user `u`, kv head `g`, positions `0..n`.
fn gather(
    cache: &[f32],
    table: &[i32],
    cols: usize,
    nkv: usize,
    hd: usize,
    u: usize,
    g: usize,
    n: usize,
) -> Vec<Vec<f32>> {
    (0..n)
        .map(|p| {
            let blk = table[u * cols + p / BS] as usize;
            let row = (blk * nkv + g) * BS + p % BS;
            cache[row * hd..(row + 1) * hd].to_vec()
        })
        .collect()
}

struct PagedRun {
    out: Vec<f32>,
    /// The same attention through an unpaged cache holding the same (decoded) values.
    unpaged: Vec<f32>,
    reference: Vec<f64>,
}

#[allow(clippy::too_many_arguments)]
/// Writes K/V for users of lengths `lens` step by step with `paged_update_cache` into a paged
/// cache with a shuffled page table, then runs paged decode at `cur_pos = len - 1`.
fn paged_decode_case(
    dev: &Device,
    seed: u64,
    lens: &[usize],
    nkv: usize,
    group: usize,
    hd: usize,
    cache_dtype: DataType,
    q_dtype: DataType,
) -> PagedRun {
    let mut rng = Rng::new(seed);
    let b = lens.len();
    let nh = nkv * group;
    let maxlen = *lens.iter().max().expect("users");
    let cols = maxlen.div_ceil(BS) + 1;
    let (table, blocks) = shuffled_table(&mut rng, b, cols, 3);
    let pt = ints(dev, &table, &[b, cols]);
    let cache_shape = [blocks, nkv, BS, hd];
    let zeros = vec![0f32; blocks * nkv * BS * hd];
    let kc = upload(
        dev,
        &zeros,
        &cache_shape,
        cache_dtype,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let vc = upload(
        dev,
        &zeros,
        &cache_shape,
        cache_dtype,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    // kv[u][g][p] rows.
    let kv: Vec<Vec<Vec<Vec<f32>>>> = (0..2 * b)
        .map(|_| {
            (0..nkv)
                .map(|_| (0..maxlen).map(|_| rng.vec(hd, 1.0)).collect())
                .collect()
        })
        .collect();
    let mc = hs(b, [32, hd]);
    for t in 0..maxlen {
        let pos: Vec<i32> = lens
            .iter()
            .map(|&l| if t < l { t as i32 } else { -1 })
            .collect();
        let idx = ints(dev, &pos, &[b]);
        for (which, cache) in [(0, &kc), (1, &vc)] {
            let mut input = Vec::with_capacity(b * nkv * hd);
            for u in 0..b {
                for g in 0..nkv {
                    input.extend_from_slice(&kv[which * b + u][g][t]);
                }
            }
            let x = upload(
                dev,
                &input,
                &[1, b, nkv, hd],
                DataType::Float32,
                Layout::Tile,
                &mc,
            );
            paged_update_cache(
                cache,
                &x,
                &PagedUpdateCacheArgs {
                    update_idxs_tensor: Some(&idx),
                    page_table: Some(&pt),
                    ..Default::default()
                },
            )
            .expect("paged_update_cache");
        }
    }
    let qv = rng.vec(b * nh * hd, 1.0);
    let q = upload(
        dev,
        &qv,
        &[1, b, nh, hd],
        q_dtype,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let qv = vals(&q);
    let cur: Vec<i32> = lens.iter().map(|&l| l as i32 - 1).collect();
    let cur_t = ints(dev, &cur, &[b]);
    let out = paged_scaled_dot_product_attention_decode(
        &q,
        &kc,
        &vc,
        &pt,
        &PagedSdpaDecodeArgs {
            cur_pos_tensor: Some(&cur_t),
            ..Default::default()
        },
    )
    .expect("paged decode");
    assert_eq!(out.shape().dims(), &[1, b, nh, hd]);
    assert_eq!(out.dtype(), q_dtype);
    let (kcache, vcache) = (vals(&kc), vals(&vc));
    // Contiguous copies of the stored values, and the reference.
    let s_max = maxlen.div_ceil(BS) * BS;
    let mut kcont = vec![0f32; b * nkv * s_max * hd];
    let mut vcont = kcont.clone();
    let mut reference = Vec::with_capacity(b * nh * hd);
    let scale = 1.0 / (hd as f64).sqrt();
    for (u, &len) in lens.iter().enumerate() {
        for g in 0..nkv {
            let ks = gather(&kcache, &table, cols, nkv, hd, u, g, len);
            let vs = gather(&vcache, &table, cols, nkv, hd, u, g, len);
            if cache_dtype == DataType::Float32 {
                assert_eq!(ks, kv[u][g][..len], "stored K of user {u}");
                assert_eq!(vs, kv[b + u][g][..len], "stored V of user {u}");
            }
            for p in 0..len {
                let base = ((u * nkv + g) * s_max + p) * hd;
                kcont[base..base + hd].copy_from_slice(&ks[p]);
                vcont[base..base + hd].copy_from_slice(&vs[p]);
            }
        }
        for h in 0..nh {
            let g = h / group;
            let ks = gather(&kcache, &table, cols, nkv, hd, u, g, len);
            let vs = gather(&vcache, &table, cols, nkv, hd, u, g, len);
            let kr: Vec<&[f32]> = ks.iter().map(|r| &r[..]).collect();
            let vr: Vec<&[f32]> = vs.iter().map(|r| &r[..]).collect();
            let qrow = &qv[(u * nh + h) * hd..(u * nh + h + 1) * hd];
            reference.extend(naive(qrow, &kr, &vr, scale, &[]));
        }
    }
    let kt = upload(
        dev,
        &kcont,
        &[b, nkv, s_max, hd],
        cache_dtype,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let vt = upload(
        dev,
        &vcont,
        &[b, nkv, s_max, hd],
        cache_dtype,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let unpaged = scaled_dot_product_attention_decode(
        &q,
        &kt,
        &vt,
        &SdpaDecodeArgs {
            cur_pos_tensor: Some(&cur_t),
            ..Default::default()
        },
    )
    .expect("unpaged decode");
    PagedRun {
        out: vals(&out),
        unpaged: vals(&unpaged),
        reference,
    }
}

/// Acceptance: paged_update_cache + paged decode through a shuffled page table equal a
/// contiguous-cache reference for lengths crossing block boundaries and GQA groups 1, 4, 8.
/// Tolerance: outputs are convex combinations of |v| <= 1 values computed in f32 with an exact
/// exp; the error is a few f32 ulps of the O(1) result, well under 2e-5.
#[test]
fn paged_decode_matches_contiguous_reference() {
    let dev = device();
    let lens = [1, 31, 32, 33, 70, 100];
    for (i, group) in [1usize, 4, 8].into_iter().enumerate() {
        for nkv in [1usize, 2] {
            let r = paged_decode_case(
                &dev,
                100 + i as u64 * 10 + nkv as u64,
                &lens,
                nkv,
                group,
                64,
                DataType::Float32,
                DataType::Float32,
            );
            assert_close(
                &r.out,
                &r.reference,
                2e-5,
                1e-5,
                &format!("G={group} nkv={nkv}"),
            );
            assert_eq!(
                bits(&r.out),
                bits(&r.unpaged),
                "paged vs unpaged, G={group}"
            );
        }
    }
}

/// bf16 and bfp8 caches: the reference uses the decoded stored values; the paged result equals
/// the unpaged one over the same values bit for bit. bf16 q (as TT requires for GQA) rounds the
/// output to bf16: relative 2^-8.
#[test]
fn paged_decode_block_float_and_bf16_caches() {
    let dev = device();
    let lens = [1, 33, 70, 100];
    for cache_dtype in [DataType::Bfloat16, DataType::Bfloat8B, DataType::Bfloat4B] {
        let r = paged_decode_case(&dev, 7, &lens, 2, 4, 128, cache_dtype, DataType::Float32);
        assert_close(
            &r.out,
            &r.reference,
            2e-5,
            1e-5,
            &format!("{cache_dtype:?}"),
        );
        assert_eq!(bits(&r.out), bits(&r.unpaged), "{cache_dtype:?}");
        let r = paged_decode_case(&dev, 8, &lens, 2, 4, 64, cache_dtype, DataType::Bfloat16);
        assert_close(
            &r.out,
            &r.reference,
            1e-3,
            8e-3,
            &format!("{cache_dtype:?} bf16 q"),
        );
        assert_eq!(bits(&r.out), bits(&r.unpaged), "{cache_dtype:?} bf16 q");
    }
}

/// Decode results do not depend on the thread count or on which other users share the batch.
#[test]
fn decode_is_batch_and_thread_invariant() {
    let lens = [100, 70, 33];
    let d1 = Device::open(DeviceSpec::default().with_threads(1)).expect("device");
    let d3 = Device::open(DeviceSpec::default().with_threads(3)).expect("device");
    let a = paged_decode_case(
        &d1,
        5,
        &lens,
        2,
        4,
        64,
        DataType::Bfloat8B,
        DataType::Float32,
    );
    let b = paged_decode_case(
        &d3,
        5,
        &lens,
        2,
        4,
        64,
        DataType::Bfloat8B,
        DataType::Float32,
    );
    assert_eq!(bits(&a.out), bits(&b.out));
    // One user and one kv head: with 3 threads the 8-head group is split across tasks.
    let a = paged_decode_case(
        &d1,
        6,
        &[100],
        1,
        8,
        64,
        DataType::Bfloat16,
        DataType::Float32,
    );
    let b = paged_decode_case(
        &d3,
        6,
        &[100],
        1,
        8,
        64,
        DataType::Bfloat16,
        DataType::Float32,
    );
    assert_eq!(bits(&a.out), bits(&b.out));
    assert_close(&b.out, &b.reference, 2e-5, 1e-5, "split group");
    // Batch invariance (the same row alone and inside a larger batch) is checked in
    // `decode_and_chunked_equal_prefill_bitwise`.
}

/// Runs prefill SDPA on `[1, nh, s, hd]` q and `[1, nkv, s, hd]` K/V, fills a paged cache with
/// the same K/V, and checks that paged decode of each row (alone and in a batch with other
/// users) and chunked SDPA give bit-identical rows.
#[test]
fn decode_and_chunked_equal_prefill_bitwise() {
    let dev = device();
    for (seed, dtype, s, nkv, group, hd) in [
        (1u64, DataType::Float32, 100usize, 2usize, 4usize, 64usize),
        (2, DataType::Bfloat16, 70, 1, 8, 128),
        (3, DataType::Bfloat8B, 97, 5, 4, 128),
    ] {
        let mut rng = Rng::new(seed);
        let nh = nkv * group;
        let qv = rng.vec(nh * s * hd, 1.5);
        let kv = rng.vec(nkv * s * hd, 1.5);
        let vv = rng.vec(nkv * s * hd, 1.0);
        let up = |v: &[f32], sh: &[usize], dt| {
            upload(&dev, v, sh, dt, Layout::Tile, &DRAM_MEMORY_CONFIG)
        };
        let qdt = if dtype == DataType::Bfloat8B {
            DataType::Bfloat16
        } else {
            dtype
        };
        let q = up(&qv, &[1, nh, s, hd], qdt);
        let k = up(&kv, &[1, nkv, s, hd], dtype);
        let v = up(&vv, &[1, nkv, s, hd], dtype);
        let pre = scaled_dot_product_attention(&q, &k, &v, &SdpaArgs::default()).expect("sdpa");
        let pre_v = vals(&pre);
        // Reference.
        let (qf, kf, vf) = (vals(&q), vals(&k), vals(&v));
        let scale = 1.0 / (hd as f64).sqrt();
        let mut reference = Vec::new();
        for h in 0..nh {
            let g = h / group;
            for i in 0..s {
                let keys: Vec<&[f32]> = (0..=i)
                    .map(|p| &kf[((g * s) + p) * hd..((g * s) + p + 1) * hd])
                    .collect();
                let values: Vec<&[f32]> = (0..=i)
                    .map(|p| &vf[((g * s) + p) * hd..((g * s) + p + 1) * hd])
                    .collect();
                reference.extend(naive(
                    &qf[(h * s + i) * hd..(h * s + i + 1) * hd],
                    &keys,
                    &values,
                    scale,
                    &[],
                ));
            }
        }
        let (atol, rtol) = if qdt == DataType::Float32 {
            (2e-5, 1e-5)
        } else {
            (1e-3, 8e-3)
        };
        assert_close(&pre_v, &reference, atol, rtol, "prefill vs naive");

        // Paged cache holding the same K/V (same dtype: the same decoded values).
        let cols = s.div_ceil(BS) + 2;
        let (table, blocks) = shuffled_table(&mut rng, 1, cols, 4);
        let pt = ints(&dev, &table, &[1, cols]);
        let zeros = vec![0f32; blocks * nkv * BS * hd];
        let kc = up(&zeros, &[blocks, nkv, BS, hd], dtype);
        let vc = up(&zeros, &[blocks, nkv, BS, hd], dtype);
        paged_fill_cache(&kc, &k, &pt, &PagedFillCacheArgs::default()).expect("fill k");
        paged_fill_cache(&vc, &v, &pt, &PagedFillCacheArgs::default()).expect("fill v");

        // Chunked prefill over chunks of 32 and 64 rows.
        for chunk in [32usize, 64] {
            let mut start = 0;
            while start < s {
                let end = (start + chunk).min(s);
                let mut qc = Vec::new();
                for h in 0..nh {
                    qc.extend_from_slice(&qf[(h * s + start) * hd..(h * s + end) * hd]);
                }
                let qct = up(&qc, &[1, nh, end - start, hd], qdt);
                let out = chunked_scaled_dot_product_attention(
                    &qct,
                    &kc,
                    &vc,
                    &pt,
                    start,
                    &ChunkedSdpaArgs::default(),
                )
                .expect("chunked");
                let ov = vals(&out);
                for h in 0..nh {
                    let want = &pre_v[(h * s + start) * hd..(h * s + end) * hd];
                    let got = &ov[h * (end - start) * hd..(h + 1) * (end - start) * hd];
                    assert_eq!(
                        bits(got),
                        bits(want),
                        "chunk {chunk} start {start} head {h}"
                    );
                }
                start = end;
            }
        }

        // Decode of rows i, alone (batch 1) and as user 1 of a batch of 3.
        for i in [0, 31, 32, s / 2, s - 1] {
            let qrow: Vec<f32> = (0..nh)
                .flat_map(|h| qf[(h * s + i) * hd..(h * s + i + 1) * hd].to_vec())
                .collect();
            let want: Vec<f32> = (0..nh)
                .flat_map(|h| pre_v[(h * s + i) * hd..(h * s + i + 1) * hd].to_vec())
                .collect();
            let q1 = up(&qrow, &[1, 1, nh, hd], qdt);
            let cur = ints(&dev, &[i as i32], &[1]);
            let out = paged_scaled_dot_product_attention_decode(
                &q1,
                &kc,
                &vc,
                &pt,
                &PagedSdpaDecodeArgs {
                    cur_pos_tensor: Some(&cur),
                    ..Default::default()
                },
            )
            .expect("decode");
            assert_eq!(bits(&vals(&out)), bits(&want), "decode row {i} (batch 1)");
            // Batch of 3: users 0 and 2 attend other (shorter) prefixes of the same table.
            let mut q3 = rng.vec(nh * hd, 1.0);
            q3.extend_from_slice(&qrow);
            q3.extend(rng.vec(nh * hd, 1.0));
            let q3t = up(&q3, &[1, 3, nh, hd], qdt);
            let table3: Vec<i32> = (0..3).flat_map(|_| table.clone()).collect();
            let pt3 = ints(&dev, &table3, &[3, cols]);
            let cur3 = ints(&dev, &[5, i as i32, -1], &[3]);
            let out3 = paged_scaled_dot_product_attention_decode(
                &q3t,
                &kc,
                &vc,
                &pt3,
                &PagedSdpaDecodeArgs {
                    cur_pos_tensor: Some(&cur3),
                    ..Default::default()
                },
            )
            .expect("decode batch 3");
            let o3 = vals(&out3);
            assert_eq!(
                bits(&o3[nh * hd..2 * nh * hd]),
                bits(&want),
                "decode row {i} (batch 3)"
            );
            assert!(
                o3[2 * nh * hd..].iter().all(|&x| x == 0.0),
                "skipped user is zeros"
            );
        }
    }
}

/// cur_pos = -1 skips a user: its rows are zero; the others are unaffected.
#[test]
fn cur_pos_minus_one_skips_user() {
    let dev = device();
    let mut rng = Rng::new(1);
    let (b, nkv, nh, hd, s) = (3, 1, 4, 64, 64);
    let kv = rng.vec(b * nkv * s * hd, 1.0);
    let vv = rng.vec(b * nkv * s * hd, 1.0);
    let qv = rng.vec(b * nh * hd, 1.0);
    let k = upload_f32(&dev, &kv, &[b, nkv, s, hd]);
    let v = upload_f32(&dev, &vv, &[b, nkv, s, hd]);
    let q = upload_f32(&dev, &qv, &[1, b, nh, hd]);
    let run = |cur: &[i32]| {
        let c = ints(&dev, cur, &[b]);
        vals(
            &scaled_dot_product_attention_decode(
                &q,
                &k,
                &v,
                &SdpaDecodeArgs {
                    cur_pos_tensor: Some(&c),
                    ..Default::default()
                },
            )
            .expect("decode"),
        )
    };
    let all = run(&[10, 20, 30]);
    let skip = run(&[10, -1, 30]);
    let w = nh * hd;
    assert_eq!(bits(&all[..w]), bits(&skip[..w]));
    assert_eq!(bits(&all[2 * w..]), bits(&skip[2 * w..]));
    assert!(skip[w..2 * w].iter().all(|&x| x == 0.0));
    // The fixed-list form skips with u32::MAX.
    let out = scaled_dot_product_attention_decode(
        &q,
        &k,
        &v,
        &SdpaDecodeArgs {
            cur_pos: vec![10, u32::MAX, 30],
            ..Default::default()
        },
    )
    .expect("decode list");
    assert_eq!(bits(&vals(&out)), bits(&skip));
}

/// paged_fill_cache, then decode at the last prefill position, against the naive reference.
#[test]
fn fill_then_decode() {
    let dev = device();
    let mut rng = Rng::new(21);
    let (nkv, group, hd, s) = (2, 4, 64, 77);
    let nh = nkv * group;
    let users = 3;
    let cols = 4;
    let (table, blocks) = shuffled_table(&mut rng, users, cols, 2);
    let pt = ints(&dev, &table, &[users, cols]);
    for dtype in [DataType::Float32, DataType::Bfloat8B] {
        let zeros = vec![0f32; blocks * nkv * BS * hd];
        let kc = upload(
            &dev,
            &zeros,
            &[blocks, nkv, BS, hd],
            dtype,
            Layout::Tile,
            &DRAM_MEMORY_CONFIG,
        );
        let vc = upload(
            &dev,
            &zeros,
            &[blocks, nkv, BS, hd],
            dtype,
            Layout::Tile,
            &DRAM_MEMORY_CONFIG,
        );
        let kv = rng.vec(nkv * s * hd, 1.0);
        let vv = rng.vec(nkv * s * hd, 1.0);
        let k = upload_f32(&dev, &kv, &[1, nkv, s, hd]);
        let v = upload_f32(&dev, &vv, &[1, nkv, s, hd]);
        // Fill user 1 (row 1 of the table).
        let args = PagedFillCacheArgs {
            batch_idx: 1,
            ..Default::default()
        };
        paged_fill_cache(&kc, &k, &pt, &args).expect("fill k");
        paged_fill_cache(&vc, &v, &pt, &args).expect("fill v");
        let qv = rng.vec(users * nh * hd, 1.0);
        let q = upload_f32(&dev, &qv, &[1, users, nh, hd]);
        let cur = ints(&dev, &[-1, s as i32 - 1, -1], &[users]);
        let out = paged_scaled_dot_product_attention_decode(
            &q,
            &kc,
            &vc,
            &pt,
            &PagedSdpaDecodeArgs {
                cur_pos_tensor: Some(&cur),
                ..Default::default()
            },
        )
        .expect("decode");
        let ov = vals(&out);
        let (kcache, vcache) = (vals(&kc), vals(&vc));
        let mut reference = Vec::new();
        for h in 0..nh {
            let ks = gather(&kcache, &table, cols, nkv, hd, 1, h / group, s);
            let vs = gather(&vcache, &table, cols, nkv, hd, 1, h / group, s);
            if dtype == DataType::Float32 {
                let g = h / group;
                for p in 0..s {
                    assert_eq!(ks[p], kv[(g * s + p) * hd..(g * s + p + 1) * hd]);
                }
            }
            let kr: Vec<&[f32]> = ks.iter().map(|r| &r[..]).collect();
            let vr: Vec<&[f32]> = vs.iter().map(|r| &r[..]).collect();
            reference.extend(naive(
                &qv[(nh + h) * hd..(nh + h + 1) * hd],
                &kr,
                &vr,
                1.0 / 8.0,
                &[],
            ));
        }
        assert_close(
            &ov[nh * hd..2 * nh * hd],
            &reference,
            2e-5,
            1e-5,
            "fill then decode",
        );
        assert!(
            ov[..nh * hd]
                .iter()
                .chain(&ov[2 * nh * hd..])
                .all(|&x| x == 0.0)
        );
    }
}

/// Sliding windows: decode attends `cur_pos+1-W ..= cur_pos`, prefill `i+1-W ..= i`; both
/// agree bitwise on the same row.
#[test]
fn sliding_window() {
    let dev = device();
    let mut rng = Rng::new(33);
    let (nkv, nh, hd, s, w) = (1, 2, 32, 90, 40);
    let qv = rng.vec(nh * s * hd, 1.0);
    let kv = rng.vec(nkv * s * hd, 1.0);
    let vv = rng.vec(nkv * s * hd, 1.0);
    let q = upload_f32(&dev, &qv, &[1, nh, s, hd]);
    let k = upload_f32(&dev, &kv, &[1, nkv, s, hd]);
    let v = upload_f32(&dev, &vv, &[1, nkv, s, hd]);
    let pre = vals(
        &scaled_dot_product_attention(
            &q,
            &k,
            &v,
            &SdpaArgs {
                sliding_window_size: Some(w),
                ..Default::default()
            },
        )
        .expect("sdpa window"),
    );
    let scale = 1.0 / (hd as f64).sqrt();
    let mut reference = Vec::new();
    for h in 0..nh {
        for i in 0..s {
            let lo = (i + 1).saturating_sub(w);
            let keys: Vec<&[f32]> = (lo..=i).map(|p| &kv[p * hd..(p + 1) * hd]).collect();
            let values: Vec<&[f32]> = (lo..=i).map(|p| &vv[p * hd..(p + 1) * hd]).collect();
            reference.extend(naive(
                &qv[(h * s + i) * hd..(h * s + i + 1) * hd],
                &keys,
                &values,
                scale,
                &[],
            ));
        }
    }
    assert_close(&pre, &reference, 2e-5, 1e-5, "prefill window");
    for i in [0usize, 39, 40, 41, 89] {
        let qrow: Vec<f32> = (0..nh)
            .flat_map(|h| qv[(h * s + i) * hd..(h * s + i + 1) * hd].to_vec())
            .collect();
        let q1 = upload_f32(&dev, &qrow, &[1, 1, nh, hd]);
        let out = scaled_dot_product_attention_decode(
            &q1,
            &k,
            &v,
            &SdpaDecodeArgs {
                cur_pos: vec![i as u32],
                sliding_window_size: Some(w),
                ..Default::default()
            },
        )
        .expect("decode window");
        let want: Vec<f32> = (0..nh)
            .flat_map(|h| pre[(h * s + i) * hd..(h * s + i + 1) * hd].to_vec())
            .collect();
        assert_eq!(bits(&vals(&out)), bits(&want), "row {i}");
    }
}

/// Non-causal attention with an additive mask, prefill and decode.
#[test]
fn non_causal_with_mask() {
    let dev = device();
    let mut rng = Rng::new(44);
    let (b, nkv, nh, hd, sq, sk) = (2, 1, 2, 32, 32, 64);
    let qv = rng.vec(b * nh * sq * hd, 1.0);
    let kv = rng.vec(b * nkv * sk * hd, 1.0);
    let vv = rng.vec(b * nkv * sk * hd, 1.0);
    let mv: Vec<f32> = (0..b * nh * sq * sk)
        .map(|i| if i % 7 == 0 { -1e9 } else { rng.uniform() })
        .collect();
    let q = upload_f32(&dev, &qv, &[b, nh, sq, hd]);
    let k = upload_f32(&dev, &kv, &[b, nkv, sk, hd]);
    let v = upload_f32(&dev, &vv, &[b, nkv, sk, hd]);
    let m = upload_f32(&dev, &mv, &[b, nh, sq, sk]);
    let out = vals(
        &scaled_dot_product_attention(
            &q,
            &k,
            &v,
            &SdpaArgs {
                is_causal: false,
                attn_mask: Some(&m),
                ..Default::default()
            },
        )
        .expect("masked sdpa"),
    );
    let scale = 1.0 / (hd as f64).sqrt();
    let mut reference = Vec::new();
    for bi in 0..b {
        for h in 0..nh {
            for i in 0..sq {
                let keys: Vec<&[f32]> = (0..sk)
                    .map(|p| &kv[(bi * sk + p) * hd..(bi * sk + p + 1) * hd])
                    .collect();
                let values: Vec<&[f32]> = (0..sk)
                    .map(|p| &vv[(bi * sk + p) * hd..(bi * sk + p + 1) * hd])
                    .collect();
                let r = ((bi * nh + h) * sq + i) * sk;
                let bias: Vec<f64> = mv[r..r + sk].iter().map(|&x| x as f64).collect();
                let qr = ((bi * nh + h) * sq + i) * hd;
                reference.extend(naive(&qv[qr..qr + hd], &keys, &values, scale, &bias));
            }
        }
    }
    assert_close(&out, &reference, 2e-5, 1e-5, "masked prefill");

    // Decode, non-causal with a mask [B, 1, nh, S].
    let qd = upload_f32(&dev, &qv[..b * nh * hd], &[1, b, nh, hd]);
    let md: Vec<f32> = mv[..b * nh * sk].to_vec();
    let mdt = upload_f32(&dev, &md, &[b, 1, nh, sk]);
    let out = vals(
        &scaled_dot_product_attention_decode(
            &qd,
            &k,
            &v,
            &SdpaDecodeArgs {
                is_causal: false,
                attn_mask: Some(&mdt),
                ..Default::default()
            },
        )
        .expect("masked decode"),
    );
    let mut reference = Vec::new();
    for bi in 0..b {
        for h in 0..nh {
            let keys: Vec<&[f32]> = (0..sk)
                .map(|p| &kv[(bi * sk + p) * hd..(bi * sk + p + 1) * hd])
                .collect();
            let values: Vec<&[f32]> = (0..sk)
                .map(|p| &vv[(bi * sk + p) * hd..(bi * sk + p + 1) * hd])
                .collect();
            let r = (bi * nh + h) * sk;
            let bias: Vec<f64> = md[r..r + sk].iter().map(|&x| x as f64).collect();
            let qr = (bi * nh + h) * hd;
            reference.extend(naive(&qv[qr..qr + hd], &keys, &values, scale, &bias));
        }
    }
    assert_close(&out, &reference, 2e-5, 1e-5, "masked decode");
}

/// Decode with a height-sharded Q (one user per core, as tt_transformers feeds it).
#[test]
fn decode_with_sharded_q_and_output() {
    let dev = device();
    let mut rng = Rng::new(55);
    let (b, nh, hd, s) = (3, 8, 64, 64);
    let kv = rng.vec(b * s * hd, 1.0);
    let vv = rng.vec(b * s * hd, 1.0);
    let qv = rng.vec(b * nh * hd, 1.0);
    let k = upload_f32(&dev, &kv, &[b, 1, s, hd]);
    let v = upload_f32(&dev, &vv, &[b, 1, s, hd]);
    let q_dram = upload_f32(&dev, &qv, &[1, b, nh, hd]);
    let q_sh = upload(
        &dev,
        &qv,
        &[1, b, nh, hd],
        DataType::Float32,
        Layout::Tile,
        &hs(b, [32, hd]),
    );
    let args = SdpaDecodeArgs {
        cur_pos: vec![3, 40, 63],
        ..Default::default()
    };
    let a = scaled_dot_product_attention_decode(&q_dram, &k, &v, &args).expect("dram q");
    let sharded_out = SdpaDecodeArgs {
        memory_config: Some(hs(b, [32, hd])),
        ..args.clone()
    };
    let c = scaled_dot_product_attention_decode(&q_sh, &k, &v, &sharded_out).expect("sharded");
    assert_eq!(
        c.memory_config().map(|m| m.memory_layout),
        Some(TensorMemoryLayout::HeightSharded)
    );
    assert_eq!(a.memory_config(), Some(&DRAM_MEMORY_CONFIG));
    assert_eq!(bits(&vals(&a)), bits(&vals(&c)));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// Prefill SDPA vs naive causal attention over random shapes (sequence lengths not multiples
    /// of 32), GQA groups and dtypes. f32: a few ulps of O(1) results (2e-5); bf16 inputs: the
    /// reference uses the rounded inputs and the output is rounded to bf16 (relative 2^-8).
    #[test]
    fn prefill_matches_naive(
        seed in 0u64..1000,
        b in 1usize..3,
        nkv in 1usize..3,
        group in prop::sample::select(vec![1usize, 2, 4]),
        s in 1usize..80,
        hd in prop::sample::select(vec![32usize, 64]),
        bf16 in any::<bool>(),
    ) {
        let dev = device();
        let mut rng = Rng::new(seed);
        let nh = nkv * group;
        let dt = if bf16 { DataType::Bfloat16 } else { DataType::Float32 };
        let up = |v: &[f32], sh: &[usize]| upload(&dev, v, sh, dt, Layout::Tile, &DRAM_MEMORY_CONFIG);
        let q = up(&rng.vec(b * nh * s * hd, 1.5), &[b, nh, s, hd]);
        let k = up(&rng.vec(b * nkv * s * hd, 1.5), &[b, nkv, s, hd]);
        let v = up(&rng.vec(b * nkv * s * hd, 1.0), &[b, nkv, s, hd]);
        let out = scaled_dot_product_attention(&q, &k, &v, &SdpaArgs::default()).expect("sdpa");
        prop_assert_eq!(out.shape(), q.shape());
        let (qf, kf, vf) = (vals(&q), vals(&k), vals(&v));
        let scale = 1.0 / (hd as f64).sqrt();
        let mut reference = Vec::new();
        for bi in 0..b {
            for h in 0..nh {
                let g = h / group;
                let base = (bi * nkv + g) * s;
                for i in 0..s {
                    let keys: Vec<&[f32]> = (0..=i).map(|p| &kf[(base + p) * hd..(base + p + 1) * hd]).collect();
                    let values: Vec<&[f32]> = (0..=i).map(|p| &vf[(base + p) * hd..(base + p + 1) * hd]).collect();
                    let qr = ((bi * nh + h) * s + i) * hd;
                    reference.extend(naive(&qf[qr..qr + hd], &keys, &values, scale, &[]));
                }
            }
        }
        let (atol, rtol) = if bf16 { (1e-3, 8e-3) } else { (2e-5, 1e-5) };
        assert_close(&vals(&out), &reference, atol, rtol, "prefill");
    }
}

fn err_text<T: std::fmt::Debug>(r: ttnn::Result<T>) -> String {
    r.expect_err("expected an error").to_string()
}

/// Validation errors name the op and what was wrong.
#[test]
fn decode_validation_errors() {
    let dev = device();
    let op = "paged_scaled_dot_product_attention_decode";
    let (b, nkv, nh, hd, blocks) = (2, 2, 8, 64, 8);
    let z = |n: usize| vec![0f32; n];
    let q = upload_f32(&dev, &z(b * nh * hd), &[1, b, nh, hd]);
    let kc = upload_f32(&dev, &z(blocks * nkv * BS * hd), &[blocks, nkv, BS, hd]);
    let vc = kc.clone();
    let pt = ints(&dev, &[0, 1, 2, 3], &[b, 2]);
    let cur = ints(&dev, &[3, 4], &[b]);
    let ok = PagedSdpaDecodeArgs {
        cur_pos_tensor: Some(&cur),
        ..Default::default()
    };
    paged_scaled_dot_product_attention_decode(&q, &kc, &vc, &pt, &ok).expect("valid call");
    let check = |r: ttnn::Result<Tensor>, what: &str| {
        let e = err_text(r);
        assert!(e.contains(op), "{e}");
        assert!(e.contains(what), "expected '{what}' in: {e}");
    };
    // q dtype.
    let q_int = Tensor::from_slice(
        &vec![0i32; b * nh * hd],
        [1, b, nh, hd],
        DataType::Int32,
        Layout::Tile,
    )
    .expect("t")
    .to_device(&dev, &DRAM_MEMORY_CONFIG)
    .expect("up");
    check(
        paged_scaled_dot_product_attention_decode(&q_int, &kc, &vc, &pt, &ok),
        "q",
    );
    // GQA needs bf16/f32 q.
    let q_b8 = upload(
        &dev,
        &z(b * nh * hd),
        &[1, b, nh, hd],
        DataType::Bfloat8B,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    check(
        paged_scaled_dot_product_attention_decode(&q_b8, &kc, &vc, &pt, &ok),
        "GQA",
    );
    // K layout.
    let k_rm = upload(
        &dev,
        &z(blocks * nkv * BS * hd),
        &[blocks, nkv, BS, hd],
        DataType::Float32,
        Layout::RowMajor,
        &DRAM_MEMORY_CONFIG,
    );
    check(
        paged_scaled_dot_product_attention_decode(&q, &k_rm, &vc, &pt, &ok),
        "k",
    );
    // K in L1.
    let k_l1 = upload(
        &dev,
        &z(blocks * nkv * BS * hd),
        &[blocks, nkv, BS, hd],
        DataType::Float32,
        Layout::Tile,
        &ttnn::L1_MEMORY_CONFIG,
    );
    check(
        paged_scaled_dot_product_attention_decode(&q, &k_l1, &vc, &pt, &ok),
        "DRAM",
    );
    // Q in L1 interleaved.
    let q_l1 = upload(
        &dev,
        &z(b * nh * hd),
        &[1, b, nh, hd],
        DataType::Float32,
        Layout::Tile,
        &ttnn::L1_MEMORY_CONFIG,
    );
    check(
        paged_scaled_dot_product_attention_decode(&q_l1, &kc, &vc, &pt, &ok),
        "HEIGHT_SHARDED or DRAM",
    );
    // Head dim mismatch.
    let k32 = upload_f32(&dev, &z(blocks * nkv * BS * 32), &[blocks, nkv, BS, 32]);
    check(
        paged_scaled_dot_product_attention_decode(&q, &k32, &k32, &pt, &ok),
        "head dim",
    );
    // Heads not a multiple of kv heads.
    let q3 = upload_f32(&dev, &z(b * 3 * hd), &[1, b, 3, hd]);
    check(
        paged_scaled_dot_product_attention_decode(&q3, &kc, &vc, &pt, &ok),
        "multiple",
    );
    // Block size mismatch.
    let v64 = upload_f32(&dev, &z(blocks * nkv * 64 * hd), &[blocks, nkv, 64, hd]);
    check(
        paged_scaled_dot_product_attention_decode(&q, &kc, &v64, &pt, &ok),
        "block size",
    );
    // Page table dtype, layout and rows.
    let pt_u = Tensor::from_slice(&[0u32, 1, 2, 3], [b, 2], DataType::Uint32, Layout::RowMajor)
        .expect("t")
        .to_device(&dev, &DRAM_MEMORY_CONFIG)
        .expect("up");
    check(
        paged_scaled_dot_product_attention_decode(&q, &kc, &vc, &pt_u, &ok),
        "page_table",
    );
    let pt3 = ints(&dev, &[0, 1, 2], &[3, 1]);
    check(
        paged_scaled_dot_product_attention_decode(&q, &kc, &vc, &pt3, &ok),
        "page table",
    );
    // cur_pos missing, wrong dtype, wrong length.
    check(
        paged_scaled_dot_product_attention_decode(
            &q,
            &kc,
            &vc,
            &pt,
            &PagedSdpaDecodeArgs::default(),
        ),
        "cur_pos_tensor is required",
    );
    let cur_u = Tensor::from_slice(&[1u32, 2], [b], DataType::Uint32, Layout::RowMajor)
        .expect("t")
        .to_device(&dev, &DRAM_MEMORY_CONFIG)
        .expect("up");
    check(
        paged_scaled_dot_product_attention_decode(
            &q,
            &kc,
            &vc,
            &pt,
            &PagedSdpaDecodeArgs {
                cur_pos_tensor: Some(&cur_u),
                ..Default::default()
            },
        ),
        "cur_pos_tensor",
    );
    let cur3 = ints(&dev, &[1, 2, 3], &[3]);
    check(
        paged_scaled_dot_product_attention_decode(
            &q,
            &kc,
            &vc,
            &pt,
            &PagedSdpaDecodeArgs {
                cur_pos_tensor: Some(&cur3),
                ..Default::default()
            },
        ),
        "cur_pos_tensor",
    );
    // Causal with a mask.
    let m = upload_f32(&dev, &z(b * nh * 64), &[b, 1, nh, 64]);
    check(
        paged_scaled_dot_product_attention_decode(
            &q,
            &kc,
            &vc,
            &pt,
            &PagedSdpaDecodeArgs {
                attn_mask: Some(&m),
                ..ok.clone()
            },
        ),
        "attn_mask",
    );
    // GQA with a sharded output.
    check(
        paged_scaled_dot_product_attention_decode(
            &q,
            &kc,
            &vc,
            &pt,
            &PagedSdpaDecodeArgs {
                memory_config: Some(hs(b, [32, hd])),
                ..ok.clone()
            },
        ),
        "GQA",
    );
    // Chunk size and window.
    let pc = SdpaProgramConfig {
        k_chunk_size: 48,
        ..Default::default()
    };
    check(
        paged_scaled_dot_product_attention_decode(
            &q,
            &kc,
            &vc,
            &pt,
            &PagedSdpaDecodeArgs {
                program_config: Some(pc),
                ..ok.clone()
            },
        ),
        "multiple of 32",
    );
    check(
        paged_scaled_dot_product_attention_decode(
            &q,
            &kc,
            &vc,
            &pt,
            &PagedSdpaDecodeArgs {
                sliding_window_size: Some(0),
                ..ok.clone()
            },
        ),
        "sliding_window_size",
    );
    // Head dim above the host limit.
    let q288 = upload_f32(&dev, &z(b * nh * 288), &[1, b, nh, 288]);
    let k288 = upload_f32(&dev, &z(blocks * nkv * BS * 288), &[blocks, nkv, BS, 288]);
    check(
        paged_scaled_dot_product_attention_decode(&q288, &k288, &k288, &pt, &ok),
        "256",
    );
    // Host tensor.
    let qh = Tensor::from_slice(
        &z(b * nh * hd),
        [1, b, nh, hd],
        DataType::Float32,
        Layout::Tile,
    )
    .expect("t");
    check(
        paged_scaled_dot_product_attention_decode(&qh, &kc, &vc, &pt, &ok),
        "device",
    );

    // Unpaged decode.
    let op = "ttnn::transformer::scaled_dot_product_attention_decode";
    let k = upload_f32(&dev, &z(b * nkv * 64 * hd), &[b, nkv, 64, hd]);
    let e = err_text(scaled_dot_product_attention_decode(
        &q,
        &k,
        &k,
        &SdpaDecodeArgs {
            cur_pos: vec![1, 64],
            ..Default::default()
        },
    ));
    assert!(e.contains(op) && e.contains("cur_pos[1] = 64"), "{e}");
    let e = err_text(scaled_dot_product_attention_decode(
        &q,
        &k,
        &k,
        &SdpaDecodeArgs::default(),
    ));
    assert!(e.contains(op) && e.contains("exactly one"), "{e}");
    let e = err_text(scaled_dot_product_attention_decode(
        &q,
        &k,
        &k,
        &SdpaDecodeArgs {
            cur_pos: vec![1, 2],
            cur_pos_tensor: Some(&cur),
            ..Default::default()
        },
    ));
    assert!(e.contains("exactly one"), "{e}");
    let k3 = upload_f32(&dev, &z(3 * nkv * 64 * hd), &[3, nkv, 64, hd]);
    let e = err_text(scaled_dot_product_attention_decode(
        &q,
        &k3,
        &k3,
        &SdpaDecodeArgs {
            cur_pos: vec![1, 2],
            ..Default::default()
        },
    ));
    assert!(e.contains(op) && e.contains("batch"), "{e}");
}

#[test]
fn prefill_validation_errors() {
    let dev = device();
    let op = "ttnn::transformer::scaled_dot_product_attention";
    let z = |n: usize| vec![0f32; n];
    let q = upload_f32(&dev, &z(4 * 64 * 64), &[1, 4, 64, 64]);
    let k = upload_f32(&dev, &z(2 * 64 * 64), &[1, 2, 64, 64]);
    scaled_dot_product_attention(&q, &k, &k, &SdpaArgs::default()).expect("valid");
    let check = |r: ttnn::Result<Tensor>, what: &str| {
        let e = err_text(r);
        assert!(e.contains(op), "{e}");
        assert!(e.contains(what), "expected '{what}' in: {e}");
    };
    let q_sh = upload(
        &dev,
        &z(4 * 64 * 64),
        &[1, 4, 64, 64],
        DataType::Float32,
        Layout::Tile,
        &hs(8, [32, 64]),
    );
    check(
        scaled_dot_product_attention(&q_sh, &k, &k, &SdpaArgs::default()),
        "interleaved",
    );
    let k_short = upload_f32(&dev, &z(2 * 32 * 64), &[1, 2, 32, 64]);
    check(
        scaled_dot_product_attention(&q, &k_short, &k_short, &SdpaArgs::default()),
        "Sq == Sk",
    );
    let k3 = upload_f32(&dev, &z(3 * 64 * 64), &[1, 3, 64, 64]);
    check(
        scaled_dot_product_attention(&q, &k3, &k3, &SdpaArgs::default()),
        "multiple",
    );
    let m = upload_f32(&dev, &z(64 * 64), &[1, 1, 64, 64]);
    check(
        scaled_dot_product_attention(
            &q,
            &k,
            &k,
            &SdpaArgs {
                attn_mask: Some(&m),
                ..Default::default()
            },
        ),
        "attn_mask",
    );
    let m_bad = upload_f32(&dev, &z(64 * 32), &[1, 1, 64, 32]);
    check(
        scaled_dot_product_attention(
            &q,
            &k,
            &k,
            &SdpaArgs {
                attn_mask: Some(&m_bad),
                is_causal: false,
                ..Default::default()
            },
        ),
        "attn_mask",
    );
    let q48 = upload_f32(&dev, &z(4 * 64 * 48), &[1, 4, 64, 48]);
    let k48 = upload_f32(&dev, &z(2 * 64 * 48), &[1, 2, 64, 48]);
    check(
        scaled_dot_product_attention(&q48, &k48, &k48, &SdpaArgs::default()),
        "multiple of 32",
    );
    let q_rm = upload(
        &dev,
        &z(4 * 64 * 64),
        &[1, 4, 64, 64],
        DataType::Float32,
        Layout::RowMajor,
        &DRAM_MEMORY_CONFIG,
    );
    check(
        scaled_dot_product_attention(&q_rm, &k, &k, &SdpaArgs::default()),
        "layout",
    );
    let pc = SdpaProgramConfig {
        q_chunk_size: 40,
        ..Default::default()
    };
    check(
        scaled_dot_product_attention(
            &q,
            &k,
            &k,
            &SdpaArgs {
                program_config: Some(pc),
                ..Default::default()
            },
        ),
        "q_chunk_size",
    );

    // Chunked.
    let op = "ttnn::transformer::chunked_scaled_dot_product_attention";
    let kc = upload_f32(&dev, &z(8 * 2 * BS * 64), &[8, 2, BS, 64]);
    let pt = ints(&dev, &[0, 1, 2, 3], &[1, 4]);
    chunked_scaled_dot_product_attention(&q, &kc, &kc, &pt, 64, &ChunkedSdpaArgs::default())
        .expect("valid chunked");
    let check = |r: ttnn::Result<Tensor>, what: &str| {
        let e = err_text(r);
        assert!(e.contains(op), "{e}");
        assert!(e.contains(what), "expected '{what}' in: {e}");
    };
    check(
        chunked_scaled_dot_product_attention(&q, &kc, &kc, &pt, 16, &ChunkedSdpaArgs::default()),
        "chunk_start_idx",
    );
    check(
        chunked_scaled_dot_product_attention(&q, &kc, &kc, &pt, 96, &ChunkedSdpaArgs::default()),
        "page table covers",
    );
    let pt2 = ints(&dev, &[0, 1, 2, 3, 4, 5, 6, 7], &[2, 4]);
    check(
        chunked_scaled_dot_product_attention(&q, &kc, &kc, &pt2, 0, &ChunkedSdpaArgs::default()),
        "rows",
    );
    let pt_u = Tensor::from_slice(&[0u32, 1, 2, 3], [1, 4], DataType::Uint32, Layout::RowMajor)
        .expect("t")
        .to_device(&dev, &DRAM_MEMORY_CONFIG)
        .expect("up");
    check(
        chunked_scaled_dot_product_attention(&q, &kc, &kc, &pt_u, 0, &ChunkedSdpaArgs::default()),
        "Int32",
    );
}

/// Data-dependent errors (positions, page-table entries) come from the run, name the op and the
/// value, write nothing, and leave the device working.
#[test]
fn data_dependent_errors_leave_device_working() {
    let dev = device();
    let op = "paged_scaled_dot_product_attention_decode";
    let (b, nkv, nh, hd, blocks, cols) = (2, 1, 2, 32, 4, 2);
    let mut rng = Rng::new(3);
    let q = upload_f32(&dev, &rng.vec(b * nh * hd, 1.0), &[1, b, nh, hd]);
    let kc = upload_f32(
        &dev,
        &rng.vec(blocks * nkv * BS * hd, 1.0),
        &[blocks, nkv, BS, hd],
    );
    let pt = ints(&dev, &[0, 1, 2, -1], &[b, cols]);
    let run = |cur: &[i32]| {
        let c = ints(&dev, cur, &[b]);
        paged_scaled_dot_product_attention_decode(
            &q,
            &kc,
            &kc,
            &pt,
            &PagedSdpaDecodeArgs {
                cur_pos_tensor: Some(&c),
                ..Default::default()
            },
        )
    };
    let e = err_text(run(&[64, 0]));
    assert!(e.contains(op) && e.contains("cur_pos[0] = 64"), "{e}");
    let e = err_text(run(&[3, -7]));
    assert!(e.contains(op) && e.contains("-7"), "{e}");
    // User 1's second block is -1: fine up to position 31, an error at 32.
    run(&[10, 31]).expect("valid positions");
    let e = err_text(run(&[10, 32]));
    assert!(e.contains(op) && e.contains("= -1"), "{e}");
    let good = run(&[63, 31]).expect("device still works");
    assert_eq!(good.shape().dims(), &[1, b, nh, hd]);

    // Chunked: an invalid entry of the used part of the table.
    let q1 = upload_f32(&dev, &rng.vec(nh * 40 * hd, 1.0), &[1, nh, 40, hd]);
    let pt1 = ints(&dev, &[1, 9], &[1, 2]);
    let e = err_text(chunked_scaled_dot_product_attention(
        &q1,
        &kc,
        &kc,
        &pt1,
        0,
        &ChunkedSdpaArgs::default(),
    ));
    assert!(
        e.contains("chunked_scaled_dot_product_attention") && e.contains("= 9"),
        "{e}"
    );
}

/// A decode step (cache update + attention) captured in a trace and replayed with new positions
/// refreshed in place gives the same results as eager execution.
#[test]
fn decode_step_in_a_trace() {
    let dev = device();
    let mut rng = Rng::new(77);
    let (b, nkv, nh, hd, cols) = (2, 1, 4, 32, 3);
    let (table, blocks) = shuffled_table(&mut rng, b, cols, 0);
    let pt = ints(&dev, &table, &[b, cols]);
    let z = vec![0f32; blocks * nkv * BS * hd];
    let kc = upload_f32(&dev, &z, &[blocks, nkv, BS, hd]);
    let vc = upload_f32(&dev, &z, &[blocks, nkv, BS, hd]);
    let mc = hs(b, [32, hd]);
    let mut kin = upload(
        &dev,
        &z[..b * nkv * hd],
        &[1, b, nkv, hd],
        DataType::Float32,
        Layout::Tile,
        &mc,
    );
    let mut vin = upload(
        &dev,
        &z[..b * nkv * hd],
        &[1, b, nkv, hd],
        DataType::Float32,
        Layout::Tile,
        &mc,
    );
    let mut qin = upload_f32(&dev, &vec![0f32; b * nh * hd], &[1, b, nh, hd]);
    let mut pos = ints(&dev, &[0, 0], &[b]);
    let step = |kin: &Tensor, vin: &Tensor, qin: &Tensor, pos: &Tensor| -> ttnn::Result<Tensor> {
        let args = PagedUpdateCacheArgs {
            update_idxs_tensor: Some(pos),
            page_table: Some(&pt),
            ..Default::default()
        };
        paged_update_cache(&kc, kin, &args)?;
        paged_update_cache(&vc, vin, &args)?;
        paged_scaled_dot_product_attention_decode(
            qin,
            &kc,
            &vc,
            &pt,
            &PagedSdpaDecodeArgs {
                cur_pos_tensor: Some(pos),
                ..Default::default()
            },
        )
    };
    let tid = ttnn::begin_trace_capture(&dev, 0).expect("begin");
    let out = step(&kin, &vin, &qin, &pos).expect("capture");
    let trace = ttnn::end_trace_capture(&dev, tid, 0).expect("end");
    let mut ks = Vec::new();
    let mut vs = Vec::new();
    for t in 0..40 {
        let kr = rng.vec(b * nkv * hd, 1.0);
        let vr = rng.vec(b * nkv * hd, 1.0);
        let qr = rng.vec(b * nh * hd, 1.0);
        let pos_host = Tensor::from_slice(
            &[t, if t < 35 { t } else { -1 }],
            [b],
            DataType::Int32,
            Layout::RowMajor,
        )
        .expect("t");
        ttnn::copy_host_to_device(
            &Tensor::from_slice(&kr, [1, b, nkv, hd], DataType::Float32, Layout::Tile).expect("t"),
            &mut kin,
        )
        .expect("k");
        ttnn::copy_host_to_device(
            &Tensor::from_slice(&vr, [1, b, nkv, hd], DataType::Float32, Layout::Tile).expect("t"),
            &mut vin,
        )
        .expect("v");
        ttnn::copy_host_to_device(
            &Tensor::from_slice(&qr, [1, b, nh, hd], DataType::Float32, Layout::Tile).expect("t"),
            &mut qin,
        )
        .expect("q");
        ttnn::copy_host_to_device(&pos_host, &mut pos).expect("pos");
        ttnn::execute_trace(&dev, &trace, 0, true).expect("replay");
        ks.push(kr);
        vs.push(vr);
        let got = vals(&out);
        // Reference for user 0 (always active).
        let scale = 1.0 / (hd as f64).sqrt();
        for h in 0..nh {
            let keys: Vec<&[f32]> = ks.iter().map(|r| &r[..hd]).collect();
            let values: Vec<&[f32]> = vs.iter().map(|r| &r[..hd]).collect();
            let want = naive(&qr[h * hd..(h + 1) * hd], &keys, &values, scale, &[]);
            assert_close(
                &got[h * hd..(h + 1) * hd],
                &want,
                2e-5,
                1e-5,
                &format!("step {t} head {h}"),
            );
        }
        if t >= 35 {
            assert!(got[nh * hd..].iter().all(|&x| x == 0.0));
        }
    }
    // A bad position at replay is an error of execute_trace; the trace stays usable.
    let bad = Tensor::from_slice(&[96i32, 0], [b], DataType::Int32, Layout::RowMajor).expect("t");
    ttnn::copy_host_to_device(&bad, &mut pos).expect("pos");
    let e = err_text(ttnn::execute_trace(&dev, &trace, 0, true));
    assert!(e.contains("paged_update_cache") && e.contains("96"), "{e}");
    let okp = Tensor::from_slice(&[40i32, 0], [b], DataType::Int32, Layout::RowMajor).expect("t");
    ttnn::copy_host_to_device(&okp, &mut pos).expect("pos");
    ttnn::execute_trace(&dev, &trace, 0, true).expect("replay after error");
}
