//! `aegisctl token issue` and `aegisctl token inspect`: the agent tokens a gateway accepts.
//!
//! A token is an EdDSA JWT signed with a tenant's registered token-issuer key; the chain of
//! callers travels as nested RFC 8693 `act` claims (see [`aegis_core::token`]). `--act` is
//! given in call order, **origin first, direct caller last**: `--act user-portal --act planner`
//! makes `planner` the direct caller, which becomes the outermost `act` claim
//! (`act: {sub: planner, act: {sub: user-portal}}`), i.e. the call chain
//! `[user-portal, planner]` of the decide input.

use crate::duration::{human, parse_duration};
use crate::exit::{CliError, CliResult, Exit};
use crate::output::write_json;
use aegis_core::events::envelope::format_time;
use aegis_core::ids::{AgentId, TenantId};
use aegis_core::keys::Keypair;
use aegis_core::token::{self, Claims, DEFAULT_AUDIENCE, Header, MAX_CHAIN, TokenRequest};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde_json::{Value, json};
use std::io::{Read as _, Write};
use std::path::PathBuf;
use std::time::Duration;
use time::OffsetDateTime;

/// Options for [`issue`]; also the `aegisctl token issue` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct IssueArgs {
    /// Tenant the token speaks for (`tenant` claim); must be the issuer key's tenant
    #[arg(long)]
    pub tenant: TenantId,
    /// The agent that makes the calls (`sub` claim)
    #[arg(long)]
    pub agent: AgentId,
    /// A caller of the agent; repeat in call order, origin first, direct caller last
    /// (`--act user-portal --act planner`: planner calls the agent, user-portal called planner)
    #[arg(long = "act", value_name = "CALLER")]
    pub act: Vec<AgentId>,
    /// The token issuer's signing key (*.key.json from `aegisctl keys generate`); its key id
    /// becomes the token's `kid`
    #[arg(long, value_name = "ISSUER_KEY_FILE")]
    pub key: PathBuf,
    /// The issuer name registered with that key (`iss` claim)
    #[arg(long, value_name = "NAME")]
    pub issuer: String,
    /// Audience (`aud` claim): the gateway's configured audience
    #[arg(long, default_value = DEFAULT_AUDIENCE)]
    pub audience: String,
    /// How long the token is valid (`exp` = now + TTL), e.g. 15m, 1h, 7d
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ttl: Duration,
    /// Token id (`jti` claim); none by default
    #[arg(long = "id", value_name = "JTI")]
    pub id: Option<String>,
}

/// Options for [`inspect`]; also the `aegisctl token inspect` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct InspectArgs {
    /// The token, or - to read it from stdin
    pub token: String,
    /// Print header, claims and call chain as JSON
    #[arg(long)]
    pub json: bool,
}

/// Signs a token for `args` issued at `now` and prints it, alone on its line.
pub fn issue(args: &IssueArgs, now: OffsetDateTime, out: &mut dyn Write) -> CliResult {
    if args.issuer.trim().is_empty() {
        return Err(CliError::invalid("--issuer must not be empty"));
    }
    if args.audience.trim().is_empty() {
        return Err(CliError::invalid("--audience must not be empty"));
    }
    if args.act.len() > MAX_CHAIN {
        return Err(CliError::invalid(format!(
            "{} --act callers: a gateway accepts at most {MAX_CHAIN}",
            args.act.len()
        )));
    }
    let ttl_seconds = i64::try_from(args.ttl.as_secs())
        .ok()
        .filter(|s| *s >= 1)
        .ok_or_else(|| CliError::invalid("--ttl must be at least 1s"))?;
    let key = Keypair::load(&args.key).map_err(|e| {
        CliError::failure(format!(
            "cannot load the issuer key {}: {e}",
            args.key.display()
        ))
    })?;
    let request = TokenRequest {
        issuer: args.issuer.clone(),
        tenant: args.tenant.clone(),
        agent: args.agent.clone(),
        audience: args.audience.clone(),
        call_chain: args.act.clone(),
        issued_at: now.unix_timestamp(),
        ttl_seconds,
        token_id: args.id.clone(),
    };
    let jwt = token::issue(&request, &key)
        .map_err(|e| CliError::failure(format!("cannot sign the token: {e}")))?;
    writeln!(out, "{jwt}")?;
    Ok(Exit::Ok)
}

/// A token taken apart without any trust check.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub header: Value,
    pub claims: Value,
    /// The typed header and claims, when they have the shape Aegis reads.
    pub typed: Result<(Header, Claims), String>,
    /// Origin first, direct caller last (from the nested `act` claims).
    pub call_chain: Result<Vec<AgentId>, String>,
}

/// Splits and decodes `header.claims.signature`; checks nothing but the encoding.
pub fn decode(jwt: &str) -> Result<Decoded, CliError> {
    let jwt = jwt.trim();
    let mut parts = jwt.split('.');
    let (Some(h), Some(c), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(CliError::failure(
            "not a JWT: expected three base64url parts separated by dots",
        ));
    };
    let part = |text: &str, what: &str| -> Result<Value, CliError> {
        let bytes = B64URL
            .decode(text)
            .map_err(|e| CliError::failure(format!("the token's {what} is not base64url: {e}")))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| CliError::failure(format!("the token's {what} is not JSON: {e}")))
    };
    let header = part(h, "header")?;
    let claims = part(c, "claims")?;
    let typed_header: Result<Header, String> =
        serde_json::from_value(header.clone()).map_err(|e| format!("header: {e}"));
    let typed_claims: Result<Claims, String> =
        serde_json::from_value(claims.clone()).map_err(|e| format!("claims: {e}"));
    let call_chain = match &typed_claims {
        Ok(c) => token::act_to_chain(c.act.as_ref()).map_err(|e| e.to_string()),
        Err(e) => Err(e.clone()),
    };
    let typed = match (typed_header, typed_claims) {
        (Ok(h), Ok(c)) => Ok((h, c)),
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    Ok(Decoded {
        header,
        claims,
        typed,
        call_chain,
    })
}

fn unix_time(seconds: i64) -> String {
    OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|t| format_time(t).ok())
        .unwrap_or_else(|| format!("unix {seconds}"))
}

/// Prints what a token claims, clearly marked as unverified. Exit 1 when it cannot be decoded.
pub fn inspect(args: &InspectArgs, now: OffsetDateTime, out: &mut dyn Write) -> CliResult {
    let text = if args.token == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| CliError::failure(format!("cannot read the token from stdin: {e}")))?;
        text
    } else {
        args.token.clone()
    };
    let decoded = decode(&text)?;
    let now = now.unix_timestamp();
    if args.json {
        let expired = decoded.typed.as_ref().ok().map(|(_, c)| now > c.exp);
        let chain: Option<Vec<&str>> = decoded
            .call_chain
            .as_ref()
            .ok()
            .map(|c| c.iter().map(AgentId::as_str).collect());
        write_json(
            out,
            &json!({
                "verified": false,
                "header": decoded.header,
                "claims": decoded.claims,
                "call_chain": chain,
                "expired": expired,
                "problem": decoded.typed.as_ref().err(),
            }),
        )?;
        return Ok(Exit::Ok);
    }
    writeln!(
        out,
        "UNVERIFIED: decoded only; signature, issuer key, tenant, audience and expiry were NOT checked"
    )?;
    let (header, claims) = match &decoded.typed {
        Ok(typed) => typed,
        Err(problem) => {
            writeln!(out, "not an Aegis agent token ({problem})")?;
            writeln!(out, "header: {}", decoded.header)?;
            writeln!(out, "claims: {}", decoded.claims)?;
            return Ok(Exit::Ok);
        }
    };
    writeln!(out, "algorithm: {}", header.alg)?;
    writeln!(out, "key id:    {}", header.kid.as_deref().unwrap_or("-"))?;
    writeln!(out, "issuer:    {}", claims.iss)?;
    writeln!(out, "tenant:    {}", claims.tenant)?;
    writeln!(out, "agent:     {}", claims.sub)?;
    let audience = match &claims.aud {
        token::Audience::One(a) => a.clone(),
        token::Audience::Many(list) => list.join(", "),
    };
    writeln!(out, "audience:  {audience}")?;
    match &decoded.call_chain {
        Ok(chain) if chain.is_empty() => writeln!(out, "chain:     none (called directly)")?,
        Ok(chain) => {
            let names: Vec<&str> = chain.iter().map(AgentId::as_str).collect();
            writeln!(
                out,
                "chain:     {} -> {} (origin first; direct caller {})",
                names.join(" -> "),
                claims.sub,
                names.last().copied().unwrap_or("-")
            )?;
        }
        Err(e) => writeln!(out, "chain:     invalid ({e})")?,
    }
    if let Some(iat) = claims.iat {
        writeln!(out, "issued:    {}", unix_time(iat))?;
    }
    if let Some(nbf) = claims.nbf {
        writeln!(out, "not before: {}", unix_time(nbf))?;
    }
    let remaining = claims.exp.saturating_sub(now);
    let when = if remaining >= 0 {
        format!(
            "in {}",
            human(Duration::from_secs(remaining.unsigned_abs()))
        )
    } else {
        format!(
            "EXPIRED {} ago",
            human(Duration::from_secs(remaining.unsigned_abs()))
        )
    };
    writeln!(out, "expires:   {} ({when})", unix_time(claims.exp))?;
    if let Some(jti) = &claims.jti {
        writeln!(out, "token id:  {jti}")?;
    }
    Ok(Exit::Ok)
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
    use aegis_core::token::{IssuerKeys, TrustedIssuer};

    fn args(dir: &std::path::Path, name: &str, act: &[&str]) -> (IssueArgs, Keypair) {
        let key = Keypair::from_seed(&[4; 32]);
        let paths = key.write_to_dir(dir, name).unwrap();
        (
            IssueArgs {
                tenant: "acme".parse().unwrap(),
                agent: "finance-agent".parse().unwrap(),
                act: act.iter().map(|a| a.parse().unwrap()).collect(),
                key: paths.signing_key,
                issuer: "acme-idp".into(),
                audience: DEFAULT_AUDIENCE.into(),
                ttl: Duration::from_secs(3600),
                id: Some("t-1".into()),
            },
            key,
        )
    }

    #[test]
    fn an_issued_token_verifies_with_the_chain_in_call_order() {
        let dir = tempfile::tempdir().unwrap();
        let (args, key) = args(dir.path(), "idp", &["user-portal", "planner"]);
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let mut out = Vec::new();
        assert_eq!(issue(&args, now, &mut out).unwrap(), Exit::Ok);
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with('\n') && text.lines().count() == 1, "{text}");
        let jwt = text.trim_end();
        let mut keys = IssuerKeys::new();
        keys.insert(TrustedIssuer {
            tenant: "acme".parse().unwrap(),
            issuer: "acme-idp".into(),
            key: key.public_key().clone(),
        });
        let id = token::verify(jwt, &keys, DEFAULT_AUDIENCE, 1_800_000_100, 0).unwrap();
        let chain: Vec<&str> = id.call_chain.iter().map(AgentId::as_str).collect();
        assert_eq!(chain, ["user-portal", "planner"]);
        assert_eq!(id.expires_at, 1_800_003_600);
        assert_eq!(id.token_id.as_deref(), Some("t-1"));

        let decoded = decode(jwt).unwrap();
        assert_eq!(decoded.claims["act"]["sub"], "planner");
        assert_eq!(decoded.claims["act"]["act"]["sub"], "user-portal");

        let mut out = Vec::new();
        let later = OffsetDateTime::from_unix_timestamp(1_800_000_600).unwrap();
        inspect(
            &InspectArgs {
                token: jwt.to_owned(),
                json: false,
            },
            later,
            &mut out,
        )
        .unwrap();
        let shown = String::from_utf8(out).unwrap();
        assert!(shown.starts_with("UNVERIFIED"), "{shown}");
        assert!(
            shown.contains(
                "chain:     user-portal -> planner -> finance-agent (origin first; direct caller planner)"
            ),
            "{shown}"
        );
        assert!(shown.contains("(in 50m)"), "{shown}");

        let mut out = Vec::new();
        let much_later = OffsetDateTime::from_unix_timestamp(1_800_007_200).unwrap();
        inspect(
            &InspectArgs {
                token: jwt.to_owned(),
                json: true,
            },
            much_later,
            &mut out,
        )
        .unwrap();
        let json: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(json["verified"], false);
        assert_eq!(json["expired"], true);
        assert_eq!(json["call_chain"], json!(["user-portal", "planner"]));
        assert_eq!(json["claims"]["tenant"], "acme");
    }

    #[test]
    fn bad_arguments_and_bad_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::now_utc();
        let (mut a, _) = args(dir.path(), "one", &[]);
        a.ttl = Duration::from_millis(10);
        assert_eq!(
            issue(&a, now, &mut Vec::new()).unwrap_err().exit,
            Exit::Invalid
        );
        let (mut a, _) = args(dir.path(), "two", &[]);
        a.key = dir.path().join("missing.key.json");
        assert_eq!(
            issue(&a, now, &mut Vec::new()).unwrap_err().exit,
            Exit::Failure
        );
        assert!(decode("a.b").is_err());
        assert!(decode("!!.e30.x").is_err());
        // A JWT that is not an Aegis token still decodes, with the problem noted.
        let other = format!(
            "{}.{}.",
            B64URL.encode(br#"{"alg":"HS256"}"#),
            B64URL.encode(br#"{"sub":"x"}"#)
        );
        let decoded = decode(&other).unwrap();
        assert!(decoded.typed.is_err());
    }
}
