//! What holding costs, read from /proc while it happens: the server's process tree
//! ([`ServerWatch`]), the kernel's memory ([`KernelWatch`]), and, before anything is
//! opened, whether the machine has the memory a hold of N connections will need
//! (`check_memory`).
//!
//! Both watches take one reading before the first connect and keep the largest of
//! each figure seen while holding; the difference, divided by the connections held,
//! is the cost of one connection. The kernel's figures are the whole machine's, so
//! anything else running meanwhile (a build filling the dentry cache) shows in them
//! too: they are a measurement of a quiet machine, an estimate of a busy one.

use super::report::{KernelStats, ServerStats};
use crate::account::Watch;
use crate::error::bad_input;
use crate::proctree::TreeSample;
use crate::sys::KernelMemory;
use anyhow::Result;

/// The kernel's memory for one held connection on loopback, both ends (the client's
/// socket and the server's): per end a `tcp_sock` (2,368 B here), a socket inode
/// (832 B), a dentry, a file and an epoll item, plus the slab pages' slack. Measured
/// with `concur hold` on this kind of machine (Linux 6.18): the slab grew by 10.2 to
/// 10.3 KB per connection at 19,000 and 40,000 connections. Rounded down to 10 KiB,
/// for the estimate of `check_memory`.
pub const KERNEL_BYTES_PER_CONN: u64 = 10 * 1024;

/// This client's own memory per connection: a slot (socket, state, verifier) and
/// mio's registration, measured at about 150 B (a hold's peak RSS at 19,000 less at
/// 1,000); rounded up.
pub const CLIENT_BYTES_PER_CONN: u64 = 256;

/// A server's user-space memory per connection assumed by the estimate: what
/// concur's event loops measure (300 to 600 B); a thread or a process per
/// connection costs far more, which the check does not try to guess.
pub const SERVER_BYTES_PER_CONN: u64 = 512;

/// Refuse a hold whose estimated memory is not available: with the server on this
/// machine (`local`), both ends' kernel sockets and the server's user space count;
/// else only this end's. Exit 2 with one line naming the numbers.
pub fn check_memory(conns: usize, local: bool) -> Result<()> {
    let Some(k) = KernelMemory::read() else {
        return Ok(()); // nothing to check against
    };
    let (per, what) = if local {
        (
            KERNEL_BYTES_PER_CONN + CLIENT_BYTES_PER_CONN + SERVER_BYTES_PER_CONN,
            format!(
                "{KERNEL_BYTES_PER_CONN} B kernel for both ends, {CLIENT_BYTES_PER_CONN} B this \
                 client, {SERVER_BYTES_PER_CONN} B server"
            ),
        )
    } else {
        (
            KERNEL_BYTES_PER_CONN / 2 + CLIENT_BYTES_PER_CONN,
            format!(
                "{} B kernel for this end, {CLIENT_BYTES_PER_CONN} B this client",
                KERNEL_BYTES_PER_CONN / 2
            ),
        )
    };
    let need = conns as u64 * per;
    if need > k.mem_available_bytes {
        return Err(bad_input(format!(
            "--conns {conns} needs about {:.2} GB ({per} B per connection: {what}), but \
             MemAvailable is {:.2} GB; ask for fewer, free memory, or pass --no-memory-check",
            need as f64 / 1e9,
            k.mem_available_bytes as f64 / 1e9
        )));
    }
    Ok(())
}

/// The server's process tree: its account ([`crate::account::Watch`]) from before
/// opening to the end of holding, and its memory before opening and at its peak.
pub struct ServerWatch {
    watch: Watch,
    before: TreeSample,
    threads_before: u64,
    processes_before: u64,
    children: (usize, usize),
}

impl ServerWatch {
    /// The first reading; `--server-pid` naming no process is exit 2.
    pub fn start(pid: Option<u32>) -> Result<Option<ServerWatch>> {
        let Some(pid) = pid else { return Ok(None) };
        let gone = || bad_input(format!("--server-pid {pid}: no such process in /proc"));
        let mut watch = Watch::start(pid).ok_or_else(gone)?;
        let before = watch.read_memory().ok_or_else(gone)?;
        let now = watch.now();
        let children = crate::sys::children(pid).len();
        Ok(Some(ServerWatch {
            watch,
            before,
            threads_before: now.threads_now,
            processes_before: now.processes_now,
            children: (children, children),
        }))
    }

    /// Another reading of its memory while holding (the watch keeps the largest).
    pub fn sample(&mut self) {
        self.watch.read_memory();
        let kids = crate::sys::children(self.watch.pid()).len();
        self.children.1 = self.children.1.max(kids);
    }

    /// The last reading, taken while the connections are still held.
    pub fn finish(self) -> ServerStats {
        let b = self.before;
        let p = self.watch.memory_peak().unwrap_or(b);
        let pss = b.pss_bytes.is_some()
            && p.pss_bytes.is_some()
            && b.private_bytes.is_some()
            && p.private_bytes.is_some();
        let pid = self.watch.pid();
        let account = self.watch.finish();
        let peak = |f: &crate::account::Figure, before: u64| f.value.map_or(before, |v| v as u64);
        ServerStats {
            pid,
            rss_before_bytes: b.rss_bytes,
            rss_holding_bytes: p.rss_bytes,
            pss_before_bytes: b.pss_bytes.filter(|_| pss),
            pss_holding_bytes: p.pss_bytes.filter(|_| pss),
            private_before_bytes: b.private_bytes.filter(|_| pss),
            private_holding_bytes: p.private_bytes.filter(|_| pss),
            memory: if pss { "pss" } else { "rss" }.to_string(),
            threads_before: self.threads_before,
            threads_holding: peak(&account.threads_peak, self.threads_before),
            children_before: self.children.0,
            children_holding: self.children.1,
            processes_before: self.processes_before as usize,
            processes_holding: peak(&account.processes_peak, self.processes_before) as usize,
            account: Some(account),
        }
    }
}

/// The kernel's memory, read before opening and (peak) while holding.
pub struct KernelWatch {
    before: KernelMemory,
    peak: KernelMemory,
    overflows_before: Option<u64>,
    overflows: Option<u64>,
    both_ends: bool,
}

impl KernelWatch {
    /// The first reading; `None` where /proc cannot be read.
    pub fn start(both_ends: bool) -> Option<KernelWatch> {
        let before = KernelMemory::read()?;
        Some(KernelWatch {
            before,
            peak: before,
            overflows_before: crate::sys::listen_overflows(),
            overflows: None,
            both_ends,
        })
    }

    /// The open phase is over: count the accept-queue overflows it caused.
    pub fn opened(&mut self) {
        self.overflows = self
            .overflows_before
            .zip(crate::sys::listen_overflows())
            .map(|(b, a)| a.saturating_sub(b));
    }

    /// Another reading while holding: keep the largest of each figure.
    pub fn sample(&mut self) {
        if let Some(k) = KernelMemory::read() {
            self.peak = self.peak.max(k);
        }
    }

    pub fn stats(&self) -> KernelStats {
        let (b, p) = (&self.before, &self.peak);
        KernelStats {
            slab_before_bytes: b.slab_bytes,
            slab_holding_bytes: p.slab_bytes,
            sunreclaim_before_bytes: b.sunreclaim_bytes,
            sunreclaim_holding_bytes: p.sunreclaim_bytes,
            tcp_mem_before_bytes: b.tcp_mem_bytes,
            tcp_mem_holding_bytes: p.tcp_mem_bytes,
            tcp_inuse_before: b.tcp_inuse,
            tcp_inuse_holding: p.tcp_inuse,
            mem_available_before_bytes: b.mem_available_bytes,
            both_ends: self.both_ends,
            listen_overflows: self.overflows,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_hold_fits_and_an_impossible_one_is_refused() {
        check_memory(1000, true).expect("1000 connections fit anywhere");
        let err = check_memory(usize::MAX / 8192, true).unwrap_err();
        assert_eq!(crate::error::exit_code(&err), 2, "{err}");
        let line = err.to_string();
        assert!(
            line.contains("MemAvailable") && line.contains("--no-memory-check"),
            "{line}"
        );
    }

    #[test]
    fn watching_this_process_tree() {
        let _serial = crate::account::watching_self();
        let mut w = ServerWatch::start(Some(std::process::id()))
            .unwrap()
            .unwrap();
        w.sample();
        let s = w.finish();
        assert!(s.account.is_some_and(|a| a.samples >= 2));
        assert!(s.processes_holding >= 1 && s.rss_holding_bytes >= s.rss_before_bytes);
        assert!(ServerWatch::start(Some(u32::MAX - 1)).is_err());
    }
}
