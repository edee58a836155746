//! Process logging: JSON lines (or human text) on stderr through `tracing-subscriber`.
//!
//! A JSON line carries `timestamp` (RFC 3339, UTC), `level`, `target`, `fields` (the event's
//! message and fields) and, inside a `tracing` span, `span` (the current span's name and
//! fields). The filter is `RUST_LOG` when set, else the default the caller gives, in
//! `EnvFilter` syntax (`info`, `aegis_gateway=debug,hyper=warn`, ...).

use super::TelemetryError;
use std::io::IsTerminal;
use std::str::FromStr;
use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;

/// The variable whose filter overrides the default.
pub const ENV_FILTER: &str = "RUST_LOG";

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One JSON object per line, for log shippers.
    #[default]
    Json,
    /// Human-readable lines, for a terminal.
    Text,
}

impl FromStr for LogFormat {
    type Err = TelemetryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "json" => Ok(Self::Json),
            "text" => Ok(Self::Text),
            _ => Err(TelemetryError::UnknownLogFormat(s.to_owned())),
        }
    }
}

/// The filter: `RUST_LOG` if set and not empty, else `default`. An invalid filter is an error
/// rather than silently logging nothing.
pub fn env_filter(default: &str) -> Result<EnvFilter, TelemetryError> {
    let directives = std::env::var(ENV_FILTER)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_owned());
    EnvFilter::try_new(&directives).map_err(|source| TelemetryError::InvalidLogFilter {
        filter: directives,
        source,
    })
}

/// Installs the process-wide logger: `format` lines on stderr, filtered by `RUST_LOG` or else
/// `filter`. Also routes records of the `log` crate into it. Once per process: a second call
/// (or one after another logger was installed) is an error.
pub fn init_logging(format: LogFormat, filter: &str) -> Result<(), TelemetryError> {
    let filter = env_filter(filter)?;
    let ansi = std::io::stderr().is_terminal();
    subscriber(format, filter, std::io::stderr, ansi)
        .try_init()
        .map_err(|e| TelemetryError::LoggingAlreadyInitialised(e.to_string()))
}

/// The subscriber [`init_logging`] installs, writing to `writer`.
fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
    ansi: bool,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Json => Box::new(
            builder
                .json()
                .with_current_span(true)
                .with_span_list(false)
                .finish(),
        ),
        LogFormat::Text => Box::new(builder.with_ansi(ansi).finish()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    #[test]
    fn json_lines_carry_timestamp_level_target_and_fields() {
        let buf = Buffer::default();
        let sub = subscriber(
            LogFormat::Json,
            EnvFilter::try_new("info").unwrap(),
            buf.clone(),
            false,
        );
        tracing::subscriber::with_default(sub, || {
            let span = tracing::info_span!("decide", tenant = "acme");
            let _g = span.enter();
            tracing::info!(decision = "deny", latency_us = 42_u64, "decided");
            tracing::debug!("filtered out");
        });
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "{out}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert!(v["timestamp"].as_str().unwrap().contains('T'));
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], module_path!());
        assert_eq!(v["fields"]["message"], "decided");
        assert_eq!(v["fields"]["decision"], "deny");
        assert_eq!(v["fields"]["latency_us"], 42);
        assert_eq!(v["span"]["name"], "decide");
        assert_eq!(v["span"]["tenant"], "acme");
    }

    #[test]
    fn text_lines_are_plain() {
        let buf = Buffer::default();
        let sub = subscriber(
            LogFormat::Text,
            EnvFilter::try_new("warn").unwrap(),
            buf.clone(),
            false,
        );
        tracing::subscriber::with_default(sub, || {
            tracing::warn!(k = 1, "careful");
            tracing::info!("filtered out");
        });
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(out.contains("WARN") && out.contains("careful") && out.contains("k=1"));
        assert!(
            !out.contains('\u{1b}'),
            "no colour codes when not a terminal"
        );
    }

    #[test]
    fn formats_and_filters_parse() {
        assert_eq!("json".parse::<LogFormat>().unwrap(), LogFormat::Json);
        assert_eq!("TEXT".parse::<LogFormat>().unwrap(), LogFormat::Text);
        assert!("xml".parse::<LogFormat>().is_err());
        // RUST_LOG is not set by the test runner; if it is, it is what is parsed.
        if std::env::var(ENV_FILTER).is_err() {
            assert!(env_filter("info,aegis_gateway=debug").is_ok());
            assert!(matches!(
                env_filter("aegis_gateway=notalevel"),
                Err(TelemetryError::InvalidLogFilter { .. })
            ));
        }
    }

    #[test]
    fn logging_is_installed_once_per_process() {
        // The only test that touches the global logger. Whatever the first call gives (another
        // test binary's harness could have installed one), a second one is an error, not a
        // panic.
        let _ = init_logging(LogFormat::Json, "off");
        assert!(matches!(
            init_logging(LogFormat::Json, "off"),
            Err(TelemetryError::LoggingAlreadyInitialised(_))
        ));
    }
}
