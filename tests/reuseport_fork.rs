//! `concur serve --model reuseport --fork`: the event loops as worker processes
//! (nginx's `worker_processes`), through the real binary. Every check reads an
//! event or /proc state (children, their descriptors, the kernel's listening
//! sockets), never a clock; waits are bounded only as a guard against hangs.
//!
//! Also here: the refusal of a port another server already listens on (SO_REUSEPORT
//! would otherwise let a second server join it) and the start-up warning when
//! `--max-conns` cannot fit under the descriptor limit.

mod serve_harness;

use serve_harness::{Server, closed_by_server, echo_exchange, fib_exchange, read_n, socket_inodes};
use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Worker processes in these tests.
const WORKERS: usize = 3;

/// A guard against hangs, never a verdict.
const LIMIT: Duration = Duration::from_secs(30);

fn fork_server(service: &str, extra: &[&str]) -> Server {
    let workers = WORKERS.to_string();
    let mut args = vec!["--workers", &workers, "--fork"];
    args.extend_from_slice(extra);
    Server::start("reuseport", service, &args)
}

fn children(pid: u32) -> Vec<u32> {
    concur::sys::children(pid)
}

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

/// Inodes of the sockets listening on `port` (TCP, IPv4 and IPv6), from the kernel.
fn listening_inodes(port: u16) -> BTreeSet<u64> {
    let mut found = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let Some(local_port) = f.get(1).and_then(|a| a.rsplit(':').next()) else {
                continue;
            };
            if u16::from_str_radix(local_port, 16) == Ok(port) && f.get(3) == Some(&"0A") {
                found.extend(f.get(9).and_then(|i| i.parse::<u64>().ok()));
            }
        }
    }
    found
}

/// Wait (bounded) until `done` holds; whether it did.
fn wait_until(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + LIMIT;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

/// Whether process `pid` still exists (a zombie counts: it has not been reaped).
fn exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Clients of both services, all connected at once, every reply byte checked.
#[test]
fn fork_serves_a_matrix_of_clients() {
    const CLIENTS: usize = 24;
    for service in ["echo", "fib"] {
        let server = fork_server(service, &[]);
        let start = std::sync::Barrier::new(CLIENTS);
        std::thread::scope(|scope| {
            for i in 0..CLIENTS {
                let (server, start) = (&server, &start);
                scope.spawn(move || {
                    let stream = server.try_connect();
                    start.wait();
                    let stream = stream.expect("connect");
                    let (seed, half_close) = (i as u64 * 7919, i % 2 == 0);
                    match service {
                        "fib" => fib_exchange(stream, "reuseport --fork", seed, 20, half_close),
                        _ => echo_exchange(stream, "reuseport --fork", seed, 800, half_close),
                    }
                });
            }
        });
    }
}

/// Each worker is a single-threaded process with its own descriptor table holding
/// one listener of its own; the parent serves nothing and is single-threaded (it
/// forks). The listening line comes only once all of them run, and the kernel
/// spreads held connections over the workers' processes.
#[test]
fn workers_are_processes_each_with_its_own_listener() {
    let server = fork_server("echo", &[]);
    let kids = children(server.pid);
    assert_eq!(kids.len(), WORKERS, "announced before every worker ran");
    assert_eq!(
        threads(server.pid),
        1,
        "the supervising parent has no threads"
    );
    let listening = listening_inodes(server.addr.port());
    let mut theirs = BTreeSet::new();
    for &kid in &kids {
        assert_eq!(threads(kid), 1, "worker {kid} is one event loop");
        let own: Vec<u64> = socket_inodes(kid)
            .intersection(&listening)
            .copied()
            .collect();
        assert_eq!(own.len(), 1, "worker {kid} listens on {own:?}");
        assert!(
            theirs.insert(own[0]),
            "two workers share listener {}",
            own[0]
        );
    }
    // Hold connections that have each had a round trip: every worker holds some.
    let mut held = Vec::new();
    for _ in 0..60 {
        let mut s = server.connect();
        s.write_all(b"x").unwrap();
        assert_eq!(read_n(&mut s, 11), b"Received: x");
        held.push(s);
    }
    for &kid in &kids {
        let sockets = socket_inodes(kid).len();
        assert!(
            sockets > 1,
            "worker {kid} holds no client ({sockets} sockets)"
        );
    }
}

/// A SIGKILLed worker is replaced by a new process with a listener, and the server
/// goes on serving.
#[test]
fn a_killed_worker_is_replaced() {
    let server = fork_server("fib", &[]);
    let before: BTreeSet<u32> = children(server.pid).into_iter().collect();
    let victim = *before.iter().next().unwrap();
    // SAFETY: kill(2) on a worker of our own server.
    unsafe { libc::kill(victim as libc::pid_t, libc::SIGKILL) };
    let mut now = BTreeSet::new();
    let replaced = wait_until(|| {
        now = children(server.pid).into_iter().collect();
        now.len() == WORKERS && !now.contains(&victim)
    });
    assert!(replaced, "workers after the kill: {now:?} (was {before:?})");
    assert!(server.wait_for_log("replacing it", LIMIT));
    let listening = listening_inodes(server.addr.port());
    let new = *now.difference(&before).next().unwrap();
    assert!(
        wait_until(|| socket_inodes(new).intersection(&listening).count() == 1),
        "the replacement listens"
    );
    for i in 0..12 {
        fib_exchange(server.connect(), "reuseport --fork", i, 10, true);
    }
}

/// SIGTERM: every worker finishes and exits, and so does the parent, with status 0,
/// leaving no process behind. A client held meanwhile is closed, not reset.
#[test]
fn sigterm_exits_zero_and_leaves_no_process() {
    let mut server = fork_server("echo", &[]);
    let kids = children(server.pid);
    let mut held = server.connect();
    held.write_all(b"x").unwrap();
    assert_eq!(read_n(&mut held, 11), b"Received: x");
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(LIMIT).expect("server exited");
    assert_eq!(status.code(), Some(0), "{status:?}");
    for kid in kids {
        assert!(!exists(kid), "worker {kid} outlived the server");
    }
    assert!(closed_by_server(&held));
}

/// `--max-conns` is for the whole server: with connections spread over the
/// workers, exactly that many are served and the rest are closed at once.
#[test]
fn max_conns_counts_across_workers() {
    const MAX: usize = 5;
    let server = fork_server("echo", &["--max-conns", &MAX.to_string()]);
    let holding = || {
        children(server.pid)
            .into_iter()
            .filter(|&kid| socket_inodes(kid).len() > 1)
            .count()
    };
    // The kernel hashes each connection to a worker: now and then all MAX land on
    // one, which would prove nothing about counting across workers. Then let them
    // go and try again (bounded: all on one worker 20 times over is next to
    // impossible unless the spreading is broken).
    let mut served = Vec::new();
    for _attempt in 0..20 {
        served.clear();
        assert!(wait_until(|| holding() == 0), "clients never released");
        let mut refused = 0;
        for _ in 0..4 * MAX {
            let mut s = server.connect();
            match echoed(&mut s, b'x') {
                Some(()) => served.push(s),
                None => refused += 1,
            }
        }
        assert_eq!(served.len(), MAX, "{refused} refused");
        if holding() > 1 {
            break;
        }
    }
    assert!(
        holding() > 1,
        "every served client went to one worker, 20 times"
    );
    assert!(server.log_contains("--max-conns 5"));
    // A place freed anywhere is free for a client of any worker.
    drop(served.pop());
    assert!(wait_until(|| {
        let mut s = server.connect();
        let ok = echoed(&mut s, b'y').is_some();
        if ok {
            served.push(s);
        }
        ok
    }));
}

/// One echo round trip of `byte`, or `None` if the server closed (or reset) the
/// connection instead: how a client refused under `--max-conns` sees it.
fn echoed(s: &mut std::net::TcpStream, byte: u8) -> Option<()> {
    use std::io::Read;
    // A refused client is accepted and closed: the write may fail or not.
    let _ = s.write_all(&[byte]);
    let mut got = Vec::new();
    let mut buf = [0u8; 16];
    while got.len() < 11 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    if got.is_empty() {
        return None;
    }
    assert_eq!(got, [b"Received: ".as_slice(), &[byte]].concat());
    Some(())
}

/// Run `concur serve ARGS` expected to fail at start: its exit status and stderr.
fn fails_to_start(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_concur"))
        .arg("serve")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run concur serve");
    assert!(out.stdout.is_empty(), "it announced itself: {out:?}");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// A second reuseport server on a port a first one (threads or --fork) already
/// listens on is refused in one line, exit 2, though SO_REUSEPORT would have let
/// it in; so is one on a port a plain listener holds.
#[test]
fn a_busy_port_is_refused() {
    let threads = Server::start("reuseport", "echo", &["--workers", "2"]);
    let forked = fork_server("echo", &[]);
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = [threads.addr, forked.addr, plain.local_addr().unwrap()];
    for addr in busy {
        for fork in [false, true] {
            let addr = addr.to_string();
            let mut args = vec!["--model", "reuseport", "--service", "echo", "--addr", &addr];
            if fork {
                args.push("--fork");
            }
            let (code, stderr) = fails_to_start(&args);
            assert_eq!(code, Some(2), "{args:?}: {stderr}");
            assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
            assert!(stderr.contains("cannot listen"), "{stderr}");
        }
    }
    // The first servers still serve.
    for server in [&threads, &forked] {
        echo_exchange(server.connect(), "reuseport", 1, 100, true);
    }
}

/// `--fork` only where the registry says the loops can fork: exit 2, one line.
#[test]
fn fork_is_refused_where_the_model_cannot() {
    for m in serve_harness::REGISTRY.iter().filter(|m| !m.fork_loops) {
        let args = [
            "--model",
            m.name,
            "--service",
            "echo",
            "--addr",
            "127.0.0.1:0",
            "--fork",
        ];
        let (code, stderr) = fails_to_start(&args);
        assert_eq!(code, Some(2), "{}: {stderr}", m.name);
        assert_eq!(stderr.lines().count(), 1, "{}: {stderr}", m.name);
        assert!(stderr.contains("--fork"), "{stderr}");
    }
}

/// The server's soft descriptor limit, from /proc (after it raised it).
fn server_fd_limit(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

/// Start with RLIMIT_NOFILE (soft and hard) lowered to `limit` before exec.
fn with_fd_limit(limit: u64) -> impl FnOnce(&mut Command) {
    move |cmd: &mut Command| {
        // SAFETY: setrlimit is async-signal-safe and touches only the given struct.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

/// The start-up line when `--max-conns` cannot fit under the descriptor limit: it
/// names the limit and the flag, and the server still starts. Under a limit of 256
/// (unless the server may raise it: then the limit it got decides), 1000
/// connections do not fit one process, but do fit six workers.
#[test]
fn a_max_conns_that_cannot_fit_is_a_warning_naming_the_limit_and_the_flag() {
    const LOW: u64 = 256;
    let cases: [(&str, &[&str]); 4] = [
        ("reuseport", &["--max-conns", "1000"]),
        (
            "reuseport",
            &["--max-conns", "1000", "--workers", "2", "--fork"],
        ),
        (
            "reuseport",
            &["--max-conns", "1000", "--workers", "6", "--fork"],
        ),
        ("epoll", &["--max-conns", "1000"]),
    ];
    for (model, args) in cases {
        let mut server = Server::start_with(model, "echo", args, with_fd_limit(LOW));
        let limit = server_fd_limit(server.pid);
        let fork = args.contains(&"--fork");
        let workers: u64 = if fork {
            args[args.iter().position(|a| *a == "--workers").unwrap() + 1]
                .parse()
                .unwrap()
        } else {
            1
        };
        let fits = 1000 <= workers * limit.saturating_sub(64);
        echo_exchange(server.connect(), model, 3, 100, true);
        server.signal(libc::SIGTERM);
        assert_eq!(server.wait_exit(LIMIT).and_then(|s| s.code()), Some(0));
        let log = server.final_log(LIMIT);
        let warnings: Vec<&str> = log.lines().filter(|l| l.contains("does not fit")).collect();
        if fits {
            assert!(
                warnings.is_empty(),
                "{model} {args:?} (limit {limit}): {log}"
            );
            continue;
        }
        assert_eq!(warnings.len(), 1, "{model} {args:?}: {log}");
        let w = warnings[0];
        assert!(w.contains(&format!("{limit} descriptors")), "{w}");
        assert!(w.contains("--max-conns 1000"), "{w}");
        let need = 1000u64.div_ceil(limit - 64);
        match (model, fork) {
            ("reuseport", false) => assert!(w.contains(&format!("--fork --workers {need}")), "{w}"),
            ("reuseport", true) => assert!(w.contains(&format!("--workers {need} or more")), "{w}"),
            _ => assert!(w.contains("--fork with reuseport"), "{w}"),
        }
    }
}

/// Past one process's descriptor limit: with the limit lowered to 256, three
/// workers hold (and answer) 400 connections at once, which no one process could.
#[test]
fn fork_holds_more_connections_than_one_process_may_open() {
    const LOW: u64 = 256;
    const HELD: usize = 400;
    let server = Server::start_with(
        "reuseport",
        "echo",
        &["--workers", "3", "--fork"],
        with_fd_limit(LOW),
    );
    let limit = server_fd_limit(server.pid);
    let mut held = Vec::new();
    for _ in 0..HELD {
        let mut s = server.connect();
        s.write_all(b"x").unwrap();
        assert_eq!(read_n(&mut s, 11), b"Received: x");
        held.push(s);
    }
    let per_worker: Vec<usize> = children(server.pid)
        .into_iter()
        .map(|kid| socket_inodes(kid).len())
        .collect();
    assert_eq!(per_worker.iter().sum::<usize>(), HELD + 3, "{per_worker:?}");
    if limit == LOW {
        assert!(HELD as u64 > limit, "the point of the test");
        assert!(
            per_worker.iter().all(|&n| (n as u64) < limit),
            "{per_worker:?}"
        );
    }
}

/// `--offload --fork`: each worker builds its own pool after the fork (threads do
/// not survive fork), and fib is answered through it.
#[test]
fn offload_pools_live_in_the_workers() {
    let server = fork_server("fib", &["--offload"]);
    assert_eq!(threads(server.pid), 1, "the parent must stay able to fork");
    for kid in children(server.pid) {
        assert_eq!(
            threads(kid),
            1 + WORKERS,
            "worker {kid}: its loop and its pool"
        );
    }
    for i in 0..6 {
        fib_exchange(server.connect(), "reuseport --fork --offload", i, 10, true);
    }
}
