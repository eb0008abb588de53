//! Binding the listening socket, as the talk does it (SO_REUSEADDR, so a restarted
//! server need not wait out TIME_WAIT) but with a backlog of 1024 instead of 5, and
//! every failure turned into one line the user can act on (exit status 2).

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
/// listeners to the same address afterwards, see [`bind_reuseport`]).
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
    for sa in std::iter::once(first).chain(resolved.iter().skip(1)) {
        match bind_one(*sa, reuse_port) {
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
    bind_one(sa, true)
}

fn bind_one(sa: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(sa), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&sa.into())?;
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
    fn bad_address_is_bad_input() {
        for addr in ["nonsense", "127.0.0.1", "127.0.0.1:99999", "300.1.1.1:80"] {
            let err = bind(addr).unwrap_err();
            assert_eq!(exit_code(&err), 2, "{addr}: {err}");
        }
    }
}
