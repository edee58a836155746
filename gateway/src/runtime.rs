//! The running gateway: local state first, then NATS, the shipper, the watchers, the
//! heartbeat and the HTTP server. (Being wired.)

use crate::config::GatewayConfig;

/// Why the gateway stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{0}")]
    Start(String),
}

/// Structured logs on stderr (JSON lines, or text).
pub fn init_logging(json: bool) -> Result<(), RuntimeError> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    result.map_err(|e| RuntimeError::Start(format!("cannot set up logging: {e}")))
}

/// Runs until SIGTERM / Ctrl-C.
pub async fn run(config: GatewayConfig) -> Result<(), RuntimeError> {
    Err(RuntimeError::Start(format!("runtime not wired yet for {}", config.gateway_id)))
}
