//! Upstream peers: a route's resolved address becomes a pingora peer with the configured
//! timeouts. Built from a socket address, so pingora never does DNS (which panics on failure)
//! on the request path.

use pingora_core::upstreams::peer::HttpPeer;
use std::net::SocketAddr;
use std::time::Duration;

/// Upstream connection timeouts applied to every peer.
#[derive(Debug, Clone, Copy)]
pub struct PeerTimeouts {
    pub connect: Duration,
    pub read: Duration,
    pub write: Duration,
    pub idle: Duration,
}

impl PeerTimeouts {
    pub fn from_config(p: &crate::config::ProxySettings) -> PeerTimeouts {
        PeerTimeouts {
            connect: p.connect_timeout,
            read: p.read_timeout,
            write: p.write_timeout,
            idle: p.idle_timeout,
        }
    }
}

/// The peer for `addr` (plain HTTP).
pub fn peer(addr: SocketAddr, timeouts: &PeerTimeouts) -> HttpPeer {
    let mut peer = HttpPeer::new(addr, false, String::new());
    peer.options.connection_timeout = Some(timeouts.connect);
    peer.options.total_connection_timeout = Some(timeouts.connect);
    peer.options.read_timeout = Some(timeouts.read);
    peer.options.write_timeout = Some(timeouts.write);
    peer.options.idle_timeout = Some(timeouts.idle);
    peer
}
