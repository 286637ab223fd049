//! Logging and metrics setup. Tracing output goes to stderr (text or JSON).
pub mod metrics;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

pub fn init_tracing(format: &str) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,sea_orm=warn"));
    let registry = tracing_subscriber::registry().with(filter);
    let res = if format == "json" {
        registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .try_init()
    } else {
        registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init()
    };
    // A second init (tests spawning many apps) keeps the first subscriber.
    let _ = res;
}
