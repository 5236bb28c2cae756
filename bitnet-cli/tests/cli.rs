//! End-to-end tests of the `bitnet` binary on the oracle fixtures, in the exact forms external
//! checks use.

use std::process::{Command, Output};

use bitnet_tests::{Golden, argmax, diff_stats, model_dir};
use safetensors::SafeTensors;

fn bitnet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bitnet"))
        .args(args)
        .output()
        .expect("run bitnet")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "bitnet failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("utf-8 stdout")
}

fn ids_arg(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

#[test]
fn generate_json_matches_the_golden_greedy_ids() {
    let dir = model_dir("tiny-2b4t-format");
    let g = Golden::load(&dir);
    let prompt = g.prompt_ids();
    let out = bitnet(&[
        "generate",
        "--model",
        dir.to_str().expect("path"),
        "--ids",
        &ids_arg(&prompt),
        "--max-new-tokens",
        "16",
        "--json",
        "--lm-head-dtype",
        "bf16",
        "--threads",
        "2",
    ]);
    let v: serde_json::Value = serde_json::from_str(ok(&out).trim()).expect("one JSON object");
    let ids: Vec<u32> = v["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect();
    let prompt_back: Vec<u32> = v["prompt_ids"]
        .as_array()
        .expect("prompt_ids")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect();
    assert_eq!(prompt_back, prompt);
    // Every golden margin >= 0.3 up to the end on this fixture except steps 0, 3, 4, 13;
    // those are still equal here (teacher-forced errors are ~1e-6), so compare all 16.
    assert_eq!(ids, g.greedy("fp32"));
    for key in ["prefill_tok_s", "decode_tok_s"] {
        assert!(v["stats"][key].as_f64().expect(key) > 0.0, "{key}");
    }
}

#[test]
fn generate_with_sampling_flags_is_reproducible() {
    let dir = model_dir("tiny-online-bf16");
    let run = |seed: &str| {
        let out = bitnet(&[
            "generate",
            "--model",
            dir.to_str().expect("path"),
            "--ids",
            "1,2,3",
            "--max-new-tokens",
            "8",
            "--json",
            "--temperature",
            "0.9",
            "--top-k",
            "20",
            "--top-p",
            "0.95",
            "--seed",
            seed,
        ]);
        let v: serde_json::Value = serde_json::from_str(ok(&out).trim()).expect("json");
        v["ids"].clone()
    };
    assert_eq!(run("7"), run("7"));
    assert_eq!(run("7").as_array().expect("ids").len(), 8);
}

fn read_logits(path: &std::path::Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).expect("logits file");
    let st = SafeTensors::deserialize(&bytes).expect("safetensors");
    let t = st.tensor("logits").expect("tensor named logits");
    assert_eq!(t.dtype(), safetensors::Dtype::F32);
    let v = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (t.shape().to_vec(), v)
}

#[test]
fn logits_files_match_the_goldens() {
    let dir = model_dir("tiny-2b4t-format");
    let g = Golden::load(&dir);
    let prompt = g.prompt_ids();
    let tmp = tempfile::tempdir().expect("tmp");
    let all = tmp.path().join("all.safetensors");
    let last = tmp.path().join("last.safetensors");
    let m = dir.to_str().expect("path");
    ok(&bitnet(&[
        "logits",
        "--model",
        m,
        "--ids",
        &ids_arg(&prompt),
        "--all-positions",
        "--out",
        all.to_str().expect("p"),
        "--lm-head-dtype",
        "bf16",
    ]));
    ok(&bitnet(&[
        "logits",
        "--model",
        m,
        "--ids",
        &ids_arg(&prompt),
        "--out",
        last.to_str().expect("p"),
        "--lm-head-dtype",
        "bf16",
    ]));
    let (shape, values) = read_logits(&all);
    assert_eq!(shape, vec![prompt.len(), 4000]);
    let want = g.tensor("fp32.prompt_logits");
    let s = diff_stats(&values, &want.values);
    assert!(s.median <= 1e-3 && s.max <= 0.25, "{s:?}");
    let (shape, last_values) = read_logits(&last);
    assert_eq!(shape, vec![4000]);
    assert_eq!(&last_values[..], &values[(prompt.len() - 1) * 4000..]);
    assert_eq!(argmax(&last_values), g.greedy("fp32")[0] as usize);
}

#[test]
fn info_prints_the_summary_and_the_plan() {
    let dir = model_dir("fullvocab-2b4t-format");
    let out = ok(&bitnet(&[
        "info",
        "--model",
        dir.to_str().expect("path"),
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(v["vocab_size"], 128256);
    assert_eq!(v["num_key_value_heads"], 1);
    let out = ok(&bitnet(&[
        "info",
        "--model",
        dir.to_str().expect("path"),
        "--plan",
        "--lm-head-dtype",
        "bfp4_b",
    ]));
    for needle in [
        "op",
        "output shape",
        "bytes",
        "memory",
        "dtype",
        "decode   qkv",
        "L1 width_sharded",
        "decode   lm_head",
        "[1, 1, 32, 128256]",
        "DRAM interleaved",
        "prefill  gate",
        "L1:   peak",
        "DRAM: weights",
        "lm_head bfp4_b",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
}

/// `bitnet bench --profile-ops`: the per-op table on stderr and `op_profile` in the JSON, with
/// every decode step's ops (one lm_head; per layer five BitLinears: fused QKV, o, gate, up,
/// down; and one attention).
#[test]
fn bench_profile_ops_reports_every_decode_op() {
    let dir = model_dir("tiny-2b4t-format");
    let out = bitnet(&[
        "bench",
        "--model",
        dir.to_str().expect("path"),
        "--prompt-len",
        "8",
        "--gen-len",
        "6",
        "--reps",
        "2",
        "--threads",
        "1",
        "--bandwidth-mib",
        "8",
        "--profile-ops",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(ok(&out).trim()).expect("json");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("decode op profile"), "{stderr}");
    assert!(stderr.contains("prefill op profile"), "{stderr}");
    let decode = v["op_profile"]["decode_per_token"]
        .as_array()
        .expect("decode ops");
    let calls = |prefix: &str| -> f64 {
        decode
            .iter()
            .filter(|o| o["op"].as_str().is_some_and(|n| n.starts_with(prefix)))
            .map(|o| o["calls"].as_f64().expect("calls"))
            .sum()
    };
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).expect("config"))
            .expect("config json");
    let layers = config["num_hidden_layers"].as_f64().expect("layers");
    assert_eq!(calls("Matmul"), 1.0, "{decode:?}");
    assert_eq!(calls("BitLinear"), 5.0 * layers, "{decode:?}");
    assert_eq!(calls("paged_scaled_dot_product_attention_decode"), layers);
    let share: f64 = decode
        .iter()
        .map(|o| o["share"].as_f64().expect("share"))
        .sum();
    assert!((share - 1.0).abs() < 1e-6, "shares sum to {share}");
    assert!(decode.iter().all(|o| o["ms"].as_f64().expect("ms") >= 0.0));
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = model_dir("tiny-2b4t-format");
    let m = dir.to_str().expect("path");
    let out = bitnet(&[
        "generate",
        "--model",
        m,
        "--ids",
        "1,99999",
        "--max-new-tokens",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("token id 99999") && err.contains("vocabulary"),
        "{err}"
    );
    let out = bitnet(&[
        "generate",
        "--model",
        "/nonexistent/model",
        "--ids",
        "1",
        "--max-new-tokens",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/model"));
    let out = bitnet(&[
        "generate",
        "--model",
        m,
        "--ids",
        "1",
        "--temperature",
        "-1",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("temperature"));
    let out = bitnet(&["info", "--model", m, "--plan", "--lm-head-dtype", "int3"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("int3"));
}

fn fullvocab_with_tokenizer() -> (String, String) {
    let dir = model_dir("fullvocab-2b4t-format")
        .to_str()
        .expect("path")
        .to_string();
    let tok = bitnet_tests::test_tokenizer_path()
        .to_str()
        .expect("path")
        .to_string();
    (dir, tok)
}

#[test]
fn generate_streams_text_from_a_chat_prompt() {
    let (dir, tok) = fullvocab_with_tokenizer();
    let g = Golden::load(&model_dir("fullvocab-2b4t-format"));
    let common = [
        "generate",
        "--model",
        &dir,
        "--tokenizer",
        &tok,
        "--prompt",
        "Hey, are you conscious? Can you talk to me?",
        "--chat",
        "--max-new-tokens",
        "16",
        "--lm-head-dtype",
        "bf16",
    ];
    let mut args = common.to_vec();
    args.extend(["--json", "--stats"]);
    let v: serde_json::Value = serde_json::from_str(ok(&bitnet(&args)).trim()).expect("json");
    // The chat format gives exactly the golden prompt ids, and greedy gives the golden ids.
    let prompt: Vec<u32> = v["prompt_ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect();
    assert_eq!(prompt, g.prompt_ids());
    let ids: Vec<u32> = v["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect();
    assert_eq!(ids, g.greedy("fp32"));
    for key in [
        "prefill_tok_s",
        "decode_tok_s",
        "trace_captures",
        "trace_replays",
        "kv_blocks_peak",
        "dram_bytes_peak",
        "l1_bytes_peak",
    ] {
        assert!(
            v["stats"].get(key).is_some(),
            "stats lacks {key}: {}",
            v["stats"]
        );
    }
    assert_eq!(v["stats"]["trace_captures"], 1);
    assert_eq!(v["stats"]["trace_replays"], 14);
    // Streamed text equals the JSON text.
    let text = ok(&bitnet(&common));
    assert_eq!(
        text.trim_end_matches('\n'),
        v["text"].as_str().expect("text")
    );
}

#[test]
fn batch_file_lines_come_back_in_order_and_bad_lines_fail_alone() {
    let (dir, tok) = fullvocab_with_tokenizer();
    let tmp = tempfile::tempdir().expect("tmp");
    let batch = tmp.path().join("batch.jsonl");
    std::fs::write(
        &batch,
        [
            r#"{"prompt": "Hello world", "max_new_tokens": 5}"#,
            r#"{"ids": [128000, 9906, 1917]}"#,
            r#"{"ids": [1, 2, 999999]}"#,
            r#"this is not json"#,
            r#"{"prompt": "The year 2025 had 365 days", "max_new_tokens": 9}"#,
            r#"{"ids": [1], "prompt": "both"}"#,
            r#"{"ids": [128000, 9906], "max_new_tokens": 0}"#,
        ]
        .join("\n"),
    )
    .expect("write batch");
    let out = ok(&bitnet(&[
        "generate",
        "--model",
        &dir,
        "--tokenizer",
        &tok,
        "--batch-file",
        batch.to_str().expect("p"),
        "--max-new-tokens",
        "7",
        "--lm-head-dtype",
        "bf16",
    ]));
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 7);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["index"], i);
    }
    assert_eq!(lines[0]["ids"].as_array().expect("ids").len(), 5);
    assert_eq!(lines[1]["ids"].as_array().expect("ids").len(), 7);
    assert_eq!(lines[4]["ids"].as_array().expect("ids").len(), 9);
    assert!(
        lines[2]["error"]
            .as_str()
            .expect("error")
            .contains("999999")
    );
    assert!(
        lines[3]["error"]
            .as_str()
            .expect("error")
            .contains("line 4")
    );
    assert!(
        lines[5]["error"]
            .as_str()
            .expect("error")
            .contains("exactly one")
    );
    assert!(
        lines[6]["error"]
            .as_str()
            .expect("error")
            .contains("max_new_tokens")
    );
    // Decoded together, each line equals its own run alone.
    let alone = ok(&bitnet(&[
        "generate",
        "--model",
        &dir,
        "--tokenizer",
        &tok,
        "--prompt",
        "The year 2025 had 365 days",
        "--max-new-tokens",
        "9",
        "--json",
        "--lm-head-dtype",
        "bf16",
    ]));
    let alone: serde_json::Value = serde_json::from_str(alone.trim()).expect("json");
    assert_eq!(alone["ids"], lines[4]["ids"]);
}

#[test]
fn chat_repl_streams_replies_over_turns() {
    use std::io::Write;
    let (dir, tok) = fullvocab_with_tokenizer();
    let mut child = Command::new(env!("CARGO_BIN_EXE_bitnet"))
        .args([
            "chat",
            "--model",
            &dir,
            "--tokenizer",
            &tok,
            "--max-new-tokens",
            "6",
            "--stats",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn chat");
    child
        .stdin
        .as_mut()
        .expect("stdin")
        .write_all(
            b"Hey, are you conscious? Can you talk to me?\nAnd now?\n/reset\nAgain?\n/exit\n",
        )
        .expect("write");
    let out = child.wait_with_output().expect("chat ends");
    let stdout = ok(&out);
    assert!(stdout.matches("> ").count() >= 4, "{stdout}");
    assert!(stdout.contains("(conversation reset)"), "{stdout}");
    // The second turn reuses the first turn's cached blocks only if they are full; the stats
    // line is printed once per turn.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("decode").count(), 3, "{stderr}");
}

/// One HTTP/1.1 request over a fresh connection; returns the status and the body.
fn http(addr: &str, method: &str, path: &str, key: Option<&str>, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read");
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let body = resp
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// Kills the child when dropped, so a failed assertion leaves no server running.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serve_answers_openai_requests_with_the_generate_ids() {
    use std::io::BufRead;
    let (dir, tok) = fullvocab_with_tokenizer();
    let child = Command::new(env!("CARGO_BIN_EXE_bitnet"))
        .args([
            "serve",
            "--model",
            &dir,
            "--tokenizer",
            &tok,
            "--port",
            "0",
            "--api-key",
            "cli-key",
            "--model-name",
            "tiny",
            "--max-batch",
            "4",
            "--lm-head-dtype",
            "bf16",
            "--threads",
            "1",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let mut child = KillOnDrop(child);
    // "serving tiny at http://127.0.0.1:PORT/v1 ..." once it listens.
    let stderr = child.0.stderr.take().expect("stderr");
    let mut lines = std::io::BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines.next().expect("serve exited early").expect("line");
        if let Some(rest) = line.split("http://").nth(1) {
            break rest.split('/').next().expect("address").to_owned();
        }
    };
    let g = Golden::load(&model_dir("fullvocab-2b4t-format"));
    let want = g.greedy("fp32");
    let body = serde_json::json!({
        "model": "tiny",
        "messages": [{"role": "user", "content": "Hey, are you conscious? Can you talk to me?"}],
        "max_tokens": want.len(),
        "temperature": 0,
        "return_token_ids": true,
    })
    .to_string();
    let (status, _) = http(&addr, "POST", "/v1/chat/completions", None, &body);
    assert_eq!(status, 401);
    let (status, text) = http(
        &addr,
        "POST",
        "/v1/chat/completions",
        Some("cli-key"),
        &body,
    );
    assert_eq!(status, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    let ids: Vec<u32> = v["choices"][0]["token_ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect();
    assert_eq!(ids, want);
    let (status, text) = http(&addr, "GET", "/health", None, "");
    assert_eq!((status, text.contains("ok")), (200, true), "{text}");
}
