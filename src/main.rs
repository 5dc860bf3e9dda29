//! The `scim2ldap` command: parses arguments, sets up logging, binds, notifies systemd and
//! forwards signals; everything else is in the library (`scim2ldap::run`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

// mimalloc: a write allocates and frees a few hundred small objects (JSON values, strings,
// SQL rows); the system allocator spent about a fifth of the daemon's instructions on them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "scim2ldap",
    version,
    about = "SCIM 2.0 provisioning into an LDAP directory"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve SCIM until SIGTERM or SIGINT; exit 78 (EX_CONFIG) when the configuration does not
    /// load or validate, 1 on other errors.
    Serve {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check the configuration and the directory (bind, base DNs, schema); exit 1 on any problem.
    Check {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Compare the directory with the cache and repair or report drift and orphans.
    ///
    /// Exit status: 0 when directory and cache agree, 2 when drift or orphans were found (and
    /// repaired, unless --dry-run or `reconcile.drift = "report"`), 1 on error.
    Reconcile {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Only show what would be done.
        #[arg(long)]
        dry_run: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Restore cached resources from the directory (entries carrying the SCIM id) instead
        /// of comparing; for a lost or new cache.
        #[arg(long, conflicts_with = "dry_run")]
        rebuild_cache: bool,
    },
    /// Bearer tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Start a throwaway local OpenLDAP and serve SCIM on it, with a fresh token.
    Demo {
        /// Address for the SCIM listener.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Also write the plaintext token to this file (mode 0600), for scripts.
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a new random 256-bit token and the `sha256:` line for the config.
    New,
}

fn main() -> ExitCode {
    // A usage error exits 1, like any other error: clap's own 2 is `reconcile`'s "differed".
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if err.use_stderr() => {
            let _ = err.print();
            return ExitCode::from(1);
        }
        Err(err) => err.exit(),
    };
    let result = match cli.command {
        Command::Serve { config } => serve(config),
        Command::Check { config } => check(config),
        Command::Reconcile {
            config,
            dry_run,
            json,
            rebuild_cache,
        } => reconcile(config, dry_run, json, rebuild_cache),
        Command::Token {
            command: TokenCommand::New,
        } => {
            let token = scim2ldap::http::new_token();
            println!("token:  {}", token.plaintext);
            println!("hash:   {}", token.hash_line);
            println!(
                "Give the token to the identity provider; keep only the hash in the config, under a \
                 name in [auth.tokens] (okta = \"{0}\") or in [auth] as bearer_tokens = [\"{0}\"].",
                token.hash_line
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { listen, token_file } => demo(&listen, token_file.as_deref()),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("scim2ldap: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The async runtime, with `worker_threads` request threads (0: one per core).
fn runtime(worker_threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if worker_threads > 0 {
        builder.worker_threads(worker_threads);
    }
    builder
        .enable_all()
        .build()
        .context("start the async runtime")
}

/// sysexits' `EX_CONFIG`: `serve`'s status when the configuration does not load or validate.
/// The unit names it in `RestartPreventExitStatus=`, so that a bad file leaves the service
/// failed instead of restarting it every few seconds; only an edit can fix it.
const EX_CONFIG: u8 = 78;

fn serve(config_path: PathBuf) -> anyhow::Result<ExitCode> {
    let config = match scim2ldap::config::load(&config_path, None) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("scim2ldap: {err}");
            return Ok(ExitCode::from(EX_CONFIG));
        }
    };
    init_tracing(&config.log);
    runtime(config.server.worker_threads)?.block_on(async move {
        let listener = scim2ldap::http::bind(config.server.listen)
            .await
            .with_context(|| format!("bind {}", config.server.listen))?;
        let control = scim2ldap::Control::new(&config).context("TLS certificate")?;
        // Installed before READY: SIGHUP's default action would end the process.
        let reloader = reload_on_sighup(control.clone(), config_path.clone())?;
        let watchdog = watchdog_task(control.clone());
        let shutdown = async {
            shutdown_signal().await;
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        };
        let result = scim2ldap::run_with(config, listener, control, shutdown, || {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        })
        .await;
        watchdog.abort();
        reloader.abort();
        result?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Re-reads the configuration on every SIGHUP: bearer tokens and the TLS certificate change in
/// place; a bad file is logged and the running configuration stays.
fn reload_on_sighup(
    control: scim2ldap::Control,
    config_path: PathBuf,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("listen for SIGHUP")?;
    Ok(tokio::spawn(async move {
        while sighup.recv().await.is_some() {
            tracing::info!("SIGHUP received: reloading tokens and TLS certificate");
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Reloading]);
            let _ = control.reload_file(&config_path);
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        }
    }))
}

/// Pings systemd's watchdog at half its interval, but only while the daemon itself is healthy
/// (the accept loop gave a sign of life within the watchdog interval and the cache has not
/// failed); otherwise systemd restarts the service once the interval passes without a ping.
/// A directory outage does not stop the pings: the daemon keeps answering 503 meanwhile.
fn watchdog_task(control: scim2ldap::Control) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut usec = 0u64;
        if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
            return;
        }
        let timeout = std::time::Duration::from_micros(usec);
        let mut was_healthy = true;
        loop {
            tokio::time::sleep(timeout / 2).await;
            match control.health(timeout) {
                Ok(()) => {
                    if !was_healthy {
                        tracing::info!("healthy again; watchdog pings resume");
                    }
                    was_healthy = true;
                    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
                }
                Err(reason) => {
                    if was_healthy {
                        tracing::error!(reason, "unhealthy; withholding watchdog pings");
                    }
                    was_healthy = false;
                }
            }
        }
    })
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let mut sigterm = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    {
        Ok(signal) => signal,
        Err(err) => {
            tracing::error!(error = %err, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

fn check(config_path: PathBuf) -> anyhow::Result<ExitCode> {
    let config = match scim2ldap::config::load(&config_path, None) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{err}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let problems =
        runtime(config.server.worker_threads)?.block_on(scim2ldap::check::check_directory(&config));
    if problems.is_empty() {
        println!(
            "ok: configuration valid, directory reachable, bind works, base DNs and schema present"
        );
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{} problem(s):", problems.len());
        for problem in problems {
            eprintln!("  - {problem}");
        }
        Ok(ExitCode::FAILURE)
    }
}

fn reconcile(
    config_path: PathBuf,
    dry_run: bool,
    json: bool,
    rebuild_cache: bool,
) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal;
    let config = std::sync::Arc::new(scim2ldap::config::load(&config_path, None)?);
    // The report is the output; logs only say what went wrong.
    init_tracing(&scim2ldap::config::LogConfig {
        format: config.log.format,
        level: "warn".to_string(),
    });
    runtime(0)?.block_on(async move {
        // A repairing run holds the cache lock, so it never runs beside the daemon; a dry run
        // only reads and may.
        let _lock = if dry_run {
            None
        } else {
            Some(scim2ldap::lock_cache(&config.cache.path).context(
                "the daemon reconciles at start-up and every reconcile.interval; use --dry-run while it runs",
            )?)
        };
        let service = if dry_run {
            scim2ldap::open_service_existing(config.clone())?
        } else {
            scim2ldap::open_service(config.clone())?
        };
        if !dry_run {
            scim2ldap::service::replay_intents(&service)
                .await
                .context("finish unfinished writes")?;
        }
        let bar = (!json && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_message("entries scanned");
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            bar
        });
        let progress = |scanned: u64| {
            if let Some(bar) = &bar {
                bar.set_position(scanned);
            }
        };
        if rebuild_cache {
            let rebuilt = scim2ldap::reconcile::rebuild_cache(&service, config.reconcile.page_size, &progress).await?;
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            if json {
                println!(
                    "{}",
                    serde_json::json!({"users": rebuilt.users, "groups": rebuilt.groups, "memberships": rebuilt.memberships, "skipped": rebuilt.skipped})
                );
            } else {
                println!(
                    "restored {} users, {} groups, {} memberships; {} entries without a SCIM id skipped",
                    rebuilt.users, rebuilt.groups, rebuilt.memberships, rebuilt.skipped
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        let options = scim2ldap::reconcile::RunOptions {
            dry_run,
            drift: config.reconcile.drift,
            orphans: config.reconcile.orphans,
            page_size: config.reconcile.page_size,
        };
        let report = scim2ldap::reconcile::run(&service, options, &progress).await?;
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        if json {
            println!("{}", report.to_json());
        } else {
            print!("{}", report.to_table());
        }
        Ok(if report.found_drift() {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        })
    })
}

fn demo(listen: &str, token_file: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    init_tracing(&scim2ldap::config::LogConfig {
        format: scim2ldap::config::LogFormat::Text,
        level: "info".to_string(),
    });
    let listen: std::net::SocketAddr = listen.parse().context("--listen must be address:port")?;
    runtime(2)?.block_on(scim2ldap::demo::run(listen, token_file, shutdown_signal()))?;
    Ok(ExitCode::SUCCESS)
}

/// Logs to stderr: human-readable (colored on a terminal), JSON when configured or when stderr
/// is the journal (systemd sets `JOURNAL_STREAM` to the device and inode of that stream; a
/// child that inherited the variable but writes elsewhere keeps text).
fn init_tracing(log: &scim2ldap::config::LogConfig) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&log.level));
    let journal = stderr_is_journal();
    if log.format == scim2ldap::config::LogFormat::Json || journal {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        let layer = scim2ldap::logjson::JsonLayer::new(std::io::stderr);
        let layer = if journal {
            layer.with_syslog_prefix()
        } else {
            layer
        };
        tracing_subscriber::registry()
            .with(filter)
            .with(layer)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .init();
    }
}

/// True when stderr is the stream `JOURNAL_STREAM` names (`<device>:<inode>`).
fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((device, inode)) = stream.to_str().and_then(|text| text.split_once(':')) else {
        return false;
    };
    let (Ok(device), Ok(inode)) = (device.parse::<u64>(), inode.parse::<u64>()) else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    std::fs::File::from(fd)
        .metadata()
        .is_ok_and(|meta| meta.dev() == device && meta.ino() == inode)
}
