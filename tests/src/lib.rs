//! Workspace-level integration tests (in `tests/`): golden tests against the HF oracle and CLI
//! end-to-end tests. This library holds what those tests share: fixture paths, golden files,
//! and logit comparisons with the oracle's tolerances.

use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use ttnn::{BackendKind, Device, DeviceSpec};

/// `tests/fixtures/` of this workspace.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// A fixture checkpoint directory by name (`tiny-2b4t-format`, ...).
pub fn model_dir(name: &str) -> PathBuf {
    fixtures_dir().join(name)
}

/// A float32 or int64 tensor from a golden file.
#[derive(Clone, Debug)]
pub struct GoldenTensor {
    pub shape: Vec<usize>,
    pub values: Vec<f64>,
}

impl GoldenTensor {
    /// Row `i` of a 2-D tensor.
    pub fn row(&self, i: usize) -> &[f64] {
        let w = *self.shape.last().unwrap_or(&1);
        &self.values[i * w..(i + 1) * w]
    }
}

/// `golden.json` and `golden.safetensors` of a fixture.
#[derive(Debug)]
pub struct Golden {
    pub json: serde_json::Value,
    bytes: Vec<u8>,
}

impl Golden {
    pub fn load(dir: &Path) -> Self {
        let json = std::fs::read_to_string(dir.join("golden.json")).expect("golden.json");
        let bytes = std::fs::read(dir.join("golden.safetensors")).expect("golden.safetensors");
        Self {
            json: serde_json::from_str(&json).expect("golden.json parses"),
            bytes,
        }
    }

    /// Tensor `name` (e.g. `fp32.prompt_logits`), converted to f64.
    pub fn tensor(&self, name: &str) -> GoldenTensor {
        let st = SafeTensors::deserialize(&self.bytes).expect("golden.safetensors parses");
        let t = st
            .tensor(name)
            .unwrap_or_else(|e| panic!("golden tensor {name}: {e}"));
        let d = t.data();
        let values = match t.dtype() {
            Dtype::F32 => d
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
                .collect(),
            Dtype::I64 => d
                .chunks_exact(8)
                .map(|b| {
                    i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f64
                })
                .collect(),
            other => panic!("golden tensor {name}: unexpected dtype {other:?}"),
        };
        GoldenTensor {
            shape: t.shape().to_vec(),
            values,
        }
    }

    /// The prompt ids.
    pub fn prompt_ids(&self) -> Vec<u32> {
        ids(&self.json["prompt_ids"])
    }

    /// Greedy ids of run `run` (`fp32` or `bf16`).
    pub fn greedy(&self, run: &str) -> Vec<u32> {
        ids(&self.json["runs"][run]["greedy"])
    }

    /// top1 - top2 margins of the greedy steps of run `run`.
    pub fn greedy_margins(&self, run: &str) -> Vec<f64> {
        self.json["runs"][run]["greedy_margins"]
            .as_array()
            .expect("greedy_margins")
            .iter()
            .map(|v| v.as_f64().expect("margin"))
            .collect()
    }
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("id list")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

/// |Δ| statistics of one comparison.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DiffStats {
    pub median: f64,
    pub max: f64,
    /// Index of the largest difference.
    pub argmax: usize,
}

/// Median and max of |got - want|.
pub fn diff_stats(got: &[f32], want: &[f64]) -> DiffStats {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let mut d: Vec<f64> = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w).abs())
        .collect();
    let (argmax, max) = d
        .iter()
        .copied()
        .enumerate()
        .fold((0, 0f64), |a, (i, v)| if v > a.1 { (i, v) } else { a });
    d.sort_by(|a, b| a.total_cmp(b));
    DiffStats {
        median: d.get(d.len() / 2).copied().unwrap_or(0.0),
        max,
        argmax,
    }
}

/// Index of the largest value (first on ties).
pub fn argmax<T: Copy + PartialOrd>(v: &[T]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

/// top1 - top2 of a row.
pub fn margin(v: &[f64]) -> f64 {
    let mut a = f64::NEG_INFINITY;
    let mut b = f64::NEG_INFINITY;
    for &x in v {
        if x > a {
            b = a;
            a = x;
        } else if x > b {
            b = x;
        }
    }
    a - b
}

/// A checkpoint's tensors as plain data, for writing modified copies in tests.
pub type TensorMap = std::collections::BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>;

/// Copies the fixture `name` into a fresh temporary directory, letting `edit` change its
/// tensors and `config.json` first. Returns the directory (removed when dropped).
pub fn modified_checkpoint(
    name: &str,
    edit: impl FnOnce(&mut TensorMap, &mut serde_json::Value),
) -> tempfile::TempDir {
    let src = model_dir(name);
    let bytes = std::fs::read(src.join("model.safetensors")).expect("read model");
    let st = SafeTensors::deserialize(&bytes).expect("parse model");
    let mut tensors: TensorMap = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, (t.dtype(), t.shape().to_vec(), t.data().to_vec())))
        .collect();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).expect("config"))
            .expect("json");
    edit(&mut tensors, &mut config);
    let dir = tempfile::tempdir().expect("temp dir");
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, (d, s, b))| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).expect("view"),
            )
        })
        .collect();
    safetensors::tensor::serialize_to_file(views, None, &dir.path().join("model.safetensors"))
        .expect("write model");
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_string_pretty(&config).expect("json"),
    )
    .expect("write config");
    dir
}

/// The Llama 3 test tokenizer fetched by `cargo xtask fetch-test-data` (never committed:
/// licence): `$BITNET_TEST_TOKENIZER`, else
/// `${BITNET_TEST_DATA:-<workspace>/.cache/test-data}/llama3/tokenizer.json`. Panics with what
/// to run when it is missing, so tests that need it fail rather than skip.
pub fn test_tokenizer_path() -> PathBuf {
    let path = match std::env::var_os("BITNET_TEST_TOKENIZER") {
        Some(p) => PathBuf::from(p),
        None => std::env::var_os("BITNET_TEST_DATA")
            .map(PathBuf::from)
            .unwrap_or_else(|| fixtures_dir().join("../../.cache/test-data"))
            .join("llama3/tokenizer.json"),
    };
    assert!(
        path.is_file(),
        "the Llama 3 test tokenizer is missing at {}: run `cargo xtask fetch-test-data` (or `cargo xtask test`), \
         or set BITNET_TEST_TOKENIZER",
        path.display()
    );
    path
}

/// The python of the virtual environment with the official `openai` client that
/// `cargo xtask fetch-test-data` sets up (`scripts/openai-venv.sh`): `$BITNET_TEST_OPENAI_PYTHON`,
/// else `${BITNET_TEST_DATA:-<workspace>/.cache/test-data}/openai-venv/bin/python`. Panics with
/// what to run when it is missing, so the test that needs it fails rather than skips.
pub fn openai_python_path() -> PathBuf {
    let path = match std::env::var_os("BITNET_TEST_OPENAI_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => std::env::var_os("BITNET_TEST_DATA")
            .map(PathBuf::from)
            .unwrap_or_else(|| fixtures_dir().join("../../.cache/test-data"))
            .join("openai-venv/bin/python"),
    };
    assert!(
        path.is_file(),
        "the openai Python client is missing at {}: run `cargo xtask fetch-test-data` (or `cargo xtask test`, \
         or scripts/openai-venv.sh), or set BITNET_TEST_OPENAI_PYTHON",
        path.display()
    );
    path
}

/// `scripts/` of this workspace.
pub fn scripts_dir() -> PathBuf {
    fixtures_dir().join("../../scripts")
}

/// The host-backed TT-NN C ABI provider (`libttnn_c_host.so`) next to the running test binary
/// (`target/<profile>/deps/`, where cargo builds it for this package, whose dev-dependency it
/// is) or in its parent (`target/<profile>/`, where `cargo build -p ttnn-c-host` puts it).
/// Panics with the paths looked at and the command that builds it.
pub fn provider_lib() -> PathBuf {
    const LIB: &str = "libttnn_c_host.so";
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("the test binary has a directory");
    let tried: Vec<PathBuf> = [Some(dir), dir.parent()]
        .into_iter()
        .flatten()
        .map(|d| d.join(LIB))
        .collect();
    match tried.iter().find(|p| p.is_file()) {
        Some(p) => p.clone(),
        None => panic!(
            "the host-backed TT-NN C ABI provider {LIB} is missing (looked at {}); build it with `cargo build -p ttnn-c-host` (same profile and target dir as the tests)",
            tried
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A Tenstorrent-backend device over the host-backed provider.
pub fn provider_device() -> Device {
    Device::open(
        DeviceSpec::default()
            .with_backend(BackendKind::Tenstorrent)
            .with_ttnn_lib(provider_lib()),
    )
    .expect("open the provider as a Tenstorrent device")
}

/// The device the device test suite (`tests/tests/device.rs`) runs on, from `BITNET_DEVICE`:
/// - unset or `provider`: the Tenstorrent backend over the host-backed provider of the TT-NN C
///   ABI ([`provider_lib`]): how CI runs the suite;
/// - `tt`: the Tenstorrent backend over the real shim, found as `Device::open` finds it
///   (`TTNN_C_LIB`, next to the test binary, under `TT_METAL_HOME`): how `cargo xtask test-hw`
///   runs it on a card;
/// - `host`: the host backend.
pub fn device_under_test() -> Device {
    match std::env::var("BITNET_DEVICE").as_deref() {
        Ok("provider") | Err(_) => provider_device(),
        Ok("tt") => Device::open(DeviceSpec::default().with_backend(BackendKind::Tenstorrent))
            .unwrap_or_else(|e| panic!("BITNET_DEVICE=tt: {e}")),
        Ok("host") => {
            Device::open(DeviceSpec::default().with_threads(2)).expect("open host device")
        }
        Ok(other) => panic!("BITNET_DEVICE={other}: expected provider, tt or host"),
    }
}

/// Pearson correlation of two equally long series (tt_transformers' PCC); 1 for two constant
/// series that are equal.
pub fn pcc(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let n = a.len() as f64;
    let ma = a.iter().map(|&x| x as f64).sum::<f64>() / n;
    let mb = b.iter().sum::<f64>() / n;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (dx, dy) = (x as f64 - ma, y - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    if saa == 0.0 || sbb == 0.0 {
        return if saa == sbb && ma == mb { 1.0 } else { 0.0 };
    }
    sab / (saa.sqrt() * sbb.sqrt())
}
