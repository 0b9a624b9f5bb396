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
            // A pin no upstream serves would only fail at its first refresh: say so now,
            // routed as a pull of it is.
            for image in config.pins.iter().flat_map(|p| &p.images) {
                ferry::proxy::route_offline(&config, image).map_err(|e| {
                    anyhow::anyhow!("{}: [[pin]] image `{image}`: {e}", file.display())
                })?;
            }
            print!("configuration is valid\n{}", config.describe());
            Ok(())
        }
        Command::Serve { config: path } => {
            let config = Config::load(path.as_deref(), &env)?;
            // Before any listener: the connection bound is derived from the limit.
            match ferry::server::connections::raise_descriptor_limit() {
                Ok(limit) => tracing::debug!(limit, "open-file limit"),
                Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
            }
            let runtime = tokio::runtime::Runtime::new()?;
            let served = runtime.block_on(async {
                let source = path.map(|path| ferry::server::signals::ConfigSource { path, env });
                let controls = ferry::server::signals::Controls::from_signals(source)?;
                ferry::serve(config, controls).await
            });
            // Blocking work still running after the drain (a startup store check on a
            // large store) is not waited for: the index is flushed, what such work
            // leaves is what a crash would, and the store recovers from that at open.
            runtime.shutdown_timeout(std::time::Duration::from_secs(5));
            served?;
            Ok(())
        }
        Command::Export {
            config,
            output,
            since,
            sign,
            images,
        } => {
            let config = Config::load(config.as_deref(), &env)?;
            let opts = ferry::ops::bundle::ExportOptions {
                images,
                output,
                since,
                sign,
            };
            print!("{}", ferry::ops::bundle::export(&config, &opts)?);
            Ok(())
        }
        Command::Import {
            config,
            bundle,
            from_dir,
            trust,
            name,
        } => {
            let config = Config::load(config.as_deref(), &env)?;
            let opts = ferry::ops::bundle::ImportOptions {
                from_dir: from_dir.is_some(),
                bundle: from_dir.or(bundle).expect("clap requires one of them"),
                trust,
                name,
            };
            print!("{}", ferry::ops::bundle::import(&config, &opts)?);
            Ok(())
        }
        Command::Prefetch {
            server,
            config,
            platform,
            file,
            mut images,
        } => {
            if let Some(file) = file {
                let text = std::fs::read_to_string(&file)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
                for line in text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                {
                    images.push(
                        line.parse()
                            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?,
                    );
                }
            }
            anyhow::ensure!(!images.is_empty(), "name at least one image (or --file)");
            let runtime = tokio::runtime::Runtime::new()?;
            let pulled = runtime.block_on(async {
                match server {
                    Some(url) => {
                        let p = ferry::ops::prefetch::Prefetcher::new(url, true);
                        ferry::ops::prefetch::pull_all(&p, &images, platform.as_ref()).await
                    }
                    None => {
                        let config = Config::load(config.as_deref(), &env)?;
                        ferry::prefetch_in_process(config, &images, platform.as_ref()).await
                    }
                }
                .map_err(anyhow::Error::from)
            })?;
            for p in pulled {
                println!(
                    "{}: {} manifests, {} blobs, {} bytes in {:.1}s",
                    p.image,
                    p.manifests,
                    p.blobs,
                    p.bytes,
                    p.elapsed.as_secs_f64()
                );
            }
            Ok(())
        }
        Command::Status {
            server,
            config,
            json,
        } => {
            let runtime = tokio::runtime::Runtime::new()?;
            let status = runtime.block_on(async {
                match (server, config) {
                    (Some(url), _) => ferry::ops::status::ask(&url).await,
                    (None, Some(path)) => {
                        let config = Config::load(Some(&path), &env)?;
                        ferry::ops::status::of_config(&config).await
                    }
                    (None, None) => {
                        let url = ferry::ops::status::DEFAULT_SERVER.parse()?;
                        ferry::ops::status::ask(&url).await
                    }
                }
                .map_err(anyhow::Error::from)
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status.render());
            }
            Ok(())
        }
        Command::Keygen { output } => {
            let (private, public) = ferry::ops::bundle::keygen(&output)?;
            println!(
                "wrote {} (private: keep it where bundles are made) and {} (public: give it to importing sites)",
                private.display(),
                public.display()
            );
            Ok(())
        }
        Command::Fsck {
            config,
            repair,
            shared: false,
            ..
        } => {
            let config = Config::load(config.as_deref(), &env)?;
            ferry::ops::maintenance::fsck(&config.storage_root, repair)?;
            Ok(())
        }
        Command::Fsck {
            config,
            shared: true,
            sizes_only,
            ..
        } => {
            let config = Config::load(config.as_deref(), &env)?;
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(ferry::ops::maintenance::fsck_shared(
                config.shared.as_ref(),
                !sizes_only,
            ))?;
            Ok(())
        }
        Command::NodeConfig {
            config,
            mirror,
            write,
            fallback,
            format,
            ca,
        } => {
            // Nodes need only the upstreams and rules, not the files Ferry's secrets are in.
            let config = Config::load_without_files(config.as_deref(), &env)?;
            let opts = ferry::ops::nodeconfig::Options {
                mirror,
                fallback,
                ca,
            };
            let files = ferry::ops::nodeconfig::render(&config, format, &opts)?;
            match write {
                Some(dir) => {
                    for change in ferry::ops::nodeconfig::write(&dir, format, &files)? {
                        println!("{change}");
                    }
                }
                None => print!("{}", ferry::ops::nodeconfig::to_text(&files)),
            }
            Ok(())
        }
        Command::Gc { shared: true, .. } => {
            Err(ferry::ops::maintenance::MaintenanceError::SharedGc.into())
        }
        Command::Gc { config, grace, .. } => {
            let config = Config::load(config.as_deref(), &env)?;
            ferry::ops::maintenance::gc(&config.storage_root, grace)?;
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
