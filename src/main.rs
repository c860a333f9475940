use anyhow::Context;
use clap::Parser;
use kube::CustomResourceExt;

use tidegate::cli::{Cli, Command};
use tidegate::remediation::RemediationRequest;

#[global_allocator]
static ALLOCATOR: tidegate::allocator::Allocator = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tidegate::allocator::tune();
    match Cli::parse().command {
        Command::Serve(args) => {
            let config = args.load().context("invalid configuration")?;
            tidegate::telemetry::init_logging(&config.log);
            tidegate::gateway::serve(config).await?;
        }
        Command::Crd => {
            print!("{}", serde_norway::to_string(&RemediationRequest::crd())?);
        }
    }
    Ok(())
}
