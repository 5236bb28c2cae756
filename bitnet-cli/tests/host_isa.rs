//! Forcing a host kernel path with `BITNET_HOST_ISA`, end to end through the `bitnet` binary:
//! every path this CPU supports gives bit-identical logits (ternary matmuls are exact integer
//! sums; the lm_head's float dot products follow one summation order on every path), and a
//! value that names no path is a clear error.

use std::process::{Command, Output};

use bitnet_tests::{Golden, model_dir};
use ttnn::device::HostIsa;

fn bitnet(isa: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bitnet"))
        .env("BITNET_HOST_ISA", isa)
        .args(args)
        .output()
        .expect("run bitnet")
}

fn isa_name(isa: HostIsa) -> &'static str {
    match isa {
        HostIsa::Scalar => "scalar",
        HostIsa::Avx2 => "avx2",
        HostIsa::Avx512Vnni => "avx512vnni",
    }
}

#[test]
fn every_supported_path_gives_the_same_logits() {
    let dir = model_dir("fullvocab-2b4t-format");
    let ids: Vec<String> = Golden::load(&dir)
        .prompt_ids()
        .iter()
        .map(u32::to_string)
        .collect();
    let ids = ids.join(",");
    let tmp = tempfile::tempdir().expect("tmp");
    let isas = HostIsa::supported_list();
    for lm_head in ["bfp8_b", "bf16", "bfp4_b"] {
        let mut first: Option<(HostIsa, Vec<u8>)> = None;
        for &isa in &isas {
            let out = tmp
                .path()
                .join(format!("{lm_head}-{}.safetensors", isa_name(isa)));
            let o = bitnet(
                isa_name(isa),
                &[
                    "logits",
                    "--model",
                    dir.to_str().expect("path"),
                    "--ids",
                    &ids,
                    "--all-positions",
                    "--lm-head-dtype",
                    lm_head,
                    "--threads",
                    "2",
                    "--out",
                    out.to_str().expect("path"),
                ],
            );
            assert!(
                o.status.success(),
                "{isa:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            let bytes = std::fs::read(&out).expect("logits file");
            match &first {
                None => first = Some((isa, bytes)),
                Some((isa0, b0)) => assert!(
                    *b0 == bytes,
                    "lm_head {lm_head}: logits differ between {isa0:?} and {isa:?}"
                ),
            }
        }
    }
}

#[test]
fn an_unknown_path_is_a_clear_error() {
    let dir = model_dir("tiny-2b4t-format");
    let o = bitnet(
        "sse9",
        &[
            "generate",
            "--model",
            dir.to_str().expect("path"),
            "--ids",
            "1,2,3",
            "--max-new-tokens",
            "2",
        ],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("BITNET_HOST_ISA") && err.contains("sse9") && err.contains("avx2"),
        "{err}"
    );
}
