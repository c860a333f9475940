use anyhow::Context;
use clap::Parser;

use tidegate::cli::{Cli, Command};

#[global_allocator]
static ALLOCATOR: tidegate::allocator::Allocator = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    tidegate::allocator::tune();
    match Cli::parse().command {
        Command::Serve(args) => {
            let config = args.load().context("invalid configuration")?;
            // Built after the config is read: how many threads depends on it.
            let workers = config.worker_threads();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            // Dropped before the runtime: the last spans are sent on it.
            let _traces = tidegate::telemetry::init_logging(&config.log, &config.trace, runtime.handle())
                .context("setting up traces")?;
            tracing::info!(worker_threads = workers, "runtime started");
            runtime.block_on(tidegate::gateway::serve(config))?;
        }
        Command::Config { defaults: false } => print!("{}", tidegate::config::table()),
        Command::Config { defaults: true } => {
            print!("{}", serde_norway::to_string(&tidegate::config::Config::default())?);
        }
        Command::Capacity { incidents, storm_scopes, sources } => {
            print!("{}", tidegate::capacity::Load { incidents, storm_scopes, sources }.plan());
        }
        Command::Crd => print!("{}", tidegate::silence::resource::crds_yaml()?),
        Command::Silence(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            print!("{}", runtime.block_on(tidegate::cli::silence::run(args.action, jiff::Timestamp::now()))?);
        }
        Command::Doctor(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let report = runtime.block_on(args.examine());
            print!("{report}");
            if report.failed() {
                std::process::exit(1);
            }
        }
    }
    Ok(())
}
