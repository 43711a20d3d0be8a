//! Free ports on 127.0.0.1: bound by the operating system, then released
//! for the daemon or stream under test to take.

use std::net::{SocketAddr, TcpListener, UdpSocket};

/// A TCP port that was free a moment ago (for an API listener).
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free TCP port on 127.0.0.1")
        .port()
}

/// A UDP address on 127.0.0.1 that was free a moment ago (for a stream).
pub fn free_udp_addr() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port on 127.0.0.1")
}

/// The port of [`free_udp_addr`].
pub fn free_udp_port() -> u16 {
    free_udp_addr().port()
}
