//! The batched, traced, paged generator on the oracle models.

use std::collections::HashMap;

use bitnet_layers::{BitNetModel, KvCache, ModelOptions, PlanOptions, PrefillOptions};
use bitnet_runtime::simple::FinishReason;
use bitnet_runtime::{Event, Generator, GeneratorConfig, Request, SamplingParams, SeqId};
use bitnet_tests::{Golden, argmax, model_dir};
use ttnn::{DataType, Device, DeviceSpec};

fn model(name: &str) -> BitNetModel {
    let dev = Device::open(DeviceSpec::default().with_threads(2)).expect("open");
    let opts = ModelOptions {
        plan: PlanOptions {
            lm_head: DataType::Bfloat16,
            max_batch: 32,
            ..Default::default()
        },
        max_seq_len: Some(512),
    };
    BitNetModel::load(&model_dir(name), &dev, &opts).expect("load")
}

fn cfg() -> GeneratorConfig {
    GeneratorConfig {
        record_logits: true,
        num_blocks: Some(96),
        ..Default::default()
    }
}

fn greedy(prompt: &[u32], n: usize) -> Request {
    Request {
        prompt_ids: prompt.to_vec(),
        max_new_tokens: n,
        sampling: SamplingParams::greedy(),
        stop_ids: vec![],
    }
}

/// Deterministic prompts of various lengths from the tiny vocabulary.
fn prompt(len: usize, salt: u32) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (i * 7919 + salt * 104729 + 13) % 4000)
        .collect()
}

/// Runs until done; returns each sequence's tokens (generated only).
fn collect(events: &[Event]) -> HashMap<SeqId, Vec<u32>> {
    let mut out: HashMap<SeqId, Vec<u32>> = HashMap::new();
    for e in events {
        if let Event::Token { seq, token } = e {
            out.entry(*seq).or_default().push(*token);
        }
    }
    out
}

/// A sequence decoded alone vs in a batch whose members join and leave at different steps:
/// bit-identical logits at every step, hence identical greedy ids.
#[test]
fn batch_invariance_with_joining_and_leaving_sequences() {
    let m = model("tiny-2b4t-format");
    let prompts: Vec<(Vec<u32>, usize)> = vec![
        (prompt(5, 1), 20),
        (prompt(40, 2), 7),
        (prompt(70, 3), 30),
        (prompt(12, 4), 12),
        (prompt(33, 5), 3),
    ];
    // Alone.
    let mut alone = Vec::new();
    for (p, n) in &prompts {
        let mut g = Generator::new(&m, cfg()).expect("generator");
        let id = g.add_request(greedy(p, *n)).expect("request");
        let ev = g.run().expect("run");
        alone.push((collect(&ev)[&id].clone(), g.take_logits(id)));
    }
    // Together: two start, the others join after a few steps (while some have left).
    let mut g = Generator::new(&m, cfg()).expect("generator");
    let mut ids = vec![
        g.add_request(greedy(&prompts[0].0, prompts[0].1))
            .expect("r0"),
    ];
    ids.push(
        g.add_request(greedy(&prompts[1].0, prompts[1].1))
            .expect("r1"),
    );
    let mut events = Vec::new();
    for step in 0.. {
        if step == 3 {
            ids.push(
                g.add_request(greedy(&prompts[2].0, prompts[2].1))
                    .expect("r2"),
            );
        }
        if step == 9 {
            ids.push(
                g.add_request(greedy(&prompts[3].0, prompts[3].1))
                    .expect("r3"),
            );
            ids.push(
                g.add_request(greedy(&prompts[4].0, prompts[4].1))
                    .expect("r4"),
            );
        }
        if !g.has_work() && step > 9 {
            break;
        }
        events.extend(g.step().expect("step"));
    }
    let together = collect(&events);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(together[id], alone[i].0, "sequence {i}: ids");
        let logits = g.take_logits(*id);
        assert_eq!(logits.len(), alone[i].1.len());
        for (step, (a, b)) in logits.iter().zip(&alone[i].1).enumerate() {
            assert!(a == b, "sequence {i}: logits differ at step {step}");
        }
    }
    // Finished sequences freed their blocks (only the prefix cache keeps some, unused).
    assert_eq!(g.cache().alloc.in_use(), 0);
    let s = g.stats();
    assert!(s.trace_captures >= 3 && s.trace_replays > 20, "{s:?}");
}

/// Cached, traced, paged decode over 120 generated tokens after a 3-block prompt equals one
/// full prefill of the same ids (teacher-forced) at every position: bit for bit.
#[test]
fn traced_paged_decode_equals_full_prefill() {
    for name in [
        "tiny-2b4t-format",
        "tiny-online-bf16",
        "fullvocab-2b4t-format",
    ] {
        let m = model(name);
        let p = if name.starts_with("fullvocab") {
            Golden::load(&model_dir(name)).prompt_ids().repeat(4)
        } else {
            prompt(80, 9)
        };
        let mut g = Generator::new(&m, cfg()).expect("generator");
        let id = g.add_request(greedy(&p, 120)).expect("request");
        let ev = g.run().expect("run");
        let generated = collect(&ev)[&id].clone();
        assert_eq!(generated.len(), 120);
        let stepped = g.take_logits(id);
        let s = g.stats();
        assert_eq!(s.trace_captures, 1, "{name}: one (bucket, mode)");
        assert_eq!(
            s.trace_replays, 118,
            "{name}: a replay for every later step"
        );
        // No cache reuse: one prefill of prompt + generated[..-1].
        let mut all = p.clone();
        all.extend_from_slice(&generated[..generated.len() - 1]);
        let blocks = all.len().div_ceil(32);
        let cache = KvCache::allocate(
            m.device(),
            m.config(),
            blocks,
            32,
            m.plan().weights.kv_cache,
        )
        .expect("kv");
        let table: Vec<i32> = (0..blocks as i32).collect();
        let full = m
            .prefill(
                &all,
                0,
                &cache,
                &table,
                PrefillOptions {
                    all_logits: true,
                    hidden_states: false,
                },
            )
            .expect("prefill")
            .logits
            .to_vec::<f32>()
            .expect("read");
        let v = m.config().vocab_size;
        let mut worst = 0f32;
        for (i, row) in stepped.iter().enumerate() {
            let p_row = &full[(p.len() - 1 + i) * v..(p.len() + i) * v];
            worst = row
                .iter()
                .zip(p_row)
                .fold(worst, |w, (a, b)| w.max((a - b).abs()));
        }
        assert_eq!(
            worst, 0.0,
            "{name}: max |Δlogit| between traced decode and full prefill"
        );
    }
}

#[test]
fn free_running_greedy_matches_the_goldens() {
    for name in [
        "tiny-2b4t-format",
        "tiny-online-bf16",
        "fullvocab-2b4t-format",
    ] {
        let m = model(name);
        let gold = Golden::load(&model_dir(name));
        let mut g = Generator::new(&m, cfg()).expect("generator");
        let want = gold.greedy("fp32");
        let id = g
            .add_request(greedy(&gold.prompt_ids(), want.len()))
            .expect("request");
        let got = collect(&g.run().expect("run"))[&id].clone();
        let margins = gold.greedy_margins("fp32");
        for i in 0..want.len() {
            if margins[i] < 0.3 {
                break;
            }
            assert_eq!(got[i], want[i], "{name}: step {i}");
        }
    }
}

#[test]
fn prefix_sharing_reuses_blocks_and_changes_nothing() {
    let m = model("tiny-2b4t-format");
    let common = prompt(64, 11);
    let mut a = common.clone();
    a.extend(prompt(10, 12));
    let mut b = common.clone();
    b.extend(prompt(20, 13));
    let run = |sharing: bool| {
        let mut g = Generator::new(
            &m,
            GeneratorConfig {
                prefix_sharing: sharing,
                ..cfg()
            },
        )
        .expect("generator");
        let ia = g.add_request(greedy(&a, 10)).expect("a");
        let mut ev = g.step().expect("step");
        let after_a = g.cache().alloc.in_use();
        let ib = g.add_request(greedy(&b, 10)).expect("b");
        ev.extend(g.step().expect("step"));
        let after_b = g.cache().alloc.in_use();
        let shared = g.stats().kv_blocks_shared;
        ev.extend(g.run().expect("run"));
        let ids = collect(&ev);
        (ids[&ia].clone(), ids[&ib].clone(), after_a, after_b, shared)
    };
    let (a1, b1, after_a, after_b, shared) = run(true);
    let (a0, b0, _, after_b0, shared0) = run(false);
    assert_eq!((a1, b1), (a0, b0), "same ids with and without sharing");
    // a: 74 tokens + 1 -> 3 blocks. b shares a's 2 full blocks and owns 1 more (84 + 1 -> 3).
    assert_eq!(after_a, 3);
    assert_eq!(shared, 2);
    assert_eq!(after_b, after_a + 1);
    assert_eq!((shared0, after_b0), (0, after_a + 3));
}

#[test]
fn sampling_is_reproducible_and_degenerate_cases_are_greedy() {
    let m = model("tiny-2b4t-format");
    let p = prompt(20, 21);
    let run = |s: SamplingParams| {
        let mut g = Generator::new(&m, cfg()).expect("generator");
        let id = g
            .add_request(Request {
                prompt_ids: p.clone(),
                max_new_tokens: 12,
                sampling: s,
                stop_ids: vec![],
            })
            .expect("r");
        collect(&g.run().expect("run"))[&id].clone()
    };
    let greedy_ids = run(SamplingParams::greedy());
    let s = SamplingParams {
        temperature: 1.2,
        top_k: 20,
        top_p: 0.95,
        seed: 5,
    };
    assert_eq!(run(s), run(s), "a fixed seed reproduces");
    assert_ne!(
        run(s),
        run(SamplingParams { seed: 6, ..s }),
        "another seed differs"
    );
    assert_eq!(
        run(SamplingParams { top_k: 1, ..s }),
        greedy_ids,
        "top-k 1 is greedy"
    );
    assert_eq!(
        run(SamplingParams {
            temperature: 0.0,
            ..s
        }),
        greedy_ids,
        "temperature 0 is greedy"
    );
}

/// The first sampled token over many seeds follows softmax(logits / T) restricted to top-k and
/// top-p (chi-square goodness of fit).
#[test]
fn sampled_frequencies_fit_the_distribution() {
    let m = model("tiny-2b4t-format");
    let p = prompt(8, 31);
    let (t, k, top_p) = (1.5f32, 8u32, 0.9f32);
    // The model's logits for the prompt's last position.
    let cache = KvCache::allocate(m.device(), m.config(), 1, 32, DataType::Float32).expect("kv");
    let logits = m
        .prefill(&p, 0, &cache, &[0], PrefillOptions::default())
        .expect("prefill")
        .logits
        .to_vec::<f32>()
        .expect("read");
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    let top: Vec<usize> = order[..k as usize].to_vec();
    let w: Vec<f64> = top
        .iter()
        .map(|&i| ((logits[i] - logits[top[0]]) as f64 / t as f64).exp())
        .collect();
    let z: f64 = w.iter().sum();
    let mut keep = top.len();
    let mut cum = 0.0;
    for (i, x) in w.iter().enumerate() {
        cum += x / z;
        if cum > top_p as f64 {
            keep = i + 1;
            break;
        }
    }
    let zk: f64 = w[..keep].iter().sum();
    let expected: Vec<f64> = w[..keep].iter().map(|x| x / zk).collect();
    let n = 1500;
    let mut g = Generator::new(&m, cfg()).expect("generator");
    let mut seqs = Vec::new();
    for seed in 0..n {
        let s = SamplingParams {
            temperature: t,
            top_k: k,
            top_p,
            seed,
        };
        seqs.push(
            g.add_request(Request {
                prompt_ids: p.clone(),
                max_new_tokens: 1,
                sampling: s,
                stop_ids: vec![],
            })
            .expect("r"),
        );
    }
    let ids = collect(&g.run().expect("run"));
    let mut counts = vec![0f64; keep];
    for s in seqs {
        let tok = ids[&s][0] as usize;
        let pos = top[..keep]
            .iter()
            .position(|&i| i == tok)
            .unwrap_or_else(|| panic!("token {tok} outside top-k/top-p"));
        counts[pos] += 1.0;
    }
    let chi2: f64 = counts
        .iter()
        .zip(&expected)
        .map(|(c, e)| (c - e * n as f64).powi(2) / (e * n as f64))
        .sum();
    // 99.9% critical values of chi-square for keep-1 degrees of freedom (keep <= 8).
    let crit =
        [10.83, 13.82, 16.27, 18.47, 20.52, 22.46, 24.32, 26.12][keep.saturating_sub(2).min(7)];
    assert!(
        keep >= 2,
        "the test needs at least two candidates (got {keep})"
    );
    assert!(
        chi2 < crit,
        "chi-square {chi2:.2} >= {crit} for {keep} candidates: counts {counts:?}, expected {expected:?}"
    );
}

#[test]
fn errors_affect_only_their_own_request() {
    let m = model("tiny-2b4t-format");
    let mut g = Generator::new(
        &m,
        GeneratorConfig {
            num_blocks: Some(6),
            ..cfg()
        },
    )
    .expect("generator");
    let good = g.add_request(greedy(&prompt(10, 1), 8)).expect("good");
    let cases: Vec<(Request, &str)> = vec![
        (greedy(&prompt(600, 2), 4), "context"),
        (greedy(&prompt(300, 2), 4), "out of KV blocks"),
        (greedy(&prompt(4, 3), 0), "max_new_tokens"),
        (greedy(&[1, 2, 4000], 4), "token id 4000"),
        (
            Request {
                sampling: SamplingParams {
                    temperature: -1.0,
                    ..Default::default()
                },
                ..greedy(&[1], 2)
            },
            "temperature",
        ),
        (
            Request {
                sampling: SamplingParams {
                    top_p: 1.5,
                    ..Default::default()
                },
                ..greedy(&[1], 2)
            },
            "top_p",
        ),
        (greedy(&[], 4), "empty"),
    ];
    for (req, needle) in cases {
        let e = g.add_request(req).unwrap_err().to_string();
        assert!(e.contains(needle), "{needle}: {e}");
    }
    let ids = collect(&g.run().expect("run"));
    assert_eq!(ids[&good].len(), 8);
}

#[test]
fn running_out_of_blocks_preempts_without_changing_results() {
    let m = model("tiny-2b4t-format");
    let reqs: Vec<Request> = (0..3).map(|i| greedy(&prompt(30, 40 + i), 60)).collect();
    let run = |blocks: usize| {
        let mut g = Generator::new(
            &m,
            GeneratorConfig {
                num_blocks: Some(blocks),
                prefix_sharing: false,
                ..cfg()
            },
        )
        .expect("g");
        let ids: Vec<SeqId> = reqs
            .iter()
            .map(|r| g.add_request(r.clone()).expect("r"))
            .collect();
        let ev = g.run().expect("run");
        let finished = ev
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    Event::Finished {
                        reason: FinishReason::Length,
                        ..
                    }
                )
            })
            .count();
        let out = collect(&ev);
        (
            ids.iter().map(|i| out[i].clone()).collect::<Vec<_>>(),
            g.stats().preemptions,
            finished,
        )
    };
    let (roomy, p0, f0) = run(64);
    // 3 sequences of 90 positions need 9 blocks; 7 forces preemption.
    let (tight, p1, f1) = run(7);
    assert_eq!(p0, 0);
    assert!(p1 > 0, "expected preemptions");
    assert_eq!((f0, f1), (3, 3));
    assert_eq!(roomy, tight);
}

/// The seed's checks: captures per (bucket, mode), paged cache tensors, RoPE lookup shape, and
/// no per-token memory growth.
#[test]
fn traces_cache_shape_and_memory_growth() {
    let m = model("tiny-2b4t-format");
    let mut g = Generator::new(&m, cfg()).expect("generator");
    let kv = &g.cache().tensors;
    assert_eq!(
        kv.k[0].shape().dims(),
        &[96, 2, 32, 32],
        "[max_num_blocks, n_kv_heads, block_size, head_dim]"
    );
    let id = g.add_request(greedy(&prompt(3, 50), 100)).expect("request");
    let mut dram = Vec::new();
    let mut blocks = Vec::new();
    while g.has_work() {
        g.step().expect("step");
        dram.push(m.device().memory_report().dram.in_use);
        blocks.push(g.cache().alloc.in_use());
    }
    let _ = id;
    // After the first step (eager run + capture), device memory stays flat: the cache is
    // preallocated and a replay allocates nothing.
    assert!(
        dram[1..].iter().all(|&d| d == dram[1]),
        "DRAM grew per token: {dram:?}"
    );
    // Blocks grow by one per 32 positions.
    for w in blocks.windows(2) {
        assert!(w[1] <= w[0] + 1);
    }
    assert_eq!(
        *blocks.iter().max().unwrap_or(&0),
        (3 + 100usize).div_ceil(32)
    );
    let s = g.stats();
    assert_eq!((s.trace_captures, s.decode_steps), (1, 99));
    assert_eq!(s.trace_replays, 98);
}

#[test]
fn rope_lookup_has_the_ttnn_decode_shape() {
    let m = model("tiny-2b4t-format");
    let dev = m.device();
    let rope = bitnet_layers::rope::RotarySetup::new(dev, 32, 64, 500000.0, DataType::Float32, 4)
        .expect("rope");
    let idx = ttnn::Tensor::from_slice(
        &[3i32, 7, -1],
        [1, 3],
        DataType::Int32,
        ttnn::Layout::RowMajor,
    )
    .expect("idx")
    .to_device(dev, &ttnn::DRAM_MEMORY_CONFIG)
    .expect("upload");
    let (cos, _) = rope.get_rot_mats(dev, &idx).expect("lookup");
    assert_eq!(cos.shape().dims(), &[1, 3, 1, 32]);
    assert_eq!(cos.padded_shape().dims(), &[1, 3, 32, 32]);
    let v = cos.to_vec::<f32>().expect("read");
    assert!(
        v[64..].iter().all(|&x| x == 0.0),
        "inactive slot reads zeros"
    );
    let _ = argmax(&v);
}
