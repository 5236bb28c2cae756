//! Checkpoint variants the loader must take: sharded files with an index, `weight_scale` of
//! shape `[]`, and an untied `lm_head.weight`. Each gives the same logits as the fixture.

use bitnet_layers::{BitNetModel, KvCache, ModelOptions, PlanOptions, PrefillOptions};
use bitnet_tests::{TensorMap, model_dir, modified_checkpoint};
use ttnn::{DataType, Device, DeviceSpec};

fn logits(dir: &std::path::Path) -> Vec<f32> {
    let dev = Device::open(DeviceSpec::default().with_threads(1)).expect("open");
    let opts = ModelOptions {
        plan: PlanOptions {
            lm_head: DataType::Bfloat16,
            max_batch: 1,
            ..Default::default()
        },
        max_seq_len: Some(64),
    };
    let model = BitNetModel::load(dir, &dev, &opts).expect("load");
    let cache = KvCache::allocate(&dev, model.config(), 1, 32, DataType::Float32).expect("kv");
    let out = model
        .prefill(
            &[1, 17, 342, 999, 2048],
            0,
            &cache,
            &[0],
            PrefillOptions {
                all_logits: true,
                hidden_states: false,
            },
        )
        .expect("prefill");
    out.logits.to_vec::<f32>().expect("read")
}

#[test]
fn sharded_checkpoint_with_index() {
    let want = logits(&model_dir("tiny-2b4t-format"));
    let d = modified_checkpoint("tiny-2b4t-format", |_, _| {});
    // Split model.safetensors into two shards and write the index.
    let bytes = std::fs::read(d.path().join("model.safetensors")).expect("read");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("parse");
    let mut shards: [TensorMap; 2] = Default::default();
    let mut weight_map = serde_json::Map::new();
    for (i, (name, t)) in st.tensors().into_iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i % 2 + 1);
        weight_map.insert(name.clone(), file.into());
        shards[i % 2].insert(name, (t.dtype(), t.shape().to_vec(), t.data().to_vec()));
    }
    for (i, shard) in shards.iter().enumerate() {
        let views: Vec<_> = shard
            .iter()
            .map(|(n, (dt, s, b))| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(*dt, s.clone(), b).expect("view"),
                )
            })
            .collect();
        let path = d
            .path()
            .join(format!("model-0000{}-of-00002.safetensors", i + 1));
        safetensors::tensor::serialize_to_file(views, None, &path).expect("write shard");
    }
    drop(st);
    std::fs::remove_file(d.path().join("model.safetensors")).expect("remove single file");
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(
        d.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .expect("index");
    assert_eq!(logits(d.path()), want);
}

#[test]
fn scalar_weight_scales() {
    let want = logits(&model_dir("tiny-2b4t-format"));
    let d = modified_checkpoint("tiny-2b4t-format", |t, _| {
        for (name, (_, shape, _)) in t.iter_mut() {
            if name.ends_with("weight_scale") {
                shape.clear();
            }
        }
    });
    assert_eq!(logits(d.path()), want);
}

#[test]
fn untied_lm_head() {
    let want = logits(&model_dir("tiny-2b4t-format"));
    let d = modified_checkpoint("tiny-2b4t-format", |t, c| {
        let emb = t
            .get("model.embed_tokens.weight")
            .expect("embedding")
            .clone();
        t.insert("lm_head.weight".into(), emb);
        c["tie_word_embeddings"] = false.into();
    });
    assert_eq!(logits(d.path()), want);
    // Untied but no lm_head.weight: a clear error.
    let d = modified_checkpoint("tiny-2b4t-format", |_, c| {
        c["tie_word_embeddings"] = false.into();
    });
    let dev = Device::open(DeviceSpec::default().with_threads(1)).expect("open");
    let e = BitNetModel::load(d.path(), &dev, &ModelOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("lm_head.weight") && e.contains("tie_word_embeddings"),
        "{e}"
    );
}
