//! `bitnet --device tt`: the Tenstorrent backend from the command line, on the host-backed
//! provider of the TT-NN C ABI (`libttnn_c_host.so`, found through `TTNN_C_LIB` or `--tt-lib`
//! exactly as a real `libttnn_c.so` would be), and the errors when the library is missing.

use std::path::Path;
use std::process::{Command, Output};

use bitnet_layers::{BitNetModel, ModelOptions, PlanOptions};
use bitnet_runtime::{Event, Generator, GeneratorConfig, Request, SamplingParams};
use bitnet_tests::{Golden, model_dir, provider_device, provider_lib};
use ttnn::DataType;

/// The binary with a clean loader environment (no inherited TTNN_C_LIB or TT_METAL_HOME), plus
/// `env`.
fn bitnet(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bitnet"));
    cmd.args(args)
        .env_remove("TTNN_C_LIB")
        .env_remove("TT_METAL_HOME");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run bitnet")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ids_arg(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

fn json_ids(v: &serde_json::Value, key: &str) -> Vec<u32> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key} in {v}"))
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

/// A missing or unloadable library is an error naming what was tried and how to get it: exit
/// status 2 (the CLI's error exit), never a panic.
#[test]
fn missing_tt_library_is_a_clear_error() {
    let dir = model_dir("tiny-2b4t-format");
    let m = dir.to_str().expect("path");
    let gen_args = ["generate", "--model", m, "--ids", "1,2,3", "--device", "tt"];
    let check = |out: &Output, needles: &[&str]| {
        let err = stderr(out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(
            err.contains("opening the Tenstorrent device (--device tt)"),
            "{err}"
        );
        for n in needles {
            assert!(err.contains(n), "missing {n:?} in: {err}");
        }
    };

    // --tt-lib at a path that does not exist: the only path tried.
    let mut args = gen_args.to_vec();
    args.extend(["--tt-lib", "/nonexistent/libttnn_c.so"]);
    check(
        &bitnet(&args, &[]),
        &[
            "not found",
            "/nonexistent/libttnn_c.so",
            "TT_METAL_HOME",
            "TTNN_C_LIB",
        ],
    );

    // TTNN_C_LIB likewise.
    let missing = Path::new("/nonexistent/from-env/libttnn_c.so");
    check(
        &bitnet(&gen_args, &[("TTNN_C_LIB", missing)]),
        &["not found", "/nonexistent/from-env/libttnn_c.so"],
    );

    // Nothing set: the search next to the executable is listed.
    let exe_dir = Path::new(env!("CARGO_BIN_EXE_bitnet"))
        .parent()
        .expect("bin dir")
        .display()
        .to_string();
    check(&bitnet(&gen_args, &[]), &["not found", &exe_dir]);

    // A file that is not a shared library.
    let not_a_lib = dir.join("config.json");
    let mut args = gen_args.to_vec();
    args.extend(["--tt-lib", not_a_lib.to_str().expect("path")]);
    check(&bitnet(&args, &[]), &["cannot load", "config.json"]);

    // --tt-lib belongs to --device tt.
    let out = bitnet(
        &["generate", "--model", m, "--ids", "1", "--tt-lib", "/x.so"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--tt-lib applies to --device tt"));

    // `bitnet devices` reports where the library was looked for.
    let out = bitnet(&["devices", "--tt-lib", "/nonexistent/libttnn_c.so"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("no TT-NN shim found") && text.contains("/nonexistent/libttnn_c.so"),
        "{text}"
    );
}

/// `bitnet generate --device tt` with TTNN_C_LIB at the provider: the whole CLI path (model
/// load through the FFI, traced decode, readback) gives the ids the library gives in-process
/// on the same backend and plan (a Tenstorrent device defaults to bf16 activations and KV
/// cache, so these are not the host's fp32 ids).
#[test]
fn generate_on_tt_through_the_provider() {
    let dir = model_dir("tiny-2b4t-format");
    let prompt = Golden::load(&dir).prompt_ids();
    let lib = provider_lib();
    let run = |extra: &[&str], env: &[(&str, &Path)]| {
        let mut args = vec!["generate", "--model", dir.to_str().expect("path"), "--ids"];
        let ids = ids_arg(&prompt);
        args.push(&ids);
        args.extend([
            "--max-new-tokens",
            "12",
            "--json",
            "--lm-head-dtype",
            "bf16",
            "--device",
            "tt",
        ]);
        args.extend(extra);
        let out = bitnet(&args, env);
        assert!(out.status.success(), "bitnet failed: {}", stderr(&out));
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
        assert_eq!(json_ids(&v, "prompt_ids"), prompt);
        json_ids(&v, "ids")
    };
    let via_env = run(&[], &[("TTNN_C_LIB", lib.as_path())]);
    let via_flag = run(&["--tt-lib", lib.to_str().expect("path")], &[]);
    assert_eq!(via_env.len(), 12);
    assert_eq!(via_env, via_flag);

    // The same request in-process on a Tenstorrent device over the provider.
    let dev = provider_device();
    let opts = ModelOptions {
        plan: PlanOptions {
            lm_head: DataType::Bfloat16,
            max_batch: 1,
            ..Default::default()
        },
        max_seq_len: None,
    };
    let model = BitNetModel::load(&dir, &dev, &opts).expect("load");
    assert_eq!(model.plan().weights.kv_cache, DataType::Bfloat16);
    let mut g = Generator::new(
        &model,
        GeneratorConfig {
            max_batch: 1,
            kv_budget_bytes: 1024 << 20,
            ..Default::default()
        },
    )
    .expect("generator");
    let id = g
        .add_request(Request {
            prompt_ids: prompt.clone(),
            max_new_tokens: 12,
            sampling: SamplingParams::greedy(),
            stop_ids: model.config().eos_token_ids.clone(),
        })
        .expect("request");
    let want: Vec<u32> = g
        .run()
        .expect("run")
        .into_iter()
        .filter_map(|e| match e {
            Event::Token { seq, token } if seq == id => Some(token),
            _ => None,
        })
        .collect();
    assert_eq!(via_env, want);
}

/// `bitnet bench --device tt` (what `cargo xtask test-hw` runs on a card) on the provider:
/// decode speed against the card's DRAM peak, weight bytes from the TT buffers.
#[test]
fn bench_on_tt_through_the_provider() {
    let dir = model_dir("tiny-2b4t-format");
    let lib = provider_lib();
    let bench = |device_args: &[&str]| {
        let mut args = vec![
            "bench",
            "--model",
            dir.to_str().expect("path"),
            "--prompt-len",
            "8",
            "--gen-len",
            "6",
            "--reps",
            "1",
            "--json",
        ];
        args.extend(device_args);
        let out = bitnet(&args, &[]);
        assert!(out.status.success(), "bench failed: {}", stderr(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("one JSON object")
    };
    let v = bench(&["--device", "tt", "--tt-lib", lib.to_str().expect("path")]);
    assert_eq!(v["backend"], "tenstorrent");
    assert_eq!(v["bandwidth_source"], "device_dram_peak");
    assert_eq!(
        v["bandwidth_gb_s"].as_f64(),
        Some(288.0),
        "n150's DRAM peak"
    );
    assert!(v["host_isa"].is_null());
    assert!(v["decode_tok_s"]["median"].as_f64().expect("decode") > 0.0);
    assert_eq!(v["trace_captures"].as_u64(), Some(1));
    // The weights a token streams, as the TT buffers hold them: ternary weights as BFLOAT4_B
    // tiles (4.5 bits a value) where the host keeps 2 bits.
    let h = bench(&["--device", "host", "--threads", "1", "--bandwidth-mib", "8"]);
    assert_eq!(h["backend"], "host");
    assert_eq!(h["bandwidth_source"], "host_read_test");
    let (wt, wh) = (
        v["weight_bytes_per_token"]
            .as_u64()
            .expect("tt weight bytes"),
        h["weight_bytes_per_token"]
            .as_u64()
            .expect("host weight bytes"),
    );
    assert!(wt > wh && wh > 0, "tenstorrent {wt} bytes, host {wh} bytes");
}
