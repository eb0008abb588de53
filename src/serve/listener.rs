//! Binding the listening socket, as the talk does it (SO_REUSEADDR, so a restarted
//! server need not wait out TIME_WAIT) but with a backlog of 1024 instead of 5, and
//! every failure turned into one line the user can act on (exit status 2).
//!
//! SO_REUSEPORT and a busy port: a socket bound with SO_REUSEPORT may join a port
//! another socket (of the same user) already listens on with SO_REUSEPORT, and the
//! kernel then silently splits the traffic between two unrelated servers. So the
//! first listener of a `reuseport` server is bound *without* it, which fails with
//! EADDRINUSE if anything holds the port, and only then, before listen(), opened to
//! SO_REUSEPORT so the server's own further listeners can join (the kernel reads the
//! flag of the sockets already bound when a new one binds). The check is the bind
//! itself, atomic in the kernel: no window between looking and binding, as reading
//! /proc/net/tcp first would leave.

use crate::error::bad_input;
use anyhow::Result;
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};

/// Pending connections the kernel queues before accept() takes them.
pub const BACKLOG: i32 = 1024;

/// Bind `addr` (`HOST:PORT`; port 0 picks a free port) and listen. The listener is
/// non-blocking: every model waits for readiness before accepting.
pub fn bind(addr: &str) -> Result<TcpListener> {
    bind_with(addr, false)
}

/// [`bind`], with SO_REUSEPORT if `reuse_port` (the `reuseport` model binds more
/// listeners to the same address afterwards, see [`bind_reuseport`]). Either way a
/// port another socket holds is refused (see the module doc).
pub fn bind_with(addr: &str, reuse_port: bool) -> Result<TcpListener> {
    let resolved: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| {
            bad_input(format!(
                "bad --addr '{addr}': {e} (expected HOST:PORT, e.g. 127.0.0.1:25000)"
            ))
        })?
        .collect();
    let Some(first) = resolved.first() else {
        return Err(bad_input(format!("bad --addr '{addr}': no address found")));
    };
    let mut last_err = None;
    let join = if reuse_port {
        ReusePort::OpenAfterBind
    } else {
        ReusePort::Never
    };
    for sa in std::iter::once(first).chain(resolved.iter().skip(1)) {
        match bind_one(*sa, join) {
            Ok(l) => return Ok(l),
            Err(e) => last_err = Some((*sa, e)),
        }
    }
    let (sa, e) = last_err.expect("at least one address was tried");
    let hint = match e.raw_os_error() {
        Some(libc::EADDRINUSE) => {
            " (is another server running there? pick another port, or port 0)"
        }
        Some(libc::EACCES) => " (ports below 1024 need privileges)",
        Some(libc::EADDRNOTAVAIL) => " (that address is not on this machine)",
        _ => "",
    };
    Err(bad_input(format!("cannot listen on {sa}: {e}{hint}")))
}

/// Another listener on an address already bound with SO_REUSEPORT.
pub fn bind_reuseport(sa: SocketAddr) -> std::io::Result<TcpListener> {
    bind_one(sa, ReusePort::Join)
}

/// How a socket uses SO_REUSEPORT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReusePort {
    /// Not at all: the port is this socket's alone.
    Never,
    /// Bind exclusively (refusing a busy port), then let later listeners join.
    OpenAfterBind,
    /// Join a port this server already holds.
    Join,
}

fn bind_one(sa: SocketAddr, join: ReusePort) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(sa), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if join == ReusePort::Join {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&sa.into())?;
    if join == ReusePort::OpenAfterBind {
        socket.set_reuse_port(true)?;
    }
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::exit_code;

    #[test]
    fn port_zero_picks_a_port() {
        let l = bind("127.0.0.1:0").unwrap();
        assert_ne!(l.local_addr().unwrap().port(), 0);
    }

    #[test]
    fn busy_port_is_bad_input() {
        let l = bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let err = bind(&addr).unwrap_err();
        assert_eq!(exit_code(&err), 2);
        assert!(err.to_string().contains("cannot listen"), "{err}");
    }

    #[test]
    fn reuseport_listeners_share_a_port() {
        let first = bind_with("127.0.0.1:0", true).unwrap();
        let addr = first.local_addr().unwrap();
        let second = bind_reuseport(addr).unwrap();
        assert_eq!(second.local_addr().unwrap(), addr);
        let err = bind(&addr.to_string()).unwrap_err();
        assert_eq!(
            exit_code(&err),
            2,
            "a plain bind must still see the port busy"
        );
    }

    #[test]
    fn reuseport_refuses_a_port_another_reuseport_socket_holds() {
        // Another server of the same user, listening with SO_REUSEPORT.
        let other = bind_reuseport("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = other.local_addr().unwrap();
        let err = bind_with(&addr.to_string(), true).unwrap_err();
        assert_eq!(exit_code(&err), 2, "{err}");
        assert!(err.to_string().contains("cannot listen"), "{err}");
        // Once that server is gone, the port is ours, and our own listeners join.
        drop(other);
        let first = bind_with(&addr.to_string(), true).unwrap();
        let second = bind_reuseport(addr).unwrap();
        assert_eq!(second.local_addr().unwrap(), first.local_addr().unwrap());
        // And the kernel spreads connections over both: the first listener, opened
        // to SO_REUSEPORT after its bind, is in the same group as the second.
        let clients: Vec<_> = (0..64)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        let accepted = |l: &TcpListener| std::iter::from_fn(|| l.accept().ok()).count();
        let (a, b) = (accepted(&first), accepted(&second));
        assert_eq!(a + b, clients.len());
        assert!(
            a > 0 && b > 0,
            "one listener got every connection: {a} + {b}"
        );
    }

    #[test]
    fn bad_address_is_bad_input() {
        for addr in ["nonsense", "127.0.0.1", "127.0.0.1:99999", "300.1.1.1:80"] {
            let err = bind(addr).unwrap_err();
            assert_eq!(exit_code(&err), 2, "{addr}: {err}");
        }
    }
}
