//! Command-line arguments.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "ferry", version, about = "A pull-through caching OCI registry")]
pub struct Args {
    /// Log format.
    #[arg(long, global = true, env = "FERRY_LOG_FORMAT", default_value = "human")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the registry cache (on the built-in config unless --config is given).
    Serve {
        /// TOML configuration file. FERRY_* environment variables override it.
        #[arg(long, env = "FERRY_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration file and print what Ferry understood.
    Check {
        /// The file to check ("-" for the built-in default).
        file: PathBuf,
    },
}
