//! The `ferry` binary: parse arguments, set up logging, load the config, run.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use ferry::cli::{Args, Command, ConfigCommand, LogFormat};
use ferry::config::Config;

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("FERRY_"))
        .collect();
    match args.command {
        Command::Config {
            command: ConfigCommand::Check { file },
        } => {
            let path = (file.as_os_str() != "-").then_some(file.as_path());
            let config = Config::load(path, &env)?;
            print!("configuration is valid\n{}", config.describe());
            Ok(())
        }
        Command::Serve { config } => {
            let config = Config::load(config.as_deref(), &env)?;
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(ferry::serve(config, ferry::shutdown_signal()))?;
            Ok(())
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("FERRY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}
