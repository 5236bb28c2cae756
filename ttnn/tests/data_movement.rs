//! Integration tests for the data movement ops: `reshape`, `unsqueeze_to_4d`,
//! `to_memory_config`, `copy` and the attention head split/concat ops.

mod common;

use common::{Rng, device, upload};
use proptest::prelude::*;
use ttnn::ops::data_movement::{
    NlpConcatHeadsDecodeArgs, NlpCreateQkvHeadsArgs, NlpCreateQkvHeadsDecodeArgs, copy,
    nlp_concat_heads, nlp_concat_heads_decode, nlp_create_qkv_heads, nlp_create_qkv_heads_decode,
    reshape, to_memory_config, unsqueeze_to_4d,
};
use ttnn::{
    BufferType, CoreCoord, CoreRange, CoreRangeSet, DRAM_MEMORY_CONFIG, DataType, Device,
    L1_HEIGHT_SHARDED_MEMORY_CONFIG, L1_MEMORY_CONFIG, Layout, MemoryConfig, ShardOrientation,
    ShardSpec, Tensor, TensorMemoryLayout,
};

const GRID: CoreCoord = CoreCoord::new(8, 8);

fn sharded(layout: TensorMemoryLayout, cores: usize, shard: [usize; 2]) -> MemoryConfig {
    MemoryConfig::sharded(
        layout,
        BufferType::L1,
        ShardSpec::new(
            CoreRangeSet::num_cores_to_corerangeset(cores, GRID),
            shard,
            ShardOrientation::RowMajor,
        ),
    )
}

/// The f32 values of `t` (exact for f32/bf16/block-float storage).
fn vals(t: &Tensor) -> Vec<f32> {
    t.to_vec::<f32>().expect("to_vec")
}

/// Asserts `r` failed with an error naming `op`, and returns the message.
fn err_of<T: std::fmt::Debug>(r: ttnn::Result<T>, op: &str) -> String {
    let e = r.expect_err("expected an error").to_string();
    assert!(e.contains(op), "error does not name {op}: {e}");
    e
}

fn tile_bytes(dtype: DataType) -> u64 {
    dtype.tile_size_bytes() as u64
}

// ---------------------------------------------------------------------------------------------
// reshape / unsqueeze

#[test]
fn reshape_is_a_view() {
    let dev = device();
    let v: Vec<f32> = (0..2 * 3 * 64).map(|i| i as f32).collect();
    let t = upload(
        &dev,
        &v,
        &[2, 3, 64],
        DataType::Bfloat16,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let before = dev.memory_report().dram.in_use;
    let r = reshape(&t, [1, 6, 64]).expect("reshape");
    assert!(r.shares_buffer_with(&t));
    assert_eq!(r.shape().dims(), &[1, 6, 64]);
    assert_eq!(vals(&r), vals(&t));
    assert_eq!(dev.memory_report().dram.in_use, before);
    let r2 = reshape(&t, [384]).expect("flatten");
    assert_eq!(vals(&r2), vals(&t));
    // Host tensors too.
    let h = Tensor::from_slice(&v, [2, 3, 64], DataType::Float32, Layout::RowMajor).expect("host");
    assert_eq!(
        reshape(&h, [6, 64])
            .expect("host reshape")
            .to_vec::<f32>()
            .expect("v"),
        v
    );
    // Volumes must match.
    let e = err_of(reshape(&t, [2, 3, 65]), "ttnn::reshape");
    assert!(e.contains("volumes must match"), "{e}");

    let u = unsqueeze_to_4d(&t).expect("unsqueeze");
    assert_eq!(u.shape().dims(), &[1, 2, 3, 64]);
    assert!(u.shares_buffer_with(&t));
    let five = reshape(&t, [1, 1, 2, 3, 64]).expect("rank 5");
    assert_eq!(
        unsqueeze_to_4d(&five).expect("squeeze").shape().dims(),
        &[1, 2, 3, 64]
    );
    let bad5 = reshape(&t, [2, 1, 1, 3, 64]).expect("rank 5");
    err_of(unsqueeze_to_4d(&bad5), "ttnn::unsqueeze_to_4D");
}

/// Block-float rows are grouped along the last dim: a reshape that changes it re-encodes.
#[test]
fn reshape_block_float_changing_width() {
    let dev = device();
    let mut rng = Rng::new(1);
    let v = rng.vec(4 * 64, 1.0);
    let t = upload(
        &dev,
        &v,
        &[4, 64],
        DataType::Bfloat8B,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let same_w = reshape(&t, [2, 2, 64]).expect("same width");
    assert!(same_w.shares_buffer_with(&t));
    let r = reshape(&t, [8, 32]).expect("new width");
    assert!(!r.shares_buffer_with(&t));
    // Groups of 16 are unchanged when halving a 64-wide row: the values are identical.
    assert_eq!(vals(&r), vals(&t));
    let r24 = reshape(&t, [2, 128]).expect("wider");
    assert_eq!(vals(&r24), vals(&t));
}

// ---------------------------------------------------------------------------------------------
// to_memory_config

#[test]
fn to_memory_config_round_trips_exactly() {
    let dev = device();
    let mut rng = Rng::new(2);
    let (rows, w) = (64, 256);
    for dtype in [
        DataType::Float32,
        DataType::Bfloat16,
        DataType::Bfloat8B,
        DataType::Bfloat4B,
    ] {
        let t = upload(
            &dev,
            &rng.vec(rows * w, 3.0),
            &[1, 1, rows, w],
            dtype,
            Layout::Tile,
            &DRAM_MEMORY_CONFIG,
        );
        let want = vals(&t);
        let ws = sharded(TensorMemoryLayout::WidthSharded, 8, [rows, 32]);
        let hs = sharded(TensorMemoryLayout::HeightSharded, 2, [32, w]);
        let bs = MemoryConfig::sharded(
            TensorMemoryLayout::BlockSharded,
            BufferType::L1,
            ShardSpec::new(
                CoreRangeSet::from_range(CoreRange::new(
                    CoreCoord::new(0, 0),
                    CoreCoord::new(3, 1),
                )),
                [32, 64],
                ShardOrientation::RowMajor,
            ),
        );
        let mut cur = t.clone();
        for mc in [&ws, &hs, &bs, &L1_MEMORY_CONFIG, &DRAM_MEMORY_CONFIG] {
            cur = to_memory_config(&cur, mc, None).expect("to_memory_config");
            assert_eq!(cur.memory_config(), Some(mc));
            assert_eq!(cur.dtype(), dtype);
            assert_eq!(vals(&cur), want, "{dtype:?} -> {mc:?}");
        }
    }
}

#[test]
fn to_memory_config_accounting_dtype_and_quirk() {
    let dev = device();
    let mut rng = Rng::new(3);
    let v = rng.vec(32 * 128, 2.0);
    let t = upload(
        &dev,
        &v,
        &[1, 1, 32, 128],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let l1_before = dev.memory_report().l1.in_use;
    let ws = sharded(TensorMemoryLayout::WidthSharded, 4, [32, 32]);
    let s = to_memory_config(&t, &ws, Some(DataType::Bfloat16)).expect("shard + typecast");
    // 4 cores x one bf16 tile.
    assert_eq!(dev.memory_report().l1.in_use - l1_before, 4 * 2048);
    assert_eq!(s.dtype(), DataType::Bfloat16);
    let want: Vec<f32> = v
        .iter()
        .map(|&x| half::bf16::from_f32(x).to_f32())
        .collect();
    assert_eq!(vals(&s), want);
    // TT-NN quirk: the same config returns the same tensor, even when a dtype is asked for.
    let same = to_memory_config(&s, &ws, Some(DataType::Float32)).expect("same config");
    assert!(same.shares_buffer_with(&s));
    assert_eq!(same.dtype(), DataType::Bfloat16);
    drop((s, same));
    assert_eq!(dev.memory_report().l1.in_use, l1_before);

    // Errors: spec-less sharded target, host tensor, block float in row-major.
    let e = err_of(
        to_memory_config(&t, &L1_HEIGHT_SHARDED_MEMORY_CONFIG, None),
        "ttnn::to_memory_config",
    );
    assert!(e.contains("shard spec"), "{e}");
    let h = Tensor::from_slice(&v, [1, 1, 32, 128], DataType::Float32, Layout::Tile).expect("host");
    err_of(
        to_memory_config(&h, &L1_MEMORY_CONFIG, None),
        "ttnn::to_memory_config",
    );
    let rm = upload(
        &dev,
        &v,
        &[32, 128],
        DataType::Float32,
        Layout::RowMajor,
        &DRAM_MEMORY_CONFIG,
    );
    err_of(
        to_memory_config(&rm, &L1_MEMORY_CONFIG, Some(DataType::Bfloat8B)),
        "ttnn::to_memory_config",
    );
    // A shard spec that does not fit the tensor.
    let bad = sharded(TensorMemoryLayout::HeightSharded, 1, [32, 64]);
    err_of(to_memory_config(&t, &bad, None), "ttnn::to_memory_config");
}

// ---------------------------------------------------------------------------------------------
// copy

#[test]
fn copy_in_place() {
    let dev = device();
    let mut rng = Rng::new(4);
    let a = rng.vec(40 * 70, 2.0);
    let src = upload(
        &dev,
        &a,
        &[40, 70],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let dst = upload(
        &dev,
        &vec![0.0; 40 * 70],
        &[40, 70],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let r = copy(&src, &dst).expect("copy");
    assert!(r.shares_buffer_with(&dst));
    assert_eq!(vals(&dst), a);
    // dtype conversion in TILE.
    let dst16 = upload(
        &dev,
        &vec![0.0; 40 * 70],
        &[40, 70],
        DataType::Bfloat16,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    copy(&src, &dst16).expect("copy to bf16");
    let want: Vec<f32> = a
        .iter()
        .map(|&x| half::bf16::from_f32(x).to_f32())
        .collect();
    assert_eq!(vals(&dst16), want);
    // Integers, row-major, bit-exact (tt_transformers copies sampled tokens into a buffer).
    let ids = Tensor::from_slice(&[7u32, 8, 9], [1, 3], DataType::Uint32, Layout::RowMajor)
        .expect("host")
        .to_device(&dev, &DRAM_MEMORY_CONFIG)
        .expect("upload");
    let tok = Tensor::from_slice(&[0u32; 3], [1, 3], DataType::Uint32, Layout::RowMajor)
        .expect("host")
        .to_device(&dev, &DRAM_MEMORY_CONFIG)
        .expect("upload");
    copy(&ids, &tok).expect("copy ids");
    assert_eq!(tok.to_vec::<u32>().expect("tok"), vec![7, 8, 9]);
    // Onto itself: a no-op.
    copy(&dst, &dst).expect("self copy");
    assert_eq!(vals(&dst), a);
}

#[test]
fn copy_validation_errors() {
    let dev = device();
    let op = "ttnn::copy";
    let z = vec![0.0f32; 32 * 64];
    let t = |shape: &[usize], dtype, layout, mc: &MemoryConfig| {
        upload(&dev, &z[..shape.iter().product()], shape, dtype, layout, mc)
    };
    let src = t(
        &[32, 64],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let e = err_of(
        copy(
            &src,
            &t(
                &[32, 32],
                DataType::Float32,
                Layout::Tile,
                &DRAM_MEMORY_CONFIG,
            ),
        ),
        op,
    );
    assert!(e.contains("shape"), "{e}");
    let e = err_of(
        copy(
            &src,
            &t(
                &[32, 64],
                DataType::Float32,
                Layout::RowMajor,
                &DRAM_MEMORY_CONFIG,
            ),
        ),
        op,
    );
    assert!(e.contains("layout"), "{e}");
    let ws = sharded(TensorMemoryLayout::WidthSharded, 2, [32, 32]);
    let e = err_of(
        copy(&src, &t(&[32, 64], DataType::Float32, Layout::Tile, &ws)),
        op,
    );
    assert!(e.contains("memory layout"), "{e}");
    let rm = t(
        &[32, 64],
        DataType::Float32,
        Layout::RowMajor,
        &DRAM_MEMORY_CONFIG,
    );
    let e = err_of(
        copy(
            &rm,
            &t(
                &[32, 64],
                DataType::Bfloat16,
                Layout::RowMajor,
                &DRAM_MEMORY_CONFIG,
            ),
        ),
        op,
    );
    assert!(
        e.contains("Only tile layout supports dtype conversion"),
        "{e}"
    );
    let u8t = Tensor::from_slice(&[0u8; 4], [2, 2], DataType::Uint8, Layout::RowMajor)
        .expect("host")
        .to_device(&dev, &DRAM_MEMORY_CONFIG)
        .expect("upload");
    let u8d = Tensor::from_slice(&[0u8; 4], [2, 2], DataType::Uint8, Layout::RowMajor)
        .expect("host")
        .to_device(&dev, &DRAM_MEMORY_CONFIG)
        .expect("upload");
    assert!(err_of(copy(&u8t, &u8d), op).contains("Uint8"));
    let other = device();
    let far = upload(
        &other,
        &z,
        &[32, 64],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    assert!(err_of(copy(&src, &far), op).contains("same device"));
    let host = Tensor::from_slice(&z, [32, 64], DataType::Float32, Layout::Tile).expect("host");
    err_of(copy(&host, &src), op);
}

// ---------------------------------------------------------------------------------------------
// nlp_create_qkv_heads_decode / nlp_concat_heads_decode

/// Largest divisor of `n` not above `max`.
fn divisor_at_most(n: usize, max: usize) -> usize {
    (1..=max.min(n))
        .rev()
        .find(|d| n.is_multiple_of(*d))
        .unwrap_or(1)
}

fn cores_of(t: &Tensor) -> Vec<CoreCoord> {
    let spec = t
        .memory_config()
        .and_then(|m| m.shard_spec.as_ref())
        .expect("sharded");
    spec.grid.cores(spec.orientation)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Decode head split against direct indexing (exact), with TT-NN's shard specs, for
    /// interleaved (DRAM/L1) and width-sharded inputs, with and without Q/K core overlap; then
    /// concat of Q gives back the Q columns (exact).
    #[test]
    fn decode_heads_split_and_concat(
        users in 1usize..=32,
        nh in 1usize..=32,
        kv_pick in 0usize..32,
        hd in prop_oneof![Just(32usize), Just(64), Just(128)],
        bf16 in any::<bool>(),
        placement in 0u8..3,
        no_overlap in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let dev = device();
        let nkv = 1 + kv_pick % nh;
        let width = (nh + 2 * nkv) * hd;
        let dtype = if bf16 { DataType::Bfloat16 } else { DataType::Float32 };
        let mut rng = Rng::new(seed);
        let xv = rng.vec(users * width, 4.0);
        let in_mc = match placement {
            0 => DRAM_MEMORY_CONFIG,
            1 => L1_MEMORY_CONFIG,
            _ => {
                let n = divisor_at_most(width / 32, 64);
                sharded(TensorMemoryLayout::WidthSharded, n, [32, width / n])
            }
        };
        let shard_w = in_mc.shard_spec.as_ref().map(|s| s.shape[1]);
        // Non-overlapping K needs a sharded input whose shards hold whole heads.
        let overlap = !(no_overlap && shard_w.is_some_and(|w| hd.is_multiple_of(w)) && 2 * users <= 64);
        let x = upload(&dev, &xv, &[1, 1, users, width], dtype, Layout::Tile, &in_mc);
        let xs = vals(&x);
        let args = NlpCreateQkvHeadsDecodeArgs {
            num_kv_heads: Some(nkv),
            overlap_qk_coregrid: Some(overlap),
            memory_config: Some(L1_HEIGHT_SHARDED_MEMORY_CONFIG),
            ..Default::default()
        };
        let (q, k, v) = nlp_create_qkv_heads_decode(&x, nh, &args).expect("create heads");
        prop_assert_eq!(q.shape().dims().to_vec(), &[1, users, nh, hd]);
        prop_assert_eq!(k.shape().dims().to_vec(), &[1, users, nkv, hd]);
        prop_assert_eq!(v.shape().dims().to_vec(), &[1, users, nkv, hd]);
        let heads_pad = nh.div_ceil(32) * 32;
        let all: Vec<CoreCoord> = CoreRangeSet::num_cores_to_corerangeset(64, GRID).cores(ShardOrientation::RowMajor);
        for (t, cores) in [(&q, &all[..users]), (&v, &all[..users]), (&k, if overlap { &all[..users] } else { &all[users..2 * users] })] {
            let mc = t.memory_config().expect("mc");
            prop_assert_eq!(mc.memory_layout, TensorMemoryLayout::HeightSharded);
            prop_assert_eq!(mc.buffer_type, BufferType::L1);
            prop_assert_eq!(mc.shard_spec.as_ref().expect("spec").shape, [heads_pad, hd]);
            prop_assert_eq!(cores_of(t), cores.to_vec());
            prop_assert_eq!(t.dtype(), dtype);
        }
        let (qv, kv, vv) = (vals(&q), vals(&k), vals(&v));
        for b in 0..users {
            let row = &xs[b * width..(b + 1) * width];
            for h in 0..nh {
                prop_assert_eq!(&qv[(b * nh + h) * hd..][..hd], &row[h * hd..][..hd]);
            }
            for h in 0..nkv {
                prop_assert_eq!(&kv[(b * nkv + h) * hd..][..hd], &row[(nh + h) * hd..][..hd]);
                prop_assert_eq!(&vv[(b * nkv + h) * hd..][..hd], &row[(nh + nkv + h) * hd..][..hd]);
            }
        }
        // Q is one user per core with [32, hd] shards: exactly what concat_heads_decode takes.
        let out = nlp_concat_heads_decode(&q, nh, &NlpConcatHeadsDecodeArgs::default()).expect("concat");
        prop_assert_eq!(out.shape().dims().to_vec(), &[1, 1, users, nh * hd]);
        let mc = out.memory_config().expect("mc");
        prop_assert_eq!(mc.memory_layout, TensorMemoryLayout::WidthSharded);
        prop_assert_eq!(mc.shard_spec.as_ref().expect("spec").shape, [32, hd]);
        prop_assert_eq!(cores_of(&out), all[..nh].to_vec());
        let ov = vals(&out);
        for b in 0..users {
            prop_assert_eq!(&ov[b * nh * hd..(b + 1) * nh * hd], &xs[b * width..b * width + nh * hd]);
        }
    }

    /// Decode concat of an SDPA-shaped output moved to `[ceil32(nh), hd]` shards on B cores
    /// (tt_transformers' SCORES_BATCHED_MM_OUTPUT_MEMCFG), taking only the first `num_heads`.
    #[test]
    fn decode_concat_from_resharded(
        users in 1usize..=32,
        heads_in in 1usize..=32,
        take_pick in 0usize..32,
        hd in prop_oneof![Just(32usize), Just(64), Just(128)],
        bf16 in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let dev = device();
        let nh = 1 + take_pick % heads_in;
        let dtype = if bf16 { DataType::Bfloat16 } else { DataType::Float32 };
        let mut rng = Rng::new(seed);
        let x = upload(&dev, &rng.vec(users * heads_in * hd, 2.0), &[1, users, heads_in, hd], dtype, Layout::Tile, &DRAM_MEMORY_CONFIG);
        let hs = sharded(TensorMemoryLayout::HeightSharded, users, [32, hd]);
        let xs_t = to_memory_config(&x, &hs, None).expect("reshard");
        let l1_before = dev.memory_report().l1.in_use;
        let out = nlp_concat_heads_decode(&xs_t, nh, &NlpConcatHeadsDecodeArgs::default()).expect("concat");
        // Output: [32, hd] shards (hd / 32 tiles) on nh cores.
        prop_assert_eq!(dev.memory_report().l1.in_use - l1_before, (nh * hd / 32) as u64 * tile_bytes(dtype));
        let xs = vals(&x);
        let ov = vals(&out);
        for b in 0..users {
            for h in 0..nh {
                prop_assert_eq!(&ov[(b * nh + h) * hd..][..hd], &xs[(b * heads_in + h) * hd..][..hd]);
            }
        }
    }
}

/// The modelled L1 grows by TT-NN's shard sizes: BitNet-2B-like decode (20 Q heads, 5 KV heads,
/// hd 128): every output has a `[32, 128]` shard (4 tiles) per user, K/V sized from the Q heads.
#[test]
fn decode_heads_memory_accounting() {
    let dev = device();
    for (users, dtype) in [
        (32usize, DataType::Bfloat16),
        (5, DataType::Bfloat16),
        (7, DataType::Float32),
    ] {
        let (nh, nkv, hd) = (20, 5, 128);
        let width = (nh + 2 * nkv) * hd;
        let x = upload(
            &dev,
            &vec![0.25; users * width],
            &[1, 1, users, width],
            dtype,
            Layout::Tile,
            &L1_MEMORY_CONFIG,
        );
        let before = dev.memory_report();
        let args = NlpCreateQkvHeadsDecodeArgs {
            num_kv_heads: Some(nkv),
            ..Default::default()
        };
        let (q, k, v) = nlp_create_qkv_heads_decode(&x, nh, &args).expect("create heads");
        let after = dev.memory_report();
        let shard = 4 * tile_bytes(dtype);
        assert_eq!(
            after.l1.in_use - before.l1.in_use,
            3 * users as u64 * shard,
            "users {users}"
        );
        // One user per core: Q, K and V shards all land on each of the first `users` cores.
        assert_eq!(
            after.l1_max_core.in_use - before.l1_max_core.in_use,
            3 * shard
        );
        assert_eq!(after.dram.in_use, before.dram.in_use);
        drop((q, k, v));
        assert_eq!(dev.memory_report().l1.in_use, before.l1.in_use);
    }
}

/// `batch_offset` + `slice_size` take a window of users from a width-sharded input; an offset
/// past the end is an error when the op runs.
#[test]
fn decode_heads_batch_offset() {
    let dev = device();
    let (users, nh, nkv, hd) = (8, 2, 1, 32);
    let width = (nh + 2 * nkv) * hd;
    let mut rng = Rng::new(9);
    let xv = rng.vec(users * width, 1.0);
    let x = upload(
        &dev,
        &xv,
        &[1, 1, users, width],
        DataType::Float32,
        Layout::Tile,
        &sharded(TensorMemoryLayout::WidthSharded, 4, [32, 32]),
    );
    let off = |o: u32| {
        Tensor::from_slice(&[o], [1], DataType::Uint32, Layout::RowMajor)
            .expect("host")
            .to_device(&dev, &DRAM_MEMORY_CONFIG)
            .expect("upload")
    };
    let o3 = off(3);
    let args = NlpCreateQkvHeadsDecodeArgs {
        num_kv_heads: Some(nkv),
        batch_offset: Some(&o3),
        slice_size: Some(4),
        ..Default::default()
    };
    let (q, _k, v) = nlp_create_qkv_heads_decode(&x, nh, &args).expect("slice");
    assert_eq!(q.shape().dims(), &[1, 4, nh, hd]);
    let (qv, vv) = (vals(&q), vals(&v));
    for b in 0..4 {
        let row = &xv[(3 + b) * width..(4 + b) * width];
        assert_eq!(&qv[b * nh * hd..(b + 1) * nh * hd], &row[..nh * hd]);
        assert_eq!(&vv[b * hd..(b + 1) * hd], &row[(nh + nkv) * hd..]);
    }
    let o6 = off(6);
    let e = err_of(
        nlp_create_qkv_heads_decode(
            &x,
            nh,
            &NlpCreateQkvHeadsDecodeArgs {
                batch_offset: Some(&o6),
                ..args.clone()
            },
        ),
        "ttnn::experimental::nlp_create_qkv_heads_decode",
    );
    assert!(e.contains("batch_offset 6"), "{e}");
    let e = err_of(
        nlp_create_qkv_heads_decode(
            &x,
            nh,
            &NlpCreateQkvHeadsDecodeArgs {
                slice_size: None,
                ..args.clone()
            },
        ),
        "nlp_create_qkv_heads_decode",
    );
    assert!(e.contains("Both batch_offset and slice_size"), "{e}");
}

#[test]
fn decode_heads_validation_errors() {
    let dev = device();
    let op = "ttnn::experimental::nlp_create_qkv_heads_decode";
    let mk = |shape: &[usize], dtype, layout, mc: &MemoryConfig| {
        upload(
            &dev,
            &vec![0.0; shape.iter().product()],
            shape,
            dtype,
            layout,
            mc,
        )
    };
    let d = NlpCreateQkvHeadsDecodeArgs::default;
    let x = mk(
        &[1, 1, 4, 384],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    assert!(
        nlp_create_qkv_heads_decode(
            &x,
            4,
            &NlpCreateQkvHeadsDecodeArgs {
                num_kv_heads: Some(4),
                ..d()
            }
        )
        .is_ok()
    );
    // dtype, layout, rank/shape.
    let b8 = mk(
        &[1, 1, 4, 384],
        DataType::Bfloat8B,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    assert!(
        err_of(nlp_create_qkv_heads_decode(&b8, 4, &d()), op).contains("Unsupported data format")
    );
    let rm = mk(
        &[1, 1, 4, 384],
        DataType::Float32,
        Layout::RowMajor,
        &DRAM_MEMORY_CONFIG,
    );
    assert!(err_of(nlp_create_qkv_heads_decode(&rm, 4, &d()), op).contains("layout"));
    let many = mk(
        &[1, 1, 33, 384],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    assert!(
        err_of(nlp_create_qkv_heads_decode(&many, 4, &d()), op).contains("Unsupported input shape")
    );
    let b2 = mk(
        &[2, 1, 4, 384],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    assert!(
        err_of(nlp_create_qkv_heads_decode(&b2, 4, &d()), op).contains("Unsupported input shape")
    );
    let odd = mk(
        &[1, 1, 4, 400],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    assert!(
        err_of(nlp_create_qkv_heads_decode(&odd, 4, &d()), op).contains("Unsupported input shape")
    );
    // Heads: divisibility, head_dim multiple of 32, > 32 Q heads, fewer Q than KV heads, zero.
    assert!(
        err_of(nlp_create_qkv_heads_decode(&x, 5, &d()), op)
            .contains("divisible by num_heads + 2*num_kv_heads")
    );
    assert!(
        err_of(
            nlp_create_qkv_heads_decode(
                &x,
                6,
                &NlpCreateQkvHeadsDecodeArgs {
                    num_kv_heads: Some(1),
                    ..d()
                }
            ),
            op
        )
        .contains("head_dim")
    );
    let wide = mk(
        &[1, 1, 1, 33 * 32 * 3],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    assert!(
        err_of(nlp_create_qkv_heads_decode(&wide, 33, &d()), op).contains("only 32 are supported")
    );
    assert!(
        err_of(
            nlp_create_qkv_heads_decode(
                &x,
                2,
                &NlpCreateQkvHeadsDecodeArgs {
                    num_kv_heads: Some(5),
                    ..d()
                }
            ),
            op
        )
        .contains("greater than or equal")
    );
    assert!(err_of(nlp_create_qkv_heads_decode(&x, 0, &d()), op).contains("at least 1"));
    // Sharded input: height sharded; wrong shard height; partial heads without overlap.
    let hs = MemoryConfig::sharded(
        TensorMemoryLayout::HeightSharded,
        BufferType::L1,
        ShardSpec::new(
            CoreRangeSet::num_cores_to_corerangeset(1, GRID),
            [32, 384],
            ShardOrientation::RowMajor,
        ),
    );
    let xh = mk(&[1, 1, 4, 384], DataType::Float32, Layout::Tile, &hs);
    assert!(
        err_of(nlp_create_qkv_heads_decode(&xh, 4, &d()), op).contains("must be width sharded")
    );
    let xw = mk(
        &[1, 1, 4, 384],
        DataType::Float32,
        Layout::Tile,
        &sharded(TensorMemoryLayout::WidthSharded, 2, [32, 192]),
    );
    let e = err_of(
        nlp_create_qkv_heads_decode(
            &xw,
            4,
            &NlpCreateQkvHeadsDecodeArgs {
                overlap_qk_coregrid: Some(false),
                ..d()
            },
        ),
        op,
    );
    assert!(e.contains("partial heads"), "{e}");
    // batch_offset with an interleaved input.
    let o = Tensor::from_slice(&[0u32], [1], DataType::Uint32, Layout::RowMajor)
        .expect("host")
        .to_device(&dev, &DRAM_MEMORY_CONFIG)
        .expect("upload");
    let e = err_of(
        nlp_create_qkv_heads_decode(
            &x,
            4,
            &NlpCreateQkvHeadsDecodeArgs {
                batch_offset: Some(&o),
                slice_size: Some(1),
                ..d()
            },
        ),
        op,
    );
    assert!(e.contains("width-sharded"), "{e}");
    // Too few cores in the requested grid (4 users, 2 cores).
    let small = MemoryConfig::sharded(
        TensorMemoryLayout::HeightSharded,
        BufferType::L1,
        ShardSpec::new(
            CoreRangeSet::num_cores_to_corerangeset(2, GRID),
            [32, 32],
            ShardOrientation::RowMajor,
        ),
    );
    let e = err_of(
        nlp_create_qkv_heads_decode(
            &x,
            4,
            &NlpCreateQkvHeadsDecodeArgs {
                memory_config: Some(small),
                ..d()
            },
        ),
        op,
    );
    assert!(e.contains("Grid Size is 2"), "{e}");
    // Host tensor.
    let h = Tensor::from_slice(
        &vec![0.0f32; 4 * 384],
        [1, 1, 4, 384],
        DataType::Float32,
        Layout::Tile,
    )
    .expect("host");
    err_of(nlp_create_qkv_heads_decode(&h, 4, &d()), op);
}

/// The remaining decode-split rules: shard orientation, batch_offset's dtype/shape,
/// slice_size's range, and twice the users in cores when K does not overlap Q.
#[test]
fn decode_heads_more_validation_errors() {
    let dev = device();
    let op = "ttnn::experimental::nlp_create_qkv_heads_decode";
    let d = NlpCreateQkvHeadsDecodeArgs::default;
    let col = MemoryConfig::sharded(
        TensorMemoryLayout::WidthSharded,
        BufferType::L1,
        ShardSpec::new(
            CoreRangeSet::num_cores_to_corerangeset(2, GRID),
            [32, 192],
            ShardOrientation::ColMajor,
        ),
    );
    let xc = upload(
        &dev,
        &vec![0.0; 4 * 384],
        &[1, 1, 4, 384],
        DataType::Float32,
        Layout::Tile,
        &col,
    );
    assert!(err_of(nlp_create_qkv_heads_decode(&xc, 4, &d()), op).contains("ROW_MAJOR"));
    let xw = upload(
        &dev,
        &vec![0.0; 4 * 384],
        &[1, 1, 4, 384],
        DataType::Float32,
        Layout::Tile,
        &sharded(TensorMemoryLayout::WidthSharded, 12, [32, 32]),
    );
    let f_off = upload(
        &dev,
        &[0.0],
        &[1],
        DataType::Float32,
        Layout::RowMajor,
        &DRAM_MEMORY_CONFIG,
    );
    let e = err_of(
        nlp_create_qkv_heads_decode(
            &xw,
            4,
            &NlpCreateQkvHeadsDecodeArgs {
                batch_offset: Some(&f_off),
                slice_size: Some(1),
                ..d()
            },
        ),
        op,
    );
    assert!(e.contains("batch_offset") && e.contains("Float32"), "{e}");
    let two = Tensor::from_slice(&[0u32, 0], [2], DataType::Uint32, Layout::RowMajor)
        .expect("host")
        .to_device(&dev, &DRAM_MEMORY_CONFIG)
        .expect("upload");
    let e = err_of(
        nlp_create_qkv_heads_decode(
            &xw,
            4,
            &NlpCreateQkvHeadsDecodeArgs {
                batch_offset: Some(&two),
                slice_size: Some(1),
                ..d()
            },
        ),
        op,
    );
    assert!(e.contains("unary"), "{e}");
    let one = Tensor::from_slice(&[0u32], [1], DataType::Uint32, Layout::RowMajor)
        .expect("host")
        .to_device(&dev, &DRAM_MEMORY_CONFIG)
        .expect("upload");
    let e = err_of(
        nlp_create_qkv_heads_decode(
            &xw,
            4,
            &NlpCreateQkvHeadsDecodeArgs {
                batch_offset: Some(&one),
                slice_size: Some(5),
                ..d()
            },
        ),
        op,
    );
    assert!(e.contains("slice_size 5"), "{e}");
    let five = MemoryConfig::sharded(
        TensorMemoryLayout::HeightSharded,
        BufferType::L1,
        ShardSpec::new(
            CoreRangeSet::num_cores_to_corerangeset(5, GRID),
            [32, 32],
            ShardOrientation::RowMajor,
        ),
    );
    let no_overlap = NlpCreateQkvHeadsDecodeArgs {
        overlap_qk_coregrid: Some(false),
        memory_config: Some(five.clone()),
        ..d()
    };
    let e = err_of(nlp_create_qkv_heads_decode(&xw, 4, &no_overlap), op);
    assert!(
        e.contains("Grid Size is 5") && e.contains("not overlapping"),
        "{e}"
    );
    // With overlap the same grid suffices; a non-sharded input forces overlap.
    assert!(
        nlp_create_qkv_heads_decode(
            &xw,
            4,
            &NlpCreateQkvHeadsDecodeArgs {
                memory_config: Some(five.clone()),
                ..d()
            }
        )
        .is_ok()
    );
    let xi = upload(
        &dev,
        &vec![0.0; 4 * 384],
        &[1, 1, 4, 384],
        DataType::Float32,
        Layout::Tile,
        &L1_MEMORY_CONFIG,
    );
    let (_q, k, _v) = nlp_create_qkv_heads_decode(&xi, 4, &no_overlap).expect("forced overlap");
    assert_eq!(
        cores_of(&k),
        CoreRangeSet::num_cores_to_corerangeset(4, GRID).cores(ShardOrientation::RowMajor)
    );
}

#[test]
fn decode_concat_validation_errors() {
    let dev = device();
    let op = "ttnn::experimental::nlp_concat_heads_decode";
    let d = NlpConcatHeadsDecodeArgs::default;
    let mk = |shape: &[usize], dtype, mc: &MemoryConfig| {
        upload(
            &dev,
            &vec![0.0; shape.iter().product()],
            shape,
            dtype,
            Layout::Tile,
            mc,
        )
    };
    let hs = |users, shard| sharded(TensorMemoryLayout::HeightSharded, users, shard);
    let ok = mk(&[1, 4, 8, 64], DataType::Float32, &hs(4, [32, 64]));
    assert!(nlp_concat_heads_decode(&ok, 8, &d()).is_ok());
    // Interleaved input; wrong shard shape; cores != users.
    let il = mk(&[1, 4, 8, 64], DataType::Float32, &DRAM_MEMORY_CONFIG);
    assert!(err_of(nlp_concat_heads_decode(&il, 8, &d()), op).contains("HEIGHT_SHARDED"));
    let two_per_core = mk(&[1, 4, 8, 64], DataType::Float32, &hs(2, [64, 64]));
    assert!(err_of(nlp_concat_heads_decode(&two_per_core, 8, &d()), op).contains("shard shape"));
    let more_cores = mk(&[1, 4, 8, 64], DataType::Float32, &hs(5, [32, 64]));
    assert!(
        err_of(nlp_concat_heads_decode(&more_cores, 8, &d()), op)
            .contains("num_cores must be equal to num users")
    );
    // More heads than held; > 32 padded heads; dtype; batch dim.
    assert!(err_of(nlp_concat_heads_decode(&ok, 9, &d()), op).contains("fewer heads"));
    let h40 = mk(&[1, 1, 40, 32], DataType::Float32, &hs(1, [64, 32]));
    assert!(err_of(nlp_concat_heads_decode(&h40, 8, &d()), op).contains("32 padded heads"));
    let b8 = mk(&[1, 4, 8, 64], DataType::Bfloat8B, &hs(4, [32, 64]));
    assert!(err_of(nlp_concat_heads_decode(&b8, 8, &d()), op).contains("Bfloat8B"));
    let b2 = mk(&[2, 2, 8, 64], DataType::Float32, &hs(4, [32, 64]));
    assert!(err_of(nlp_concat_heads_decode(&b2, 8, &d()), op).contains("Unsupported input shape"));
    // Not enough output cores in sub_core_grids.
    let sub = NlpConcatHeadsDecodeArgs {
        sub_core_grids: Some(CoreRangeSet::num_cores_to_corerangeset(4, GRID)),
        ..d()
    };
    assert!(err_of(nlp_concat_heads_decode(&ok, 8, &sub), op).contains("output cores"));
}

// ---------------------------------------------------------------------------------------------
// nlp_create_qkv_heads / nlp_concat_heads (prefill)

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Prefill head split (fused or separate KV input, K transposed or not) against direct
    /// indexing, for f32/bf16/bfp8 and sequence lengths off the 32 grid; exact except a
    /// transposed bfp8 K, which is re-quantized in its new 16-value groups (error below one
    /// step of the group's shared exponent: values in [-1, 1) give steps <= 2^-6).
    #[test]
    fn prefill_heads_split_and_concat(
        batch in 1usize..3,
        seq in 1usize..70,
        nh in 1usize..6,
        kv_pick in 0usize..6,
        hd in prop_oneof![Just(32usize), Just(64)],
        dtype_pick in 0u8..3,
        transpose in any::<bool>(),
        separate_kv in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let dev = device();
        let nkv = 1 + kv_pick % nh;
        let dtype = [DataType::Float32, DataType::Bfloat16, DataType::Bfloat8B][dtype_pick as usize];
        let mut rng = Rng::new(seed);
        let fused_w = (nh + 2 * nkv) * hd;
        let (x, kv_t) = if separate_kv {
            let q = upload(&dev, &rng.vec(batch * seq * nh * hd, 1.0), &[batch, 1, seq, nh * hd], dtype, Layout::Tile, &DRAM_MEMORY_CONFIG);
            let kv = upload(&dev, &rng.vec(batch * seq * 2 * nkv * hd, 1.0), &[batch, 1, seq, 2 * nkv * hd], dtype, Layout::Tile, &DRAM_MEMORY_CONFIG);
            (q, Some(kv))
        } else {
            (upload(&dev, &rng.vec(batch * seq * fused_w, 1.0), &[batch, 1, seq, fused_w], dtype, Layout::Tile, &DRAM_MEMORY_CONFIG), None)
        };
        let args = NlpCreateQkvHeadsArgs {
            input_kv: kv_t.as_ref(),
            num_kv_heads: Some(nkv),
            transpose_k_heads: transpose,
            memory_config: Some(DRAM_MEMORY_CONFIG),
        };
        let (q, k, v) = nlp_create_qkv_heads(&x, nh, &args).expect("create heads");
        prop_assert_eq!(q.shape().dims().to_vec(), &[batch, nh, seq, hd]);
        prop_assert_eq!(v.shape().dims().to_vec(), &[batch, nkv, seq, hd]);
        let k_dims: &[usize] = if transpose { &[batch, nkv, hd, seq] } else { &[batch, nkv, seq, hd] };
        prop_assert_eq!(k.shape().dims().to_vec(), k_dims);
        let xs = vals(&x);
        let kvs = kv_t.as_ref().map(vals);
        // (source values, row width, column of the first K head).
        let (ksrc, kw, k0): (&[f32], usize, usize) = match &kvs {
            Some(s) => (s, 2 * nkv * hd, 0),
            None => (&xs, fused_w, nh),
        };
        let qw = if separate_kv { nh * hd } else { fused_w };
        let (qv, kv, vv) = (vals(&q), vals(&k), vals(&v));
        for b in 0..batch {
            for s in 0..seq {
                for h in 0..nh {
                    let got = &qv[((b * nh + h) * seq + s) * hd..][..hd];
                    prop_assert_eq!(got, &xs[(b * seq + s) * qw + h * hd..][..hd]);
                }
                for h in 0..nkv {
                    let src_row = (b * seq + s) * kw;
                    prop_assert_eq!(&vv[((b * nkv + h) * seq + s) * hd..][..hd], &ksrc[src_row + (k0 + nkv + h) * hd..][..hd]);
                    for d in 0..hd {
                        let want = ksrc[src_row + (k0 + h) * hd + d];
                        let got = if transpose {
                            kv[((b * nkv + h) * hd + d) * seq + s]
                        } else {
                            kv[((b * nkv + h) * seq + s) * hd + d]
                        };
                        if transpose && dtype == DataType::Bfloat8B {
                            prop_assert!((got - want).abs() <= 1.0 / 64.0, "{} vs {}", got, want);
                        } else {
                            prop_assert_eq!(got, want);
                        }
                    }
                }
            }
        }
        // Concat of Q gives the Q columns back, exactly.
        let out = nlp_concat_heads(&q, None).expect("concat");
        prop_assert_eq!(out.shape().dims().to_vec(), &[batch, 1, seq, nh * hd]);
        prop_assert_eq!(out.memory_config(), Some(&DRAM_MEMORY_CONFIG));
        let ov = vals(&out);
        for r in 0..batch * seq {
            prop_assert_eq!(&ov[r * nh * hd..(r + 1) * nh * hd], &xs[r * qw..r * qw + nh * hd]);
        }
    }
}

/// A height-sharded prefill concat input (tt_transformers keeps it interleaved, but TT-NN
/// accepts it) gives the same values as the interleaved one.
#[test]
fn prefill_concat_sharded_input() {
    let dev = device();
    let mut rng = Rng::new(12);
    let v = rng.vec(2 * 64 * 64, 1.0);
    let x = upload(
        &dev,
        &v,
        &[1, 2, 64, 64],
        DataType::Bfloat16,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let xs = to_memory_config(
        &x,
        &sharded(TensorMemoryLayout::HeightSharded, 4, [32, 64]),
        None,
    )
    .expect("shard");
    let a = nlp_concat_heads(&x, Some(&L1_MEMORY_CONFIG)).expect("interleaved");
    let b = nlp_concat_heads(&xs, Some(&ttnn::L1_BLOCK_SHARDED_MEMORY_CONFIG)).expect("sharded");
    assert_eq!(
        b.memory_config().map(|m| m.memory_layout),
        Some(TensorMemoryLayout::BlockSharded)
    );
    assert_eq!(vals(&a), vals(&b));
}

#[test]
fn prefill_validation_errors() {
    let dev = device();
    let op = "ttnn::experimental::nlp_create_qkv_heads";
    let mk = |shape: &[usize], dtype, layout, mc: &MemoryConfig| {
        upload(
            &dev,
            &vec![0.0; shape.iter().product()],
            shape,
            dtype,
            layout,
            mc,
        )
    };
    let d = NlpCreateQkvHeadsArgs::default;
    assert!(d().transpose_k_heads, "TT-NN's default is true");
    let x = mk(
        &[1, 1, 40, 384],
        DataType::Bfloat16,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    assert!(nlp_create_qkv_heads(&x, 4, &d()).is_ok());
    // dtype, layout, dim 1, interleaved output, divisibility, head_dim.
    let u = Tensor::from_slice(
        &vec![0u32; 40 * 384],
        [1, 1, 40, 384],
        DataType::Uint32,
        Layout::Tile,
    )
    .expect("host")
    .to_device(&dev, &DRAM_MEMORY_CONFIG)
    .expect("upload");
    assert!(err_of(nlp_create_qkv_heads(&u, 4, &d()), op).contains("Unsupported data format"));
    let rm = mk(
        &[1, 1, 40, 384],
        DataType::Bfloat16,
        Layout::RowMajor,
        &DRAM_MEMORY_CONFIG,
    );
    assert!(err_of(nlp_create_qkv_heads(&rm, 4, &d()), op).contains("layout"));
    let s2 = mk(
        &[1, 2, 40, 384],
        DataType::Bfloat16,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    assert!(err_of(nlp_create_qkv_heads(&s2, 4, &d()), op).contains("not equal to 1"));
    let e = err_of(
        nlp_create_qkv_heads(
            &x,
            4,
            &NlpCreateQkvHeadsArgs {
                memory_config: Some(ttnn::L1_HEIGHT_SHARDED_MEMORY_CONFIG),
                ..d()
            },
        ),
        op,
    );
    assert!(e.contains("INTERLEAVED"), "{e}");
    assert!(err_of(nlp_create_qkv_heads(&x, 5, &d()), op).contains("divisible"));
    assert!(
        err_of(
            nlp_create_qkv_heads(
                &x,
                6,
                &NlpCreateQkvHeadsArgs {
                    num_kv_heads: Some(1),
                    ..d()
                }
            ),
            op
        )
        .contains("head_dim")
    );
    // Sharded input (not implemented on the host).
    let xs = mk(
        &[1, 1, 64, 384],
        DataType::Bfloat16,
        Layout::Tile,
        &sharded(TensorMemoryLayout::HeightSharded, 2, [32, 384]),
    );
    assert!(err_of(nlp_create_qkv_heads(&xs, 4, &d()), op).contains("sharded"));
    // input_kv: dtype, sequence length, head dims.
    let q = mk(
        &[1, 1, 40, 128],
        DataType::Bfloat16,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let kv_ok = mk(
        &[1, 1, 40, 128],
        DataType::Bfloat16,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    assert!(
        nlp_create_qkv_heads(
            &q,
            4,
            &NlpCreateQkvHeadsArgs {
                input_kv: Some(&kv_ok),
                num_kv_heads: Some(2),
                ..d()
            }
        )
        .is_ok()
    );
    let kv32 = mk(
        &[1, 1, 40, 128],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    assert!(
        err_of(
            nlp_create_qkv_heads(
                &q,
                4,
                &NlpCreateQkvHeadsArgs {
                    input_kv: Some(&kv32),
                    num_kv_heads: Some(2),
                    ..d()
                }
            ),
            op
        )
        .contains("KV tensor dtype")
    );
    let kv_s = mk(
        &[1, 1, 41, 128],
        DataType::Bfloat16,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    assert!(
        err_of(
            nlp_create_qkv_heads(
                &q,
                4,
                &NlpCreateQkvHeadsArgs {
                    input_kv: Some(&kv_s),
                    num_kv_heads: Some(2),
                    ..d()
                }
            ),
            op
        )
        .contains("sequence")
    );
    let kv_w = mk(
        &[1, 1, 40, 256],
        DataType::Bfloat16,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    assert!(
        err_of(
            nlp_create_qkv_heads(
                &q,
                4,
                &NlpCreateQkvHeadsArgs {
                    input_kv: Some(&kv_w),
                    num_kv_heads: Some(2),
                    ..d()
                }
            ),
            op
        )
        .contains("Head dims must be the same")
    );

    // nlp_concat_heads.
    let cop = "ttnn::experimental::nlp_concat_heads";
    let h = mk(
        &[1, 4, 40, 64],
        DataType::Bfloat16,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    assert!(nlp_concat_heads(&h, None).is_ok());
    let hrm = mk(
        &[1, 4, 40, 64],
        DataType::Bfloat16,
        Layout::RowMajor,
        &DRAM_MEMORY_CONFIG,
    );
    assert!(err_of(nlp_concat_heads(&hrm, None), cop).contains("layout"));
    let h48 = mk(
        &[1, 4, 40, 48],
        DataType::Bfloat16,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    assert!(err_of(nlp_concat_heads(&h48, None), cop).contains("head_dim"));
    let e = err_of(
        nlp_concat_heads(&h, Some(&ttnn::L1_WIDTH_SHARDED_MEMORY_CONFIG)),
        cop,
    );
    assert!(e.contains("INTERLEAVED"), "{e}");
    let hw = mk(
        &[1, 4, 64, 64],
        DataType::Bfloat16,
        Layout::Tile,
        &sharded(TensorMemoryLayout::WidthSharded, 2, [256, 32]),
    );
    assert!(
        err_of(nlp_concat_heads(&hw, Some(&DRAM_MEMORY_CONFIG)), cop).contains("WIDTH_SHARDED")
    );
    let hh = mk(
        &[1, 4, 64, 64],
        DataType::Bfloat16,
        Layout::Tile,
        &sharded(TensorMemoryLayout::HeightSharded, 8, [32, 64]),
    );
    assert!(err_of(nlp_concat_heads(&hh, None), cop).contains("non-height-sharded"));
    // input_kv layout and batch; a block-sharded concat input whose shards split a head.
    let kv_rm = mk(
        &[1, 1, 40, 128],
        DataType::Bfloat16,
        Layout::RowMajor,
        &DRAM_MEMORY_CONFIG,
    );
    let e = err_of(
        nlp_create_qkv_heads(
            &q,
            4,
            &NlpCreateQkvHeadsArgs {
                input_kv: Some(&kv_rm),
                num_kv_heads: Some(2),
                ..d()
            },
        ),
        op,
    );
    assert!(e.contains("input_kv") && e.contains("layout"), "{e}");
    let kv_b = mk(
        &[2, 1, 40, 128],
        DataType::Bfloat16,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let e = err_of(
        nlp_create_qkv_heads(
            &q,
            4,
            &NlpCreateQkvHeadsArgs {
                input_kv: Some(&kv_b),
                num_kv_heads: Some(2),
                ..d()
            },
        ),
        op,
    );
    assert!(e.contains("batch"), "{e}");
    let blk = MemoryConfig::sharded(
        TensorMemoryLayout::BlockSharded,
        BufferType::L1,
        ShardSpec::new(
            CoreRangeSet::from_range(CoreRange::new(CoreCoord::new(0, 0), CoreCoord::new(1, 1))),
            [128, 32],
            ShardOrientation::RowMajor,
        ),
    );
    let hb = mk(&[1, 4, 64, 64], DataType::Bfloat16, Layout::Tile, &blk);
    let e = err_of(nlp_concat_heads(&hb, Some(&DRAM_MEMORY_CONFIG)), cop);
    assert!(e.contains("shard width"), "{e}");
}

/// Decode data flow on one device: fused QKV in L1, split heads, reshard an SDPA-shaped output
/// and concat; everything captured in a trace and replayed with new inputs.
#[test]
fn decode_heads_in_a_trace() {
    let dev: Device = device();
    let (users, nh, nkv, hd) = (3, 4, 2, 32);
    let width = (nh + 2 * nkv) * hd;
    let mut x = upload(
        &dev,
        &vec![0.0; users * width],
        &[1, 1, users, width],
        DataType::Bfloat16,
        Layout::Tile,
        &L1_MEMORY_CONFIG,
    );
    let tid = ttnn::begin_trace_capture(&dev, 0).expect("begin");
    let args = NlpCreateQkvHeadsDecodeArgs {
        num_kv_heads: Some(nkv),
        ..Default::default()
    };
    let (q, _k, _v) = nlp_create_qkv_heads_decode(&x, nh, &args).expect("split");
    let out =
        nlp_concat_heads_decode(&q, nh, &NlpConcatHeadsDecodeArgs::default()).expect("concat");
    let trace = ttnn::end_trace_capture(&dev, tid, 0).expect("end");
    let mut rng = Rng::new(21);
    for _ in 0..2 {
        let xv = rng.vec(users * width, 1.0);
        let host = Tensor::from_slice(&xv, [1, 1, users, width], DataType::Bfloat16, Layout::Tile)
            .expect("host");
        ttnn::copy_host_to_device(&host, &mut x).expect("write");
        ttnn::execute_trace(&dev, &trace, 0, true).expect("replay");
        let xs = vals(&x);
        let ov = vals(&out);
        for b in 0..users {
            assert_eq!(
                &ov[b * nh * hd..(b + 1) * nh * hd],
                &xs[b * width..b * width + nh * hd]
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Allocation-free replay

/// Counts heap allocations made by the current thread (commands of decode-sized ops run on the
/// replaying thread).
struct CountingAlloc;

thread_local! {
    static ALLOCS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn count_alloc() {
    // `try_with`: allocations during thread teardown are not counted rather than panicking.
    let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: every method forwards to the system allocator with the caller's arguments; the
// counter is a const-initialised thread-local `Cell`, which never allocates.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        count_alloc();
        // SAFETY: forwarded with the caller's (valid, non-zero-size) layout.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        count_alloc();
        // SAFETY: as for `alloc`.
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        count_alloc();
        // SAFETY: `ptr` was allocated by `System` (through this allocator) with `layout`.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: `ptr` was allocated by `System` (through this allocator) with `layout`.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// A decode-step slice through every op of this crate's layers groups (embedding, sharding,
/// rms_norm, head split/concat, copy), captured in a trace: replays allocate nothing.
#[test]
fn decode_ops_replay_without_allocating() {
    use ttnn::ops::embedding::{EmbeddingArgs, embedding};
    use ttnn::ops::norm::{RmsNormArgs, rms_norm};
    let dev = Device::open(ttnn::DeviceSpec::default().with_threads(1)).expect("device");
    let (users, nh, nkv, hd, vocab) = (5, 4, 2, 32, 50);
    let dim = (nh + 2 * nkv) * hd;
    let mut rng = Rng::new(77);
    let table = upload(
        &dev,
        &rng.vec(vocab * dim, 1.0),
        &[vocab, dim],
        DataType::Bfloat16,
        Layout::RowMajor,
        &DRAM_MEMORY_CONFIG,
    );
    let gamma = upload(
        &dev,
        &rng.vec(dim, 1.0),
        &[1, 1, dim / 32, 32],
        DataType::Bfloat16,
        Layout::RowMajor,
        &DRAM_MEMORY_CONFIG,
    );
    let mut ids = Tensor::from_slice(
        &[1u32, 2, 3, 4, 5],
        [1, users],
        DataType::Uint32,
        Layout::RowMajor,
    )
    .expect("host")
    .to_device(&dev, &DRAM_MEMORY_CONFIG)
    .expect("upload");
    let buf = upload(
        &dev,
        &vec![0.0; users * dim],
        &[1, 1, users, dim],
        DataType::Bfloat16,
        Layout::Tile,
        &L1_MEMORY_CONFIG,
    );
    let tid = ttnn::begin_trace_capture(&dev, 0).expect("begin");
    let x = embedding(
        &ids,
        &table,
        &EmbeddingArgs {
            layout: Some(Layout::Tile),
            ..Default::default()
        },
    )
    .expect("embedding");
    let x4 = unsqueeze_to_4d(&x).expect("4d");
    let xs = to_memory_config(
        &x4,
        &sharded(TensorMemoryLayout::WidthSharded, 4, [32, dim / 4]),
        None,
    )
    .expect("shard");
    let n = rms_norm(
        &xs,
        &RmsNormArgs {
            epsilon: 1e-5,
            weight: Some(&gamma),
            ..Default::default()
        },
    )
    .expect("norm");
    let ni = to_memory_config(&n, &L1_MEMORY_CONFIG, None).expect("unshard");
    copy(&ni, &buf).expect("copy");
    let args = NlpCreateQkvHeadsDecodeArgs {
        num_kv_heads: Some(nkv),
        ..Default::default()
    };
    let (q, _k, _v) = nlp_create_qkv_heads_decode(&buf, nh, &args).expect("split");
    let out =
        nlp_concat_heads_decode(&q, nh, &NlpConcatHeadsDecodeArgs::default()).expect("concat");
    let trace = ttnn::end_trace_capture(&dev, tid, 0).expect("end");
    ttnn::execute_trace(&dev, &trace, 0, true).expect("warm-up replay");
    let host = Tensor::from_slice(
        &[9u32, 8, 7, 6, 5],
        [1, users],
        DataType::Uint32,
        Layout::RowMajor,
    )
    .expect("host");
    ttnn::copy_host_to_device(&host, &mut ids).expect("new ids");
    let probe = ALLOCS.with(|c| c.get());
    drop(std::hint::black_box(vec![0u8; 16]));
    assert!(
        ALLOCS.with(|c| c.get()) > probe,
        "the allocation counter does not count"
    );
    let before = ALLOCS.with(|c| c.get());
    ttnn::execute_trace(&dev, &trace, 0, true).expect("replay");
    let allocs = ALLOCS.with(|c| c.get()) - before;
    assert_eq!(allocs, 0, "a replay allocated {allocs} times");
    // And the replay computed the new step: Q columns of the normalized new embeddings.
    let nv = vals(&buf);
    let ov = vals(&out);
    for b in 0..users {
        assert_eq!(
            &ov[b * nh * hd..(b + 1) * nh * hd],
            &nv[b * dim..b * dim + nh * hd]
        );
    }
    let w = vals(&table);
    assert_eq!(&vals(&x)[..dim], &w[9 * dim..10 * dim]);
}
