//! Process plumbing shared by the three binaries: logging set-up, signal-driven
//! shutdown, the hostname and the default host id. Feature `process`.

use tokio_util::sync::CancellationToken;

/// Log output format (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// What every daemon's launcher does first: start logging, then load the
/// config file with the environment's overrides (returned too: the
/// dispatcher hands them to its workers).
pub fn start(
    format: LogFormat,
    config_path: &std::path::Path,
) -> Result<(crate::Config, crate::ConfigOverrides), crate::ConfigError> {
    init_tracing(format);
    let overrides = crate::ConfigOverrides::from_environment(std::env::vars());
    let config = crate::Config::load(config_path, &overrides)?;
    Ok((config, overrides))
}

/// Logs to stderr; `RUST_LOG` filters (default `info`).
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    // Colours only on a terminal: logs in files and journald stay plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// A token cancelled by the first SIGINT or SIGTERM. A second signal exits at once.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested; send the signal again to exit at once");
        cancel.cancel();
        wait_for_signal().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
    token
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// The machine's hostname as the system reports it (`host` if unreadable).
pub fn hostname() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "host".into())
}

/// The machine's hostname, lowercased and reduced to id characters.
pub fn default_host_id() -> String {
    let raw = hostname();
    let id: String = raw
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if id.is_empty() {
        "host".into()
    } else {
        id
    }
}

/// Makes a child process receive SIGTERM when its parent dies, so workers and
/// adapter processes never outlive (and hold GPU memory past) their supervisor.
#[allow(unsafe_code)]
pub fn set_parent_death_signal(command: &mut tokio::process::Command) {
    // SAFETY: the closure runs between fork and exec and only calls prctl, which
    // is async-signal-safe; it touches no memory shared with the parent.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                .map_err(std::io::Error::from)
        });
    }
}
