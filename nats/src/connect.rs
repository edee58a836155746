//! Connecting to NATS the same way in every Aegis process.
//!
//! The initial connect tries each URL once, bounded by [`ConnectOptions::connect_timeout`], and
//! fails with an error that names the URL; once connected, the client reconnects forever.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use async_nats::{ConnectErrorKind, ServerAddr};

/// Environment variable with the NATS URL (or a comma-separated list of URLs).
pub const ENV_URL: &str = "AEGIS_NATS_URL";
/// The URL when [`ENV_URL`] is unset.
pub const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

/// How to reach NATS and as whom.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectOptions {
    /// One URL or a comma-separated list (`nats://n1:4222,nats://n2:4222`). Defaults to
    /// `$AEGIS_NATS_URL`, else [`DEFAULT_URL`].
    pub url: String,
    /// A `.creds` file (JWT + nkey seed), for operator/JWT deployments.
    pub creds: Option<PathBuf>,
    /// User name, for the user/password accounts in `nats/conf/accounts.conf`.
    pub user: Option<String>,
    /// Password of [`ConnectOptions::user`]. Never printed by `Debug`.
    pub password: Option<String>,
    /// Connection name shown by the server's monitoring (`/connz`).
    pub name: String,
    /// Subject prefix for replies. `None`: `_INBOX.<user>` when a user is set (what the
    /// permissions in `nats/conf/accounts.conf` allow each user to subscribe to), else `_INBOX`.
    pub inbox_prefix: Option<String>,
    /// Bound on the initial connect to each server.
    pub connect_timeout: Duration,
    /// Bound on requests, JetStream API calls and publish acks.
    pub request_timeout: Duration,
    /// Return a client at once even when no server answers, and keep trying in the background
    /// (gateways: they must start and serve from local state while NATS is away).
    pub retry_on_initial_connect: bool,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        let url = std::env::var(ENV_URL)
            .ok()
            .filter(|url| !url.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_URL.to_owned());
        Self {
            url,
            creds: None,
            user: None,
            password: None,
            name: "aegis".to_owned(),
            inbox_prefix: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            retry_on_initial_connect: false,
        }
    }
}

impl fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("url", &self.url)
            .field("creds", &self.creds)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("name", &self.name)
            .field("inbox_prefix", &self.inbox_prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("retry_on_initial_connect", &self.retry_on_initial_connect)
            .finish()
    }
}

impl ConnectOptions {
    /// Defaults with another URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// Sets user and password.
    pub fn user_and_password(
        mut self,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.user = Some(user.into());
        self.password = Some(password.into());
        self
    }

    /// Sets the connection name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The reply subject prefix that will be used (see [`ConnectOptions::inbox_prefix`]).
    pub fn effective_inbox_prefix(&self) -> String {
        match (&self.inbox_prefix, &self.user) {
            (Some(prefix), _) => prefix.clone(),
            (None, Some(user)) => format!("_INBOX.{user}"),
            (None, None) => "_INBOX".to_owned(),
        }
    }

    fn server_addrs(&self) -> Result<Vec<ServerAddr>, ConnectError> {
        let addrs = self
            .url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| {
                u.parse::<ServerAddr>()
                    .map_err(|source| ConnectError::InvalidUrl {
                        url: u.to_owned(),
                        source: Box::new(source),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if addrs.is_empty() {
            return Err(ConnectError::NoUrl);
        }
        Ok(addrs)
    }
}

/// Why connecting failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL list is empty.
    #[error("no NATS URL given (set {ENV_URL}, e.g. {DEFAULT_URL})")]
    NoUrl,
    /// A URL does not parse.
    #[error("invalid NATS URL {url:?}: {source}")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// The parse error.
        #[source]
        source: async_nats::Error,
    },
    /// A user without a password or a password without a user.
    #[error("a NATS user and password must be given together (got only the {given})")]
    IncompleteUserPassword {
        /// `user` or `password`.
        given: &'static str,
    },
    /// The credentials file cannot be read.
    #[error("cannot read NATS credentials file {path}: {source}")]
    Credentials {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The server refused the credentials.
    #[error("NATS at {url} refused the credentials{who}: {source}",
        who = user.as_ref().map(|u| format!(" of user {u:?}")).unwrap_or_default())]
    Unauthorized {
        /// The URL(s) tried.
        url: String,
        /// The user, if one was given.
        user: Option<String>,
        /// What the client reported.
        #[source]
        source: async_nats::ConnectError,
    },
    /// No server answered.
    #[error(
        "cannot connect to NATS at {url} within {timeout:?}: {source} (is nats-server running \
         there? set {ENV_URL} to point elsewhere)"
    )]
    Unreachable {
        /// The URL(s) tried.
        url: String,
        /// The per-server connect timeout.
        timeout: Duration,
        /// What the client reported.
        #[source]
        source: async_nats::ConnectError,
    },
}

/// Connects: one bounded attempt per URL; after that, reconnects forever.
pub async fn connect(options: &ConnectOptions) -> Result<async_nats::Client, ConnectError> {
    connect_inner(options, None).await
}

/// [`connect`], and forwards the client's events (disconnects, reconnects, server errors such
/// as permission violations, slow consumers) to `events`. Events are dropped, not waited for,
/// when the channel is full.
pub async fn connect_with_events(
    options: &ConnectOptions,
    events: tokio::sync::mpsc::Sender<async_nats::Event>,
) -> Result<async_nats::Client, ConnectError> {
    connect_inner(options, Some(events)).await
}

async fn connect_inner(
    options: &ConnectOptions,
    events: Option<tokio::sync::mpsc::Sender<async_nats::Event>>,
) -> Result<async_nats::Client, ConnectError> {
    let addrs = options.server_addrs()?;
    let mut nats = match &options.creds {
        Some(path) => async_nats::ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|source| ConnectError::Credentials {
                path: path.clone(),
                source,
            })?,
        None => async_nats::ConnectOptions::new(),
    };
    match (&options.user, &options.password) {
        (Some(user), Some(password)) => {
            nats = nats.user_and_password(user.clone(), password.clone());
        }
        (None, Some(_)) => {
            return Err(ConnectError::IncompleteUserPassword { given: "password" });
        }
        (Some(_), None) => return Err(ConnectError::IncompleteUserPassword { given: "user" }),
        (None, None) => {}
    }
    if let Some(events) = events {
        nats = nats.event_callback(move |event| {
            let events = events.clone();
            async move {
                let _ = events.try_send(event);
            }
        });
    }
    if options.retry_on_initial_connect {
        nats = nats.retry_on_initial_connect();
    }
    let nats = nats
        .name(&options.name)
        .custom_inbox_prefix(options.effective_inbox_prefix())
        .connection_timeout(options.connect_timeout)
        .request_timeout(Some(options.request_timeout))
        .max_reconnects(None);
    nats.connect(addrs)
        .await
        .map_err(|source| match source.kind() {
            ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication => {
                ConnectError::Unauthorized {
                    url: options.url.clone(),
                    user: options.user.clone(),
                    source,
                }
            }
            _ => ConnectError::Unreachable {
                url: options.url.clone(),
                timeout: options.connect_timeout,
                source,
            },
        })
}

/// The JetStream context for a client (its API timeout is the client's request timeout).
pub fn jetstream(client: async_nats::Client) -> async_nats::jetstream::Context {
    async_nats::jetstream::new(client)
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]
    use super::*;

    #[test]
    fn inbox_prefix_follows_the_user() {
        let anon = ConnectOptions::new("nats://127.0.0.1:4222");
        assert_eq!(anon.effective_inbox_prefix(), "_INBOX");
        let acme = anon.clone().user_and_password("acme-operator", "pw");
        assert_eq!(acme.effective_inbox_prefix(), "_INBOX.acme-operator");
        let custom = ConnectOptions {
            inbox_prefix: Some("_X".into()),
            ..acme.clone()
        };
        assert_eq!(custom.effective_inbox_prefix(), "_X");
        assert!(!format!("{acme:?}").contains("pw\""), "{acme:?}");
    }

    #[test]
    fn parses_url_lists() {
        let options = ConnectOptions::new("nats://127.0.0.1:4222, nats://127.0.0.1:4223");
        assert_eq!(options.server_addrs().unwrap().len(), 2);
        assert!(matches!(
            ConnectOptions::new(" , ").server_addrs(),
            Err(ConnectError::NoUrl)
        ));
        assert!(matches!(
            ConnectOptions::new("nats://[::1").server_addrs(),
            Err(ConnectError::InvalidUrl { .. })
        ));
    }
}
