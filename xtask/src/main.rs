//! `cargo xtask`: project automation that needs nothing beyond cargo. Tasks arrive with the
//! issues that need them (`bindgen`, `synth-model`, `test-hw`).

mod bindgen;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "bitnet-tt-rs project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Option<Task>,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Run the checks CI runs: fmt, clippy, tests.
    Ci,
    /// Regenerate ttnn-sys/src/bindings.rs from ttnn-sys/csrc/ttnn_c.h (--check: fail if stale).
    Bindgen {
        #[arg(long)]
        check: bool,
    },
}

fn cargo() -> std::process::Command {
    std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn run(cmd: &mut std::process::Command) -> anyhow::Result<()> {
    eprintln!("$ {cmd:?}");
    let status = cmd.status()?;
    anyhow::ensure!(status.success(), "{cmd:?} failed with {status}");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.task {
        None => {
            eprintln!("tasks: ci   (cargo xtask --help for details)");
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
            run(cargo().args(["test", "--workspace"]))
        }
        Some(Task::Bindgen { check }) => bindgen::run(check),
    }
}
