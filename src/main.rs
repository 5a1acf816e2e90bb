//! The `pinhole` command: run the server, check the configuration, explain a decision.
//! This is the binary's edge: errors become `anyhow` messages and exit codes here.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use pinhole::config::{Config, FirewallMode};
use pinhole::dns::Server;
use pinhole::firewall::Firewall;
use pinhole::metrics::Metrics;
use pinhole::policy::Policy;

/// A DNS-layer filtering resolver: approved names are forwarded, everything else is blocked.
#[derive(Parser)]
#[command(name = "pinhole", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve DNS with the given configuration until SIGINT or SIGTERM.
    Run {
        /// The configuration file.
        #[arg(long, short, default_value = "config.toml")]
        config: PathBuf,
    },
    /// Validate the configuration and every zone file; print each problem with file, line,
    /// column and a fix. Exits non-zero if there is any.
    Check {
        #[arg(long, short, default_value = "config.toml")]
        config: PathBuf,
    },
    /// Show the live allowlist (address, ports, zone, name, expires in) of the running daemon.
    Status {
        #[arg(long, short, default_value = "config.toml")]
        config: PathBuf,
    },
    /// Print the nftables ruleset that uses pinhole's sets (managed mode), ready for `nft -f`.
    Ruleset {
        #[arg(long, short, default_value = "config.toml")]
        config: PathBuf,
    },
    /// Show which zone and rule decide NAME and what a client would get.
    Explain {
        /// The name to look up, e.g. mesu.apple.com
        name: String,
        /// The query type (A, AAAA, HTTPS, ...).
        #[arg(default_value = "A")]
        qtype: String,
        #[arg(long, short, default_value = "config.toml")]
        config: PathBuf,
    },
}

/// Loads the config and the zones, reporting every problem.
fn load(path: &std::path::Path) -> anyhow::Result<(Config, Policy)> {
    let config = Config::load(path).map_err(|d| anyhow::anyhow!("{d}"))?;
    let policy = Policy::load(&config).map_err(|d| anyhow::anyhow!("{d}"))?;
    Ok((config, policy))
}

fn init_logging(level: &str) {
    use tracing_subscriber::EnvFilter;
    // hickory logs every request at info; pinhole logs faults only.
    let default = format!("{level},hickory_proto=warn,hickory_server=warn");
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&default))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { config } => check(&config),
        Command::Explain {
            name,
            qtype,
            config,
        } => load(&config).map(|(c, p)| {
            print!("{}", pinhole::explain::explain(&c, &p, &name, &qtype));
        }),
        Command::Run { config } => run(&config),
        Command::Status { config } => status(&config),
        Command::Ruleset { config } => load(&config).map(|(c, policy)| {
            let statics: Vec<_> = policy
                .zones()
                .iter()
                .filter(|z| !z.statics.is_empty())
                .map(|z| (z.name.clone(), z.statics.clone(), z.ports.clone()))
                .collect();
            let resolvers: Vec<std::net::IpAddr> = c
                .server
                .listen
                .iter()
                .map(|a| a.ip())
                .filter(|ip| !ip.is_unspecified() && !ip.is_loopback())
                .collect();
            print!(
                "{}",
                pinhole::firewall::ruleset::render(&pinhole::firewall::ruleset::RulesetSpec {
                    table: &c.firewall.table,
                    resolvers: &resolvers,
                    statics: &statics,
                })
            );
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pinhole: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &std::path::Path) -> anyhow::Result<()> {
    let (config, policy) = load(path)?;
    let patterns = policy.matcher().len();
    let zones = policy.zones().iter().filter(|z| z.part == 0).count();
    let encrypted = config
        .upstream
        .resolved
        .iter()
        .filter(|s| s.is_encrypted())
        .count();
    println!(
        "{}: ok ({} zones enabled from {}, {} host patterns, {} upstream servers ({} encrypted){})",
        path.display(),
        zones,
        config.zones_dir().display(),
        patterns,
        config.upstream.resolved.len(),
        encrypted,
        if config.tls.enabled() {
            format!(
                ", DoT on {:?}, DoH on {:?}",
                config.tls.dot_listen, config.tls.doh_listen
            )
        } else {
            String::new()
        }
    );
    Ok(())
}

fn status(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(path).map_err(|d| anyhow::anyhow!("{d}"))?;
    let socket = config
        .control
        .socket
        .ok_or_else(|| anyhow::anyhow!("[control] socket is not set in {}", path.display()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let reply = runtime
        .block_on(pinhole::control::ask(&socket, "status"))
        .with_context(|| {
            format!(
                "cannot reach the daemon at {} (is pinhole running, and are you root?)",
                socket.display()
            )
        })?;
    print!("{reply}");
    Ok(())
}

fn run(path: &std::path::Path) -> anyhow::Result<()> {
    // Everything is validated before a socket is opened: no half-configured server.
    let (config, policy) = load(path)?;
    init_logging(&config.log.level);
    if config.upstream.unused_plain_servers() {
        tracing::warn!(
            "[upstream] lists plain servers next to encrypted ones but fallback = false: the plain servers are never asked"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let metrics = Arc::new(Metrics::default());
        let zones = policy.zones().iter().filter(|z| z.part == 0).count();
        let firewall = match config.firewall.mode {
            FirewallMode::Off => None,
            FirewallMode::Managed | FirewallMode::External => Some(Arc::new(Firewall::start(
                &config.firewall,
                policy.zones(),
                config.firewall.state_dir.clone(),
                Arc::clone(&metrics),
            )?)),
        };
        let server = Server::start(&config, policy, firewall.clone(), Arc::clone(&metrics)).await?;
        tracing::info!(
            zones,
            upstreams = config.upstream.resolved.len(),
            "pinhole ready"
        );
        shutdown_signal().await;
        tracing::info!("shutting down");
        server.shutdown().await;
        if let Some(fw) = &firewall {
            fw.flush_journal();
        }
        Ok(())
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
