//! `cargo xtask`: project automation that needs nothing beyond cargo (and pip for test data).
//! Tasks arrive with the issues that need them (`bindgen`, `synth-model`, `test-hw`).

mod bindgen;
mod hw;
mod synth;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "bitnet-tt-rs project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Option<Task>,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Run the checks CI runs: fmt, clippy, then `test`.
    Ci,
    /// Fetch the test data that cannot be committed (the Llama 3 tokenizer, and the `openai`
    /// Python client in a venv, with pip) into `.cache/test-data` (or $BITNET_TEST_DATA);
    /// cached, so offline after the first time.
    FetchTestData,
    /// Fetch the test data, then run `cargo test --workspace` with any extra arguments.
    Test {
        /// Passed on to `cargo test --workspace` as they are (e.g. `-- --nocapture`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Regenerate ttnn-sys/src/bindings.rs from ttnn-sys/csrc/ttnn_c.h (--check: fail if stale).
    Bindgen {
        #[arg(long)]
        check: bool,
    },
    /// Write a random BitNet checkpoint of a given shape (packed offline autobitlinear format).
    SynthModel {
        /// 2b4t (BitNet b1.58 2B-4T), 2b4t-4l (its widths, 4 layers), small, tiny.
        #[arg(long, default_value = "2b4t")]
        shape: String,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// On a machine with a Tenstorrent card and TT_METAL_HOME: build the TT-NN shim, run the
    /// device test suite on the card, then `bitnet bench --device tt`. Elsewhere it says what
    /// is missing and fails.
    TestHw(hw::TestHwArgs),
}

fn workspace_root() -> PathBuf {
    // xtask/ sits in the workspace root.
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("$ {cmd:?}");
    let status = cmd.status()?;
    anyhow::ensure!(status.success(), "{cmd:?} failed with {status}");
    Ok(())
}

/// What the tests need from outside the repository.
struct TestData {
    /// The Llama 3 `tokenizer.json`.
    tokenizer: PathBuf,
    /// The python of the venv with the `openai` client.
    openai_python: PathBuf,
}

/// Runs the fetch scripts; returns the paths they print.
fn fetch_test_data() -> anyhow::Result<TestData> {
    Ok(TestData {
        tokenizer: run_path_script("scripts/fetch-test-data.sh")?,
        openai_python: run_path_script("scripts/openai-venv.sh")?,
    })
}

/// Runs a script that prints a path as its last line of stdout; returns that path.
fn run_path_script(relative: &str) -> anyhow::Result<PathBuf> {
    let script = workspace_root().join(relative);
    let mut cmd = Command::new("bash");
    cmd.arg(&script)
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    eprintln!("$ {cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "{} failed with {}",
        script.display(),
        out.status
    );
    let stdout = String::from_utf8(out.stdout).context("the script printed a non-UTF-8 path")?;
    let path = stdout
        .lines()
        .last()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .context("the script printed no path")?;
    Ok(PathBuf::from(path))
}

/// The arguments after the task name, verbatim. clap would drop a leading `--` (its escape), and
/// `cargo xtask test -- --nocapture` must reach `cargo test` with it.
fn passthrough_args(argv: &[OsString], task: &str) -> Vec<OsString> {
    match argv.iter().position(|a| a == task) {
        Some(i) => argv[i + 1..].to_vec(),
        None => Vec::new(),
    }
}

fn test(args: &[OsString]) -> anyhow::Result<()> {
    let data = fetch_test_data()?;
    // Tell the tests exactly where the data is, whatever $BITNET_TEST_DATA said.
    run(cargo()
        .args(["test", "--workspace"])
        .args(args)
        .env("BITNET_TEST_TOKENIZER", data.tokenizer)
        .env("BITNET_TEST_OPENAI_PYTHON", data.openai_python))
}

fn main() -> anyhow::Result<()> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let cli = Cli::parse_from(&argv);
    match cli.task {
        None => {
            eprintln!(
                "tasks: ci, fetch-test-data, test, bindgen, synth-model, test-hw   (cargo xtask --help for details)"
            );
            Ok(())
        }
        Some(Task::Ci) => {
            run(cargo().args(["fmt", "--all", "--check"]))?;
            run(cargo().args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))?;
            test(&[])
        }
        Some(Task::FetchTestData) => {
            let data = fetch_test_data()?;
            println!("{}", data.tokenizer.display());
            println!("{}", data.openai_python.display());
            Ok(())
        }
        // `args` is parsed only for `--help`; the verbatim tail keeps a leading `--`.
        Some(Task::Test { args: _ }) => test(&passthrough_args(&argv, "test")),
        Some(Task::Bindgen { check }) => bindgen::run(check),
        Some(Task::SynthModel { shape, out, seed }) => {
            synth::synth_model(&synth::ModelShape::named(&shape)?, &out, seed)
        }
        Some(Task::TestHw(a)) => hw::test_hw(&a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_args(argv: &[&str]) -> Vec<OsString> {
        let argv: Vec<OsString> = argv.iter().map(OsString::from).collect();
        let cli = Cli::try_parse_from(&argv).unwrap();
        assert!(matches!(cli.task, Some(Task::Test { .. })));
        passthrough_args(&argv, "test")
    }

    #[test]
    fn test_passes_arguments_through() {
        assert!(test_args(&["xtask", "test"]).is_empty());
        assert_eq!(
            test_args(&["xtask", "test", "-p", "bitnet-runtime", "--", "--nocapture"]),
            ["-p", "bitnet-runtime", "--", "--nocapture"]
        );
        assert_eq!(
            test_args(&["xtask", "test", "--", "--nocapture"]),
            ["--", "--nocapture"]
        );
        assert_eq!(test_args(&["xtask", "test", "--", "test"]), ["--", "test"]);
    }
}
