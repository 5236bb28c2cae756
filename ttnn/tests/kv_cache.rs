//! `paged_update_cache` and `paged_fill_cache`: contents against a reference model of the cache,
//! data-dependent errors, validation.

mod common;

use common::{Rng, device, upload, upload_f32};
use proptest::prelude::*;
use ttnn::ops::kv_cache::{
    PagedFillCacheArgs, PagedUpdateCacheArgs, paged_fill_cache, paged_update_cache,
};
use ttnn::{
    BufferType, CoreCoord, CoreRangeSet, DRAM_MEMORY_CONFIG, DataType, Device, Layout,
    MemoryConfig, ShardOrientation, ShardSpec, Tensor, TensorMemoryLayout,
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

fn ints(dev: &Device, vals: &[i32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(vals, shape, DataType::Int32, Layout::RowMajor)
        .expect("int tensor")
        .to_device(dev, &DRAM_MEMORY_CONFIG)
        .expect("upload ints")
}

fn vals(t: &Tensor) -> Vec<f32> {
    t.to_vec::<f32>().expect("read back")
}

/// What the cache should hold: the f32 model rounded as the cache stores it (rows encode
/// independently, so encoding the whole model equals writing row by row).
fn stored(model: &[f32], shape: &[usize], dtype: DataType) -> Vec<f32> {
    vals(&Tensor::from_slice(model, shape, dtype, Layout::Tile).expect("encode"))
}

fn shuffled(rng: &mut Rng, n: usize) -> Vec<i32> {
    let mut p: Vec<i32> = (0..n as i32).collect();
    for i in (1..n).rev() {
        p.swap(i, rng.below(i as u64 + 1) as usize);
    }
    p
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// Several decode steps with a shuffled page table, some users skipped (-1) at each step;
    /// the cache must equal a model written row by row (exactly, after the cache's rounding).
    #[test]
    fn paged_update_matches_model(
        seed in 0u64..1000,
        b in 1usize..5,
        nkv in 1usize..4,
        hd in prop::sample::select(vec![32usize, 64, 96]),
        bs in prop::sample::select(vec![32usize, 64]),
        dtype in prop::sample::select(vec![DataType::Float32, DataType::Bfloat16, DataType::Bfloat8B, DataType::Bfloat4B]),
        in_bf16 in any::<bool>(),
    ) {
        let dev = device();
        let mut rng = Rng::new(seed);
        let cols = 3;
        let blocks = b * cols + 2;
        let perm = shuffled(&mut rng, blocks);
        let table: Vec<i32> = perm[..b * cols].to_vec();
        let pt = ints(&dev, &table, &[b, cols]);
        let shape = [blocks, nkv, bs, hd];
        let n = blocks * nkv * bs * hd;
        let cache = upload(&dev, &vec![0f32; n], &shape, dtype, Layout::Tile, &DRAM_MEMORY_CONFIG);
        let mut model = vec![0f32; n];
        let in_dt = if in_bf16 { DataType::Bfloat16 } else { DataType::Float32 };
        for _ in 0..6 {
            let pos: Vec<i32> = (0..b)
                .map(|_| if rng.below(4) == 0 { -1 } else { rng.below((cols * bs) as u64) as i32 })
                .collect();
            let x = upload(&dev, &rng.vec(b * nkv * hd, 2.0), &[1, b, nkv, hd], in_dt, Layout::Tile, &hs(b, [32, hd]));
            let xv = vals(&x);
            let idx = ints(&dev, &pos, &[b]);
            let ret = paged_update_cache(
                &cache,
                &x,
                &PagedUpdateCacheArgs { update_idxs_tensor: Some(&idx), page_table: Some(&pt), ..Default::default() },
            )
            .expect("update");
            prop_assert!(ret.shares_buffer_with(&cache));
            for (u, &p) in pos.iter().enumerate() {
                if p < 0 {
                    continue;
                }
                let p = p as usize;
                let blk = table[u * cols + p / bs] as usize;
                for h in 0..nkv {
                    let row = (blk * nkv + h) * bs + p % bs;
                    model[row * hd..(row + 1) * hd]
                        .copy_from_slice(&xv[(u * nkv + h) * hd..(u * nkv + h + 1) * hd]);
                }
            }
        }
        let got = vals(&cache);
        let want = stored(&model, &shape, dtype);
        prop_assert!(got == want, "cache contents differ from the model");
    }

    /// paged_fill_cache writes positions 0..S of one page-table row; everything else is kept.
    #[test]
    fn paged_fill_matches_model(
        seed in 0u64..1000,
        nkv in 1usize..4,
        s in 1usize..100,
        hd in prop::sample::select(vec![32usize, 64]),
        dtype in prop::sample::select(vec![DataType::Float32, DataType::Bfloat16, DataType::Bfloat8B]),
        input_like_cache in any::<bool>(),
        use_tensor in any::<bool>(),
    ) {
        let dev = device();
        let mut rng = Rng::new(seed);
        let (bs, users, cols) = (32, 3, 4);
        let blocks = users * cols + 1;
        let perm = shuffled(&mut rng, blocks);
        let table: Vec<i32> = perm[..users * cols].to_vec();
        let pt = ints(&dev, &table, &[users, cols]);
        let shape = [blocks, nkv, bs, hd];
        let n = blocks * nkv * bs * hd;
        let init = rng.vec(n, 1.0);
        let cache = upload(&dev, &init, &shape, dtype, Layout::Tile, &DRAM_MEMORY_CONFIG);
        let mut model = vals(&cache);
        let in_dt = if input_like_cache || dtype == DataType::Float32 { dtype } else { DataType::Float32 };
        let input = upload(&dev, &rng.vec(nkv * s * hd, 3.0), &[1, nkv, s, hd], in_dt, Layout::Tile, &DRAM_MEMORY_CONFIG);
        let iv = vals(&input);
        let user = rng.below(users as u64) as usize;
        let bt = Tensor::from_slice(&[user as u32], [1], DataType::Uint32, Layout::RowMajor)
            .expect("t")
            .to_device(&dev, &DRAM_MEMORY_CONFIG)
            .expect("up");
        let args = if use_tensor {
            PagedFillCacheArgs { batch_idx_tensor: Some(&bt), ..Default::default() }
        } else {
            PagedFillCacheArgs { batch_idx: user as u32, ..Default::default() }
        };
        paged_fill_cache(&cache, &input, &pt, &args).expect("fill");
        for h in 0..nkv {
            for p in 0..s {
                let row = ((table[user * cols + p / bs] as usize) * nkv + h) * bs + p % bs;
                model[row * hd..(row + 1) * hd].copy_from_slice(&iv[(h * s + p) * hd..(h * s + p + 1) * hd]);
            }
        }
        let want = stored(&model, &shape, dtype);
        prop_assert!(vals(&cache) == want, "cache contents differ from the model");
    }
}

/// Unpaged caches: a fixed index list, and share_cache (every user writes batch row 0; later
/// users win).
#[test]
fn unpaged_update_and_share_cache() {
    let dev = device();
    let mut rng = Rng::new(2);
    let (b, nkv, s, hd) = (3, 2, 64, 32);
    let cache = upload_f32(&dev, &vec![0f32; b * nkv * s * hd], &[b, nkv, s, hd]);
    let xv = rng.vec(b * nkv * hd, 1.0);
    let x = upload(
        &dev,
        &xv,
        &[1, b, nkv, hd],
        DataType::Float32,
        Layout::Tile,
        &hs(b, [32, hd]),
    );
    paged_update_cache(
        &cache,
        &x,
        &PagedUpdateCacheArgs {
            update_idxs: vec![5, u32::MAX, 63],
            ..Default::default()
        },
    )
    .expect("unpaged update");
    let got = vals(&cache);
    let mut model = vec![0f32; b * nkv * s * hd];
    for (u, p) in [(0usize, 5usize), (2, 63)] {
        for h in 0..nkv {
            let row = (u * nkv + h) * s + p;
            model[row * hd..(row + 1) * hd]
                .copy_from_slice(&xv[(u * nkv + h) * hd..(u * nkv + h + 1) * hd]);
        }
    }
    assert_eq!(got, model);

    let shared = upload_f32(&dev, &vec![0f32; nkv * s * hd], &[1, nkv, s, hd]);
    let idx = ints(&dev, &[7, 7, 9], &[b]);
    paged_update_cache(
        &shared,
        &x,
        &PagedUpdateCacheArgs {
            update_idxs_tensor: Some(&idx),
            share_cache: true,
            ..Default::default()
        },
    )
    .expect("share_cache");
    let got = vals(&shared);
    for h in 0..nkv {
        let r7 = (h * s + 7) * hd;
        let r9 = (h * s + 9) * hd;
        assert_eq!(
            &got[r7..r7 + hd],
            &xv[(nkv + h) * hd..(nkv + h + 1) * hd],
            "user 1 wins position 7"
        );
        assert_eq!(
            &got[r9..r9 + hd],
            &xv[(2 * nkv + h) * hd..(2 * nkv + h + 1) * hd]
        );
    }
}

fn err_text<T: std::fmt::Debug>(r: ttnn::Result<T>) -> String {
    r.expect_err("expected an error").to_string()
}

/// Out-of-range positions and page-table entries are errors of the run that name the op and the
/// value; nothing is written, and the device keeps working.
#[test]
fn data_dependent_errors() {
    let dev = device();
    let op = "ttnn::experimental::paged_update_cache";
    let (b, nkv, hd, bs, cols, blocks) = (2, 1, 32, 32, 2, 3);
    let cache = upload_f32(
        &dev,
        &vec![0f32; blocks * nkv * bs * hd],
        &[blocks, nkv, bs, hd],
    );
    let x = upload(
        &dev,
        &vec![1f32; b * nkv * hd],
        &[1, b, nkv, hd],
        DataType::Float32,
        Layout::Tile,
        &hs(b, [32, hd]),
    );
    let pt = ints(&dev, &[0, 1, 2, 7], &[b, cols]);
    let run = |pos: &[i32]| {
        let idx = ints(&dev, pos, &[b]);
        paged_update_cache(
            &cache,
            &x,
            &PagedUpdateCacheArgs {
                update_idxs_tensor: Some(&idx),
                page_table: Some(&pt),
                ..Default::default()
            },
        )
    };
    let e = err_text(run(&[3, 64]));
    assert!(e.contains(op) && e.contains("64"), "{e}");
    let e = err_text(run(&[-2, 0]));
    assert!(e.contains(op) && e.contains("-2"), "{e}");
    // User 1's second block is 7, beyond the 3 blocks of the cache.
    let e = err_text(run(&[0, 40]));
    assert!(e.contains(op) && e.contains("= 7"), "{e}");
    assert!(
        vals(&cache).iter().all(|&v| v == 0.0),
        "nothing written on error"
    );
    run(&[63, 31]).expect("the device keeps working");
    assert!(vals(&cache).contains(&1.0));

    // Fill: a bad entry, and a batch index tensor out of range.
    let op = "ttnn::experimental::paged_fill_cache";
    let input = upload_f32(&dev, &vec![2f32; nkv * 40 * hd], &[1, nkv, 40, hd]);
    let e = err_text(paged_fill_cache(
        &cache,
        &input,
        &pt,
        &PagedFillCacheArgs {
            batch_idx: 1,
            ..Default::default()
        },
    ));
    assert!(e.contains(op) && e.contains("= 7"), "{e}");
    let bt = ints(&dev, &[5], &[1]);
    let e = err_text(paged_fill_cache(
        &cache,
        &input,
        &pt,
        &PagedFillCacheArgs {
            batch_idx_tensor: Some(&bt),
            ..Default::default()
        },
    ));
    assert!(e.contains(op) && e.contains("batch_idx 5"), "{e}");
    assert!(!vals(&cache).contains(&2.0), "nothing written on error");
    paged_fill_cache(&cache, &input, &pt, &PagedFillCacheArgs::default()).expect("fill user 0");
}

#[test]
fn update_validation_errors() {
    let dev = device();
    let op = "ttnn::experimental::paged_update_cache";
    let (b, nkv, hd, bs, cols, blocks) = (2, 2, 64, 32, 2, 4);
    let z = |n: usize| vec![0f32; n];
    let cache = upload_f32(&dev, &z(blocks * nkv * bs * hd), &[blocks, nkv, bs, hd]);
    let mc = hs(b, [32, hd]);
    let x = upload(
        &dev,
        &z(b * nkv * hd),
        &[1, b, nkv, hd],
        DataType::Float32,
        Layout::Tile,
        &mc,
    );
    let pt = ints(&dev, &[0, 1, 2, 3], &[b, cols]);
    let idx = ints(&dev, &[0, 1], &[b]);
    let ok = PagedUpdateCacheArgs {
        update_idxs_tensor: Some(&idx),
        page_table: Some(&pt),
        ..Default::default()
    };
    paged_update_cache(&cache, &x, &ok).expect("valid");
    let check = |r: ttnn::Result<Tensor>, what: &str| {
        let e = err_text(r);
        assert!(e.contains(op), "{e}");
        assert!(e.contains(what), "expected '{what}' in: {e}");
    };
    // Input not sharded; width sharded; wrong dtype.
    let x_dram = upload_f32(&dev, &z(b * nkv * hd), &[1, b, nkv, hd]);
    check(paged_update_cache(&cache, &x_dram, &ok), "sharded");
    let ws = MemoryConfig::sharded(
        TensorMemoryLayout::WidthSharded,
        BufferType::L1,
        ShardSpec::new(
            CoreRangeSet::num_cores_to_corerangeset(2, CoreCoord::new(8, 8)),
            [64, 32],
            ShardOrientation::RowMajor,
        ),
    );
    let x_ws = upload(
        &dev,
        &z(b * nkv * hd),
        &[1, b, nkv, hd],
        DataType::Float32,
        Layout::Tile,
        &ws,
    );
    check(paged_update_cache(&cache, &x_ws, &ok), "WIDTH_SHARDED");
    let x_b8 = upload(
        &dev,
        &z(b * nkv * hd),
        &[1, b, nkv, hd],
        DataType::Bfloat8B,
        Layout::Tile,
        &mc,
    );
    check(paged_update_cache(&cache, &x_b8, &ok), "input");
    let col = MemoryConfig::sharded(
        TensorMemoryLayout::HeightSharded,
        BufferType::L1,
        ShardSpec::new(
            CoreRangeSet::num_cores_to_corerangeset(b, CoreCoord::new(8, 8)),
            [32, hd],
            ShardOrientation::ColMajor,
        ),
    );
    let x_col = upload(
        &dev,
        &z(b * nkv * hd),
        &[1, b, nkv, hd],
        DataType::Float32,
        Layout::Tile,
        &col,
    );
    check(paged_update_cache(&cache, &x_col, &ok), "ROW_MAJOR");
    // Cache dtype, layout, memory.
    let c_int = Tensor::from_slice(
        &vec![0i32; blocks * nkv * bs * hd],
        [blocks, nkv, bs, hd],
        DataType::Int32,
        Layout::Tile,
    )
    .expect("t")
    .to_device(&dev, &DRAM_MEMORY_CONFIG)
    .expect("up");
    check(paged_update_cache(&c_int, &x, &ok), "cache");
    let c_rm = upload(
        &dev,
        &z(blocks * nkv * bs * hd),
        &[blocks, nkv, bs, hd],
        DataType::Float32,
        Layout::RowMajor,
        &DRAM_MEMORY_CONFIG,
    );
    check(paged_update_cache(&c_rm, &x, &ok), "layout");
    let c_sh = upload(
        &dev,
        &z(blocks * nkv * bs * hd),
        &[blocks, nkv, bs, hd],
        DataType::Float32,
        Layout::Tile,
        &hs(8, [32 * 4, hd]),
    );
    check(paged_update_cache(&c_sh, &x, &ok), "interleaved");
    // Shapes.
    let c32 = upload_f32(&dev, &z(blocks * nkv * bs * 32), &[blocks, nkv, bs, 32]);
    check(paged_update_cache(&c32, &x, &ok), "head dim");
    let c3 = upload_f32(&dev, &z(blocks * 3 * bs * hd), &[blocks, 3, bs, hd]);
    check(paged_update_cache(&c3, &x, &ok), "kv heads");
    // Index arguments.
    check(
        paged_update_cache(
            &cache,
            &x,
            &PagedUpdateCacheArgs {
                update_idxs: vec![0, 1],
                ..ok.clone()
            },
        ),
        "Not both or neither",
    );
    let unpaged = upload_f32(&dev, &z(b * nkv * 64 * hd), &[b, nkv, 64, hd]);
    check(
        paged_update_cache(&unpaged, &x, &PagedUpdateCacheArgs::default()),
        "Not both or neither",
    );
    check(
        paged_update_cache(
            &unpaged,
            &x,
            &PagedUpdateCacheArgs {
                update_idxs: vec![0, 64],
                ..Default::default()
            },
        ),
        "update_idxs[1] = 64",
    );
    check(
        paged_update_cache(
            &cache,
            &x,
            &PagedUpdateCacheArgs {
                page_table: Some(&pt),
                update_idxs: vec![0, 1],
                ..Default::default()
            },
        ),
        "update_idxs_tensor",
    );
    let idx3 = ints(&dev, &[0, 1, 2], &[3]);
    check(
        paged_update_cache(
            &cache,
            &x,
            &PagedUpdateCacheArgs {
                update_idxs_tensor: Some(&idx3),
                ..ok.clone()
            },
        ),
        "update_idxs_tensor",
    );
    let idx_u = Tensor::from_slice(&[0u32, 1], [b], DataType::Uint32, Layout::RowMajor)
        .expect("t")
        .to_device(&dev, &DRAM_MEMORY_CONFIG)
        .expect("up");
    check(
        paged_update_cache(
            &cache,
            &x,
            &PagedUpdateCacheArgs {
                update_idxs_tensor: Some(&idx_u),
                ..ok.clone()
            },
        ),
        "Int32",
    );
    let idx_l1 = Tensor::from_slice(&[0i32, 1], [b], DataType::Int32, Layout::RowMajor)
        .expect("t")
        .to_device(&dev, &ttnn::L1_MEMORY_CONFIG)
        .expect("up");
    check(
        paged_update_cache(
            &cache,
            &x,
            &PagedUpdateCacheArgs {
                update_idxs_tensor: Some(&idx_l1),
                ..ok.clone()
            },
        ),
        "DRAM",
    );
    // Page table.
    let pt3 = ints(&dev, &[0, 1, 2, 3, 0, 1], &[3, 2]);
    check(
        paged_update_cache(
            &cache,
            &x,
            &PagedUpdateCacheArgs {
                page_table: Some(&pt3),
                ..ok.clone()
            },
        ),
        "page_table",
    );
    let pt_wide = ints(&dev, &[0; 10], &[b, 5]);
    check(
        paged_update_cache(
            &cache,
            &x,
            &PagedUpdateCacheArgs {
                page_table: Some(&pt_wide),
                ..ok.clone()
            },
        ),
        "max_num_blocks",
    );
    let pt_u = Tensor::from_slice(
        &[0u32, 1, 2, 3],
        [b, cols],
        DataType::Uint32,
        Layout::RowMajor,
    )
    .expect("t")
    .to_device(&dev, &DRAM_MEMORY_CONFIG)
    .expect("up");
    check(
        paged_update_cache(
            &cache,
            &x,
            &PagedUpdateCacheArgs {
                page_table: Some(&pt_u),
                ..ok.clone()
            },
        ),
        "page_table",
    );
    check(
        paged_update_cache(
            &cache,
            &x,
            &PagedUpdateCacheArgs {
                share_cache: true,
                ..ok.clone()
            },
        ),
        "share_cache",
    );
    check(
        paged_update_cache(
            &cache,
            &x,
            &PagedUpdateCacheArgs {
                batch_offset: 1,
                ..ok.clone()
            },
        ),
        "batch_offset",
    );
    // Batch mismatch (unpaged).
    let unpaged3 = upload_f32(&dev, &z(3 * nkv * 64 * hd), &[3, nkv, 64, hd]);
    check(
        paged_update_cache(
            &unpaged3,
            &x,
            &PagedUpdateCacheArgs {
                update_idxs: vec![0, 1],
                ..Default::default()
            },
        ),
        "batch",
    );
}

#[test]
fn fill_validation_errors() {
    let dev = device();
    let op = "ttnn::experimental::paged_fill_cache";
    let (nkv, hd, bs, blocks) = (2, 64, 32, 6);
    let z = |n: usize| vec![0f32; n];
    let cache = upload_f32(&dev, &z(blocks * nkv * bs * hd), &[blocks, nkv, bs, hd]);
    let pt = ints(&dev, &[0, 1, 2, 3, 4, 5], &[2, 3]);
    let input = upload_f32(&dev, &z(nkv * 70 * hd), &[1, nkv, 70, hd]);
    let ok = PagedFillCacheArgs::default();
    paged_fill_cache(&cache, &input, &pt, &ok).expect("valid");
    let check = |r: ttnn::Result<Tensor>, what: &str| {
        let e = err_text(r);
        assert!(e.contains(op), "{e}");
        assert!(e.contains(what), "expected '{what}' in: {e}");
    };
    // Too long for the table: 97 rows pad to 128 > 3 * 32.
    let long = upload_f32(&dev, &z(nkv * 97 * hd), &[1, nkv, 97, hd]);
    check(
        paged_fill_cache(&cache, &long, &pt, &ok),
        "max_num_blocks_per_seq",
    );
    // Input dtype: bfp8 into an f32 cache.
    let in_b8 = upload(
        &dev,
        &z(nkv * 70 * hd),
        &[1, nkv, 70, hd],
        DataType::Bfloat8B,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    check(paged_fill_cache(&cache, &in_b8, &pt, &ok), "input");
    // Sharded input.
    let in_sh = upload(
        &dev,
        &z(nkv * 70 * hd),
        &[1, nkv, 70, hd],
        DataType::Float32,
        Layout::Tile,
        &hs(6, [32, hd]),
    );
    check(paged_fill_cache(&cache, &in_sh, &pt, &ok), "INTERLEAVED");
    // Page table dtype and layout.
    let pt_u = Tensor::from_slice(&[0u32; 6], [2, 3], DataType::Uint32, Layout::RowMajor)
        .expect("t")
        .to_device(&dev, &DRAM_MEMORY_CONFIG)
        .expect("up");
    check(paged_fill_cache(&cache, &input, &pt_u, &ok), "Int32");
    // Shapes.
    let in3 = upload_f32(&dev, &z(3 * 70 * hd), &[1, 3, 70, hd]);
    check(paged_fill_cache(&cache, &in3, &pt, &ok), "kv heads");
    // batch_idx.
    check(
        paged_fill_cache(
            &cache,
            &input,
            &pt,
            &PagedFillCacheArgs {
                batch_idx: 2,
                ..Default::default()
            },
        ),
        "batch_idx 2",
    );
    check(
        paged_fill_cache(
            &cache,
            &input,
            &pt,
            &PagedFillCacheArgs {
                batch_idx: 9,
                ..Default::default()
            },
        ),
        "batch_idx 9",
    );
    let bt2 = ints(&dev, &[0, 1], &[2]);
    check(
        paged_fill_cache(
            &cache,
            &input,
            &pt,
            &PagedFillCacheArgs {
                batch_idx_tensor: Some(&bt2),
                ..Default::default()
            },
        ),
        "single element",
    );
    let btf = upload_f32(&dev, &[0.0], &[1]);
    check(
        paged_fill_cache(
            &cache,
            &input,
            &pt,
            &PagedFillCacheArgs {
                batch_idx_tensor: Some(&btf),
                ..Default::default()
            },
        ),
        "batch_idx_tensor",
    );
    // The same tensor as cache and input.
    check(
        paged_fill_cache(&cache, &cache, &pt, &ok),
        "different tensors",
    );
}
