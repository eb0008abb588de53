//! The forking models (`processes`, `prefork`) leave nothing behind when their
//! server is killed outright: each child asked the kernel to SIGKILL it when its
//! parent dies (PR_SET_PDEATHSIG, `src/serve/supervise.rs`). Without that, `kill -9`
//! of the server would leave workers holding the port and children holding their
//! clients.
//!
//! They also stop gracefully however SIGTERM reaches them: each child has a shutdown
//! pipe of its own, so a SIGTERM to the whole process group (systemd stopping the
//! service) lets every child finish the reply it owes, and a SIGTERM to one worker
//! stops only that worker.
//!
//! Everything here waits on events, never on a clock: a pidfd becomes readable when
//! its process exits, and this test process makes itself a child subreaper so the
//! orphans come to it and it can read how they died.

mod serve_harness;

use serve_harness::{IO_TIMEOUT, Server, read_n, read_to_eof};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

/// The children a test expects to die, each with a pidfd (which names the process
/// itself, never a later one that reuses its pid). SIGKILLed on drop, so a failing
/// test leaves no orphan behind.
struct Orphans(Vec<(u32, OwnedFd)>);

impl Drop for Orphans {
    fn drop(&mut self) {
        for (_, fd) in &self.0 {
            // SAFETY: pidfd_send_signal(2) on our own pidfd; harmless once it exited.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
        }
    }
}

/// Orphaned descendants are re-parented to this process (not to init), so it can
/// reap them and see their exit status.
fn become_subreaper() {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) takes an integer and touches no memory.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong) };
    assert_eq!(
        rc,
        0,
        "PR_SET_CHILD_SUBREAPER: {}",
        std::io::Error::last_os_error()
    );
}

/// A descriptor that becomes readable when process `pid` exits.
fn pidfd(pid: u32) -> OwnedFd {
    // SAFETY: pidfd_open(2) takes a pid and flags; it returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    assert!(
        fd >= 0,
        "pidfd_open({pid}): {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: the descriptor was just returned to us and is owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// Wait (at most `IO_TIMEOUT`, a guard against hanging) for the pidfd to report
/// its process's exit.
fn exits(fd: &OwnedFd) -> bool {
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, left.as_millis() as libc::c_int) };
        if n > 0 {
            return true;
        }
        let interrupted = n < 0 && std::io::Error::last_os_error().kind() == ErrorKind::Interrupted;
        if !interrupted || left.is_zero() {
            return false;
        }
    }
}

/// The state letter of process `pid` in /proc/PID/stat (`R`, `S`, `Z`, ...).
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].chars().next()
}

/// Wait (bounded) until the server has exactly `want` children, each asleep: for
/// these children that means waiting in poll(2) for a client or the listener, so
/// each is past its start, where it checks that its parent is alive. (A child
/// killed before that finds its parent gone and exits 1 instead: right, but not
/// the death signal this test is about.)
fn settled_children(server: &Server, want: usize) -> Vec<u32> {
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let kids = concur::sys::children(server.pid);
        let asleep = kids.iter().all(|&pid| state(pid) == Some('S'));
        if (kids.len() == want && asleep) || Instant::now() >= deadline {
            return kids;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Start `model`, hold `clients` connections that have each had a reply (so a child
/// is serving every one of them), expect `children` children, SIGKILL the server,
/// and check every child dies of SIGKILL and every client sees its connection end.
fn children_die_with_the_server(model: &str, extra: &[&str], clients: usize, kids: usize) {
    become_subreaper();
    let mut server = Server::start(model, "echo", extra);
    let mut held: Vec<_> = (0..clients)
        .map(|_| {
            let mut s = server.connect();
            s.write_all(b"ping").unwrap();
            assert_eq!(read_n(&mut s, 14), b"Received: ping", "{model}: round trip");
            s
        })
        .collect();
    let pids = settled_children(&server, kids);
    let states: Vec<_> = pids.iter().map(|&pid| state(pid)).collect();
    assert_eq!(pids.len(), kids, "{model}: children {pids:?} ({states:?})");
    // The pidfds are opened while the children are certainly alive (no pid reuse).
    let orphans = Orphans(pids.iter().map(|&pid| (pid, pidfd(pid))).collect());

    server.signal(libc::SIGKILL);
    assert!(
        server.wait_exit(IO_TIMEOUT).is_some(),
        "{model}: server survived SIGKILL"
    );

    for (pid, fd) in &orphans.0 {
        let pid = *pid;
        assert!(exits(fd), "{model}: child {pid} outlived its killed server");
        let mut status = 0;
        // SAFETY: waitpid(2) on an exited process that is now our child (subreaper).
        let reaped = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
        assert_eq!(reaped, pid as libc::pid_t, "{model}: reaping child {pid}");
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL,
            "{model}: child {pid} ended with status {status:#x}, not the death signal"
        );
    }
    for s in &mut held {
        match s.read(&mut [0u8; 64]) {
            Ok(0) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            other => panic!("{model}: a held client is still connected: {other:?}"),
        }
    }
}

#[test]
fn processes_children_die_with_a_killed_server() {
    children_die_with_the_server("processes", &[], 3, 3);
}

#[test]
fn prefork_workers_die_with_a_killed_server() {
    // Two workers, each serving a held client; a third worker stays idle in accept.
    children_die_with_the_server("prefork", &["--workers", "3"], 2, 3);
}

/// CPU ticks (user + system) process `pid` has used, from /proc/PID/stat.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
    Some(fields[11].parse::<u64>().ok()? + fields[12].parse::<u64>().ok()?)
}

/// Wait (bounded) until one of the server's children is computing: running, with
/// CPU time grown since `before` was read (reading a request takes microseconds, a
/// tick is 10 ms, so that child is inside fib). Returns it, or `None` if the reply
/// came first (a very fast machine): then there is nothing in flight to protect.
fn computing_child(server: &Server, before: &[(u32, u64)], s: &std::net::TcpStream) -> Option<u32> {
    let deadline = Instant::now() + IO_TIMEOUT;
    while Instant::now() < deadline {
        for (pid, ticks) in before {
            if state(*pid) == Some('R') && cpu_ticks(*pid).is_some_and(|t| t > *ticks) {
                return Some(*pid);
            }
        }
        if serve_harness::has_reply(s) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("{}: no child started computing", server.model);
}

/// SIGTERM to the server's whole process group while a child computes a reply:
/// the child finishes it, sends it and closes; nobody dies of the signal; the
/// server exits 0.
fn group_sigterm_lets_the_reply_out(model: &str, extra: &[&str], kids: usize) {
    let mut server = Server::start_with(model, "fib", extra, |cmd| {
        cmd.process_group(0);
    });
    // A client with a reply first, so a child is serving it (processes forks on accept).
    let mut s = server.connect();
    s.write_all(b"1\n").unwrap();
    assert_eq!(read_n(&mut s, 2), b"1\n", "{model}: first reply");
    let pids = settled_children(&server, kids);
    assert_eq!(pids.len(), kids, "{model}: children {pids:?}");
    let before: Vec<(u32, u64)> = pids.iter().map(|&p| (p, cpu_ticks(p).unwrap())).collect();
    s.write_all(b"40\n").unwrap();
    let busy = computing_child(&server, &before, &s);
    // SAFETY: kill(2) on the process group the server leads (process_group(0)).
    unsafe { libc::kill(-(server.pid as libc::pid_t), libc::SIGTERM) };
    let reply = read_to_eof(&mut s);
    assert_eq!(
        reply,
        format!("{}\n", concur::fib::exact(40)).as_bytes(),
        "{model}: the reply owed when SIGTERM came (child {busy:?})"
    );
    let status = server.wait_exit(IO_TIMEOUT).expect("server exits");
    assert_eq!(status.code(), Some(0), "{model}: exit status");
    let log = server.final_log(IO_TIMEOUT);
    assert!(
        !log.contains("killed"),
        "{model}: a child was killed:\n{log}"
    );
}

#[test]
fn processes_child_finishes_its_reply_on_a_group_sigterm() {
    group_sigterm_lets_the_reply_out("processes", &[], 1);
}

#[test]
fn prefork_workers_finish_their_reply_on_a_group_sigterm() {
    group_sigterm_lets_the_reply_out("prefork", &["--workers", "2"], 2);
}

#[test]
fn reuseport_fork_workers_finish_their_reply_on_a_group_sigterm() {
    group_sigterm_lets_the_reply_out("reuseport", &["--workers", "2", "--fork"], 2);
}

/// SIGTERM aimed at one pool worker stops only that worker, and gracefully (it
/// exits 0, not killed by the signal): the server keeps serving and replaces it.
fn sigterm_to_one_worker_stops_only_it(model: &str, extra: &[&str]) {
    let mut server = Server::start(model, "echo", extra);
    let pids = settled_children(&server, 2);
    assert_eq!(pids.len(), 2, "{model}: workers {pids:?}");
    let victim = pids[0];
    let fd = pidfd(victim);
    // SAFETY: kill(2) on a worker of our own server.
    unsafe { libc::kill(victim as libc::pid_t, libc::SIGTERM) };
    assert!(exits(&fd), "{model}: worker {victim} ignored SIGTERM");
    assert!(
        server.wait_for_log(&format!("(pid {victim}) exited: replacing it"), IO_TIMEOUT),
        "{model}: the worker was not replaced"
    );
    assert!(
        server.alive(),
        "{model}: the server stopped with its worker"
    );
    serve_harness::probe_echo(&server);
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(IO_TIMEOUT).and_then(|s| s.code()), Some(0));
    let log = server.final_log(IO_TIMEOUT);
    assert!(!log.contains("killed"), "{model}: {log}");
    assert!(
        !log.contains(&format!("child {victim} exited with status")),
        "{model}: worker {victim} did not exit 0:\n{log}"
    );
}

#[test]
fn prefork_worker_stops_alone_on_sigterm() {
    sigterm_to_one_worker_stops_only_it("prefork", &["--workers", "2"]);
}

#[test]
fn reuseport_fork_worker_stops_alone_on_sigterm() {
    sigterm_to_one_worker_stops_only_it("reuseport", &["--workers", "2", "--fork"]);
}
