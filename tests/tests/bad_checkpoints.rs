//! Broken checkpoints fail to load with a message naming the tensor or field at fault.

use bitnet_layers::{BitNetModel, ModelOptions, PlanOptions};
use bitnet_tests::{model_dir, modified_checkpoint};
use safetensors::Dtype;
use ttnn::{DataType, Device, DeviceSpec};

fn try_load(dir: &std::path::Path) -> String {
    let dev = Device::open(DeviceSpec::default().with_threads(1)).expect("open");
    let opts = ModelOptions {
        plan: PlanOptions {
            lm_head: DataType::Bfloat16,
            max_batch: 1,
            ..Default::default()
        },
        max_seq_len: Some(64),
    };
    match BitNetModel::load(dir, &dev, &opts) {
        Ok(_) => panic!("{} loaded, but it is broken", dir.display()),
        Err(e) => e.to_string(),
    }
}

const Q: &str = "model.layers.1.self_attn.q_proj.weight";

#[test]
fn the_fixture_itself_loads() {
    let dev = Device::open(DeviceSpec::default().with_threads(1)).expect("open");
    BitNetModel::load(
        &model_dir("tiny-2b4t-format"),
        &dev,
        &ModelOptions::default(),
    )
    .expect("load");
}

#[test]
fn missing_tensor() {
    let d = modified_checkpoint("tiny-2b4t-format", |t, _| {
        t.remove(Q);
    });
    let e = try_load(d.path());
    assert!(e.contains("missing tensor") && e.contains(Q), "{e}");
}

#[test]
fn wrong_shape() {
    let d = modified_checkpoint("tiny-2b4t-format", |t, _| {
        let (_, shape, bytes) = t.get_mut(Q).expect("q_proj");
        // [64, 256] -> [32, 256]: half the packed rows.
        shape[0] /= 2;
        bytes.truncate(bytes.len() / 2);
    });
    let e = try_load(d.path());
    assert!(
        e.contains(Q) && e.contains("expected shape [64, 256]") && e.contains("[32, 256]"),
        "{e}"
    );
}

#[test]
fn wrong_dtype() {
    let d = modified_checkpoint("tiny-2b4t-format", |t, _| {
        let (dtype, _, bytes) = t.get_mut(Q).expect("q_proj");
        *dtype = Dtype::I8;
        let _ = bytes;
    });
    let e = try_load(d.path());
    assert!(
        e.contains(Q) && e.contains("expected dtype U8") && e.contains("I8"),
        "{e}"
    );
    let d = modified_checkpoint("tiny-2b4t-format", |t, _| {
        let (dtype, _, _) = t.get_mut("model.norm.weight").expect("norm");
        *dtype = Dtype::I16;
    });
    let e = try_load(d.path());
    assert!(
        e.contains("model.norm.weight") && e.contains("expected dtype"),
        "{e}"
    );
}

#[test]
fn truncated_file() {
    let d = modified_checkpoint("tiny-2b4t-format", |_, _| {});
    let f = d.path().join("model.safetensors");
    let len = std::fs::metadata(&f).expect("meta").len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .expect("open");
    file.set_len(len - 1000).expect("truncate");
    let e = try_load(d.path());
    assert!(
        e.contains("model.safetensors") && e.contains("not a valid safetensors file"),
        "{e}"
    );
}

#[test]
fn unknown_linear_class() {
    let d = modified_checkpoint("tiny-2b4t-format", |_, c| {
        c["quantization_config"]["linear_class"] = "superlinear".into();
    });
    let e = try_load(d.path());
    assert!(
        e.contains("quantization_config.linear_class") && e.contains("superlinear"),
        "{e}"
    );
}

#[test]
fn config_tensor_mismatch() {
    // The config claims a wider MLP than the tensors hold.
    let d = modified_checkpoint("tiny-2b4t-format", |_, c| {
        c["intermediate_size"] = 768.into();
    });
    let e = try_load(d.path());
    assert!(
        e.contains("model.layers.0.mlp.gate_proj.weight")
            && e.contains("expected shape [192, 256]"),
        "{e}"
    );
    // Online mode but packed weights.
    let d = modified_checkpoint("tiny-2b4t-format", |_, c| {
        c["quantization_config"]["quantization_mode"] = "online".into();
    });
    let e = try_load(d.path());
    assert!(
        e.contains("quantization_mode online") && e.contains("U8"),
        "{e}"
    );
}

#[test]
fn vocabulary_embedding_mismatch() {
    let d = modified_checkpoint("tiny-2b4t-format", |_, c| {
        c["vocab_size"] = 4096.into();
    });
    let e = try_load(d.path());
    assert!(
        e.contains("vocab_size")
            && e.contains("model.embed_tokens.weight")
            && e.contains("[4000, 256]"),
        "{e}"
    );
}

/// Layers load on several threads; the error is still the lowest-numbered failing layer's.
#[test]
fn two_broken_layers_report_the_first() {
    let d = modified_checkpoint("tiny-2b4t-format", |t, _| {
        t.get_mut(Q).expect("q_proj").2[5] = 0xff;
        let s = &mut t
            .get_mut("model.layers.0.mlp.up_proj.weight_scale")
            .expect("scale")
            .2;
        s.copy_from_slice(&half::bf16::NAN.to_le_bytes());
    });
    for _ in 0..3 {
        let e = try_load(d.path());
        assert!(e.contains("model.layers.0.mlp.up_proj.weight_scale"), "{e}");
    }
}

#[test]
fn bad_ternary_code_and_scale() {
    let d = modified_checkpoint("tiny-2b4t-format", |t, _| {
        t.get_mut(Q).expect("q_proj").2[5] = 0xff;
    });
    let e = try_load(d.path());
    assert!(e.contains(Q) && e.contains("code 3"), "{e}");
    let d = modified_checkpoint("tiny-2b4t-format", |t, _| {
        let s = &mut t
            .get_mut("model.layers.0.mlp.up_proj.weight_scale")
            .expect("scale")
            .2;
        s.copy_from_slice(&half::bf16::NAN.to_le_bytes());
    });
    let e = try_load(d.path());
    assert!(
        e.contains("up_proj.weight_scale") && e.contains("finite"),
        "{e}"
    );
}
