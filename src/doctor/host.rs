//! `tidegate doctor`'s checks of the host the gateway would run on.

use std::io;
use std::net::{SocketAddr, TcpListener};

use crate::check::Check;

/// Binds `listen` and lets it go at once.
pub fn listener(listen: SocketAddr) -> Check {
    const NAME: &str = "listener";
    let error = match TcpListener::bind(listen) {
        Ok(socket) => {
            drop(socket);
            return Check::ok(NAME, format!("{listen} is free"));
        }
        Err(e) => e,
    };
    let fix = match error.kind() {
        io::ErrorKind::AddrInUse => {
            "stop what listens there, or set another `listen` (--listen, TIDEGATE_LISTEN); if it is this gateway \
             already running, doctor is expected to fail here"
        }
        io::ErrorKind::PermissionDenied => "use a port above 1023, or give the process CAP_NET_BIND_SERVICE",
        io::ErrorKind::AddrNotAvailable => "no interface of this host has that address: use one it has, or 0.0.0.0",
        _ => "set a `listen` address this host can bind (--listen, TIDEGATE_LISTEN)",
    };
    Check::fail(NAME, format!("cannot bind {listen}: {error}"), fix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Outcome;

    #[test]
    fn a_port_in_use_fails_with_a_fix() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let check = listener(taken.local_addr().unwrap());
        assert_eq!(check.outcome, Outcome::Fail, "{check:?}");
        assert!(check.fix.as_deref().unwrap().contains("another `listen`"), "{check:?}");
        drop(taken);
        assert_eq!(listener("127.0.0.1:0".parse().unwrap()).outcome, Outcome::Ok);
    }
}
