//! Integration tests for `embedding`.

mod common;

use common::{Rng, device, upload};
use proptest::prelude::*;
use ttnn::ops::embedding::{EmbeddingArgs, EmbeddingsType, embedding};
use ttnn::{
    DRAM_MEMORY_CONFIG, DataType, Device, L1_MEMORY_CONFIG, Layout, Tensor, begin_trace_capture,
    copy_host_to_device, end_trace_capture, execute_trace,
};

fn ids_tensor(dev: &Device, ids: &[u32], shape: &[usize], dtype: DataType) -> Tensor {
    Tensor::from_slice(ids, shape, dtype, Layout::RowMajor)
        .expect("host ids")
        .to_device(dev, &DRAM_MEMORY_CONFIG)
        .expect("upload ids")
}

fn err_of(r: ttnn::Result<Tensor>) -> String {
    let e = r.expect_err("expected an error").to_string();
    assert!(
        e.contains("ttnn::embedding"),
        "error does not name the op: {e}"
    );
    e
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Every output row is exactly the table row its id names (bf16 and f32 tables, row-major
    /// and tile outputs, 1-D and 2-D ids, sizes off the 32 grid), and pad positions are zero.
    /// Exact comparison: the op moves values, it does no arithmetic.
    #[test]
    fn rows_are_exact_copies(
        vocab in 1usize..50,
        dim in 1usize..100,
        batch in 1usize..4,
        seq in 1usize..40,
        one_d in any::<bool>(),
        f32_table in any::<bool>(),
        tile_out in any::<bool>(),
        pad in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let dev = device();
        let mut rng = Rng::new(seed);
        let wdtype = if f32_table { DataType::Float32 } else { DataType::Bfloat16 };
        let table = upload(&dev, &rng.vec(vocab * dim, 5.0), &[1, 1, vocab, dim], wdtype, Layout::RowMajor, &DRAM_MEMORY_CONFIG);
        let batch = if one_d { 1 } else { batch };
        let ids: Vec<u32> = (0..batch * seq).map(|_| rng.below(vocab as u64) as u32).collect();
        let ids_t = if one_d {
            ids_tensor(&dev, &ids, &[seq], DataType::Uint32)
        } else {
            ids_tensor(&dev, &ids, &[batch, seq], DataType::Uint32)
        };
        let pad_id = pad.then(|| ids[0]);
        let args = EmbeddingArgs {
            padding_idx: pad_id,
            layout: Some(if tile_out { Layout::Tile } else { Layout::RowMajor }),
            ..Default::default()
        };
        let out = embedding(&ids_t, &table, &args).expect("embedding");
        let want_shape: Vec<usize> = if one_d { vec![seq, dim] } else { vec![batch, seq, dim] };
        prop_assert_eq!(out.shape().dims().to_vec(), &want_shape[..]);
        prop_assert_eq!(out.dtype(), wdtype);
        prop_assert_eq!(out.layout(), if tile_out { Layout::Tile } else { Layout::RowMajor });
        let w = table.to_vec::<f32>().expect("table");
        let got = out.to_vec::<f32>().expect("out");
        for (t, &id) in ids.iter().enumerate() {
            let row = &got[t * dim..(t + 1) * dim];
            if Some(id) == pad_id {
                prop_assert!(row.iter().all(|&v| v == 0.0), "pad row {} not zero", t);
            } else {
                let want = &w[id as usize * dim..(id as usize + 1) * dim];
                prop_assert_eq!(row, want, "row {} (id {})", t, id);
            }
        }
    }
}

/// tt_transformers' decode call: ids `[1, 1, 1, 32]` uint32, `layout=TILE`, DRAM; and a dtype
/// change (allowed for TILE output) rounds once.
#[test]
fn decode_tokens_and_typecast() {
    let dev = device();
    let (vocab, dim) = (100, 64);
    let mut rng = Rng::new(5);
    let wv = rng.vec(vocab * dim, 1.0);
    let table = upload(
        &dev,
        &wv,
        &[1, 1, vocab, dim],
        DataType::Bfloat16,
        Layout::RowMajor,
        &DRAM_MEMORY_CONFIG,
    );
    let ids: Vec<u32> = (0..32).map(|i| (i * 3) % vocab as u32).collect();
    let ids_t = ids_tensor(&dev, &ids, &[1, 1, 1, 32], DataType::Uint32);
    let args = EmbeddingArgs {
        layout: Some(Layout::Tile),
        memory_config: Some(DRAM_MEMORY_CONFIG),
        ..Default::default()
    };
    let out = embedding(&ids_t, &table, &args).expect("embedding");
    assert_eq!(out.shape().dims(), &[1, 32, dim]);
    assert_eq!(out.memory_config(), Some(&DRAM_MEMORY_CONFIG));
    let got = out.to_vec::<f32>().expect("out");
    let w = table.to_vec::<f32>().expect("w");
    for (t, &id) in ids.iter().enumerate() {
        assert_eq!(
            &got[t * dim..(t + 1) * dim],
            &w[id as usize * dim..(id as usize + 1) * dim]
        );
    }
    // bf16 table to bfp8 TILE output: values are the table's, block-quantized.
    let args8 = EmbeddingArgs {
        dtype: Some(DataType::Bfloat8B),
        ..args.clone()
    };
    let out8 = embedding(&ids_t, &table, &args8).expect("embedding bfp8");
    assert_eq!(out8.dtype(), DataType::Bfloat8B);
    let got8 = out8.to_vec::<f32>().expect("out8");
    for (a, b) in got8.iter().zip(&got) {
        assert!((a - b).abs() <= 1.0 / 64.0, "{a} vs {b}");
    }
}

/// RoPE tables: an f32 cos table `[max_seq, hd]` gathered by uint32/int32 positions keeps f32
/// values exactly (the host deviation that accepts f32 tables).
#[test]
fn rope_table_lookup_keeps_f32() {
    let dev = device();
    let (max_seq, hd) = (64, 128);
    let cos: Vec<f32> = (0..max_seq * hd)
        .map(|i| ((i as f32) * 0.001).cos())
        .collect();
    let table = upload(
        &dev,
        &cos,
        &[max_seq, hd],
        DataType::Float32,
        Layout::RowMajor,
        &DRAM_MEMORY_CONFIG,
    );
    let pos = [3u32, 63, 0, 17, 17];
    for dtype in [DataType::Uint32, DataType::Int32] {
        let p = ids_tensor(&dev, &pos, &[1, pos.len()], dtype);
        let out = embedding(
            &p,
            &table,
            &EmbeddingArgs {
                layout: Some(Layout::Tile),
                ..Default::default()
            },
        )
        .expect("lookup");
        assert_eq!(out.shape().dims(), &[1, pos.len(), hd]);
        assert_eq!(out.dtype(), DataType::Float32);
        let got = out.to_vec::<f32>().expect("out");
        for (t, &q) in pos.iter().enumerate() {
            assert_eq!(
                &got[t * hd..(t + 1) * hd],
                &cos[q as usize * hd..(q as usize + 1) * hd]
            );
        }
    }
    // bf16 ids (TT-NN accepts them) holding small integers.
    let p = Tensor::from_slice(&[2.0f32, 5.0], [2], DataType::Bfloat16, Layout::RowMajor)
        .expect("host")
        .to_device(&dev, &DRAM_MEMORY_CONFIG)
        .expect("upload");
    let out = embedding(&p, &table, &EmbeddingArgs::default()).expect("bf16 ids");
    assert_eq!(out.shape().dims(), &[2, hd]);
    assert_eq!(
        &out.to_vec::<f32>().expect("out")[hd..],
        &cos[5 * hd..6 * hd]
    );
}

/// An out-of-range id is an error naming the op and the id, eagerly and on trace replay; the
/// device (and its memory accounting) keeps working afterwards.
#[test]
fn out_of_range_id_is_an_error_and_device_survives() {
    let dev = device();
    let (vocab, dim) = (10, 32);
    let table = upload(
        &dev,
        &vec![1.0; vocab * dim],
        &[vocab, dim],
        DataType::Bfloat16,
        Layout::RowMajor,
        &DRAM_MEMORY_CONFIG,
    );
    let before = dev.memory_report();
    let bad = ids_tensor(&dev, &[1, 10, 2], &[1, 3], DataType::Uint32);
    let e = err_of(embedding(&bad, &table, &EmbeddingArgs::default()));
    assert!(e.contains("token id 10") && e.contains("position 1"), "{e}");
    // Int32 ids past the table are errors too (negative ones are inactive slots: zero rows).
    let neg = Tensor::from_slice(&[-1i32, 12], [2], DataType::Int32, Layout::RowMajor)
        .expect("host")
        .to_device(&dev, &DRAM_MEMORY_CONFIG)
        .expect("upload");
    assert!(err_of(embedding(&neg, &table, &EmbeddingArgs::default())).contains("token id 12"));
    drop((bad, neg));
    assert_eq!(
        dev.memory_report().dram.in_use,
        before.dram.in_use,
        "failed op leaked memory"
    );

    // The device still runs ops.
    let good = ids_tensor(&dev, &[9, 0], &[1, 2], DataType::Uint32);
    let out = embedding(&good, &table, &EmbeddingArgs::default()).expect("after the error");
    assert_eq!(out.to_vec::<f32>().expect("out"), vec![1.0; 2 * dim]);

    // In a trace: the replay reports the error; fixed ids replay fine.
    let mut ids = ids_tensor(&dev, &[0, 1], &[1, 2], DataType::Uint32);
    let tid = begin_trace_capture(&dev, 0).expect("begin");
    let traced = embedding(&ids, &table, &EmbeddingArgs::default()).expect("capture");
    let trace = end_trace_capture(&dev, tid, 0).expect("end");
    let host_bad =
        Tensor::from_slice(&[3u32, 42], [1, 2], DataType::Uint32, Layout::RowMajor).expect("host");
    copy_host_to_device(&host_bad, &mut ids).expect("write ids");
    let e = execute_trace(&dev, &trace, 0, true)
        .expect_err("replay with a bad id")
        .to_string();
    assert!(
        e.contains("ttnn::embedding") && e.contains("token id 42"),
        "{e}"
    );
    let host_ok =
        Tensor::from_slice(&[3u32, 4], [1, 2], DataType::Uint32, Layout::RowMajor).expect("host");
    copy_host_to_device(&host_ok, &mut ids).expect("write ids");
    execute_trace(&dev, &trace, 0, true).expect("replay");
    assert_eq!(traced.to_vec::<f32>().expect("out"), vec![1.0; 2 * dim]);
}

#[test]
fn validation_errors() {
    let dev = device();
    let table = upload(
        &dev,
        &vec![0.5; 4 * 32],
        &[4, 32],
        DataType::Bfloat16,
        Layout::RowMajor,
        &DRAM_MEMORY_CONFIG,
    );
    let ids = ids_tensor(&dev, &[0, 1], &[1, 2], DataType::Uint32);
    let d = EmbeddingArgs::default;

    // ids dtype and storage; weight dtype and leading dims.
    let fids = upload(
        &dev,
        &[0.0, 1.0],
        &[1, 2],
        DataType::Float32,
        Layout::RowMajor,
        &DRAM_MEMORY_CONFIG,
    );
    assert!(err_of(embedding(&fids, &table, &d())).contains("Input must be UINT32 or BFLOAT16"));
    let host_ids =
        Tensor::from_slice(&[0u32], [1], DataType::Uint32, Layout::RowMajor).expect("host");
    assert!(err_of(embedding(&host_ids, &table, &d())).contains("device"));
    let u_table = Tensor::from_slice(&[1u32; 8], [2, 4], DataType::Uint32, Layout::RowMajor)
        .expect("host")
        .to_device(&dev, &DRAM_MEMORY_CONFIG)
        .expect("upload");
    assert!(err_of(embedding(&ids, &u_table, &d())).contains("BFLOAT16"));
    let t3 = upload(
        &dev,
        &vec![0.5; 2 * 4 * 32],
        &[2, 1, 4, 32],
        DataType::Bfloat16,
        Layout::RowMajor,
        &DRAM_MEMORY_CONFIG,
    );
    assert!(err_of(embedding(&ids, &t3, &d())).contains("First two dimensions"));

    // ids whose middle dims are not 1.
    let ids3 = ids_tensor(&dev, &[0; 12], &[2, 3, 2], DataType::Uint32);
    assert!(err_of(embedding(&ids3, &table, &d())).contains("Only dim 0 && 3"));

    // Sharded ids.
    let sharded = ttnn::create_sharded_memory_config(
        ttnn::Shape::new(&[1, 32]),
        ttnn::CoreCoord::new(8, 8),
        1,
        ttnn::ShardStrategy::Height,
        ttnn::ShardOrientation::RowMajor,
        Layout::RowMajor,
    )
    .expect("config");
    let sids = Tensor::from_slice(&[0u32; 32], [1, 32], DataType::Uint32, Layout::RowMajor)
        .expect("host")
        .to_device(&dev, &sharded)
        .expect("upload");
    assert!(err_of(embedding(&sids, &table, &d())).contains("sharded"));

    // Typecast only with TILE output; embeddings types and pad tokens.
    let e = err_of(embedding(
        &ids,
        &table,
        &EmbeddingArgs {
            dtype: Some(DataType::Float32),
            ..d()
        },
    ));
    assert!(
        e.contains("Can only typecast output embeddings when producing TILE_LAYOUT output"),
        "{e}"
    );
    let e = err_of(embedding(
        &ids,
        &table,
        &EmbeddingArgs {
            embeddings_type: EmbeddingsType::Padded,
            ..d()
        },
    ));
    assert!(e.contains("Pad token must be specified"), "{e}");
    let e = err_of(embedding(
        &ids,
        &table,
        &EmbeddingArgs {
            embeddings_type: EmbeddingsType::Binary,
            ..d()
        },
    ));
    assert!(e.contains("BINARY"), "{e}");
    // Row-major sharded outputs must be height sharded.
    let e = err_of(embedding(
        &ids,
        &table,
        &EmbeddingArgs {
            memory_config: Some(ttnn::L1_WIDTH_SHARDED_MEMORY_CONFIG),
            ..d()
        },
    ));
    assert!(e.contains("height sharded"), "{e}");
    // Table on another device.
    let other = device();
    let ids_other = ids_tensor(&other, &[0], &[1], DataType::Uint32);
    assert!(err_of(embedding(&ids_other, &table, &d())).contains("same device"));
    // A working L1 output for contrast.
    let ok = embedding(
        &ids,
        &table,
        &EmbeddingArgs {
            memory_config: Some(L1_MEMORY_CONFIG),
            ..d()
        },
    );
    assert!(ok.is_ok());

    // A tilized sharded output needs a shard spec; the output dtype must be a float type.
    let ids32 = ids_tensor(&dev, &[0; 32], &[1, 32], DataType::Uint32);
    let e = err_of(embedding(
        &ids32,
        &table,
        &EmbeddingArgs {
            layout: Some(Layout::Tile),
            memory_config: Some(ttnn::L1_HEIGHT_SHARDED_MEMORY_CONFIG),
            ..d()
        },
    ));
    assert!(
        e.contains("Sharded memory config must have a shard spec"),
        "{e}"
    );
    let e = err_of(embedding(
        &ids,
        &table,
        &EmbeddingArgs {
            layout: Some(Layout::Tile),
            dtype: Some(DataType::Uint32),
            ..d()
        },
    ));
    assert!(e.contains("Uint32"), "{e}");
    // bf16 ids must hold integers (checked when the op runs).
    let frac = Tensor::from_slice(&[1.5f32], [1], DataType::Bfloat16, Layout::RowMajor)
        .expect("host")
        .to_device(&dev, &DRAM_MEMORY_CONFIG)
        .expect("upload");
    assert!(err_of(embedding(&frac, &table, &d())).contains("not an integer"));
}

/// Negative Int32 ids (inactive decode slots) give zero rows; other ids look up as usual.
#[test]
fn negative_int32_ids_give_zero_rows() {
    let dev = common::device();
    let table: Vec<f32> = (0..12).map(|i| i as f32 + 1.0).collect();
    let w = common::upload(
        &dev,
        &table,
        &[4, 3],
        ttnn::DataType::Float32,
        ttnn::Layout::RowMajor,
        &ttnn::DRAM_MEMORY_CONFIG,
    );
    let ids = ttnn::Tensor::from_slice(
        &[2i32, -1, 0],
        [1, 3],
        ttnn::DataType::Int32,
        ttnn::Layout::RowMajor,
    )
    .expect("ids")
    .to_device(&dev, &ttnn::DRAM_MEMORY_CONFIG)
    .expect("upload");
    let out = ttnn::embedding(&ids, &w, &Default::default()).expect("embedding");
    assert_eq!(
        out.to_vec::<f32>().expect("read"),
        vec![7.0, 8.0, 9.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0]
    );
}

/// A borrowed table (`Tensor::from_shared_bf16`, how the model keeps its embedding in the
/// mapped checkpoint) is looked up through `SharedSource::read_at`, one read per row, never
/// through the mapping (which would make whole page-cache folios resident); a failing read
/// fails that lookup with the row named, and the device goes on.
#[test]
fn borrowed_table_rows_are_read_through_the_owner() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    struct Source {
        bytes: Vec<u8>,
        reads: AtomicUsize,
        fail: AtomicBool,
    }
    impl ttnn::SharedSource for Source {
        fn bytes(&self) -> &[u8] {
            &self.bytes
        }
        fn read_at(&self, offset: usize, dst: &mut [u8]) -> std::io::Result<()> {
            if self.fail.load(Ordering::Relaxed) {
                return Err(std::io::Error::other("injected read failure"));
            }
            self.reads.fetch_add(1, Ordering::Relaxed);
            dst.copy_from_slice(&self.bytes[offset..offset + dst.len()]);
            Ok(())
        }
    }

    let dev = device();
    let (vocab, dim) = (40, 48);
    let mut rng = Rng::new(11);
    let wv: Vec<half::bf16> = rng
        .vec(vocab * dim, 3.0)
        .iter()
        .map(|&v| half::bf16::from_f32(v))
        .collect();
    // Two leading bytes: the table is borrowed at a non-zero offset, as in a checkpoint.
    let mut bytes = vec![0u8, 0];
    bytes.extend(wv.iter().flat_map(|v| v.to_le_bytes()));
    let src = Arc::new(Source {
        bytes,
        reads: AtomicUsize::new(0),
        fail: AtomicBool::new(false),
    });
    let owner: ttnn::SharedBytes = src.clone();
    let table = Tensor::from_shared_bf16(owner, 2, [vocab, dim], Layout::RowMajor)
        .expect("borrow")
        .into_device(&dev, &DRAM_MEMORY_CONFIG)
        .expect("into device");
    let ids = [7u32, 0, 39, 7, 12];
    let ids_t = ids_tensor(&dev, &ids, &[1, ids.len()], DataType::Uint32);
    for out_dtype in [DataType::Bfloat16, DataType::Float32] {
        let before = src.reads.load(Ordering::Relaxed);
        let args = EmbeddingArgs {
            dtype: Some(out_dtype),
            layout: Some(Layout::Tile),
            padding_idx: Some(12),
            ..Default::default()
        };
        let got = embedding(&ids_t, &table, &args)
            .expect("embedding")
            .to_vec::<f32>()
            .expect("out");
        for (t, &id) in ids.iter().enumerate() {
            let row = &got[t * dim..(t + 1) * dim];
            if id == 12 {
                assert!(row.iter().all(|&v| v == 0.0), "pad row {t} is not zero");
            } else {
                let want: Vec<f32> = wv[id as usize * dim..(id as usize + 1) * dim]
                    .iter()
                    .map(|v| v.to_f32())
                    .collect();
                assert_eq!(row, &want[..], "row {t} (id {id}), {out_dtype:?}");
            }
        }
        // One read per non-pad row.
        assert_eq!(
            src.reads.load(Ordering::Relaxed) - before,
            4,
            "{out_dtype:?}"
        );
    }
    src.fail.store(true, Ordering::Relaxed);
    let e = err_of(embedding(&ids_t, &table, &EmbeddingArgs::default()));
    assert!(
        e.contains("row 7") && e.contains("injected read failure"),
        "{e}"
    );
    src.fail.store(false, Ordering::Relaxed);
    embedding(&ids_t, &table, &EmbeddingArgs::default()).expect("the device still works");
}
