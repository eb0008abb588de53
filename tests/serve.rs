//! `concur serve` end to end: every model in `serve_harness::MODELS` against real
//! sockets on 127.0.0.1, port 0. Each test runs the models in parallel and bounds
//! every wait; assertions are about correctness and generous limits, never timing.

mod serve_harness;

use serve_harness::*;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::process::Command;
use std::time::{Duration, Instant};

const CLIENTS: usize = 50;
const REQUESTS: usize = 20;

/// The matrix: every model x both services, many concurrent clients, pipelined
/// requests split at random byte boundaries, every reply byte checked.
#[test]
fn matrix_every_model_both_services() {
    for_each_model(|model| {
        for service in ["echo", "fib"] {
            let server = Server::start(model, service, &[]);
            let clients = if one_at_a_time(model) { 1 } else { CLIENTS };
            // Every client connects before any sends, so all are open at once.
            let start = std::sync::Barrier::new(clients);
            std::thread::scope(|scope| {
                for i in 0..clients {
                    let (server, start) = (&server, &start);
                    scope.spawn(move || {
                        let stream = server.try_connect();
                        start.wait(); // before any panic, so no one waits forever
                        let stream = stream.expect("connect");
                        let seed = i as u64 * 7919 + service.len() as u64;
                        let half_close = i % 2 == 0;
                        match service {
                            "fib" => fib_exchange(stream, model, seed, REQUESTS, half_close),
                            _ => echo_exchange(stream, model, seed, 40 * REQUESTS, half_close),
                        }
                    });
                }
            });
        }
    });
}

/// `blocking` serves one client at a time: a second client waits, then is served.
#[test]
fn blocking_second_client_waits_then_is_served() {
    let server = Server::start("blocking", "fib", &[]);
    let mut first = server.connect();
    first.write_all(b"10\n").unwrap();
    assert_eq!(read_n(&mut first, 3), b"55\n");

    let mut second = server.connect();
    second.write_all(b"12\n").unwrap();
    second
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 16];
    let waited =
        matches!(second.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    assert!(
        waited,
        "second client was served while the first was connected"
    );

    drop(first);
    second.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    assert_eq!(read_n(&mut second, 4), b"144\n");
}

/// A 10 MB fib request with no terminator gets one error line and a clean close,
/// while a well-behaved client keeps being served.
#[test]
fn hostile_endless_request() {
    for_each_model(|model| {
        let server = Server::start(model, "fib", &[]);
        std::thread::scope(|scope| {
            let hostile = scope.spawn(|| {
                let mut s = server.connect();
                let mut r = s.try_clone().unwrap();
                let reader = std::thread::spawn(move || {
                    let mut got = Vec::new();
                    let _ = r.read_to_end(&mut got);
                    got
                });
                let chunk = vec![b'7'; 64 * 1024];
                for _ in 0..(10 << 20) / chunk.len() {
                    if s.write_all(&chunk).is_err() {
                        break; // the server may close before we finish: fine
                    }
                }
                let _ = s.shutdown(Shutdown::Write);
                reader.join().unwrap()
            });
            if !one_at_a_time(model) {
                for i in 0..5 {
                    fib_client(&server, i, 10, false);
                }
            }
            let got = hostile.join().unwrap();
            assert_eq!(
                String::from_utf8_lossy(&got),
                "ERR request too long\n",
                "{model}"
            );
        });
        fib_client(&server, 99, 10, true);
    });
}

/// A client that pushes data and never reads: the server stops reading from it
/// (back-pressure) and its memory stays bounded, while others are served.
#[test]
fn hostile_never_reads() {
    for_each_model(|model| {
        let server = Server::start(model, "echo", &[]);
        probe_echo(&server);
        let before = server.rss();
        let mut s = server.connect();
        s.set_write_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        let chunk = vec![b'x'; 64 * 1024];
        let mut pushed = 0usize;
        while pushed < 50 << 20 {
            match s.write(&chunk) {
                Ok(n) => pushed += n,
                Err(_) => break, // blocked: the server stopped reading
            }
        }
        assert!(pushed < 50 << 20, "{model}: server never stopped reading");
        let during = server.rss();
        let growth = during.saturating_sub(before);
        eprintln!(
            "{model}: a non-reading client pushed {} MiB, rss {} -> {} KiB",
            pushed >> 20,
            before >> 10,
            during >> 10
        );
        assert!(
            growth < 16 << 20,
            "{model}: RSS grew by {} MiB while a client did not read",
            growth >> 20
        );
        if !one_at_a_time(model) {
            echo_client(&server, 1, 500, true);
            fib_free_probe(&server);
        }
        drop(s);
        echo_client(&server, 2, 500, false);
    });
}

fn fib_free_probe(server: &Server) {
    probe_echo(server);
}

/// Clients that connect and say nothing hold nothing but their own connection.
#[test]
fn hostile_silent_clients_and_idle_timeout() {
    for_each_model(|model| {
        let server = Server::start(model, "fib", &["--idle-timeout", "1"]);
        let mut silent: Vec<_> = (0..if one_at_a_time(model) { 1 } else { 5 })
            .map(|_| server.connect())
            .collect();
        // Blocking: the silent client holds the server until the idle timeout closes it.
        fib_client(&server, 3, 10, true);
        for s in &mut silent {
            let mut buf = [0u8; 8];
            let n = s.read(&mut buf).expect("idle client closed cleanly");
            assert_eq!(n, 0, "{model}: idle client got data");
        }
    });
}

/// Abrupt resets (SO_LINGER 0) mid-request and mid-reply are routine; a child
/// process killed under the processes model is too.
#[test]
fn hostile_resets_and_killed_children() {
    for_each_model(|model| {
        let server = Server::start(model, "fib", &[]);
        for i in 0..10 {
            let s = server.connect();
            let mut w = &s;
            let _ = w.write_all(if i % 2 == 0 { b"22\n22\n22\n1" } else { b"12" });
            if i % 3 == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
            socket2::SockRef::from(&s)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            drop(s);
        }
        fib_client(&server, 4, 10, false);
        if model == "processes" {
            let hold = server.connect();
            probe(&server); // hold's child exists by the time this one answers
            let _ = &hold;
            let kids = concur::sys::children(server.pid);
            assert!(!kids.is_empty(), "no child serving the held client");
            for kid in kids {
                // SAFETY: kill(2) on the server's child.
                unsafe { libc::kill(kid as libc::pid_t, libc::SIGKILL) };
            }
            let mut hold = hold;
            let mut buf = [0u8; 8];
            assert!(matches!(hold.read(&mut buf), Ok(0) | Err(_)));
        }
        fib_client(&server, 5, 10, true);
        let mut server = server;
        assert!(server.alive(), "{model}: server died");
    });
}

/// After every client leaves, no thread, descriptor or child process remains.
#[test]
fn no_leaks_after_clients_leave() {
    for_each_model(|model| {
        let server = Server::start(model, "fib", &[]);
        fib_client(&server, 1, 3, true); // warm up: runtimes start lazily
        let baseline = server.steady_footprint();
        std::thread::scope(|scope| {
            let clients = if one_at_a_time(model) { 1 } else { 20 };
            for i in 0..clients {
                let server = &server;
                scope.spawn(move || fib_client(server, 100 + i, 5, i % 2 == 0));
            }
            for _ in 0..5 {
                let s = server.connect();
                socket2::SockRef::from(&s)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
            }
        });
        let after = server.settle_to(baseline, Duration::from_secs(15));
        assert_eq!(after, baseline, "{model}: leaked");
    });
}

/// SIGTERM (or SIGINT) under load: exit 0 within the grace period, and every reply a client got
/// is complete and correct.
#[test]
fn sigterm_under_load_finishes_replies_and_exits_zero() {
    for_each_model(|model| {
        let mut server = Server::start(model, "fib", &[]);
        std::thread::scope(|scope| {
            let clients = if one_at_a_time(model) { 3 } else { 10 };
            let workers: Vec<_> = (0..clients)
                .map(|i| {
                    let addr = server.addr;
                    scope.spawn(move || load_until_closed(addr, model, 500 + i))
                })
                .collect();
            std::thread::sleep(Duration::from_millis(400));
            // Ctrl-C and `kill` must behave the same: alternate them across models.
            let sig = if MODELS.iter().position(|m| *m == model).unwrap() % 2 == 0 {
                libc::SIGTERM
            } else {
                libc::SIGINT
            };
            server.signal(sig);
            let start = Instant::now();
            let status = server
                .wait_exit(Duration::from_secs(15))
                .unwrap_or_else(|| panic!("{model}: still running 15 s after SIGTERM"));
            assert_eq!(status.code(), Some(0), "{model}: exit status");
            // Grace is 3 s; everyone here reads its replies, so exit is prompt.
            let took = start.elapsed();
            assert!(
                took < Duration::from_secs(10),
                "{model}: took {took:?} to exit"
            );
            let replies: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
            assert!(replies > 0, "{model}: no replies at all before SIGTERM");
        });
    });
}

/// SIGTERM while a client pushes requests and never reads its replies: the replies
/// owed cannot all be sent, so the server gives up after the grace period (3 s)
/// and still exits 0.
#[test]
fn sigterm_with_a_stuck_client_exits_after_grace() {
    for_each_model(|model| {
        let mut server = Server::start(model, "echo", &[]);
        let mut s = server.connect();
        s.set_write_timeout(Some(Duration::from_millis(1000)))
            .unwrap();
        let chunk = vec![b'x'; 64 * 1024];
        let mut pushed = 0usize;
        while pushed < 50 << 20 && s.write(&chunk).map(|n| pushed += n).is_ok() {}
        let start = Instant::now();
        server.signal(libc::SIGTERM);
        let status = server
            .wait_exit(Duration::from_secs(20))
            .unwrap_or_else(|| panic!("{model}: still running 20 s after SIGTERM"));
        assert_eq!(status.code(), Some(0), "{model}: exit status");
        let took = start.elapsed();
        assert!(
            took < Duration::from_secs(12),
            "{model}: took {took:?} to exit"
        );
    });
}

/// Request/reply rounds (3 pipelined) until the server closes; checks every line
/// received and that none is cut short. Returns the number of correct replies.
fn load_until_closed(addr: std::net::SocketAddr, model: &str, seed: u64) -> usize {
    let mut rng = fastrand::Rng::with_seed(seed);
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return 0;
    };
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut good = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let (req, want) = fib_script(&mut rng, 3, 18);
        if s.write_all(&req).is_err() {
            break;
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        let mut closed = false;
        while got.len() < want.len() {
            match s.read(&mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => got.extend_from_slice(&buf[..n]),
                // Reset before any byte of this round: nothing was cut short.
                Err(e) if got.is_empty() && e.kind() != std::io::ErrorKind::WouldBlock => {
                    closed = true;
                    break;
                }
                Err(e) => panic!("{model}: read failed mid-reply: {e}"),
            }
        }
        assert!(
            want.starts_with(&got) && (got.is_empty() || got.ends_with(b"\n")),
            "{model}: reply cut short or wrong: {:?}",
            String::from_utf8_lossy(&got)
        );
        good += got.iter().filter(|&&b| b == b'\n').count();
        if closed {
            break;
        }
    }
    good
}

/// accept() failing with EMFILE: the server logs, backs off, keeps serving its
/// clients, and recovers when descriptors free up.
#[test]
fn out_of_descriptors_backs_off_and_recovers() {
    for_each_model(|model| {
        if one_at_a_time(model) {
            return;
        }
        let server = Server::start_with(model, "fib", &[], |cmd| {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs in pre_exec.
            unsafe {
                cmd.pre_exec(|| {
                    let lim = libc::rlimit {
                        rlim_cur: 64,
                        rlim_max: 64,
                    };
                    libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
                    Ok(())
                });
            }
        });
        let mut keeper = server.connect();
        keeper.write_all(b"5\n").unwrap();
        assert_eq!(read_n(&mut keeper, 2), b"5\n");
        let flood: Vec<_> = (0..100).map(|_| server.connect()).collect();
        std::thread::sleep(Duration::from_millis(300));
        keeper.write_all(b"6\n").unwrap();
        assert_eq!(
            read_n(&mut keeper, 2),
            b"8\n",
            "{model}: existing client starved"
        );
        drop(flood);
        let mut server = server;
        assert!(server.alive(), "{model}: died out of descriptors");
        fib_client(&server, 6, 5, true);
    });
}

/// `--max-conns`: past the limit new clients are closed at once; existing ones are
/// unaffected and later clients get in once others leave.
#[test]
fn max_conns_refuses_extra_clients() {
    for_each_model(|model| {
        if one_at_a_time(model) {
            return;
        }
        let server = Server::start(model, "fib", &["--max-conns", "3"]);
        let mut held: Vec<_> = (0..3).map(|_| server.connect()).collect();
        for s in &mut held {
            s.write_all(b"7\n").unwrap();
            assert_eq!(read_n(s, 3), b"13\n");
        }
        let mut extra = server.connect();
        let _ = extra.write_all(b"7\n");
        let mut buf = [0u8; 8];
        assert!(
            matches!(extra.read(&mut buf), Ok(0) | Err(_)),
            "{model}: client past --max-conns was served"
        );
        held[0].write_all(b"8\n").unwrap();
        assert_eq!(read_n(&mut held[0], 3), b"21\n");
        drop(held);
        // Places free up as the server notices the departures.
        served_again_within_10s(&server, model);
    });
}

/// New fib clients are served again within 10 s (after places at a limit freed up).
fn served_again_within_10s(server: &Server, model: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = server.connect();
        let _ = s.write_all(b"9\n");
        let mut got = [0u8; 3];
        if s.read_exact(&mut got).is_ok() {
            assert_eq!(&got, b"34\n");
            return;
        }
        assert!(Instant::now() < deadline, "{model}: never served again");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn concur(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_concur"))
        .args(args)
        .output()
        .unwrap()
}

/// Errors the user can fix: exit 2, one line, no panic.
#[test]
fn bad_invocations_exit_2_with_one_line() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    for args in [
        vec![
            "serve",
            "--model",
            "threads",
            "--service",
            "echo",
            "--addr",
            &busy_addr,
        ],
        vec![
            "serve",
            "--model",
            "threads",
            "--service",
            "echo",
            "--addr",
            "nonsense",
        ],
        vec!["serve", "--model", "nosuch", "--service", "echo"],
        vec![
            "serve",
            "--model",
            "async",
            "--service",
            "echo",
            "--workers",
            "0",
        ],
    ] {
        let out = concur(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("error:"), "{args:?}: {err}");
        assert!(!err.contains("panick"), "{args:?}: {err}");
    }
    let help = concur(&["serve", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("0.0.0.0:25000"), "{help}");
}

/// select(2) cannot watch descriptors >= FD_SETSIZE: such clients are refused (closed
/// at once, logged), never passed to FD_SET, and everyone else is unaffected.
#[test]
fn select_refuses_descriptors_past_fd_setsize() {
    let _ = concur::sys::raise_fd_limit();
    let server = Server::start("select", "fib", &[]);
    let mut first = server.connect();
    first.write_all(b"9\n").unwrap();
    assert_eq!(read_n(&mut first, 3), b"34\n");
    let mut many: Vec<_> = (0..1100).map(|_| server.connect()).collect();
    let mut refused = 0;
    for s in many.iter_mut().rev().take(50) {
        let _ = s.write_all(b"9\n");
        let mut buf = [0u8; 3];
        match s.read(&mut buf) {
            Ok(0) | Err(_) => refused += 1,
            Ok(_) => {}
        }
    }
    assert!(refused > 0, "clients past FD_SETSIZE were served");
    first.write_all(b"10\n").unwrap();
    assert_eq!(read_n(&mut first, 3), b"55\n");
    drop(many);
    // Until the server has closed them, a new client may still get a descriptor
    // past FD_SETSIZE (and be refused): wait for the descriptors to go.
    let deadline = Instant::now() + Duration::from_secs(15);
    while server.footprint().fds > 100 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    fib_client(&server, 7, 5, true);
}

/// The talk's per-connection lines go to stderr, and only with -v.
#[test]
fn connection_lines_only_with_verbose() {
    for verbose in [false, true] {
        let dir =
            std::env::temp_dir().join(format!("concur-serve-log-{}-{verbose}", std::process::id()));
        let log = std::fs::File::create(&dir).unwrap();
        let extra: &[&str] = if verbose { &["-v"] } else { &[] };
        let mut server = Server::start_with("threads", "echo", extra, |cmd| {
            cmd.stderr(log);
        });
        echo_client(&server, 8, 100, true);
        server.signal(libc::SIGTERM);
        let status = server.wait_exit(Duration::from_secs(15)).expect("exit");
        assert_eq!(status.code(), Some(0));
        let text = std::fs::read_to_string(&dir).unwrap();
        let _ = std::fs::remove_file(&dir);
        assert_eq!(
            text.contains("Connection from 127.0.0.1:"),
            verbose,
            "{text}"
        );
        assert_eq!(text.contains(" closed"), verbose, "{text}");
    }
}

/// `--prefix ''` is plain echo: the reply stream is the request stream.
#[test]
fn empty_prefix_is_plain_echo() {
    let server = Server::start("threads", "echo", &["--prefix", ""]);
    let mut s = server.connect();
    let data: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    let mut rng = fastrand::Rng::with_seed(9);
    write_split(&mut s, &data, &mut rng);
    s.shutdown(Shutdown::Write).unwrap();
    assert!(read_to_eof(&mut s) == data);
}

/// prefork: workers killed mid-client are replaced, and the places they held under
/// `--max-conns` are freed.
#[test]
fn prefork_replaces_dead_workers() {
    let server = Server::start("prefork", "fib", &["--workers", "2", "--max-conns", "2"]);
    let mut held = server.connect();
    held.write_all(b"5\n").unwrap();
    assert_eq!(read_n(&mut held, 2), b"5\n");
    let deadline = Instant::now() + Duration::from_secs(15);
    let before = loop {
        let kids = concur::sys::children(server.pid);
        if kids.len() == 2 || Instant::now() >= deadline {
            break kids;
        }
        std::thread::sleep(Duration::from_millis(20)); // the second fork may trail
    };
    assert_eq!(before.len(), 2, "{before:?}");
    for kid in &before {
        // SAFETY: kill(2) on the server's child.
        unsafe { libc::kill(*kid as libc::pid_t, libc::SIGKILL) };
    }
    let mut buf = [0u8; 8];
    assert!(matches!(held.read(&mut buf), Ok(0) | Err(_)));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = concur::sys::children(server.pid);
        if now.len() == 2 && now.iter().all(|p| !before.contains(p)) {
            break;
        }
        assert!(Instant::now() < deadline, "workers not replaced: {now:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Both places are free again: two clients at once are served.
    let mut a = server.connect();
    let mut b = server.connect();
    for s in [&mut a, &mut b] {
        s.write_all(b"7\n").unwrap();
        assert_eq!(read_n(s, 3), b"13\n");
    }
}

/// The models `--offload` applies to.
const EVENT_LOOPS: &[&str] = &["select", "epoll", "async", "uring", "reuseport"];

/// Wait (bounded) until the server has burnt at least 20 ms of CPU since `since`: an
/// idle loop burns next to none, so it is computing the heavy request now.
fn wait_busy(server: &Server, since: std::time::Duration) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let cpu = concur::sys::proc_stat(server.pid)
            .expect("server alive")
            .cpu
            .total();
        if cpu >= since + Duration::from_millis(20) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}: never got busy",
            server.model
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Whether a reply has already arrived on `s` (a non-blocking peek).
fn has_reply(s: &std::net::TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let ready = s.peek(&mut [0u8; 1]).is_ok_and(|n| n > 0);
    s.set_nonblocking(false).unwrap();
    ready
}

/// `--offload` changes the order in which an event loop answers, and these tests
/// assert that order, never a duration. One worker everywhere (the loop, tokio's
/// runtime, the pool), so an inline fib really has one thread to block:
///
/// - inline (the talk's behaviour): a fib(1) sent on another connection while
///   fib(42) is being computed cannot be answered before fib(42)'s reply is sent,
///   so when the fib(1) reply arrives the fib(42) reply is already there;
/// - with `--offload`, the fib(1) is answered while fib(42) is still running;
/// - and replies on one connection keep request order.
///
/// "While fib(42) is being computed" is read from /proc: the server is burning CPU.
#[test]
fn offload_keeps_event_loops_responsive() {
    const HEAVY: &[u8] = b"267914296\n"; // fib(42)
    for model in EVENT_LOOPS {
        for offload in [false, true] {
            let mut args = vec!["--max-n", "42", "--workers", "1"];
            if offload {
                args.push("--offload");
            }
            let server = Server::start(model, "fib", &args);
            if offload {
                let mut ordered = server.connect();
                ordered.write_all(b"25\n1\n2\n").unwrap();
                assert_eq!(read_n(&mut ordered, 10), b"75025\n1\n1\n", "{model}: order");
            }
            let mut heavy = server.connect();
            let mut light = server.connect();
            light.write_all(b"1\n").unwrap();
            assert_eq!(
                read_n(&mut light, 2),
                b"1\n",
                "{model}: served before the heavy one"
            );
            let idle = concur::sys::proc_stat(server.pid).unwrap().cpu.total();
            heavy.write_all(b"42\n").unwrap();
            wait_busy(&server, idle);
            light.write_all(b"1\n").unwrap();
            assert_eq!(read_n(&mut light, 2), b"1\n", "{model}: fib(1)");
            let heavy_first = has_reply(&heavy);
            if offload {
                assert!(
                    !heavy_first,
                    "{model} --offload: fib(1) was answered only after fib(42)"
                );
            } else {
                assert!(
                    heavy_first,
                    "{model} inline: fib(1) was answered while fib(42) was being computed"
                );
            }
            assert_eq!(read_n(&mut heavy, HEAVY.len()), HEAVY, "{model}: fib(42)");
        }
    }
}

/// `--offload` means nothing for models that are not event loops: exit 2, one line.
#[test]
fn offload_is_refused_outside_event_loops() {
    for model in ["blocking", "threads", "processes", "threadpool", "prefork"] {
        let out = concur(&["serve", "--model", model, "--service", "fib", "--offload"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{model}: {err}");
        assert_eq!(err.lines().count(), 1, "{model}: {err}");
        assert!(err.contains("--offload"), "{model}: {err}");
    }
}

/// threadpool: with every worker busy and the queue (64 per worker) full, a new
/// client is closed at once, not left waiting.
#[test]
fn threadpool_refuses_when_the_queue_is_full() {
    let server = Server::start("threadpool", "fib", &["--workers", "1"]);
    let mut busy = server.connect();
    busy.write_all(b"5\n").unwrap();
    assert_eq!(read_n(&mut busy, 2), b"5\n"); // the only worker is now on `busy`
    let queued: Vec<_> = (0..64).map(|_| server.connect()).collect();
    let mut extra = server.connect();
    extra
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 8];
    match extra.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("a client past the full queue was not closed: {other:?}"),
    }
    drop(busy);
    drop(queued);
    // Places free up as the worker goes through the departed clients.
    served_again_within_10s(&server, "threadpool");
}

/// uring on a kernel that refuses io_uring (here: a seccomp filter making
/// io_uring_setup fail with ENOSYS, as on a kernel built without it): exit 2 with
/// one line saying so.
#[test]
fn uring_without_io_uring_exits_2() {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_concur"));
    cmd.args([
        "serve",
        "--model",
        "uring",
        "--service",
        "echo",
        "--addr",
        "127.0.0.1:0",
    ]);
    // SAFETY: only prctl(2) runs between fork and exec, on data built beforehand.
    unsafe {
        cmd.pre_exec(|| {
            let nr = libc::SYS_io_uring_setup as u32;
            let filter = [
                // A = seccomp_data.nr
                libc::sock_filter {
                    code: 0x20,
                    jt: 0,
                    jf: 0,
                    k: 0,
                },
                // if A == io_uring_setup: next, else skip one
                libc::sock_filter {
                    code: 0x15,
                    jt: 0,
                    jf: 1,
                    k: nr,
                },
                libc::sock_filter {
                    code: 0x06,
                    jt: 0,
                    jf: 0,
                    k: libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
                },
                libc::sock_filter {
                    code: 0x06,
                    jt: 0,
                    jf: 0,
                    k: libc::SECCOMP_RET_ALLOW,
                },
            ];
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut _,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("io_uring is not available on this kernel"),
        "{err}"
    );
}
