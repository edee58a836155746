//! A real JetStream cluster of `nats-server` processes on loopback, for tests.
//!
//! [`NatsCluster::start`] starts `n` nodes (each a [`NatsServer`] with its own free ports, temp
//! dir and store), routes them to each other, and waits until JetStream has a meta leader and
//! every node's `/healthz` answers 200. Dropping the cluster kills every node and removes
//! their directories.

use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::nats_server::{
    ClusterSpec, NatsServer, NatsServerError, NatsServerOptions, NodeSpec, Result, checked_binary,
    free_ports,
};

/// How often a port conflict while starting is retried (with new ports).
const PORT_ATTEMPTS: usize = 5;

/// A running JetStream cluster owned by a test. See the module docs.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
    name: String,
    ready_timeout: Duration,
}

impl NatsCluster {
    /// Starts a `size`-node cluster (1..=5; 3 is the production shape) with default options.
    pub fn start(size: usize) -> Result<Self> {
        Self::start_with(size, NatsServerOptions::default())
    }

    /// Starts a `size`-node cluster; `options` apply to every node (the extra config is
    /// appended to each node's config, the environment is set for each process, and
    /// `startup_timeout` bounds both each node's start and the wait for a meta leader).
    pub fn start_with(size: usize, options: NatsServerOptions) -> Result<Self> {
        if !(1..=5).contains(&size) {
            return Err(NatsServerError::BadClusterSize(size));
        }
        let (binary, version) = checked_binary()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::try_start(size, &binary, version, &options) {
                Err(error) if error.is_port_conflict() && attempt < PORT_ATTEMPTS => continue,
                other => return other,
            }
        }
    }

    fn try_start(
        size: usize,
        binary: &std::path::Path,
        version: crate::nats_server::Version,
        options: &NatsServerOptions,
    ) -> Result<Self> {
        let ports = free_ports(size * 3)?;
        let (client, rest) = ports.split_at(size);
        let (monitor, route) = rest.split_at(size);
        let name = format!("aegis-test-{}", client.first().copied().unwrap_or_default());
        let mut cluster = Self {
            nodes: Vec::with_capacity(size),
            name: name.clone(),
            ready_timeout: options.startup_timeout,
        };
        for ((port, monitor_port), route_port) in client.iter().zip(monitor).zip(route) {
            let spec = NodeSpec {
                server_name: format!("n{}", cluster.nodes.len() + 1),
                port: *port,
                monitor_port: *monitor_port,
                cluster: Some(ClusterSpec {
                    name: name.clone(),
                    port: *route_port,
                    routes: route.to_vec(),
                }),
            };
            cluster
                .nodes
                .push(NatsServer::prepare(binary, version, &spec, options)?);
        }
        // Start all before waiting on any: a clustered node may wait for its peers.
        for node in &mut cluster.nodes {
            node.spawn()?;
        }
        for node in &mut cluster.nodes {
            node.wait_started()?;
        }
        cluster.wait_healthy()?;
        Ok(cluster)
    }

    /// Waits until JetStream has a meta leader that every running node agrees on and every
    /// running node's `/healthz` answers 200 (bounded by the startup timeout). Returns the
    /// leader's server name.
    pub fn wait_healthy(&self) -> Result<String> {
        let started = Instant::now();
        loop {
            let last = match self.probe() {
                Ok(leader) => return Ok(leader),
                Err(problem) => problem,
            };
            if started.elapsed() >= self.ready_timeout {
                return Err(NatsServerError::ClusterNotReady {
                    timeout: self.ready_timeout,
                    last,
                    logs: self.logs_tail(),
                });
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// One readiness probe: the agreed meta leader, or what is not ready yet.
    fn probe(&self) -> std::result::Result<String, String> {
        let mut leader: Option<String> = None;
        for (index, node) in self.running() {
            let jsz = match node.monitor_get("/jsz") {
                Ok((200, body)) => body,
                Ok((status, body)) => return Err(format!("n{}: /jsz {status}: {body}", index + 1)),
                Err(error) => return Err(format!("n{}: {error}", index + 1)),
            };
            let jsz: Value = serde_json::from_str(&jsz)
                .map_err(|e| format!("n{}: /jsz is not JSON: {e}", index + 1))?;
            let this = jsz
                .pointer("/meta_cluster/leader")
                .and_then(Value::as_str)
                .filter(|l| !l.is_empty())
                .ok_or_else(|| format!("n{}: no JetStream meta leader yet", index + 1))?;
            match &leader {
                Some(l) if l != this => {
                    return Err(format!("nodes disagree on the meta leader: {l} vs {this}"));
                }
                _ => leader = Some(this.to_owned()),
            }
            match node.monitor_get("/healthz") {
                Ok((200, _)) => {}
                Ok((status, body)) => {
                    return Err(format!("n{}: /healthz {status}: {body}", index + 1));
                }
                Err(error) => return Err(format!("n{}: {error}", index + 1)),
            }
        }
        leader.ok_or_else(|| "no node is running".to_owned())
    }

    fn running(&self) -> impl Iterator<Item = (usize, &NatsServer)> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, node)| node.pid().is_some())
    }

    /// The cluster name (shared by every node).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of nodes (running or killed).
    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    /// Every node's client URL, `nats://127.0.0.1:<port>`, in node order.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }

    /// The client URLs joined with `,` (what `AEGIS_NATS_URL` takes).
    pub fn url_list(&self) -> String {
        self.urls().join(",")
    }

    /// Node `index` (0-based; its server name is `n<index + 1>`).
    pub fn node(&self, index: usize) -> Result<&NatsServer> {
        self.nodes.get(index).ok_or(NatsServerError::NoSuchNode {
            index,
            size: self.nodes.len(),
        })
    }

    /// All nodes.
    pub fn nodes(&self) -> &[NatsServer] {
        &self.nodes
    }

    fn node_mut(&mut self, index: usize) -> Result<&mut NatsServer> {
        let size = self.nodes.len();
        self.nodes
            .get_mut(index)
            .ok_or(NatsServerError::NoSuchNode { index, size })
    }

    /// Kills node `index` (SIGKILL), keeping its ports and store for [`NatsCluster::restart`].
    pub fn kill(&mut self, index: usize) -> Result<()> {
        self.node_mut(index)?.kill()
    }

    /// Brings node `index` back (same ports and store) and waits until the whole cluster is
    /// healthy again.
    pub fn restart(&mut self, index: usize) -> Result<()> {
        self.node_mut(index)?.restart()?;
        self.wait_healthy().map(|_| ())
    }

    /// The current meta leader's server name, as node `index` sees it.
    pub fn meta_leader(&self, index: usize) -> Result<Option<String>> {
        let (_, body) = self.node(index)?.monitor_get("/jsz")?;
        let jsz: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        Ok(jsz
            .pointer("/meta_cluster/leader")
            .and_then(Value::as_str)
            .filter(|l| !l.is_empty())
            .map(str::to_owned))
    }

    fn logs_tail(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, node)| format!("--- n{} ---\n{}", i + 1, node.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}
