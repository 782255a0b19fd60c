//! `arrayjob-operator`: the Kubernetes side of arrayjob.

use clap::{Parser, Subcommand};

/// The arrayjob Kubernetes operator.
#[derive(Debug, Parser)]
#[command(name = "arrayjob-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the ArrayJob CustomResourceDefinition as YAML (committed as crds/arrayjob.yaml).
    Crd,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => {
            print!("{}", arrayjob_operator::crd_yaml()?);
            Ok(())
        }
    }
}
