//! `bitnet`: the command-line front end. Each subcommand turns validated arguments into library
//! objects and calls them; generation, tokenization, caching and scheduling live in the
//! libraries.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "bitnet",
    version,
    about = "BitNet b1.58 inference on Tenstorrent hardware (TT-NN) or the host CPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Describe the devices this build can open (the host backend models a Tenstorrent chip).
    Devices,
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Devices => {
            for chip in [
                ttnn::ChipSpec::wormhole_n150(),
                ttnn::ChipSpec::blackhole_p150a(),
            ] {
                println!(
                    "host backend modelling {}: grid {}x{}, L1 {} KiB/core, DRAM {} GiB in {} banks",
                    chip.name,
                    chip.grid.x,
                    chip.grid.y,
                    chip.l1_size_per_core / 1024,
                    chip.dram_size >> 30,
                    chip.dram_banks
                );
            }
            println!(
                "host threads: {} (one per physical core)",
                ttnn::physical_cores()
            );
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
