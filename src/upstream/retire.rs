//! Closing the idle connections kept to endpoints that left the policy.
//!
//! Pingora's keep-alive pool is private to its proxy: keygate cannot ask it for the connections
//! it keeps to an address. After a reload removes an endpoint, no request routes there any more,
//! so its pooled connections would sit until their `idle_timeout`, holding descriptors and
//! provider-side slots for nothing. [`RetiredEndpoints`] watches the policy store; for each
//! address that no endpoint of the new policy uses, it waits until no request is in flight to
//! the removed endpoint (requests still running on the previous snapshot finish undisturbed; past
//! the provider's `idle_timeout` the pool has closed everything anyway), then finds the process's
//! sockets connected there (`/proc/net/tcp*`, `/proc/self/fd`) and shuts each down. The pool's
//! watch on its idle connections (vendor/README.md) sees the end of the stream within a second
//! and drops the connection.
//!
//! A descriptor is shut down only if it still refers to the socket found (same inode), since a
//! descriptor number can be closed and reused between the scan and the shutdown.

use crate::policy::{Policy, PolicyStore};
use crate::upstream::state::{EndpointState, UpstreamRegistry};
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// How often the store is compared with the policy last seen.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How often a retired endpoint's in-flight count is read while requests finish.
const DRAIN_POLL: Duration = Duration::from_millis(100);

/// An address no endpoint of the current policy uses, with the state of the removed endpoints
/// that used it, and how long their idle connections could live at most.
struct Retired {
    addr: SocketAddr,
    states: Vec<Arc<EndpointState>>,
    idle_timeout: Duration,
}

/// The background service; see the module docs.
pub struct RetiredEndpoints {
    pub store: PolicyStore,
    pub registry: Arc<UpstreamRegistry>,
}

#[async_trait]
impl BackgroundService for RetiredEndpoints {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut seen = self.store.load_full();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
            }
            let current = self.store.load_full();
            if Arc::ptr_eq(&seen, &current) {
                continue;
            }
            for retired in retired(&seen, &current, &self.registry) {
                tokio::spawn(close_when_drained(retired));
            }
            seen = current;
        }
    }
}

/// The addresses endpoints of `before` connect to and no endpoint of `after` does.
fn retired(before: &Policy, after: &Policy, registry: &UpstreamRegistry) -> Vec<Retired> {
    let kept: HashSet<SocketAddr> = after
        .providers
        .values()
        .flat_map(|p| p.endpoints.iter().filter_map(|e| e.addr()))
        .collect();
    let mut retired: HashMap<SocketAddr, Retired> = HashMap::new();
    for provider in before.providers.values() {
        let states = registry.states(provider);
        for (endpoint, state) in provider.endpoints.iter().zip(states) {
            let Some(addr) = endpoint.addr().filter(|a| !kept.contains(a)) else {
                continue;
            };
            let entry = retired.entry(addr).or_insert_with(|| Retired {
                addr,
                states: Vec::new(),
                idle_timeout: Duration::ZERO,
            });
            entry.states.push(state.clone());
            entry.idle_timeout = entry.idle_timeout.max(provider.pool.idle_timeout);
        }
    }
    retired.into_values().collect()
}

async fn close_when_drained(retired: Retired) {
    let deadline = tokio::time::Instant::now() + retired.idle_timeout;
    while retired.states.iter().any(|s| s.in_flight() > 0) {
        if tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
    let addr = retired.addr;
    match tokio::task::spawn_blocking(move || close_connections_to(addr)).await {
        Ok(Ok(closed)) => {
            tracing::info!(endpoint = %addr, closed, "closed idle connections to an endpoint that left the policy")
        }
        Ok(Err(e)) => {
            tracing::warn!(endpoint = %addr, error = %e, "cannot close idle connections to an endpoint that left the policy; its idle_timeout will")
        }
        Err(e) => tracing::warn!(endpoint = %addr, error = %e, "closing idle connections failed"),
    }
}

/// Shuts down every socket of this process connected to `addr`; how many.
fn close_connections_to(addr: SocketAddr) -> std::io::Result<usize> {
    let table = if addr.is_ipv4() {
        "/proc/self/net/tcp"
    } else {
        "/proc/self/net/tcp6"
    };
    let inodes = socket_inodes_to(&std::fs::read_to_string(table)?, addr);
    if inodes.is_empty() {
        return Ok(0);
    }
    let mut closed = 0;
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Ok(entry) = entry else { continue };
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Some(inode) = std::fs::read_link(entry.path())
            .ok()
            .and_then(|target| socket_inode(target.to_str()?))
        else {
            continue;
        };
        if inodes.contains(&inode) && shutdown_if_same(fd, inode) {
            closed += 1;
        }
    }
    Ok(closed)
}

/// Shuts `fd` down if it still is the socket with `inode`.
fn shutdown_if_same(fd: i32, inode: u64) -> bool {
    // SAFETY: the descriptor is only borrowed for the two calls below and never closed here; if
    // it was closed meanwhile, fstat fails or names another inode and nothing else is done.
    let fd = unsafe { rustix::fd::BorrowedFd::borrow_raw(fd) };
    match rustix::fs::fstat(fd) {
        Ok(stat) if stat.st_ino == inode => {
            rustix::net::shutdown(fd, rustix::net::Shutdown::Both).is_ok()
        }
        _ => false,
    }
}

/// `socket:[12345]` -> 12345.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The inodes of the established sockets in a `/proc/net/tcp` or `tcp6` table whose remote end is
/// `addr`.
fn socket_inodes_to(table: &str, addr: SocketAddr) -> HashSet<u64> {
    const ESTABLISHED: &str = "01";
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (remote, state, inode) = (fields.get(2)?, fields.get(3)?, fields.get(9)?);
            (*state == ESTABLISHED && parse_proc_addr(remote)? == addr)
                .then(|| inode.parse().ok())
                .flatten()
        })
        .collect()
}

/// A `/proc/net/tcp*` address: hex IP (each 32-bit word in host byte order) and hex port.
fn parse_proc_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = ip.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            let v6 = Ipv6Addr::from(bytes);
            // Dual-stack sockets list IPv4 peers as mapped addresses.
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_lines_name_the_sockets_connected_to_an_address() {
        // Two established connections to 127.0.0.1:8080 (0x1F90), one in TIME_WAIT, one elsewhere.
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:A000 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 111 1 0 20 4 30 10 -1\n\
   1: 0100007F:A001 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 222 1 0 20 4 30 10 -1\n\
   2: 0100007F:A002 0100007F:1F90 06 00000000:00000000 03:00001000 00000000     0        0 0 3 0\n\
   3: 0100007F:A003 0100007F:1F91 01 00000000:00000000 00:00000000 00000000     0        0 333 1 0 20 4 30 10 -1\n";
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(socket_inodes_to(table, addr), HashSet::from([111, 222]));
        assert_eq!(
            parse_proc_addr("0000000000000000FFFF00000100007F:1F90"),
            Some(addr)
        );
        assert_eq!(
            parse_proc_addr("00000000000000000000000001000000:0050"),
            Some("[::1]:80".parse().unwrap())
        );
        assert_eq!(socket_inode("socket:[4242]"), Some(4242));
        assert_eq!(socket_inode("pipe:[4242]"), None);
    }
}
