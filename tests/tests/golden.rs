//! The model against the HF transformers fp32 goldens (../shared/oracle, copied to
//! tests/fixtures): teacher-forced logits at every position, per-layer hidden states,
//! free-running greedy ids, and prefill/decode agreement.
//!
//! Tolerances follow the oracle README: int8 activation quantization makes rare rounding flips
//! (a value within ~1e-6 of a .5 tie) that move single logits by ~1e-3 and, through the KV
//! cache, later positions by more; so we require median |Δlogit| <= 1e-3 and max <= 0.25, and
//! top-1 equality only where the golden top1-top2 margin is >= 0.3.

use bitnet_layers::{
    BitNetModel, DecodeInputs, KvCache, ModelOptions, PlanOptions, PrefillOptions,
};
use bitnet_tests::{Golden, argmax, diff_stats, margin, model_dir};
use ttnn::{DRAM_MEMORY_CONFIG, DataType, Device, DeviceSpec, Layout, Tensor};

const MARGIN: f64 = 0.3;
const BLOCK: usize = 32;

fn device() -> Device {
    Device::open(DeviceSpec::default().with_threads(2)).expect("open host device")
}

fn load(dev: &Device, name: &str, lm_head: DataType, kv_cache: DataType) -> BitNetModel {
    let opts = ModelOptions {
        plan: PlanOptions {
            lm_head,
            kv_cache: Some(kv_cache),
            max_batch: 4,
            ..Default::default()
        },
        max_seq_len: Some(256),
    };
    BitNetModel::load(&model_dir(name), dev, &opts).expect("load model")
}

fn kv(model: &BitNetModel, blocks: usize) -> KvCache {
    KvCache::allocate(
        model.device(),
        model.config(),
        blocks,
        BLOCK,
        model.plan().weights.kv_cache,
    )
    .expect("kv cache")
}

/// The page table of a single sequence: blocks in shuffled order, to exercise the paging.
fn page_table(blocks: usize) -> Vec<i32> {
    (0..blocks as i32).rev().collect()
}

/// Teacher-forced logits `[T, V]` of prompt + greedy[..15] in one prefill.
fn teacher_forced(model: &BitNetModel, ids: &[u32]) -> (Vec<f32>, Vec<Vec<f32>>) {
    let blocks = ids.len().div_ceil(BLOCK) + 1;
    let cache = kv(model, blocks);
    let out = model
        .prefill(
            ids,
            0,
            &cache,
            &page_table(blocks),
            PrefillOptions {
                all_logits: true,
                hidden_states: true,
            },
        )
        .expect("prefill");
    let hs = out
        .hidden_states
        .iter()
        .map(|t| t.to_vec::<f32>().expect("hidden"))
        .collect();
    (out.logits.to_vec::<f32>().expect("logits"), hs)
}

fn upload<T: ttnn::Element>(dev: &Device, v: &[T], shape: &[usize], dtype: DataType) -> Tensor {
    Tensor::from_slice(v, shape, dtype, Layout::RowMajor)
        .expect("host")
        .to_device(dev, &DRAM_MEMORY_CONFIG)
        .expect("upload")
}

/// Prefill of the prompt, then greedy decode steps; returns the ids and each step's logits
/// (step 0 = the prompt's last position).
fn free_running(model: &BitNetModel, prompt: &[u32], steps: usize) -> (Vec<u32>, Vec<Vec<f32>>) {
    let dev = model.device();
    let blocks = (prompt.len() + steps).div_ceil(BLOCK) + 1;
    let cache = kv(model, blocks);
    let table = page_table(blocks);
    let out = model
        .prefill(prompt, 0, &cache, &table, PrefillOptions::default())
        .expect("prefill");
    let mut logits = vec![out.logits.to_vec::<f32>().expect("logits")];
    let mut ids = vec![argmax(&logits[0]) as u32];
    let pt = upload(dev, &table, &[1, blocks], DataType::Int32);
    for i in 1..steps {
        let pos = prompt.len() + i - 1;
        let tokens = upload(dev, &[ids[i - 1]], &[1, 1], DataType::Uint32);
        let cur = upload(dev, &[pos as i32], &[1], DataType::Int32);
        let rot = upload(dev, &[pos as u32], &[1, 1], DataType::Uint32);
        let l = model
            .decode(
                &DecodeInputs {
                    tokens: &tokens,
                    cur_pos: &cur,
                    rot_idxs: &rot,
                    page_table: &pt,
                },
                &cache,
            )
            .expect("decode")
            .to_vec::<f32>()
            .expect("logits");
        ids.push(argmax(&l) as u32);
        logits.push(l);
    }
    (ids, logits)
}

/// Golden logits of teacher-forced position `p` (prompt rows, then greedy steps).
fn golden_rows(g: &Golden, t: usize) -> Vec<Vec<f64>> {
    let prompt = g.tensor("fp32.prompt_logits");
    let steps = g.tensor("fp32.step_logits");
    let mut rows: Vec<Vec<f64>> = (0..t).map(|i| prompt.row(i).to_vec()).collect();
    for i in 1..steps.shape[0] {
        rows.push(steps.row(i).to_vec());
    }
    rows
}

/// What a teacher-forced comparison asserts.
#[derive(Clone, Copy)]
enum Check {
    /// The oracle's tolerances on logits and hidden states, and top-1 where margin >= 0.3.
    Strict,
    /// Only top-1 equality where the golden margin is at least this (for reduced-precision
    /// weights or caches, whose error is reported rather than bounded).
    Top1Above(f64),
}

fn check_teacher_forced(name: &str, lm_head: DataType, kv_dtype: DataType, check: Check) -> f64 {
    let dev = device();
    let model = load(&dev, name, lm_head, kv_dtype);
    let g = Golden::load(&model_dir(name));
    let prompt = g.prompt_ids();
    let greedy = g.greedy("fp32");
    let mut ids = prompt.clone();
    ids.extend_from_slice(&greedy[..greedy.len() - 1]);
    let (logits, hidden) = teacher_forced(&model, &ids);
    let v = model.config().vocab_size;
    let rows = golden_rows(&g, prompt.len());
    assert_eq!(rows.len(), ids.len());
    let want: Vec<f64> = rows.iter().flatten().copied().collect();
    let stats = diff_stats(&logits, &want);
    eprintln!(
        "{name} (lm_head {lm_head:?}, kv {kv_dtype:?}): teacher-forced logits median |Δ| {:.2e}, max {:.2e}",
        stats.median, stats.max
    );
    // Per-layer hidden states over the prompt positions locate a divergence.
    let gh = g.tensor("fp32.hidden_states");
    let (layers, t, h) = (gh.shape[0], gh.shape[1], gh.shape[2]);
    assert_eq!(hidden.len(), layers);
    for l in 0..layers {
        let got: Vec<f32> = hidden[l][..t * h].to_vec();
        let s = diff_stats(&got, &gh.values[l * t * h..(l + 1) * t * h]);
        eprintln!(
            "  hidden state {l}: median |Δ| {:.2e}, max {:.2e}",
            s.median, s.max
        );
        if let Check::Strict = check {
            assert!(
                s.median <= 1e-3,
                "{name}: hidden state {l} median |Δ| {:.3e}",
                s.median
            );
        }
    }
    let min_margin = match check {
        Check::Strict => {
            assert!(
                stats.median <= 1e-3,
                "{name}: median |Δlogit| {:.3e} > 1e-3",
                stats.median
            );
            assert!(
                stats.max <= 0.25,
                "{name}: max |Δlogit| {:.3e} > 0.25 (at {})",
                stats.max,
                stats.argmax
            );
            MARGIN
        }
        Check::Top1Above(m) => m,
    };
    for (p, row) in rows.iter().enumerate() {
        if margin(row) >= min_margin {
            let got = argmax(&logits[p * v..(p + 1) * v]);
            assert_eq!(
                got,
                argmax(row),
                "{name}: top-1 at position {p} (margin {:.3})",
                margin(row)
            );
        }
    }
    stats.max
}

#[test]
fn tiny_2b4t_format_teacher_forced() {
    check_teacher_forced(
        "tiny-2b4t-format",
        DataType::Bfloat16,
        DataType::Float32,
        Check::Strict,
    );
}

#[test]
fn tiny_online_bf16_teacher_forced() {
    check_teacher_forced(
        "tiny-online-bf16",
        DataType::Bfloat16,
        DataType::Float32,
        Check::Strict,
    );
}

#[test]
fn bfp8_lm_head_keeps_top1() {
    // The default lm_head dtype: the top-1 rule of the strict check must still hold.
    for name in ["tiny-2b4t-format", "tiny-online-bf16"] {
        let err = check_teacher_forced(
            name,
            DataType::Bfloat8B,
            DataType::Float32,
            Check::Top1Above(MARGIN),
        );
        eprintln!("{name}: bfp8_b lm_head: max |Δlogit| {err:.3e}");
    }
}

#[test]
fn bf16_kv_cache_error_is_reported() {
    // A bf16 cache (TT's default) on the host: measured median |Δlogit| 0.08, max 0.64 on this
    // model, the size of HF's own bf16-vs-fp32 gap (median 0.10, max 0.92), so top-1 is only
    // required where the golden margin exceeds twice that max error.
    let err = check_teacher_forced(
        "tiny-2b4t-format",
        DataType::Bfloat16,
        DataType::Bfloat16,
        Check::Top1Above(1.3),
    );
    eprintln!("bf16 KV cache: max |Δlogit| {err:.3e}");
}

#[test]
fn fullvocab_teacher_forced_and_free_running() {
    let name = "fullvocab-2b4t-format";
    let dev = device();
    let model = load(&dev, name, DataType::Bfloat16, DataType::Float32);
    let g = Golden::load(&model_dir(name));
    let prompt = g.prompt_ids();
    let greedy = g.greedy("fp32");
    let mut ids = prompt.clone();
    ids.extend_from_slice(&greedy[..greedy.len() - 1]);
    let (logits, hidden) = teacher_forced(&model, &ids);
    let v = model.config().vocab_size;
    let t = prompt.len();
    // Last prompt position: the full row is stored.
    let last = g.tensor("fp32.prompt_logits_last");
    let s = diff_stats(&logits[(t - 1) * v..t * v], &last.values);
    eprintln!(
        "{name}: last prompt logits median |Δ| {:.2e}, max {:.2e}",
        s.median, s.max
    );
    assert!(s.median <= 1e-3 && s.max <= 0.25, "{s:?}");
    // Every position: the golden top-10 values at their ids.
    let (pids, pvals) = (
        g.tensor("fp32.prompt_topk_ids"),
        g.tensor("fp32.prompt_topk_vals"),
    );
    let (sids, svals) = (
        g.tensor("fp32.step_topk_ids"),
        g.tensor("fp32.step_topk_vals"),
    );
    let mut worst = 0f64;
    for p in 0..ids.len() {
        let (id_row, val_row) = if p < t {
            (pids.row(p), pvals.row(p))
        } else {
            (sids.row(p - t + 1), svals.row(p - t + 1))
        };
        let row = &logits[p * v..(p + 1) * v];
        for (id, val) in id_row.iter().zip(val_row) {
            worst = worst.max((row[*id as usize] as f64 - val).abs());
        }
        if val_row[0] - val_row[1] >= MARGIN {
            assert_eq!(argmax(row), id_row[0] as usize, "top-1 at position {p}");
        }
    }
    eprintln!("{name}: top-10 logits max |Δ| {worst:.2e}");
    assert!(worst <= 0.25);
    let gh = g.tensor("fp32.hidden_states");
    let (layers, tt, h) = (gh.shape[0], gh.shape[1], gh.shape[2]);
    for l in 0..layers {
        let s = diff_stats(
            &hidden[l][..tt * h],
            &gh.values[l * tt * h..(l + 1) * tt * h],
        );
        assert!(s.median <= 1e-3, "hidden state {l}: {s:?}");
    }
    // Free-running greedy equals the goldens up to the first step with a small margin.
    let (got, _) = free_running(&model, &prompt, greedy.len());
    let margins = g.greedy_margins("fp32");
    for (i, (&a, &b)) in got.iter().zip(&greedy).enumerate() {
        if margins[i] < MARGIN {
            break;
        }
        assert_eq!(a, b, "free-running step {i}");
    }
}

#[test]
fn free_running_greedy_matches_goldens() {
    for name in ["tiny-2b4t-format", "tiny-online-bf16"] {
        let dev = device();
        let model = load(&dev, name, DataType::Bfloat16, DataType::Float32);
        let g = Golden::load(&model_dir(name));
        let greedy = g.greedy("fp32");
        let margins = g.greedy_margins("fp32");
        let (got, _) = free_running(&model, &g.prompt_ids(), greedy.len());
        eprintln!("{name}: free-running {got:?}\n  golden       {greedy:?}");
        for i in 0..greedy.len() {
            if margins[i] < MARGIN {
                break;
            }
            assert_eq!(got[i], greedy[i], "{name}: step {i}");
        }
    }
}

/// Prefill logits at every position equal the decode-step logits of the same sequence: the two
/// paths agree on RoPE, the cache and attention. Both compute each row with the same kernels in
/// the same order, so the agreement is exact.
#[test]
fn prefill_and_decode_agree() {
    let name = "tiny-2b4t-format";
    for kv_dtype in [DataType::Float32, DataType::Bfloat16] {
        let dev = device();
        let model = load(&dev, name, DataType::Bfloat16, kv_dtype);
        let g = Golden::load(&model_dir(name));
        let prompt = g.prompt_ids();
        let (ids, step_logits) = free_running(&model, &prompt, 12);
        let mut seq = prompt.clone();
        seq.extend_from_slice(&ids[..ids.len() - 1]);
        let (all, _) = teacher_forced(&model, &seq);
        let v = model.config().vocab_size;
        for (i, l) in step_logits.iter().enumerate() {
            let p = prompt.len() - 1 + i;
            let row = &all[p * v..(p + 1) * v];
            assert_eq!(
                row,
                &l[..],
                "{kv_dtype:?}: position {p} differs between prefill and decode"
            );
        }
    }
}

/// The full-vocabulary model with the default bfp8_b lm_head: top-1 where the margin allows.
#[test]
fn fullvocab_bfp8_lm_head_keeps_top1() {
    let name = "fullvocab-2b4t-format";
    let dev = device();
    let model = load(&dev, name, DataType::Bfloat8B, DataType::Float32);
    let g = Golden::load(&model_dir(name));
    let prompt = g.prompt_ids();
    let (logits, _) = teacher_forced(&model, &prompt);
    let v = model.config().vocab_size;
    let last = g.tensor("fp32.prompt_logits_last");
    let s = diff_stats(&logits[(prompt.len() - 1) * v..], &last.values);
    eprintln!(
        "{name}: bfp8_b lm_head: last prompt logits median |Δ| {:.2e}, max {:.2e}",
        s.median, s.max
    );
    let (ids, vals) = (
        g.tensor("fp32.prompt_topk_ids"),
        g.tensor("fp32.prompt_topk_vals"),
    );
    for p in 0..prompt.len() {
        if vals.row(p)[0] - vals.row(p)[1] >= MARGIN {
            assert_eq!(
                argmax(&logits[p * v..(p + 1) * v]),
                ids.row(p)[0] as usize,
                "position {p}"
            );
        }
    }
}
