//! The `keygate` command: serve (default), migrate, openapi.
use clap::{Parser, Subcommand};
use keygate::{App, Config};

#[derive(Parser)]
#[command(name = "keygate", version, about = "LLM API gateway")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Print the admin API's OpenAPI document (JSON) and exit.
    Openapi,
    /// Manage services, keys, access keys, users, pricing and statistics, against the configured
    /// database or a running keygate (--url).
    Admin(keygate::cli::AdminArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    return_large_allocations();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    if let Some(Command::Openapi) = cli.command {
        println!("{}", keygate::app::openapi().to_pretty_json()?);
        return Ok(());
    }
    if let Some(Command::Admin(args)) = cli.command {
        // A remote command (--url) needs no configuration, so one that cannot be read is only
        // an error for a local one.
        let config = Config::load();
        let format = config
            .as_ref()
            .map(|c| c.log.format.clone())
            .unwrap_or_default();
        keygate::telemetry::init_cli(&format);
        let config = match config {
            Ok(c) => Some(c),
            Err(e) if args.is_remote() => {
                tracing::debug!(error = %e, "configuration not read (not needed with --url)");
                None
            }
            Err(e) => return Err(e),
        };
        std::process::exit(keygate::cli::run(args, config).await);
    }
    let config = Config::load()?;
    let telemetry = keygate::telemetry::init(&config.log.format, &config.otel);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Migrate => {
            let db = keygate::db::connect(&config.database).await?;
            // The first admin too, so that an offline `admin users reset-password` (or a
            // pre-install migration job) finds the database ready.
            keygate::bootstrap::ensure_admin(&db, &config).await?;
            tracing::info!("migrations applied");
        }
        Command::Serve => {
            let app = App::build(config.clone()).await?;
            tracing::info!(
                address = %config.server.listen,
                port = app.port(),
                admin_port = app.admin_port(),
                database = if config.is_enterprise() { "postgres" } else { "sqlite" },
                coordination = app.state().coord.backend(),
                "keygate listening"
            );
            app.run_until(shutdown_signal()).await?;
        }
        Command::Openapi | Command::Admin(_) => unreachable!("handled above"),
    }
    // The spans of the last requests are still queued for the collector.
    telemetry.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}

/// Allocations of 1 MiB and more are mapped and unmapped each time. glibc raises its mmap
/// threshold after the first large free, so Argon2's 19 MiB working memory (every admin login)
/// would otherwise stay in the process for good: measured, it was half of the idle RSS.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn return_large_allocations() {
    // SAFETY: mallopt only sets an allocator parameter; it is called before any request runs.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_large_allocations() {}
