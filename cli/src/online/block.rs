//! `aegisctl block agent|tool` and `aegisctl unblock agent|tool`: the kill switch.
//!
//! A blocked agent (or tool) is denied on every gateway, whatever the policies say, until it
//! is unblocked: no policy change, no new bundle. Each command is one signed change event
//! (`agent_blocked`, `agent_unblocked`, `tool_blocked`, `tool_unblocked`) on
//! `aegis.changes.<tenant>.control` that needs the publisher or admin role; the control plane
//! then publishes the tenant's whole `tenant_controls` state to gateways. Blocks work while the
//! tenant or the data plane is frozen.

use super::{Client, submit};
use crate::exit::CliResult;
use aegis_core::events::{AgentBlocked, AgentUnblocked, Event, ToolBlocked, ToolUnblocked};
use aegis_core::ids::{AgentId, ToolId};
use std::io::Write;

/// Options for `block agent`.
#[derive(Debug, Clone, clap::Args)]
pub struct BlockAgentArgs {
    /// The agent every gateway denies from now on
    #[arg(value_name = "AGENT_ID")]
    pub agent: AgentId,
    /// Why (shown to callers in the deny reason and recorded in the audit trail)
    #[arg(long)]
    pub reason: String,
    /// Print JSON: set from [`OnlineArgs::json`](super::OnlineArgs::json).
    #[arg(skip)]
    pub json: bool,
}

/// Options for `block tool`.
#[derive(Debug, Clone, clap::Args)]
pub struct BlockToolArgs {
    /// The tool every call to is denied from now on
    #[arg(value_name = "TOOL_ID")]
    pub tool: ToolId,
    /// Why (shown to callers in the deny reason and recorded in the audit trail)
    #[arg(long)]
    pub reason: String,
    /// Print JSON: set from [`OnlineArgs::json`](super::OnlineArgs::json).
    #[arg(skip)]
    pub json: bool,
}

/// Options for `unblock agent`.
#[derive(Debug, Clone, clap::Args)]
pub struct UnblockAgentArgs {
    #[arg(value_name = "AGENT_ID")]
    pub agent: AgentId,
    /// Why it is lifted (recorded in the audit trail)
    #[arg(long)]
    pub reason: Option<String>,
    /// Print JSON: set from [`OnlineArgs::json`](super::OnlineArgs::json).
    #[arg(skip)]
    pub json: bool,
}

/// Options for `unblock tool`.
#[derive(Debug, Clone, clap::Args)]
pub struct UnblockToolArgs {
    #[arg(value_name = "TOOL_ID")]
    pub tool: ToolId,
    /// Why it is lifted (recorded in the audit trail)
    #[arg(long)]
    pub reason: Option<String>,
    /// Print JSON: set from [`OnlineArgs::json`](super::OnlineArgs::json).
    #[arg(skip)]
    pub json: bool,
}

/// `agent_blocked`.
pub async fn block_agent(client: &Client, args: &BlockAgentArgs, out: &mut dyn Write) -> CliResult {
    let event = Event::AgentBlocked(AgentBlocked {
        agent: args.agent.clone(),
        reason: args.reason.clone(),
    });
    submit(client, event, args.json, out).await
}

/// `tool_blocked`.
pub async fn block_tool(client: &Client, args: &BlockToolArgs, out: &mut dyn Write) -> CliResult {
    let event = Event::ToolBlocked(ToolBlocked {
        tool: args.tool.clone(),
        reason: args.reason.clone(),
    });
    submit(client, event, args.json, out).await
}

/// `agent_unblocked`.
pub async fn unblock_agent(
    client: &Client,
    args: &UnblockAgentArgs,
    out: &mut dyn Write,
) -> CliResult {
    let event = Event::AgentUnblocked(AgentUnblocked {
        agent: args.agent.clone(),
        reason: args.reason.clone(),
    });
    submit(client, event, args.json, out).await
}

/// `tool_unblocked`.
pub async fn unblock_tool(
    client: &Client,
    args: &UnblockToolArgs,
    out: &mut dyn Write,
) -> CliResult {
    let event = Event::ToolUnblocked(ToolUnblocked {
        tool: args.tool.clone(),
        reason: args.reason.clone(),
    });
    submit(client, event, args.json, out).await
}
