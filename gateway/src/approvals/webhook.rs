//! Posting approval requests to a Slack-compatible incoming webhook.
//!
//! The body is `{"text": <fallback>, "blocks": [...]}` (Slack Block Kit; Mattermost and most
//! chat tools accept the same): a header, a section with fields (tenant, agent, chain,
//! tool/action, approval id, expiry), the parameters after the policy's log masking, why
//! approval is needed, and a context line with the `aegisctl` commands that decide it.
//!
//! Posts run on a background task fed by a bounded queue: a full queue drops the message and
//! counts it; each post has a timeout and is retried a couple of times on connection errors,
//! timeouts, 429 and 5xx. The webhook is advisory — the request on `AEGIS_APPROVALS` is what
//! approvers act on — so a failed post never changes an answer.
//!
//! `http://` URLs go through hyper-util's pooled client (as the OTLP exporter); `https://` URLs
//! (Slack's `https://hooks.slack.com/services/…`) through rustls with the system's root
//! certificates, one connection per post (approval requests are rare).

use super::{ApprovalStats, ApprovalsConfig, ApprovalsError};
use aegis_core::approvals::ApprovalRequested;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{CONTENT_TYPE, USER_AGENT};
use hyper::{Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;

const USER_AGENT_VALUE: &str = concat!("aegis-gateway/", env!("CARGO_PKG_VERSION"));
/// Longest parameter listing put into a message (Slack's section text limit is 3,000).
const MAX_PARAMS_CHARS: usize = 2_000;
/// Slack's limit on a header's text.
const MAX_HEADER_CHARS: usize = 150;

/// The queue into the poster.
#[derive(Debug, Clone)]
pub struct WebhookHandle {
    url: String,
    queue: mpsc::Sender<ApprovalRequested>,
    stats: Arc<ApprovalStats>,
}

impl WebhookHandle {
    /// Checks the URL and starts the poster (needs a tokio runtime).
    pub fn start(
        url: &str,
        config: &ApprovalsConfig,
        stats: Arc<ApprovalStats>,
    ) -> Result<WebhookHandle, ApprovalsError> {
        let refuse = |reason: String| ApprovalsError::Webhook {
            url: url.to_owned(),
            reason,
        };
        let uri: Uri = url.parse().map_err(|e| refuse(format!("not a URL: {e}")))?;
        let tls = match uri.scheme_str() {
            Some("http") => None,
            Some("https") => Some(tls_connector().map_err(refuse)?),
            _ => {
                return Err(refuse(
                    "the URL must start with http:// or https://".to_owned(),
                ));
            }
        };
        if uri.host().is_none() {
            return Err(refuse("the URL names no host".to_owned()));
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.webhook_timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        let (queue, mut rx) = mpsc::channel::<ApprovalRequested>(config.queue_capacity.max(1));
        let poster = Poster {
            client,
            tls,
            uri,
            timeout: config.webhook_timeout,
            tries: config.webhook_tries.max(1),
        };
        let task_stats = stats.clone();
        tokio::spawn(async move {
            while let Some(requested) = rx.recv().await {
                if poster.post(&requested).await {
                    ApprovalStats::inc(&task_stats.webhook_ok);
                } else {
                    ApprovalStats::inc(&task_stats.webhook_failed);
                }
            }
        });
        Ok(WebhookHandle {
            url: url.to_owned(),
            queue,
            stats,
        })
    }

    /// The configured URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Queues a message; never blocks (a full queue drops it, counted and logged).
    pub fn submit(&self, requested: ApprovalRequested) {
        if let Err(e) = self.queue.try_send(requested) {
            ApprovalStats::inc(&self.stats.webhook_queue_full);
            let id = match &e {
                mpsc::error::TrySendError::Full(r) | mpsc::error::TrySendError::Closed(r) => {
                    r.approval_id.clone()
                }
            };
            tracing::warn!(approval_id = %id, "approval webhook queue full: message dropped");
        }
    }
}

struct Poster {
    client: Client<HttpConnector, Full<Bytes>>,
    /// For `https` URLs.
    tls: Option<TlsConnector>,
    uri: Uri,
    timeout: Duration,
    tries: u32,
}

enum Posted {
    Ok,
    Retry(String),
    Final(String),
}

impl Poster {
    async fn post(&self, requested: &ApprovalRequested) -> bool {
        let body = match serde_json::to_vec(&slack_message(requested)) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                tracing::error!(approval_id = %requested.approval_id, error = %e, "cannot encode the webhook message");
                return false;
            }
        };
        let mut backoff = Duration::from_millis(500);
        for attempt in 1..=self.tries {
            let why = match self.post_once(body.clone()).await {
                Posted::Ok => {
                    tracing::info!(approval_id = %requested.approval_id, "approval request posted to the webhook");
                    return true;
                }
                Posted::Final(why) => {
                    tracing::warn!(approval_id = %requested.approval_id, why, "the approval webhook refused the message");
                    return false;
                }
                Posted::Retry(why) => why,
            };
            if attempt == self.tries {
                tracing::warn!(approval_id = %requested.approval_id, why, attempts = self.tries, "posting to the approval webhook failed");
                return false;
            }
            tracing::debug!(approval_id = %requested.approval_id, why, attempt, "posting to the approval webhook failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
        false
    }

    async fn post_once(&self, body: Bytes) -> Posted {
        let request = match Request::post(self.uri.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, USER_AGENT_VALUE)
            .body(Full::new(body))
        {
            Ok(r) => r,
            Err(e) => return Posted::Final(e.to_string()),
        };
        let exchange = async {
            let sent = match &self.tls {
                None => self
                    .client
                    .request(request)
                    .await
                    .map_err(|e| e.to_string()),
                Some(tls) => send_tls(tls, &self.uri, request).await,
            };
            let response = match sent {
                Ok(r) => r,
                Err(e) => return Posted::Retry(e),
            };
            let status = response.status();
            let text = Limited::new(response.into_body(), 4096)
                .collect()
                .await
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                .unwrap_or_default();
            if status.is_success() {
                Posted::Ok
            } else if status.as_u16() == 429 || status.is_server_error() {
                Posted::Retry(format!("HTTP {status}: {text}"))
            } else {
                Posted::Final(format!("HTTP {status}: {text}"))
            }
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(posted) => posted,
            Err(_) => Posted::Retry(format!("no answer within {} ms", self.timeout.as_millis())),
        }
    }
}

/// A TLS client trusting the system's root certificates.
fn tls_connector() -> Result<TlsConnector, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(format!(
            "no usable root certificates found on this system for https ({} errors)",
            found.errors.len()
        ));
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// One request over a fresh TLS connection (HTTP/1.1, origin-form target, `Host` set).
async fn send_tls(
    tls: &TlsConnector,
    uri: &Uri,
    request: Request<Full<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, String> {
    let host = uri.host().ok_or("the URL names no host")?.to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|e| format!("{host}: {e}"))?;
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let stream = tls
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {host}: {e}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let (mut parts, body) = request.into_parts();
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = target.parse().map_err(|e| format!("{target}: {e}"))?;
    let authority = uri.authority().map_or(host.clone(), |a| a.to_string());
    parts.headers.insert(
        hyper::header::HOST,
        hyper::header::HeaderValue::from_str(&authority).map_err(|e| e.to_string())?,
    );
    sender
        .send_request(Request::from_parts(parts, body))
        .await
        .map_err(|e| e.to_string())
}

/// `&`, `<` and `>` are control characters in Slack's mrkdwn and plain text.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// The command that grants `requested`.
pub fn grant_command(requested: &ApprovalRequested) -> String {
    format!(
        "aegisctl approvals grant {} --tenant {}",
        requested.approval_id, requested.tenant
    )
}

/// The Slack-compatible message for one approval request.
pub fn slack_message(r: &ApprovalRequested) -> Value {
    let chain = if r.call_chain.is_empty() {
        "(direct)".to_owned()
    } else {
        r.call_chain
            .iter()
            .map(|a| a.as_str())
            .collect::<Vec<_>>()
            .join(" → ")
    };
    let call = format!("{}/{}", r.tool_id, r.action);
    let params = serde_json::to_string_pretty(&r.params).unwrap_or_else(|_| "{}".to_owned());
    let why: Vec<String> = r
        .reasons
        .iter()
        .map(|reason| format!("• `{}` {}", escape(&reason.code), escape(&reason.message)))
        .collect();
    let why_plain: Vec<&str> = r.reasons.iter().map(|x| x.message.as_str()).collect();
    let grant = grant_command(r);
    let deny = format!(
        "aegisctl approvals deny {} --tenant {}",
        r.approval_id, r.tenant
    );
    let field = |label: &str, value: &str| json!({"type": "mrkdwn", "text": format!("*{label}*\n{}", escape(value))});
    let text = format!(
        "Approval needed ({}): {} calls {} — {}. Approval {} expires {}. Grant it with: {}",
        r.tenant,
        r.agent_id,
        call,
        why_plain.join("; "),
        r.approval_id,
        r.expires_at,
        grant
    );
    json!({
        "text": escape(&text),
        "blocks": [
            {
                "type": "header",
                "text": {
                    "type": "plain_text",
                    "text": truncate(&format!("Approval needed: {} → {call}", r.agent_id), MAX_HEADER_CHARS),
                }
            },
            {
                "type": "section",
                "fields": [
                    field("Tenant", r.tenant.as_str()),
                    field("Agent", r.agent_id.as_str()),
                    field("Chain", &chain),
                    field("Tool/action", &call),
                    field("Approval id", &r.approval_id),
                    field("Expires", &r.expires_at),
                ]
            },
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": format!("*Params* (masked)\n```{}```", escape(&truncate(&params, MAX_PARAMS_CHARS))),
                }
            },
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": format!("*Why*\n{}", why.join("\n"))}
            },
            {
                "type": "context",
                "elements": [
                    {
                        "type": "mrkdwn",
                        "text": format!("Grant: `{}` · deny: `{}` · policy {} rule {} v{} · decision {}",
                            escape(&grant),
                            escape(&deny),
                            escape(r.policy.as_deref().unwrap_or("-")),
                            escape(r.rule.as_deref().unwrap_or("-")),
                            r.policy_version.map_or_else(|| "-".to_owned(), |v| v.to_string()),
                            r.decision_id),
                    }
                ]
            }
        ]
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
    use super::*;
    use aegis_core::decision::Reason;

    fn request() -> ApprovalRequested {
        let mut params = serde_json::Map::new();
        params.insert("amount".into(), 6000.into());
        params.insert("account_number".into(), "[MASKED]".into());
        ApprovalRequested {
            kind: aegis_core::approvals::REQUESTED.into(),
            approval_id: format!("apr-{}", "a".repeat(32)),
            tenant: "acme".parse().unwrap(),
            gateway: "gw1".into(),
            decision_id: format!("dec-{}", "b".repeat(32)),
            agent_id: "finance-agent".parse().unwrap(),
            call_chain: vec!["treasury-ui".parse().unwrap(), "planner".parse().unwrap()],
            tool_id: "payments".parse().unwrap(),
            action: "create_payment".into(),
            params,
            masked_params: vec!["account_number".into()],
            call_digest: format!("sha256:{}", "c".repeat(64)),
            reasons: vec![Reason {
                code: "amount_over_limit".into(),
                message: "amount > 5000 <needs> approval".into(),
                policy: Some("finance-agent".into()),
                rule: Some("payments".into()),
            }],
            policy: Some("finance-agent".into()),
            rule: Some("payments".into()),
            policy_version: Some(3),
            requested_at: "2026-11-26T10:00:00.000Z".into(),
            expires_at: "2026-11-26T10:15:00.000Z".into(),
        }
    }

    #[test]
    fn the_message_has_a_fallback_and_blocks_naming_the_grant_command() {
        let r = request();
        let m = slack_message(&r);
        let text = m["text"].as_str().unwrap();
        assert!(text.contains(&r.approval_id), "{text}");
        assert!(
            text.contains(
                "aegisctl approvals grant apr-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa --tenant acme"
            ),
            "{text}"
        );
        let blocks = m["blocks"].as_array().unwrap();
        assert_eq!(blocks[0]["type"], "header");
        let all = m.to_string();
        assert!(all.contains("[MASKED]") && all.contains("6000"), "{all}");
        assert!(all.contains("&lt;needs&gt;"), "mrkdwn is escaped: {all}");
        assert!(all.contains("treasury-ui → planner"), "{all}");
        assert!(
            text.contains("&lt;needs&gt;"),
            "the fallback is escaped too: {text}"
        );
    }

    #[test]
    fn only_http_and_https_urls_are_accepted() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let stats = Arc::new(ApprovalStats::default());
            let config = ApprovalsConfig::default();
            assert!(
                WebhookHandle::start("http://127.0.0.1:9/hook", &config, stats.clone()).is_ok()
            );
            // https needs the system's root certificates.
            if let Err(e) =
                WebhookHandle::start("https://hooks.example.com/x", &config, stats.clone())
            {
                assert!(e.to_string().contains("root certificates"), "{e}");
            }
            for bad in ["ftp://x/y", "not a url", "/path"] {
                assert!(
                    WebhookHandle::start(bad, &config, stats.clone()).is_err(),
                    "{bad}"
                );
            }
        });
    }

    /// Answers each post with the next status of `script` (then 200); returns the URL and the
    /// bodies received.
    async fn receiver(script: Vec<u16>) -> (String, Arc<std::sync::Mutex<Vec<Value>>>) {
        use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
        let store = bodies.clone();
        let script = Arc::new(std::sync::Mutex::new(script.into_iter()));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (store, script) = (store.clone(), script.clone());
                tokio::spawn(async move {
                    let mut reader = tokio::io::BufReader::new(stream);
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let mut length = 0;
                        loop {
                            let mut header = String::new();
                            reader.read_line(&mut header).await.unwrap();
                            let header = header.trim_end();
                            if header.is_empty() {
                                break;
                            }
                            if let Some((k, v)) = header.split_once(':')
                                && k.eq_ignore_ascii_case("content-length")
                            {
                                length = v.trim().parse().unwrap();
                            }
                        }
                        let mut body = vec![0; length];
                        reader.read_exact(&mut body).await.unwrap();
                        store
                            .lock()
                            .unwrap()
                            .push(serde_json::from_slice(&body).unwrap());
                        let status = script.lock().unwrap().next().unwrap_or(200);
                        let answer = format!("HTTP/1.1 {status} X\r\nContent-Length: 2\r\n\r\nok");
                        reader.get_mut().write_all(answer.as_bytes()).await.unwrap();
                    }
                });
            }
        });
        (url, bodies)
    }

    async fn wait_for(stats: &ApprovalStats, done: impl Fn(&ApprovalStats) -> bool) {
        for _ in 0..3000 {
            if done(stats) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the poster never got there: {stats:?}");
    }

    #[tokio::test]
    async fn posts_are_retried_on_5xx_and_given_up_on_4xx() {
        use std::sync::atomic::Ordering::Relaxed;
        let config = ApprovalsConfig {
            webhook_tries: 3,
            ..ApprovalsConfig::default()
        };
        // 503 then 200: one message, delivered on the second try.
        let (url, bodies) = receiver(vec![503]).await;
        let stats = Arc::new(ApprovalStats::default());
        let hook = WebhookHandle::start(&url, &config, stats.clone()).unwrap();
        hook.submit(request());
        wait_for(&stats, |s| s.webhook_ok.load(Relaxed) == 1).await;
        assert_eq!(bodies.lock().unwrap().len(), 2);
        assert_eq!(stats.webhook_failed.load(Relaxed), 0);
        assert!(bodies.lock().unwrap()[1]["blocks"].is_array());

        // 400: refused, not retried.
        let (url, bodies) = receiver(vec![400]).await;
        let stats = Arc::new(ApprovalStats::default());
        let hook = WebhookHandle::start(&url, &config, stats.clone()).unwrap();
        hook.submit(request());
        wait_for(&stats, |s| s.webhook_failed.load(Relaxed) == 1).await;
        assert_eq!(bodies.lock().unwrap().len(), 1);

        // Nobody listening: every try fails, counted once.
        let stats = Arc::new(ApprovalStats::default());
        let hook = WebhookHandle::start("http://127.0.0.1:9/hook", &config, stats.clone()).unwrap();
        hook.submit(request());
        wait_for(&stats, |s| s.webhook_failed.load(Relaxed) == 1).await;
        assert_eq!(stats.webhook_ok.load(Relaxed), 0);
    }
}
