//! The server over loopback HTTP with a real client, on the full-vocabulary oracle fixture:
//! answers equal the runtime's (hence `bitnet generate`'s) greedy ids, concurrent clients share
//! the decode batch, a disconnect frees its KV blocks, auth, overload, and malformed requests.

mod common;

use std::time::Duration;

use bitnet_tests::{Golden, model_dir};
use common::*;
use serde_json::{Value, json};

/// The golden fixture's chat prompt (its ids are the golden `prompt_ids`).
const GOLDEN_QUESTION: &str = "Hey, are you conscious? Can you talk to me?";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_answers_whole_and_streamed_equal_the_golden_greedy_ids() {
    let server = start(|_| {}).await;
    let url = format!("{}/v1/chat/completions", base(&server));
    let client = reqwest::Client::new();
    let tok = tokenizer();
    let golden = Golden::load(&model_dir(FIXTURE));
    let want = golden.greedy("fp32");
    let body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": GOLDEN_QUESTION}],
        "max_tokens": want.len(),
        "temperature": 0,
        "return_token_ids": true,
    });

    let (status, v) = post(&client, &url, &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["model"], MODEL);
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(ids(&v["prompt_token_ids"]), golden.prompt_ids());
    let choice = &v["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(ids(&choice["token_ids"]), want);
    assert_eq!(choice["message"]["role"], "assistant");
    let content = choice["message"]["content"].as_str().unwrap();
    assert_eq!(content, answer_text(&tok, &want));
    assert_eq!(choice["finish_reason"], "length");
    assert_eq!(
        v["usage"],
        json!({
            "prompt_tokens": golden.prompt_ids().len(),
            "completion_tokens": want.len(),
            "total_tokens": golden.prompt_ids().len() + want.len(),
        })
    );

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let chunks = stream_chunks(&client, &url, &streamed).await;
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let mut text = String::new();
    let mut got = Vec::new();
    let mut finish = Vec::new();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], chunks[0]["id"], "one id for the whole stream");
        let Some(choice) = c["choices"].get(0) else {
            continue;
        };
        text.push_str(choice["delta"]["content"].as_str().unwrap_or(""));
        got.extend(ids(&choice["token_ids"]));
        if !choice["finish_reason"].is_null() {
            finish.push(choice["finish_reason"].clone());
        }
    }
    assert_eq!(got, want);
    assert_eq!(text, content);
    assert!(chunks.len() > 4, "streamed in pieces: {}", chunks.len());
    assert_eq!(finish, vec![json!("length")]);
    // The usage chunk comes last, with no choices.
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"], v["usage"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_equal_the_runtime_and_stop_strings_trim_the_text() {
    let server = start(|_| {}).await;
    let url = format!("{}/v1/completions", base(&server));
    let client = reqwest::Client::new();
    let tok = tokenizer();
    let prompt = "The year 2025 had 365 days";
    let n = 12;
    let prompt_ids = tok.encode(prompt, true).unwrap();
    let want = reference_ids(std::slice::from_ref(&prompt_ids), n).remove(0);
    let body = json!({
        "model": MODEL, "prompt": prompt, "max_tokens": n, "temperature": 0,
        "return_token_ids": true,
    });
    let (status, v) = post(&client, &url, &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(ids(&v["prompt_token_ids"]), prompt_ids);
    assert_eq!(ids(&v["choices"][0]["token_ids"]), want);
    let full = answer_text(&tok, &want);
    assert_eq!(v["choices"][0]["text"], full.as_str());
    assert_eq!(v["usage"]["prompt_tokens"], prompt_ids.len());
    assert_eq!(v["usage"]["completion_tokens"], want.len());

    // Token ids as the prompt give the same answer.
    let by_ids = json!({"model": MODEL, "prompt": prompt_ids, "max_tokens": n, "temperature": 0});
    let (_, v2) = post(&client, &url, &by_ids).await;
    assert_eq!(v2["choices"][0]["text"], full.as_str());

    // Streamed.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let chunks = stream_chunks(&client, &url, &streamed).await;
    let text: String = chunks
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(text, full);
    assert_eq!(chunks[0]["object"], "text_completion");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "length"
    );

    // A stop string: the text ends right before its first occurrence, whole or streamed.
    let cut = full
        .char_indices()
        .map(|(i, _)| i)
        .find(|&i| i >= full.len() / 2)
        .unwrap();
    let stop: String = full[cut..].chars().take(3).collect();
    let expect = &full[..full.find(&stop).unwrap()];
    let mut stopped = body.clone();
    stopped["stop"] = json!(["\u{1}never", stop]);
    let (_, v) = post(&client, &url, &stopped).await;
    assert_eq!(v["choices"][0]["text"], expect, "stop {stop:?} in {full:?}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let used = v["usage"]["completion_tokens"].as_u64().unwrap() as usize;
    assert!(used <= want.len());
    assert_eq!(ids(&v["choices"][0]["token_ids"]), want[..used]);
    stopped["stream"] = json!(true);
    let chunks = stream_chunks(&client, &url, &stopped).await;
    let text: String = chunks
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(text, expect);
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_clients_share_the_decode_batch() {
    // The small-vocabulary fixture keeps 2 x 16 answers cheap; prompts are token ids.
    let server = start_fixture(TINY, |_| {}).await;
    let base = base(&server);
    let tok = tokenizer();
    let n = 32;
    let prompts: Vec<Vec<u32>> = (0..16u32)
        .map(|i| {
            (0..5 + i)
                .map(|j| 1 + (i * 7919 + j * 104_729) % 3999)
                .collect()
        })
        .collect();
    let want = reference_ids_of(TINY, &prompts, n);

    let client = reqwest::Client::new();
    let tasks: Vec<_> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let client = client.clone();
            let url = format!("{base}/v1/completions");
            // Half stream, half wait for the whole answer.
            let stream = i % 2 == 1;
            let body = json!({
                "model": MODEL,
                "prompt": p,
                "max_tokens": n,
                "temperature": 0,
                "return_token_ids": true,
                "stream": stream,
            });
            tokio::spawn(async move {
                if stream {
                    let chunks = stream_chunks(&client, &url, &body).await;
                    let mut text = String::new();
                    let mut got = Vec::new();
                    for c in &chunks {
                        text.push_str(c["choices"][0]["text"].as_str().unwrap());
                        got.extend(ids(&c["choices"][0]["token_ids"]));
                    }
                    let reason = chunks.last().unwrap()["choices"][0]["finish_reason"].clone();
                    (got, text, reason)
                } else {
                    let (status, v) = post(&client, &url, &body).await;
                    assert_eq!(status, 200, "{v}");
                    let c = &v["choices"][0];
                    (
                        ids(&c["token_ids"]),
                        c["text"].as_str().unwrap().to_owned(),
                        c["finish_reason"].clone(),
                    )
                }
            })
        })
        .collect();
    let mut total = 0;
    for (i, t) in tasks.into_iter().enumerate() {
        let (got, text, reason) = t.await.unwrap();
        assert_eq!(got, want[i], "client {i}");
        assert_eq!(text, answer_text(&tok, &want[i]), "client {i}");
        let stopped = want[i].len() < n;
        assert_eq!(
            reason,
            if stopped { "stop" } else { "length" },
            "client {i}"
        );
        total += got.len();
    }

    let m = metrics_text(&client, &base).await;
    let occupancy = metric(&m, "bitnet_batch_occupancy_max");
    assert!(occupancy > 1.0, "max batch occupancy {occupancy}\n{m}");
    assert_eq!(
        metric(
            &m,
            "bitnet_requests_total{route=\"/v1/completions\",status=\"200\"}"
        ),
        16.0
    );
    assert_eq!(metric(&m, "bitnet_completion_tokens_total"), total as f64);
    assert_eq!(metric(&m, "bitnet_batch_size_limit"), 32.0);
    assert!(metric(&m, "bitnet_decode_tokens_per_second") > 0.0);
    assert!(metric(&m, "bitnet_prefill_tokens_per_second") > 0.0);
    // All done: nothing holds blocks, nothing waits.
    let m = wait_for_metrics(&client, &base, 10, |m| {
        metric(m, "bitnet_requests_in_flight") == 0.0
    })
    .await;
    assert_eq!(metric(&m, "bitnet_kv_blocks_in_use"), 0.0);
    assert_eq!(metric(&m, "bitnet_queue_depth"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_frees_its_kv_blocks() {
    let server = start(|_| {}).await;
    let base = base(&server);
    let client = reqwest::Client::new();
    let m = metrics_text(&client, &base).await;
    assert_eq!(metric(&m, "bitnet_kv_blocks_in_use"), 0.0);
    let body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me a very long story."}],
        "max_tokens": 3000,
        "temperature": 0,
        "ignore_eos": true,
        "stream": true,
    });
    let resp = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let live = read_events(resp, 4).await;
    let m = metrics_text(&client, &base).await;
    assert!(metric(&m, "bitnet_kv_blocks_in_use") > 0.0, "{m}");
    assert_eq!(metric(&m, "bitnet_running_sequences"), 1.0);
    // Hang up mid-answer.
    drop(live);
    let m = wait_for_metrics(&client, &base, 20, |m| {
        metric(m, "bitnet_kv_blocks_in_use") == 0.0 && metric(m, "bitnet_requests_in_flight") == 0.0
    })
    .await;
    assert_eq!(metric(&m, "bitnet_running_sequences"), 0.0);
    assert_eq!(metric(&m, "bitnet_sequences_cancelled_total"), 1.0);
    assert!(metric(&m, "bitnet_completion_tokens_total") < 3000.0);

    // The same for a client waiting for a whole answer: it gives up while its sequence decodes.
    let mut whole = body.clone();
    whole["stream"] = json!(false);
    let waiting = {
        let (client, url) = (client.clone(), format!("{base}/v1/chat/completions"));
        tokio::spawn(async move { client.post(url).json(&whole).send().await })
    };
    wait_for_metrics(&client, &base, 20, |m| {
        metric(m, "bitnet_kv_blocks_in_use") > 0.0
            && metric(m, "bitnet_completion_tokens_total") > 0.0
    })
    .await;
    waiting.abort();
    let m = wait_for_metrics(&client, &base, 20, |m| {
        metric(m, "bitnet_kv_blocks_in_use") == 0.0 && metric(m, "bitnet_requests_in_flight") == 0.0
    })
    .await;
    assert_eq!(metric(&m, "bitnet_sequences_cancelled_total"), 2.0);
    // And the server goes on serving.
    let (status, v) = post(
        &client,
        &format!("{base}/v1/chat/completions"),
        &json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_503_with_retry_after() {
    let server = start(|c| {
        c.generator.max_batch = 1;
        c.max_queue = 1;
    })
    .await;
    let base = base(&server);
    let url = format!("{base}/v1/completions");
    let client = reqwest::Client::new();
    let long = json!({
        "model": MODEL, "prompt": "Once upon a time", "max_tokens": 3000, "temperature": 0,
        "ignore_eos": true, "stream": true,
    });
    // One decodes, one waits for the batch's only slot.
    let first = read_events(client.post(&url).json(&long).send().await.unwrap(), 2).await;
    let second = client.post(&url).json(&long).send().await.unwrap();
    assert_eq!(second.status(), 200);
    let m = metrics_text(&client, &base).await;
    assert_eq!(metric(&m, "bitnet_requests_in_flight"), 2.0);
    let third = client
        .post(&url)
        .json(&json!({"model": MODEL, "prompt": "Hi", "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(third.status(), 503);
    assert_eq!(third.headers()["retry-after"], "1");
    let v: Value = third.json().await.unwrap();
    assert_eq!(v["error"]["code"], "server_overloaded");
    assert_eq!(v["error"]["type"], "server_error");
    // The waiting request never got the slot: its queue place is real.
    let m = metrics_text(&client, &base).await;
    assert_eq!(metric(&m, "bitnet_queue_depth"), 1.0, "{m}");
    assert_eq!(metric(&m, "bitnet_requests_rejected_overload_total"), 1.0);
    drop(first);
    drop(second);
    wait_for_metrics(&client, &base, 20, |m| {
        metric(m, "bitnet_requests_in_flight") == 0.0
    })
    .await;
    let (status, v) = post(
        &client,
        &url,
        &json!({"model": MODEL, "prompt": "Hi", "max_tokens": 2}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waits_for_kv_blocks_and_a_full_queue_refuses_more() {
    // 8 blocks of 32 positions: a long prompt cannot start while another sequence holds any.
    let server = start(|c| {
        c.generator.num_blocks = Some(8);
        c.generator.max_batch = 4;
        c.max_queue = 1;
    })
    .await;
    let base = base(&server);
    let url = format!("{base}/v1/completions");
    let client = reqwest::Client::new();
    let first = json!({
        "model": MODEL, "prompt": "Once upon a time", "max_tokens": 3000, "temperature": 0,
        "ignore_eos": true, "stream": true,
    });
    let first = read_events(client.post(&url).json(&first).send().await.unwrap(), 2).await;
    // 250 prompt tokens need all 8 blocks.
    let long: Vec<u32> = (0..250).map(|i| 1000 + i).collect();
    let waiting = {
        let (client, url) = (client.clone(), url.clone());
        let body = json!({"model": MODEL, "prompt": long, "max_tokens": 2, "temperature": 0});
        tokio::spawn(async move { post(&client, &url, &body).await })
    };
    let m = wait_for_metrics(&client, &base, 20, |m| {
        metric(m, "bitnet_queue_depth") == 1.0
    })
    .await;
    // Batch slots are free; the blocks are not.
    assert_eq!(metric(&m, "bitnet_running_sequences"), 1.0);
    let third = client
        .post(&url)
        .json(&json!({"model": MODEL, "prompt": "Hi", "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(third.status(), 503);
    assert_eq!(third.headers()["retry-after"], "1");
    let v: Value = third.json().await.unwrap();
    assert_eq!(v["error"]["code"], "server_overloaded");
    // The first client leaves: its blocks go to the waiting request, which completes.
    drop(first);
    let (status, v) = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["usage"]["prompt_tokens"], 250);
    assert_eq!(v["usage"]["completion_tokens"], 2);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    wait_for_metrics(&client, &base, 20, |m| {
        metric(m, "bitnet_kv_blocks_in_use") == 0.0 && metric(m, "bitnet_requests_in_flight") == 0.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_is_enforced_when_a_key_is_set() {
    let server = start(|c| c.api_key = Some("sekret-key".into())).await;
    let base = base(&server);
    let client = reqwest::Client::new();
    let body = json!({"model": MODEL, "prompt": "Hi", "max_tokens": 2});
    let url = format!("{base}/v1/completions");
    for auth in [
        None,
        Some("Bearer wrong-key!"),
        Some("sekret-key"),
        Some("Bearer "),
    ] {
        let mut req = client.post(&url).json(&body);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{auth:?}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "invalid_api_key");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(v["error"]["message"].as_str().unwrap().contains("API key"));
    }
    for path in ["/v1/models", "/metrics"] {
        let r = client.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    let r = client
        .post(&url)
        .bearer_auth("sekret-key")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .get(format!("{base}/v1/models"))
        .bearer_auth("sekret-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Liveness probes need no key.
    let r = client.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_4xx_and_the_next_request_succeeds() {
    let server = start(|c| c.max_body_bytes = 64 << 10).await;
    let base = base(&server);
    let client = reqwest::Client::new();
    let chat = format!("{base}/v1/chat/completions");
    let good =
        json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2});
    let ok = async || {
        let (status, v) = post(&client, &chat, &good).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
    };
    let check = |status: u16, v: &Value, want_status: u16, param: Option<&str>| {
        assert_eq!(status, want_status, "{v}");
        let e = &v["error"];
        assert!(!e["message"].as_str().unwrap().is_empty(), "{v}");
        assert!(e["type"].is_string(), "{v}");
        assert!(e.get("code").is_some() && e.get("param").is_some(), "{v}");
        if let Some(p) = param {
            assert_eq!(e["param"], p, "{v}");
        }
    };

    // Not JSON at all, and JSON of the wrong shape.
    for raw in ["{not json", "[1, 2]", ""] {
        let r = client
            .post(&chat)
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap();
        check(status, &v, 400, None);
        ok().await;
    }
    let mut cases: Vec<(Value, u16, Option<&str>)> = vec![
        (
            json!({"model": MODEL, "messages": "hello"}),
            400,
            Some("messages"),
        ),
        (json!({"model": MODEL}), 400, None),
        (
            json!({"model": MODEL, "messages": []}),
            400,
            Some("messages"),
        ),
        (
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]}),
            404,
            Some("model"),
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "temperature": -1}),
            400,
            Some("temperature"),
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "top_p": 0}),
            400,
            Some("top_p"),
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "top_k": 1000}),
            400,
            Some("top_k"),
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 0}),
            400,
            Some("max_tokens"),
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": -3}),
            400,
            Some("max_tokens"),
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "n": 3}),
            400,
            Some("n"),
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "wizard", "content": "Hi"}]}),
            400,
            Some("messages[0].role"),
        ),
    ];
    // Longer than the context (4096 tokens).
    let long = "word ".repeat(5000);
    cases.push((
        json!({"model": MODEL, "messages": [{"role": "user", "content": long}]}),
        400,
        Some("messages"),
    ));
    for (body, want_status, param) in cases {
        let (status, v) = post(&client, &chat, &body).await;
        check(status, &v, want_status, param);
        ok().await;
    }
    let (status, v) = post(
        &client,
        &chat,
        &json!({"model": MODEL, "messages": [{"role": "user", "content": long}]}),
    )
    .await;
    assert_eq!(
        v["error"]["code"], "context_length_exceeded",
        "{status} {v}"
    );
    let (status, v) = post(
        &client,
        &format!("{base}/v1/completions"),
        &json!({"model": MODEL, "prompt": [1, 2, 999999], "max_tokens": 2}),
    )
    .await;
    check(status, &v, 400, Some("prompt"));
    assert!(v["error"]["message"].as_str().unwrap().contains("999999"));

    // Too large a body.
    let huge =
        json!({"model": MODEL, "messages": [{"role": "user", "content": "x".repeat(100 << 10)}]});
    let (status, v) = post(&client, &chat, &huge).await;
    check(status, &v, 413, None);
    ok().await;

    // Unknown routes and methods.
    let r = client
        .get(format!("{base}/v2/nothing"))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    check(status, &r.json().await.unwrap(), 404, None);
    let r = client.get(&chat).send().await.unwrap();
    let status = r.status().as_u16();
    check(status, &r.json().await.unwrap(), 405, None);
    ok().await;

    let m = metrics_text(&client, &base).await;
    assert!(
        metric(
            &m,
            "bitnet_requests_total{route=\"/v1/chat/completions\",status=\"400\"}"
        ) >= 10.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_request_sampling_is_reproducible_by_seed() {
    let server = start(|_| {}).await;
    let url = format!("{}/v1/completions", base(&server));
    let client = reqwest::Client::new();
    let tok = tokenizer();
    let prompt = "Sampling test:";
    let run = |extra: Value| {
        let client = client.clone();
        let url = url.clone();
        async move {
            let mut body = json!({"model": MODEL, "prompt": prompt, "max_tokens": 10, "return_token_ids": true});
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            let (status, v) = post(&client, &url, &body).await;
            assert_eq!(status, 200, "{v}");
            ids(&v["choices"][0]["token_ids"])
        }
    };
    let a = run(json!({"temperature": 0.9, "top_p": 0.95, "top_k": 20, "seed": 7})).await;
    let b = run(json!({"temperature": 0.9, "top_p": 0.95, "top_k": 20, "seed": 7})).await;
    assert_eq!(a, b);
    assert!(!a.is_empty());
    // top_k 1 is greedy whatever the temperature.
    let greedy = reference_ids(&[tok.encode(prompt, true).unwrap()], 10).remove(0);
    assert_eq!(run(json!({"temperature": 1.5, "top_k": 1})).await, greedy);
    assert_eq!(run(json!({"temperature": 0})).await, greedy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_health_and_metrics_describe_the_server() {
    let server = start(|_| {}).await;
    let base = base(&server);
    let client = reqwest::Client::new();
    let v: Value = client
        .get(format!("{base}/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], MODEL);
    assert_eq!(v["data"][0]["object"], "model");
    assert_eq!(v["data"][0]["max_model_len"], 4096);
    let r = client
        .get(format!("{base}/v1/models/{MODEL}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .get(format!("{base}/v1/models/other"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = client
        .get(format!("{base}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["status"], "ok");
    let r = client.get(format!("{base}/metrics")).send().await.unwrap();
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let m = r.text().await.unwrap();
    for name in [
        "bitnet_requests_total",
        "bitnet_prompt_tokens_total",
        "bitnet_completion_tokens_total",
        "bitnet_queue_depth",
        "bitnet_batch_occupancy",
        "bitnet_batch_occupancy_max",
        "bitnet_kv_blocks_in_use",
        "bitnet_kv_blocks_total",
        "bitnet_prefill_tokens_per_second",
        "bitnet_decode_tokens_per_second",
    ] {
        assert!(
            m.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{m}"
        );
    }
    assert_eq!(metric(&m, "bitnet_kv_blocks_total"), 512.0);
    assert!(
        metric(
            &m,
            "bitnet_requests_total{route=\"/v1/models\",status=\"200\"}"
        ) >= 1.0
    );
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}
