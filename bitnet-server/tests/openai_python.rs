//! The official `openai` Python package against the server on the full-vocabulary fixture:
//! a chat completion and a streamed one give the golden greedy text (what `bitnet generate`
//! gives), plus a text completion and the client's typed errors. `scripts/openai_check.py`
//! holds the checks; this test starts the server, runs it, and reads its verdict.

mod common;

use std::process::Command;
use std::time::Duration;

use bitnet_tests::{Golden, model_dir, openai_python_path, scripts_dir};
use common::*;

const QUESTION: &str = "Hey, are you conscious? Can you talk to me?";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_client_gets_chat_and_streamed_chat_answers() {
    let python = openai_python_path();
    let key = "test-key-123";
    let server = start(|c| c.api_key = Some(key.into())).await;
    let golden = Golden::load(&model_dir(FIXTURE));
    let want = golden.greedy("fp32");
    let expect = answer_text(&tokenizer(), &want);
    let mut cmd = Command::new(python);
    cmd.arg(scripts_dir().join("openai_check.py"))
        .args(["--base-url", &format!("{}/v1", base(&server))])
        .args(["--api-key", key, "--model", MODEL, "--question", QUESTION])
        .args(["--max-tokens", &want.len().to_string(), "--expect", &expect])
        // Loopback only: no proxy from the environment may intercept it.
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost");
    let out = tokio::time::timeout(
        Duration::from_secs(300),
        tokio::task::spawn_blocking(move || cmd.output()),
    )
    .await
    .expect("the Python check finishes within 5 minutes")
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "openai_check.py failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["content"], expect.as_str());
    assert_eq!(v["finish_reason"], "length");
    assert!(v["stream_chunks"].as_u64().unwrap() > 3, "{v}");
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}
