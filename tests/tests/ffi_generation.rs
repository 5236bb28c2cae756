//! Full BitNet generation through the FFI path: the tiny 2B-4T-format checkpoint loaded with
//! `bitnet_layers::BitNetModel` on a Tenstorrent-backend device over the host-backed provider
//! of the TT-NN C ABI (`libttnn_c_host.so`), against the same model on the host backend.
//!
//! Both models are planned with f32 activations and an f32 KV cache (the host backend's own
//! defaults; a Tenstorrent device would default to bf16), so the only numerical difference is
//! `bitlinear`'s lowering to stock ops on the Tenstorrent backend, which multiplies by `1/s`
//! where the host kernel divides (a few f32 ulps). Greedy ids must be identical.

use std::sync::{Mutex, MutexGuard, OnceLock};

use bitnet_layers::{BitNetModel, KvCache, ModelOptions, PlanOptions, PrefillOptions};
use bitnet_runtime::{
    Event, GenerateRequest, Generator, GeneratorConfig, Request, SamplingParams, generate,
};
use bitnet_tests::{diff_stats, model_dir, provider_device, provider_lib};
use ttnn::{BackendKind, DataType, Device, DeviceSpec};

/// The provider's process-wide live-handle count (a test-only extension, loaded by name).
fn live_handles() -> u64 {
    static F: OnceLock<(libloading::Library, unsafe extern "C" fn() -> u64)> = OnceLock::new();
    let (_, f) = F.get_or_init(|| {
        // SAFETY: the workspace's own provider; opening it again returns the copy the
        // Tenstorrent backend loaded.
        let lib = unsafe { libloading::Library::new(provider_lib()) }.expect("open provider");
        // SAFETY: `ttnn_c_host_live_handles` is `extern "C" fn() -> u64` (ttnn-c-host).
        let f = unsafe {
            *lib.get::<unsafe extern "C" fn() -> u64>(b"ttnn_c_host_live_handles\0")
                .expect("ttnn_c_host_live_handles")
        };
        (lib, f)
    });
    // SAFETY: takes nothing, reads an atomic.
    unsafe { f() }
}

/// One test at a time, each starting and ending with no provider handle alive.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    let g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    assert_eq!(live_handles(), 0, "a previous test left provider handles");
    g
}

fn load(dev: &Device) -> BitNetModel {
    let opts = ModelOptions {
        plan: PlanOptions {
            lm_head: DataType::Bfloat16,
            kv_cache: Some(DataType::Float32),
            activation_dtype: Some(DataType::Float32),
            max_batch: 4,
            ..Default::default()
        },
        max_seq_len: Some(256),
    };
    BitNetModel::load(&model_dir("tiny-2b4t-format"), dev, &opts).expect("load model")
}

fn host() -> Device {
    Device::open(DeviceSpec::default().with_threads(2)).expect("open host device")
}

fn prompt(len: usize, salt: u32) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (i * 7919 + salt * 104729 + 13) % 4000)
        .collect()
}

/// Runs the traced, batched generator on `requests` and returns each one's generated ids.
fn traced(model: &BitNetModel, requests: &[Request]) -> Vec<Vec<u32>> {
    let mut g = Generator::new(
        model,
        GeneratorConfig {
            max_batch: 4,
            num_blocks: Some(32),
            ..Default::default()
        },
    )
    .expect("generator");
    let ids: Vec<_> = requests
        .iter()
        .map(|r| g.add_request(r.clone()).expect("request"))
        .collect();
    let events = g.run().expect("run");
    ids.iter()
        .map(|&id| {
            events
                .iter()
                .filter_map(|e| match e {
                    Event::Token { seq, token } if *seq == id => Some(*token),
                    _ => None,
                })
                .collect()
        })
        .collect()
}

#[test]
fn greedy_generation_through_ffi_matches_host() {
    let _s = serial();
    {
        let (hd, td) = (host(), provider_device());
        assert_eq!(td.backend(), BackendKind::Tenstorrent);
        let (mh, mt) = (load(&hd), load(&td));

        // Prefill logits at every position: equal up to bitlinear's lowering.
        let ids = prompt(45, 1);
        let run = |m: &BitNetModel| {
            let cache =
                KvCache::allocate(m.device(), m.config(), 3, 32, DataType::Float32).expect("cache");
            let out = m
                .prefill(
                    &ids,
                    0,
                    &cache,
                    &[2, 0, 1],
                    PrefillOptions {
                        all_logits: true,
                        hidden_states: true,
                    },
                )
                .expect("prefill");
            let hidden: Vec<Vec<f32>> = out
                .hidden_states
                .iter()
                .map(|t| t.to_vec::<f32>().expect("hidden"))
                .collect();
            (out.logits.to_vec::<f32>().expect("logits"), hidden)
        };
        let ((lh, hh), (lt, ht)) = (run(&mh), run(&mt));
        let want: Vec<f64> = lh.iter().map(|&v| v as f64).collect();
        let s = diff_stats(&lt, &want);
        eprintln!(
            "prefill logits through the FFI: median |Δ| {:.2e}, max {:.2e}",
            s.median, s.max
        );
        // Observed: median 5e-7, max 5e-6 (f32 ulps of the logits). The max bound allows a
        // rare flip of one activation's int8 rounding, which an ulp-level difference in the
        // layer input can cause; a real divergence is orders of magnitude larger.
        assert!(s.median <= 1e-5 && s.max <= 1e-2, "{s:?}");
        for (l, (a, b)) in hh.iter().zip(&ht).enumerate() {
            let s = diff_stats(b, &a.iter().map(|&v| v as f64).collect::<Vec<_>>());
            assert!(s.median <= 1e-5, "hidden state {l}: {s:?}");
        }

        // Untraced greedy generation (bitnet_runtime::simple).
        let req = GenerateRequest {
            prompt_ids: prompt(12, 2),
            max_new_tokens: 24,
            sampling: SamplingParams::greedy(),
            stop_ids: vec![],
        };
        let (gh, gt) = (
            generate(&mh, &req).expect("host generate"),
            generate(&mt, &req).expect("ffi generate"),
        );
        eprintln!("host greedy {:?}\nffi  greedy {:?}", gh.ids, gt.ids);
        assert_eq!(gh.ids, gt.ids);
        assert_eq!(gh.finish_reason, gt.finish_reason);

        // The traced, batched generator: decode traces captured and replayed through TT-NN
        // trace ids, inputs refreshed with copy_host_to_device, argmax + copy + plus_one inside
        // the trace.
        let reqs: Vec<Request> = [(12, 2, 24), (40, 3, 10), (5, 4, 17)]
            .iter()
            .map(|&(len, salt, n)| Request {
                prompt_ids: prompt(len, salt),
                max_new_tokens: n,
                sampling: SamplingParams::greedy(),
                stop_ids: vec![],
            })
            .collect();
        let (th, tt) = (traced(&mh, &reqs), traced(&mt, &reqs));
        assert_eq!(th, tt);
        assert_eq!(tt[0], gt.ids, "traced and untraced generation agree");
        assert_eq!(td.memory_report().live_traces, 0);
    }
    assert_eq!(live_handles(), 0, "provider handles left after the test");
}

/// Sampling (not greedy) on the Tenstorrent backend needs TT-NN's single-seed sampling: the
/// runtime's per-user seeds are a host-backend extension, refused with an error naming them.
#[test]
fn per_user_sampling_seeds_are_refused_on_tenstorrent() {
    let _s = serial();
    {
        let td = provider_device();
        let m = load(&td);
        let req = GenerateRequest {
            prompt_ids: prompt(6, 5),
            max_new_tokens: 3,
            sampling: SamplingParams {
                temperature: 0.8,
                top_k: 10,
                top_p: 0.9,
                seed: 1,
            },
            stop_ids: vec![],
        };
        let e = generate(&m, &req).unwrap_err().to_string();
        assert!(e.contains("user_seeds") && e.contains("tenstorrent"), "{e}");
    }
    assert_eq!(live_handles(), 0);
}

/// `bitlinear` with an input RMSNorm on the Tenstorrent backend runs `rms_norm` and then the
/// op (the host fuses them): the same values as the two ops called in turn, and within the
/// lowering's few ulps of the host's fused kernel.
#[test]
fn bitlinear_input_rms_norm_lowers_to_rms_norm_then_bitlinear() {
    use ttnn::experimental::{BitLinearArgs, InputRmsNorm, bitlinear};
    use ttnn::{DRAM_MEMORY_CONFIG, Layout, RmsNormArgs, Tensor, rms_norm};
    let _s = serial();
    {
        let (m, k, n) = (3, 256, 64);
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let g: Vec<f32> = (0..k).map(|i| 0.5 + (i % 13) as f32 / 10.0).collect();
        let t: Vec<i8> = (0..n * k).map(|i| (i * 7 % 3) as i8 - 1).collect();
        let run = |dev: &Device, fused: bool| -> Vec<f32> {
            let up = |v: &[f32], shape: &[usize], layout| {
                Tensor::from_slice(v, shape, DataType::Float32, layout)
                    .and_then(|t| t.into_device(dev, &DRAM_MEMORY_CONFIG))
                    .expect("upload")
            };
            let xd = up(&x, &[1, 1, m, k], Layout::Tile);
            let gd = up(&g, &[1, 1, k / 32, 32], Layout::RowMajor);
            let wd = Tensor::from_slice(&t, [n, k], DataType::Ternary, Layout::Tile)
                .and_then(|t| t.into_device(dev, &DRAM_MEMORY_CONFIG))
                .expect("weight");
            let args = BitLinearArgs {
                weight_scale: 0.25,
                ..Default::default()
            };
            let y = if fused {
                let norm = InputRmsNorm {
                    weight: Some(&gd),
                    epsilon: 1e-5,
                    memory_config: None,
                };
                let args = BitLinearArgs {
                    input_rms_norm: Some(norm),
                    ..args
                };
                bitlinear(&xd, &wd, &args)
            } else {
                let norm_args = RmsNormArgs {
                    epsilon: 1e-5,
                    weight: Some(&gd),
                    ..Default::default()
                };
                let h = rms_norm(&xd, &norm_args).expect("rms_norm");
                bitlinear(&h, &wd, &args)
            };
            y.and_then(|y| y.to_vec::<f32>()).expect("bitlinear")
        };
        let td = provider_device();
        let (fused, separate) = (run(&td, true), run(&td, false));
        assert_eq!(fused, separate);
        let host = run(&host(), true);
        for (i, (a, b)) in fused.iter().zip(&host).enumerate() {
            assert!(
                (a - b).abs() <= 1e-5 * b.abs(),
                "output {i}: {a} vs host {b}"
            );
        }
    }
    assert_eq!(live_handles(), 0);
}
