//! The model's attention and sampling entry points in the order a decode step and a prefill
//! use them (RoPE rows by embedding, head split, RoPE, paged cache writes, paged / unpaged /
//! chunked / prefill SDPA, head concat; top-k, sampling, argmax, plus_one), each result
//! compared bit for bit with the same `ttnn` call.

mod common;

use std::ptr;

use common::{CTensor, Devices, Dual, Rng, c_mc, session, u32s};
use ttnn::experimental::{
    NlpConcatHeadsDecodeArgs, NlpCreateQkvHeadsArgs, NlpCreateQkvHeadsDecodeArgs,
    PagedFillCacheArgs, PagedUpdateCacheArgs, RotaryEmbeddingLlamaArgs,
};
use ttnn::transformer::{ChunkedSdpaArgs, PagedSdpaDecodeArgs, SdpaArgs, SdpaDecodeArgs};
use ttnn::{
    ArgmaxArgs, BufferType, CoreCoord, CoreRangeSet, DRAM_MEMORY_CONFIG, DataType, EmbeddingArgs,
    Layout, MemoryConfig, PlusOneArgs, SamplingArgs, ShardOrientation, ShardSpec,
    TensorMemoryLayout, TopkArgs,
};
use ttnn_sys as sys;

const NH: usize = 4;
const NKV: usize = 2;
const HD: usize = 32;
const BLOCK: usize = 32;
const BLOCKS: usize = 4;
const MAX_SEQ: usize = 64;

/// One user per core, `[rows, width]` shards (decode RoPE inputs and heads).
fn per_user(users: usize, rows: usize, width: usize) -> MemoryConfig {
    MemoryConfig::sharded(
        TensorMemoryLayout::HeightSharded,
        BufferType::L1,
        ShardSpec::new(
            CoreRangeSet::num_cores_to_corerangeset(users, CoreCoord::new(8, 8)),
            [rows, width],
            ShardOrientation::RowMajor,
        ),
    )
}

/// The RoPE tables and the transformation matrices, in both worlds.
struct Rope {
    cos: Dual,
    sin: Dual,
    trans_prefill: Dual,
    trans_decode: Dual,
}

fn rope(devs: &Devices, rng: &mut Rng, users: usize) -> Rope {
    let mat: Vec<f32> = ttnn::experimental::get_rot_transformation_mat(DataType::Float32)
        .expect("matrix")
        .to_vec()
        .expect("values");
    let repeated: Vec<f32> = (0..users).flat_map(|_| mat.iter().copied()).collect();
    let f32t = DataType::Float32;
    Rope {
        cos: Dual::upload(
            devs,
            &rng.vec(MAX_SEQ * HD, 1.0),
            &[MAX_SEQ, HD],
            f32t,
            Layout::RowMajor,
            None,
        ),
        sin: Dual::upload(
            devs,
            &rng.vec(MAX_SEQ * HD, 1.0),
            &[MAX_SEQ, HD],
            f32t,
            Layout::RowMajor,
            None,
        ),
        trans_prefill: Dual::upload(devs, &mat, &[1, 1, 32, 32], f32t, Layout::Tile, None),
        trans_decode: Dual::upload(
            devs,
            &repeated,
            &[1, 1, 32 * users, 32],
            f32t,
            Layout::Tile,
            Some(&per_user(users, 32, 32)),
        ),
    }
}

/// `ttnn_c_embedding` of `ids` in `table` as TILE rows (how RoPE rows are gathered).
fn gather_rows(devs: &Devices, ids: &Dual, table: &Dual) -> Dual {
    let p = common::provider();
    let tile = sys::TTNN_C_LAYOUT_TILE;
    let dram = c_mc(&DRAM_MEMORY_CONFIG);
    let c = CTensor::make(|o| {
        // SAFETY: live handles; the optionals outlive the call.
        unsafe {
            (p.c.ttnn_c_embedding)(
                ids.c.ptr(),
                table.c.ptr(),
                ptr::null(),
                &tile,
                sys::TTNN_C_EMBEDDINGS_TYPE_GENERIC,
                ptr::null(),
                &dram,
                o,
            )
        }
    });
    let r = ttnn::embedding(
        &ids.r,
        &table.r,
        &EmbeddingArgs {
            layout: Some(Layout::Tile),
            memory_config: Some(DRAM_MEMORY_CONFIG),
            ..Default::default()
        },
    )
    .expect("direct embedding");
    let _ = devs;
    let d = Dual::of(c, r);
    d.assert_same("embedding rows");
    d
}

fn reshape(t: &Dual, shape: &[usize]) -> Dual {
    let p = common::provider();
    let dims = u32s(shape);
    let c = CTensor::make(|o| {
        // SAFETY: live handle; `dims` holds `shape.len()` entries.
        unsafe { (p.c.ttnn_c_reshape)(t.c.ptr(), dims.as_ptr(), dims.len() as u32, ptr::null(), o) }
    });
    let d = Dual::of(c, ttnn::reshape(&t.r, shape).expect("direct reshape"));
    d.assert_same("reshape");
    d
}

fn to_mc(t: &Dual, mc: &MemoryConfig) -> Dual {
    let p = common::provider();
    let cmc = c_mc(mc);
    let c = CTensor::make(|o| {
        // SAFETY: live handle; `cmc` outlives the call; no dtype change.
        unsafe { (p.c.ttnn_c_to_memory_config)(t.c.ptr(), &cmc, ptr::null(), o) }
    });
    let d = Dual::of(c, ttnn::to_memory_config(&t.r, mc, None).expect("direct"));
    d.assert_same("to_memory_config");
    d
}

fn rotary(x: &Dual, cos: &Dual, sin: &Dual, trans: &Dual, decode: bool) -> Dual {
    let p = common::provider();
    let c = CTensor::make(|o| {
        // SAFETY: live handles, NULL optionals.
        unsafe {
            (p.c.ttnn_c_rotary_embedding_llama)(
                x.c.ptr(),
                cos.c.ptr(),
                sin.c.ptr(),
                trans.c.ptr(),
                u8::from(decode),
                ptr::null(),
                ptr::null(),
                o,
            )
        }
    });
    let r = ttnn::experimental::rotary_embedding_llama(
        &x.r,
        &cos.r,
        &sin.r,
        &trans.r,
        &RotaryEmbeddingLlamaArgs {
            is_decode_mode: decode,
            ..Default::default()
        },
    )
    .expect("direct rotary");
    let d = Dual::of(c, r);
    d.assert_same("rotary_embedding_llama");
    d
}

fn zeros(devs: &Devices, shape: &[usize], dtype: DataType) -> Dual {
    let p = common::provider();
    let dims = u32s(shape);
    let c = CTensor::make(|o| {
        // SAFETY: `dims` holds `shape.len()` entries; live device.
        unsafe {
            (p.c.ttnn_c_zeros)(
                dims.as_ptr(),
                dims.len() as u32,
                common::c_dtype(dtype),
                sys::TTNN_C_LAYOUT_TILE,
                devs.c.0,
                ptr::null(),
                o,
            )
        }
    });
    let r = ttnn::zeros(shape, dtype, Layout::Tile, &devs.r, &DRAM_MEMORY_CONFIG).expect("zeros");
    Dual::of(c, r)
}

#[test]
fn decode_step_matches_ttnn() {
    let s = session();
    let p = s.p;
    let devs = Devices::open();
    let mut rng = Rng::new(21);
    let users = 2usize;
    let rope = rope(&devs, &mut rng, users);
    let positions = [5.0f32, 37.0];
    let rot_idxs = Dual::upload(
        &devs,
        &positions,
        &[1, users],
        DataType::Uint32,
        Layout::RowMajor,
        None,
    );
    let cur_pos = Dual::upload(
        &devs,
        &positions,
        &[users],
        DataType::Int32,
        Layout::RowMajor,
        None,
    );
    let table = [0.0f32, 1.0, 3.0, 2.0];
    let page_table = Dual::upload(
        &devs,
        &table,
        &[users, 2],
        DataType::Int32,
        Layout::RowMajor,
        None,
    );
    let kc = zeros(&devs, &[BLOCKS, NKV, BLOCK, HD], DataType::Bfloat16);
    let vc = zeros(&devs, &[BLOCKS, NKV, BLOCK, HD], DataType::Bfloat16);

    // RoPE rows for the users' positions, one user per core.
    let rope_mc = per_user(users, 32, HD);
    let cos = to_mc(
        &reshape(
            &gather_rows(&devs, &rot_idxs, &rope.cos),
            &[1, users, 1, HD],
        ),
        &rope_mc,
    );
    let sin = to_mc(
        &reshape(
            &gather_rows(&devs, &rot_idxs, &rope.sin),
            &[1, users, 1, HD],
        ),
        &rope_mc,
    );

    // Head split.
    let width = (NH + 2 * NKV) * HD;
    let x = Dual::upload(
        &devs,
        &rng.vec(users * width, 1.0),
        &[1, 1, users, width],
        DataType::Float32,
        Layout::Tile,
        None,
    );
    let head_mc = per_user(users, 32, HD);
    let chead = c_mc(&head_mc);
    let nkv = NKV as u32;
    let overlap = 1u8;
    let (mut q, mut k, mut v) = (ptr::null_mut(), ptr::null_mut(), ptr::null_mut());
    // SAFETY: live handle; the optionals outlive the call; valid out-parameters.
    p.ok(unsafe {
        (p.c.ttnn_c_nlp_create_qkv_heads_decode)(
            x.c.ptr(),
            NH as u32,
            &nkv,
            &overlap,
            ptr::null(),
            ptr::null(),
            &chead,
            &mut q,
            &mut k,
            &mut v,
        )
    });
    let (rq, rk, rv) = ttnn::experimental::nlp_create_qkv_heads_decode(
        &x.r,
        NH,
        &NlpCreateQkvHeadsDecodeArgs {
            num_kv_heads: Some(NKV),
            overlap_qk_coregrid: Some(true),
            memory_config: Some(head_mc.clone()),
            ..Default::default()
        },
    )
    .expect("direct split");
    let (q, k, v) = (
        Dual::of(CTensor::from_raw(q), rq),
        Dual::of(CTensor::from_raw(k), rk),
        Dual::of(CTensor::from_raw(v), rv),
    );

    // RoPE on Q and K.
    // (Blocks drop the unrotated heads, so the leak check at the end sees every handle.)
    let (q, k) = {
        let (q0, k0) = (q, k);
        (
            rotary(&q0, &cos, &sin, &rope.trans_decode, true),
            rotary(&k0, &cos, &sin, &rope.trans_decode, true),
        )
    };

    // Paged cache writes at the users' positions (one with the optional out handle).
    let same_cache = CTensor::make(|o| {
        // SAFETY: live handles; no index array.
        unsafe {
            (p.c.ttnn_c_paged_update_cache)(
                kc.c.ptr(),
                k.c.ptr(),
                ptr::null(),
                0,
                cur_pos.c.ptr(),
                0,
                page_table.c.ptr(),
                0,
                ptr::null(),
                o,
            )
        }
    });
    // SAFETY: as above, without the out handle.
    p.ok(unsafe {
        (p.c.ttnn_c_paged_update_cache)(
            vc.c.ptr(),
            v.c.ptr(),
            ptr::null(),
            0,
            cur_pos.c.ptr(),
            0,
            page_table.c.ptr(),
            0,
            ptr::null(),
            ptr::null_mut(),
        )
    });
    let upd = PagedUpdateCacheArgs {
        update_idxs_tensor: Some(&cur_pos.r),
        page_table: Some(&page_table.r),
        ..Default::default()
    };
    ttnn::experimental::paged_update_cache(&kc.r, &k.r, &upd).expect("direct k update");
    ttnn::experimental::paged_update_cache(&vc.r, &v.r, &upd).expect("direct v update");
    kc.assert_same("k cache");
    vc.assert_same("v cache");
    assert_eq!(
        same_cache.read(),
        kc.c.read(),
        "the out handle is the cache"
    );

    // Paged decode attention, then back to one user per core and the head concat.
    let scale = 0.2f32;
    let dram = c_mc(&DRAM_MEMORY_CONFIG);
    let attn = CTensor::make(|o| {
        // SAFETY: live handles; the optionals outlive the call.
        unsafe {
            (p.c.ttnn_c_paged_sdpa_decode)(
                q.c.ptr(),
                kc.c.ptr(),
                vc.c.ptr(),
                page_table.c.ptr(),
                1,
                ptr::null(),
                cur_pos.c.ptr(),
                &scale,
                ptr::null(),
                &dram,
                ptr::null(),
                ptr::null(),
                o,
            )
        }
    });
    let rattn = ttnn::transformer::paged_scaled_dot_product_attention_decode(
        &q.r,
        &kc.r,
        &vc.r,
        &page_table.r,
        &PagedSdpaDecodeArgs {
            cur_pos_tensor: Some(&cur_pos.r),
            scale: Some(scale),
            memory_config: Some(DRAM_MEMORY_CONFIG),
            ..Default::default()
        },
    )
    .expect("direct paged decode");
    let attn = Dual::of(attn, rattn);
    attn.assert_same("paged sdpa decode");
    let attn = {
        let dram_attn = attn;
        to_mc(&dram_attn, &head_mc)
    };
    let c = CTensor::make(|o| {
        // SAFETY: live handle, no sub-grid.
        unsafe {
            (p.c.ttnn_c_nlp_concat_heads_decode)(
                attn.c.ptr(),
                NH as u32,
                ptr::null(),
                ptr::null(),
                0,
                o,
            )
        }
    });
    let r = ttnn::experimental::nlp_concat_heads_decode(
        &attn.r,
        NH,
        &NlpConcatHeadsDecodeArgs::default(),
    )
    .expect("direct concat");
    Dual::of(c, r).assert_same("concat heads decode");

    // The unpaged cache: positions given as a list, to both the update and the attention.
    let uk = zeros(&devs, &[users, NKV, MAX_SEQ, HD], DataType::Float32);
    let uv = zeros(&devs, &[users, NKV, MAX_SEQ, HD], DataType::Float32);
    let idxs = [5u32, 37];
    for (cache, input) in [(&uk, &k), (&uv, &v)] {
        // SAFETY: live handles; `idxs` holds 2 entries.
        p.ok(unsafe {
            (p.c.ttnn_c_paged_update_cache)(
                cache.c.ptr(),
                input.c.ptr(),
                idxs.as_ptr(),
                2,
                ptr::null(),
                0,
                ptr::null(),
                0,
                ptr::null(),
                ptr::null_mut(),
            )
        });
        ttnn::experimental::paged_update_cache(
            &cache.r,
            &input.r,
            &PagedUpdateCacheArgs {
                update_idxs: idxs.to_vec(),
                ..Default::default()
            },
        )
        .expect("direct unpaged update");
        cache.assert_same("unpaged cache");
    }
    let window = 8u32;
    let c = CTensor::make(|o| {
        // SAFETY: live handles; `idxs` holds 2 entries; the optionals outlive the call.
        unsafe {
            (p.c.ttnn_c_sdpa_decode)(
                q.c.ptr(),
                uk.c.ptr(),
                uv.c.ptr(),
                1,
                ptr::null(),
                idxs.as_ptr(),
                2,
                ptr::null(),
                ptr::null(),
                &window,
                ptr::null(),
                ptr::null(),
                ptr::null(),
                o,
            )
        }
    });
    let r = ttnn::transformer::scaled_dot_product_attention_decode(
        &q.r,
        &uk.r,
        &uv.r,
        &SdpaDecodeArgs {
            cur_pos: idxs.to_vec(),
            sliding_window_size: Some(8),
            ..Default::default()
        },
    )
    .expect("direct unpaged decode");
    Dual::of(c, r).assert_same("sdpa decode");
    drop((
        rope, rot_idxs, cur_pos, page_table, kc, vc, cos, sin, x, q, k, v, same_cache, attn, uk,
        uv, devs,
    ));
    s.finish();
}

#[test]
fn prefill_matches_ttnn() {
    let s = session();
    let p = s.p;
    let devs = Devices::open();
    let mut rng = Rng::new(22);
    let rope = rope(&devs, &mut rng, 1);
    let seq = 64usize;
    let width = (NH + 2 * NKV) * HD;
    let x = Dual::upload(
        &devs,
        &rng.vec(seq * width, 1.0),
        &[1, 1, seq, width],
        DataType::Float32,
        Layout::Tile,
        None,
    );
    let nkv = NKV as u32;
    let (mut q, mut k, mut v) = (ptr::null_mut(), ptr::null_mut(), ptr::null_mut());
    // SAFETY: live handle; valid out-parameters.
    p.ok(unsafe {
        (p.c.ttnn_c_nlp_create_qkv_heads)(
            x.c.ptr(),
            ptr::null(),
            NH as u32,
            &nkv,
            0,
            ptr::null(),
            &mut q,
            &mut k,
            &mut v,
        )
    });
    let (rq, rk, rv) = ttnn::experimental::nlp_create_qkv_heads(
        &x.r,
        NH,
        &NlpCreateQkvHeadsArgs {
            num_kv_heads: Some(NKV),
            transpose_k_heads: false,
            ..Default::default()
        },
    )
    .expect("direct split");
    let (q, k, v) = (
        Dual::of(CTensor::from_raw(q), rq),
        Dual::of(CTensor::from_raw(k), rk),
        Dual::of(CTensor::from_raw(v), rv),
    );
    let pos: Vec<f32> = (0..seq).map(|i| i as f32).collect();
    let positions = Dual::upload(
        &devs,
        &pos,
        &[1, seq],
        DataType::Uint32,
        Layout::RowMajor,
        None,
    );
    let cos = reshape(&gather_rows(&devs, &positions, &rope.cos), &[1, 1, seq, HD]);
    let sin = reshape(&gather_rows(&devs, &positions, &rope.sin), &[1, 1, seq, HD]);
    let (q, k) = {
        let (q0, k0) = (q, k);
        (
            rotary(&q0, &cos, &sin, &rope.trans_prefill, false),
            rotary(&k0, &cos, &sin, &rope.trans_prefill, false),
        )
    };

    // Prefill attention over the chunk itself.
    let c = CTensor::make(|o| {
        // SAFETY: live handles, NULL optionals.
        unsafe {
            (p.c.ttnn_c_sdpa)(
                q.c.ptr(),
                k.c.ptr(),
                v.c.ptr(),
                ptr::null(),
                1,
                ptr::null(),
                ptr::null(),
                ptr::null(),
                ptr::null(),
                ptr::null(),
                o,
            )
        }
    });
    let r = ttnn::transformer::scaled_dot_product_attention(&q.r, &k.r, &v.r, &SdpaArgs::default())
        .expect("direct sdpa");
    let full = Dual::of(c, r);
    full.assert_same("sdpa");

    // Fill a paged cache (blocks 3 and 1) and attend the chunk through it.
    let kc = zeros(&devs, &[BLOCKS, NKV, BLOCK, HD], DataType::Float32);
    let vc = zeros(&devs, &[BLOCKS, NKV, BLOCK, HD], DataType::Float32);
    let pt = Dual::upload(
        &devs,
        &[3.0, 1.0],
        &[1, 2],
        DataType::Int32,
        Layout::RowMajor,
        None,
    );
    let batch = Dual::upload(
        &devs,
        &[0.0],
        &[1],
        DataType::Uint32,
        Layout::RowMajor,
        None,
    );
    for (i, (cache, input)) in [(&kc, &k), (&vc, &v)].into_iter().enumerate() {
        // The first fill names its row by tensor, the second by value.
        let bt = if i == 0 {
            batch.c.ptr()
        } else {
            ptr::null_mut()
        };
        // SAFETY: live handles; NULL out (not wanted).
        p.ok(unsafe {
            (p.c.ttnn_c_paged_fill_cache)(
                cache.c.ptr(),
                input.c.ptr(),
                pt.c.ptr(),
                bt,
                0,
                ptr::null(),
                ptr::null_mut(),
            )
        });
        let args = PagedFillCacheArgs {
            batch_idx_tensor: (i == 0).then_some(&batch.r),
            ..Default::default()
        };
        ttnn::experimental::paged_fill_cache(&cache.r, &input.r, &pt.r, &args)
            .expect("direct fill");
        cache.assert_same("filled cache");
    }
    let c = CTensor::make(|o| {
        // SAFETY: live handles, NULL optionals.
        unsafe {
            (p.c.ttnn_c_chunked_sdpa)(
                q.c.ptr(),
                kc.c.ptr(),
                vc.c.ptr(),
                pt.c.ptr(),
                0,
                ptr::null(),
                ptr::null(),
                ptr::null(),
                ptr::null(),
                o,
            )
        }
    });
    let r = ttnn::transformer::chunked_scaled_dot_product_attention(
        &q.r,
        &kc.r,
        &vc.r,
        &pt.r,
        0,
        &ChunkedSdpaArgs::default(),
    )
    .expect("direct chunked");
    let chunked = Dual::of(c, r);
    chunked.assert_same("chunked sdpa");
    assert_eq!(
        chunked.c.read(),
        full.c.read(),
        "chunked over the cache = prefill"
    );
    let c = CTensor::make(|o| {
        // SAFETY: live handle.
        unsafe { (p.c.ttnn_c_nlp_concat_heads)(chunked.c.ptr(), ptr::null(), o) }
    });
    let r = ttnn::experimental::nlp_concat_heads(&chunked.r, None).expect("direct concat");
    Dual::of(c, r).assert_same("concat heads");
    drop((
        rope, x, q, k, v, positions, cos, sin, full, kc, vc, pt, batch, chunked, devs,
    ));
    s.finish();
}

#[test]
fn sampling_ops_match_ttnn() {
    let s = session();
    let p = s.p;
    let devs = Devices::open();
    let mut rng = Rng::new(23);
    let (users, vocab, k) = (4usize, 256usize, 32u32);
    let logits = Dual::upload(
        &devs,
        &rng.vec(users * vocab, 4.0),
        &[1, 1, users, vocab],
        DataType::Float32,
        Layout::Tile,
        None,
    );

    // argmax over the last dim (keepdim) and over everything of a row-major copy.
    let dim = -1i32;
    let c = CTensor::make(|o| {
        // SAFETY: live handle; `dim` outlives the call.
        unsafe { (p.c.ttnn_c_argmax)(logits.c.ptr(), &dim, 1, 0, ptr::null(), o) }
    });
    let r = ttnn::argmax(
        &logits.r,
        &ArgmaxArgs {
            dim: Some(-1),
            keepdim: true,
            ..Default::default()
        },
    )
    .expect("argmax");
    Dual::of(c, r).assert_same("argmax");

    // top-k (values and Uint16 indices), also reporting given ids.
    let (mut vals, mut idx) = (ptr::null_mut(), ptr::null_mut());
    // SAFETY: live handle; valid out-parameters.
    p.ok(unsafe {
        (p.c.ttnn_c_topk)(
            logits.c.ptr(),
            k,
            -1,
            1,
            1,
            ptr::null(),
            ptr::null(),
            &mut vals,
            &mut idx,
        )
    });
    let (rv, ri) = ttnn::topk(&logits.r, k, &TopkArgs::default()).expect("topk");
    let (vals, idx) = (
        Dual::of(CTensor::from_raw(vals), rv),
        Dual::of(CTensor::from_raw(idx), ri),
    );
    vals.assert_same("topk values");
    idx.assert_same("topk indices");
    let ids: Vec<f32> = (0..users * vocab).map(|i| (1000 + i) as f32).collect();
    let given = Dual::upload(
        &devs,
        &ids,
        &[1, 1, users, vocab],
        DataType::Uint32,
        Layout::Tile,
        None,
    );
    let (mut gv, mut gi) = (ptr::null_mut(), ptr::null_mut());
    // SAFETY: live handles; valid out-parameters.
    p.ok(unsafe {
        (p.c.ttnn_c_topk)(
            logits.c.ptr(),
            8,
            -1,
            0,
            1,
            ptr::null(),
            given.c.ptr(),
            &mut gv,
            &mut gi,
        )
    });
    let (rgv, rgi) = ttnn::topk(
        &logits.r,
        8,
        &TopkArgs {
            largest: false,
            indices_tensor: Some(&given.r),
            ..Default::default()
        },
    )
    .expect("topk smallest");
    Dual::of(CTensor::from_raw(gv), rgv).assert_same("topk smallest values");
    Dual::of(CTensor::from_raw(gi), rgi).assert_same("topk given indices");

    // Sampling: a new output tensor, then into an existing one.
    let kk = Dual::upload(
        &devs,
        &[1.0, 4.0, 0.0, 32.0],
        &[users],
        DataType::Uint32,
        Layout::RowMajor,
        None,
    );
    let pp = Dual::upload(
        &devs,
        &[0.9, 0.5, 1.0, 0.0],
        &[users],
        DataType::Float32,
        Layout::RowMajor,
        None,
    );
    let tt = Dual::upload(
        &devs,
        &[1.0, 2.0, 0.5, 1.0],
        &[users],
        DataType::Float32,
        Layout::RowMajor,
        None,
    );
    let seed = 7u32;
    let c = CTensor::make(|o| {
        // SAFETY: live handles; `seed` outlives the call.
        unsafe {
            (p.c.ttnn_c_sampling)(
                vals.c.ptr(),
                idx.c.ptr(),
                kk.c.ptr(),
                pp.c.ptr(),
                tt.c.ptr(),
                &seed,
                ptr::null_mut(),
                o,
            )
        }
    });
    let args = SamplingArgs {
        seed: Some(7),
        ..Default::default()
    };
    let r = ttnn::sampling(&vals.r, &idx.r, &kk.r, &pp.r, &tt.r, &args).expect("sampling");
    Dual::of(c, r).assert_same("sampling");
    let dst = Dual::upload(
        &devs,
        &[0.0; 4],
        &[users],
        DataType::Uint32,
        Layout::RowMajor,
        None,
    );
    // SAFETY: live handles; NULL out (the output tensor receives the ids).
    p.ok(unsafe {
        (p.c.ttnn_c_sampling)(
            vals.c.ptr(),
            idx.c.ptr(),
            kk.c.ptr(),
            pp.c.ptr(),
            tt.c.ptr(),
            &seed,
            dst.c.ptr(),
            ptr::null_mut(),
        )
    });
    let args = SamplingArgs {
        seed: Some(7),
        output_tensor: Some(&dst.r),
        ..Default::default()
    };
    ttnn::sampling(&vals.r, &idx.r, &kk.r, &pp.r, &tt.r, &args).expect("sampling into");
    dst.assert_same("sampling into output_tensor");
    // Without output_tensor the out handle is required.
    // SAFETY: NULL out without output_tensor is the error tested.
    let st = unsafe {
        (p.c.ttnn_c_sampling)(
            vals.c.ptr(),
            idx.c.ptr(),
            kk.c.ptr(),
            pp.c.ptr(),
            tt.c.ptr(),
            &seed,
            ptr::null_mut(),
            ptr::null_mut(),
        )
    };
    assert_eq!(st, sys::TTNN_C_STATUS_INVALID_ARGUMENT as i32);

    // plus_one, skipping negative entries, with and without the out handle.
    let pos = Dual::upload(
        &devs,
        &[3.0, -1.0, 0.0, 9.0],
        &[users],
        DataType::Int32,
        Layout::RowMajor,
        None,
    );
    let same = CTensor::make(|o| {
        // SAFETY: live handle.
        unsafe { (p.c.ttnn_c_plus_one)(pos.c.ptr(), 1, o) }
    });
    // SAFETY: live handle, NULL out.
    p.ok(unsafe { (p.c.ttnn_c_plus_one)(pos.c.ptr(), 1, ptr::null_mut()) });
    for _ in 0..2 {
        ttnn::plus_one(
            &pos.r,
            &PlusOneArgs {
                skip_negative_entries: true,
            },
        )
        .expect("plus_one");
    }
    pos.assert_same("plus_one");
    assert_eq!(same.read_f32(), vec![5.0, -1.0, 2.0, 11.0]);
    drop((logits, vals, idx, given, kk, pp, tt, dst, pos, same, devs));
    s.finish();
}
