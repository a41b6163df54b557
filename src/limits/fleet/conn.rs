//! The connection to Redis: one multiplexed connection, on which every concurrent call is
//! pipelined on one socket, to a single server, a cluster, or the master a sentinel names.
//! A single server's and a sentinel master's connections reconnect by themselves; a sentinel
//! master is looked up again when it stops answering, which follows a failover.

use super::RedisTarget;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};
use std::time::Duration;

/// A connection to whichever Redis deployment the policy names.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// How long establishing a connection may take; calls themselves are bounded by their callers.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Connects to `target`. Must run inside a Tokio runtime, which then drives the connection.
pub async fn connect(target: &RedisTarget) -> RedisResult<Conn> {
    let manager = |client: redis::Client| async move {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_max_delay(Duration::from_millis(500))
            .set_number_of_retries(2);
        ConnectionManager::new_with_config(client, config)
            .await
            .map(Conn::Single)
    };
    match target {
        RedisTarget::Url(url) => manager(redis::Client::open(url.as_str())?).await,
        RedisTarget::Cluster(nodes) => {
            let client =
                redis::cluster::ClusterClientBuilder::new(nodes.iter().map(String::as_str))
                    .connection_timeout(CONNECT_TIMEOUT)
                    .build()?;
            client.get_async_connection().await.map(Conn::Cluster)
        }
        RedisTarget::Sentinel { master, nodes } => {
            let mut sentinel = redis::sentinel::SentinelClient::build(
                nodes.iter().map(String::as_str).collect(),
                master.as_str(),
                None,
                redis::sentinel::SentinelServerType::Master,
            )?;
            manager(sentinel.async_get_client().await?).await
        }
    }
}
