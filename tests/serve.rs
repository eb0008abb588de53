//! `concur serve` end to end: every model in the registry
//! ([`concur::models::REGISTRY`]) against real sockets on 127.0.0.1, port 0. Each
//! test runs the models in parallel and bounds every wait; assertions are about
//! correctness, order and events, never timing. Where a model's nature changes
//! what should happen (one client at a time, a bounded pool, select's FD_SETSIZE),
//! the test asks the registry's facts and says what it expects instead.

mod serve_harness;

use serve_harness::*;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::process::Command;
use std::time::{Duration, Instant};

const CLIENTS: usize = 50;
const REQUESTS: usize = 20;

/// The matrix: every model x both services, many concurrent clients, pipelined
/// requests split at random byte boundaries, every reply byte checked. Servers that
/// serve fewer at once (one at a time, a pool of workers) serve them in turn: each
/// client finishes on its own, so none waits for another.
#[test]
fn matrix_every_model_both_services() {
    for_each_model(|m| {
        for service in ["echo", "fib"] {
            let server = Server::start(m.name, service, &[]);
            // Every client connects before any sends, so all are open at once.
            let start = std::sync::Barrier::new(CLIENTS);
            std::thread::scope(|scope| {
                for i in 0..CLIENTS {
                    let (server, start) = (&server, &start);
                    scope.spawn(move || {
                        let stream = server.try_connect();
                        start.wait(); // before any panic, so no one waits forever
                        let stream = stream.expect("connect");
                        let seed = i as u64 * 7919 + service.len() as u64;
                        let half_close = i % 2 == 0;
                        match service {
                            "fib" => fib_exchange(stream, m.name, seed, REQUESTS, half_close),
                            _ => echo_exchange(stream, m.name, seed, 40 * REQUESTS, half_close),
                        }
                    });
                }
            });
        }
    });
}

/// With `--workers 1`, a second client is served while the first is still
/// connected, except where one worker means one client at a time (blocking, and
/// the bounded pools): there it waits until the first leaves, then is served.
#[test]
fn second_client_waits_only_where_one_is_served_at_once() {
    for_each_model(|m| {
        let server = Server::start(m.name, "fib", &["--workers", "1"]);
        let mut first = server.connect();
        first.write_all(b"10\n").unwrap();
        assert_eq!(read_n(&mut first, 3), b"55\n", "{}", m.name);
        let mut second = server.connect();
        second.write_all(b"12\n").unwrap();
        if m.served_at_once(1) == Some(1) {
            // A round trip on the first after the second's request went out: the
            // server is still busy with the first, so the second has no reply yet.
            first.write_all(b"11\n").unwrap();
            assert_eq!(read_n(&mut first, 3), b"89\n", "{}", m.name);
            assert!(
                !has_reply(&second),
                "{}: the second client was served while the first was connected",
                m.name
            );
            drop(first);
            assert_eq!(read_n(&mut second, 4), b"144\n", "{}", m.name);
        } else {
            assert_eq!(read_n(&mut second, 4), b"144\n", "{}", m.name);
            first.write_all(b"11\n").unwrap();
            assert_eq!(read_n(&mut first, 3), b"89\n", "{}", m.name);
        }
    });
}

/// A 10 MB fib request with no terminator gets one error line and a clean close,
/// while well-behaved clients are served (at once, or after it where one client is
/// served at a time).
#[test]
fn hostile_endless_request() {
    for_each_model(|m| {
        let server = Server::start(m.name, "fib", &[]);
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
            for i in 0..5 {
                fib_client(&server, i, 10, false);
            }
            let got = hostile.join().unwrap();
            assert_eq!(
                String::from_utf8_lossy(&got),
                "ERR request too long\n",
                "{}",
                m.name
            );
        });
        fib_client(&server, 99, 10, true);
    });
}

/// A client that pushes data and never reads: the server stops reading from it
/// (back-pressure) and its memory stays bounded. Other clients are served
/// meanwhile, or, where one client is served at a time, once it leaves.
#[test]
fn hostile_never_reads() {
    for_each_model(|m| {
        let model = m.name;
        let server = Server::start(model, "echo", &[]);
        probe_echo(&server);
        server.steady_footprint(); // a pool of processes is complete
        let before = server.rss();
        let mut s = server.connect();
        // A write blocked this long means the server stopped reading; a slow
        // server only ends the push earlier, which the assertions below allow.
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
        let mut other = server.connect();
        other.write_all(b"ping").unwrap();
        if m.one_at_a_time() {
            // The server is stuck sending to `s`: `other` waits in the backlog.
            // A round trip would need `s` gone, so look for a reply first.
            assert!(!has_reply(&other), "{model}: served a second client");
            drop(s);
            assert_eq!(read_n(&mut other, 14), b"Received: ping", "{model}");
        } else {
            assert_eq!(read_n(&mut other, 14), b"Received: ping", "{model}");
            echo_client(&server, 1, 500, true);
            drop(s);
        }
        drop(other);
        echo_client(&server, 2, 500, false);
    });
}

/// Clients that connect and say nothing hold what the model gives a client, and
/// `--idle-timeout` closes them. Where that is a worker (a bounded pool) or the
/// whole server (one at a time), as many silent clients as there are places
/// starve a good client, Apache's slowloris weakness: it is served only after the
/// idle timeout has closed one of them. Elsewhere they hold only their connection.
#[test]
fn silent_clients_hold_what_a_client_holds_until_the_idle_timeout() {
    for_each_model(|m| {
        let model = m.name;
        let workers = 2;
        let server = Server::start(
            model,
            "fib",
            &["--idle-timeout", "1", "--workers", &workers.to_string()],
        );
        // They connect first, so the server takes them first (accept is FIFO).
        let places = m.served_at_once(workers);
        let silent: Vec<_> = (0..places.unwrap_or(5)).map(|_| server.connect()).collect();
        let mut good = server.connect();
        good.write_all(b"20\n").unwrap();
        assert_eq!(read_n(&mut good, 5), b"6765\n", "{model}: good client");
        if places.is_some() {
            // The worker that served `good` closed its silent client first.
            assert!(
                silent.iter().any(closed_by_server),
                "{model}: served a new client while every place was held by a silent one"
            );
        }
        for mut s in silent {
            let mut buf = [0u8; 8];
            let n = s.read(&mut buf).expect("idle client closed cleanly");
            assert_eq!(n, 0, "{model}: idle client got data");
        }
        fib_client(&server, 3, 10, true);
    });
}

/// Abrupt resets (SO_LINGER 0) mid-request and mid-reply are routine. So is a
/// child process killed where the model forks: its client sees the connection
/// close, the server carries on, and a pool of processes replaces it.
#[test]
fn hostile_resets_and_killed_children() {
    for_each_model(|m| {
        let model = m.name;
        let server = Server::start(model, "fib", &[]);
        for i in 0..10 {
            let mut s = server.connect();
            if i % 2 == 0 {
                s.write_all(b"22\n22\n22\n1").unwrap();
                if i % 4 == 0 {
                    // Mid-reply: the first reply byte is here, the rest is coming.
                    let mut byte = [0u8; 1];
                    s.read_exact(&mut byte).expect("first reply byte");
                    assert_eq!(&byte, b"1", "{model}");
                }
            } else {
                s.write_all(b"12").unwrap(); // mid-request
            }
            socket2::SockRef::from(&s)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            drop(s);
        }
        fib_client(&server, 4, 10, false);
        if m.forks {
            let mut hold = server.connect();
            hold.write_all(b"5\n").unwrap();
            assert_eq!(read_n(&mut hold, 2), b"5\n"); // a child is serving it now
            let pool = m.served_at_once(m.default_workers()).filter(|_| m.forks);
            if let Some(size) = pool {
                // The pool is forked one worker after another: wait for all of them.
                let deadline = Instant::now() + IO_TIMEOUT;
                while concur::sys::children(server.pid).len() < size {
                    assert!(Instant::now() < deadline, "{model}: pool never complete");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            let kids = concur::sys::children(server.pid);
            assert!(
                !kids.is_empty(),
                "{model}: no child serving the held client"
            );
            for &kid in &kids {
                // SAFETY: kill(2) on the server's child.
                unsafe { libc::kill(kid as libc::pid_t, libc::SIGKILL) };
            }
            let mut buf = [0u8; 8];
            assert!(matches!(hold.read(&mut buf), Ok(0) | Err(_)), "{model}");
            if pool.is_some() {
                // The pool is whole again: as many children as before, all new.
                let deadline = Instant::now() + IO_TIMEOUT;
                loop {
                    let now = concur::sys::children(server.pid);
                    if now.len() == kids.len() && now.iter().all(|p| !kids.contains(p)) {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "{model}: workers not replaced: {now:?} (killed {kids:?})"
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        fib_client(&server, 5, 10, true);
        let mut server = server;
        assert!(server.alive(), "{model}: server died");
    });
}

/// After every client leaves, no thread, descriptor or child process remains.
#[test]
fn no_leaks_after_clients_leave() {
    for_each_model(|m| {
        let server = Server::start(m.name, "fib", &[]);
        fib_client(&server, 1, 3, true); // warm up: runtimes start lazily
        let baseline = server.steady_footprint();
        std::thread::scope(|scope| {
            for i in 0..20 {
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
        assert_eq!(after, baseline, "{}: leaked", m.name);
    });
}

/// SIGTERM (or SIGINT) under load: exit 0, no child process outlives the server,
/// and every reply a client got is complete and correct, including the clients
/// still waiting for a place (one-at-a-time servers and bounded pools). The signal
/// goes out once every client the server serves at once has had a reply.
#[test]
fn sigterm_under_load_finishes_replies_and_exits_zero() {
    for_each_model(|m| {
        let model = m.name;
        // Two workers: a bounded pool has clients waiting for a place too.
        let mut server = Server::start(model, "fib", &["--workers", "2"]);
        let clients = 10;
        let serving = m.served_at_once(2).map_or(clients, |n| n.min(clients));
        let (first_reply, replied) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..clients)
                .map(|i| {
                    let (addr, first_reply) = (server.addr, first_reply.clone());
                    scope.spawn(move || load_until_closed(addr, model, 500 + i as u64, first_reply))
                })
                .collect();
            for _ in 0..serving {
                replied
                    .recv_timeout(IO_TIMEOUT)
                    .unwrap_or_else(|_| panic!("{model}: clients got no replies"));
            }
            // Ctrl-C and `kill` must behave the same: alternate them across models.
            let index = REGISTRY.iter().position(|r| r.name == model).unwrap();
            let sig = if index % 2 == 0 {
                libc::SIGTERM
            } else {
                libc::SIGINT
            };
            let kids = concur::sys::children(server.pid);
            server.signal(sig);
            let status = server
                .wait_exit(Duration::from_secs(20))
                .unwrap_or_else(|| panic!("{model}: still running 20 s after the signal"));
            assert_eq!(status.code(), Some(0), "{model}: exit status");
            let outlived: Vec<_> = kids.into_iter().filter(|&k| running(k)).collect();
            assert!(
                outlived.is_empty(),
                "{model}: children outlived it: {outlived:?}"
            );
            let replies: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
            assert!(replies >= serving, "{model}: {replies} replies");
        });
    });
}

/// SIGTERM while a client pushes requests and never reads its replies: the replies
/// owed cannot all be sent, so the server gives up after the grace period (3 s),
/// still exits 0, and leaves no child behind (the one stuck on that client is
/// killed).
#[test]
fn sigterm_with_a_stuck_client_exits_after_grace() {
    for_each_model(|m| {
        let model = m.name;
        let mut server = Server::start(model, "echo", &[]);
        let mut s = server.connect();
        // Push until the server stops reading (see hostile_never_reads).
        s.set_write_timeout(Some(Duration::from_millis(1000)))
            .unwrap();
        let chunk = vec![b'x'; 64 * 1024];
        let mut pushed = 0usize;
        while pushed < 50 << 20 && s.write(&chunk).map(|n| pushed += n).is_ok() {}
        let kids = concur::sys::children(server.pid);
        server.signal(libc::SIGTERM);
        let status = server
            .wait_exit(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("{model}: still running 30 s after SIGTERM"));
        assert_eq!(status.code(), Some(0), "{model}: exit status");
        let outlived: Vec<_> = kids.into_iter().filter(|&k| running(k)).collect();
        assert!(
            outlived.is_empty(),
            "{model}: children outlived it: {outlived:?}"
        );
        drop(s);
    });
}

/// Whether process `pid` still runs (exists and is not a zombie).
fn running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

/// Request/reply rounds (3 pipelined) until the server closes; checks every line
/// received and that none is cut short, and says on `first_reply` when the first
/// round is complete. Returns the number of correct replies.
fn load_until_closed(
    addr: std::net::SocketAddr,
    model: &str,
    seed: u64,
    first_reply: std::sync::mpsc::Sender<()>,
) -> usize {
    let mut rng = fastrand::Rng::with_seed(seed);
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return 0;
    };
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut good = 0;
    // Bounded in count and time, whatever the server does.
    let deadline = Instant::now() + Duration::from_secs(60);
    for _ in 0..1_000_000 {
        if Instant::now() >= deadline {
            break;
        }
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
        if good == 0 && got.len() == want.len() {
            let _ = first_reply.send(());
        }
        good += got.iter().filter(|&&b| b == b'\n').count();
        if closed {
            break;
        }
    }
    good
}

/// accept() failing with EMFILE (a limit of 64 descriptors, 100 clients): where one
/// process holds every client's descriptor, the server logs it, backs off, keeps
/// serving its clients, and recovers when descriptors free up. Where clients live
/// in processes of their own (the parent closes its copy) or wait in the backlog
/// (one at a time, a pool of processes), it never runs out; the existing client is
/// served and new ones after the flood, all the same.
#[test]
fn out_of_descriptors_backs_off_and_recovers() {
    const EMFILE: &str = "Too many open files";
    const FLOOD: usize = 100;
    for_each_model(|m| {
        let model = m.name;
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
        let runs_out = !m.forks && !m.one_at_a_time();
        let mut keeper = server.connect();
        keeper.write_all(b"5\n").unwrap();
        assert_eq!(read_n(&mut keeper, 2), b"5\n");
        let flood: Vec<_> = (0..FLOOD).map(|_| server.connect()).collect();
        if runs_out {
            assert!(
                server.wait_for_log(EMFILE, IO_TIMEOUT),
                "{model}: never ran out of descriptors"
            );
        } else if m.ceiling == Ceiling::Processes {
            // Every client has a process of its own.
            let deadline = Instant::now() + IO_TIMEOUT;
            while concur::sys::children(server.pid).len() < FLOOD + 1 {
                assert!(Instant::now() < deadline, "{model}: flood not taken");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        keeper.write_all(b"6\n").unwrap();
        assert_eq!(
            read_n(&mut keeper, 2),
            b"8\n",
            "{model}: existing client starved"
        );
        drop(flood);
        drop(keeper);
        let mut server = server;
        assert!(server.alive(), "{model}: died out of descriptors");
        fib_client(&server, 6, 5, true);
        if !runs_out {
            assert!(
                !server.log_contains(EMFILE),
                "{model}: ran out of descriptors"
            );
        }
    });
}

/// `--max-conns`: past the limit new clients are closed at once; existing ones are
/// unaffected and later clients get in once others leave. A one-at-a-time server
/// never has more than one connection open, so it never reaches the limit: the
/// client past it waits its turn and is served like the others.
#[test]
fn max_conns_refuses_extra_clients() {
    for_each_model(|m| {
        let model = m.name;
        let server = Server::start(model, "fib", &["--max-conns", "3"]);
        if m.one_at_a_time() {
            let mut clients: Vec<_> = (0..4).map(|_| server.connect()).collect();
            for s in &mut clients {
                s.write_all(b"7\n").unwrap();
            }
            for mut s in clients {
                assert_eq!(read_n(&mut s, 3), b"13\n", "{model}: a client in turn");
            }
            return;
        }
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
        served_again(&server);
    });
}

/// New fib clients are served again (after places at a limit freed up); tries
/// until one is, bounded.
fn served_again(server: &Server) {
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let mut s = server.connect();
        let _ = s.write_all(b"9\n");
        let mut got = [0u8; 3];
        if s.read_exact(&mut got).is_ok() {
            assert_eq!(&got, b"34\n");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}: never served again",
            server.model
        );
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

/// `concur models` prints the registry: a header naming the columns, then one line
/// per model with its facts, which scripts (`benches/models.sh`) read.
#[test]
fn models_command_prints_the_registry() {
    let out = concur(&["models"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, concur::models::TABLE_COLUMNS);
    let yes = |b: bool| if b { "yes" } else { "no" };
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), REGISTRY.len(), "{text}");
    for (row, m) in rows.iter().zip(REGISTRY) {
        let cells: Vec<&str> = row.split_whitespace().take(7).collect();
        let want = [
            m.name,
            yes(m.event_loop),
            yes(m.forks),
            yes(m.fork_loops),
            yes(m.one_at_a_time()),
            m.ceiling.name(),
            &m.default_workers().to_string(),
        ];
        assert_eq!(cells, want, "{row}");
        assert!(row.ends_with(m.about), "{row}");
    }
}

/// `benches/models.sh` takes its models and their flags from `concur models`:
/// every model but the one-at-a-time ones, a worker per connection for the pools
/// and one worker for the rest. `PLAN_ONLY=1` prints the plan and runs nothing.
#[test]
fn bench_script_plans_from_the_registry() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/models.sh");
    let out = Command::new("bash")
        .arg(script)
        .env("PLAN_ONLY", "1")
        .env("CONCUR", env!("CARGO_BIN_EXE_concur"))
        .env("CONNS", "100")
        .env_remove("MODELS")
        .env_remove("HOLD_MODELS")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut plan = text.lines();
    assert_eq!(plan.next(), Some("reference"), "{text}");
    let mut want = Vec::new();
    for m in REGISTRY.iter().filter(|m| !m.one_at_a_time()) {
        let workers = match m.served_at_once(1) {
            Some(_) => 128, // one per connection, and some to spare
            None => 1,
        };
        want.push(format!("{} --workers {workers}", m.name));
    }
    assert_eq!(plan.collect::<Vec<_>>(), want, "{text}");
}

/// Fill the server's descriptors 16..1024 with /dev/null before it starts (a
/// `pre_exec` hook), so its first few clients get descriptors under FD_SETSIZE
/// (1024) and the next ones past it, without opening a thousand connections.
fn fill_low_descriptors(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: only open(2), dup2(2) and close(2) run between fork and exec, all
    // async-signal-safe, on a path built beforehand.
    unsafe {
        cmd.pre_exec(|| {
            let fd = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The inherited descriptors are close-on-exec: the ones below 16 that
            // are not ours become the server's free places.
            for target in 16..1024 {
                if target != fd && libc::dup2(fd, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if fd < 16 {
                libc::close(fd);
            }
            Ok(())
        });
    }
}

/// Descriptors past FD_SETSIZE (1024): select(2) cannot watch them, so select
/// refuses such clients (closes them at once, logs why, never passes them to
/// FD_SET) and everyone else is unaffected; every other model serves them like any
/// other client.
#[test]
fn descriptors_past_fd_setsize() {
    const CLIENTS: usize = 20; // more than the free places under 16
    for_each_model(|m| {
        let model = m.name;
        // A pool keeps a worker per client here: give it enough.
        let workers = (CLIENTS + 2).to_string();
        let server =
            Server::start_with(model, "fib", &["--workers", &workers], fill_low_descriptors);
        let mut first = Some(server.connect());
        if let Some(s) = &mut first {
            s.write_all(b"9\n").unwrap();
            assert_eq!(read_n(s, 3), b"34\n", "{model}");
        }
        if m.one_at_a_time() {
            first = None; // it holds the only place
        }
        let mut kept = Vec::new();
        let mut refused = 0;
        for _ in 0..CLIENTS {
            let mut s = server.connect();
            let _ = s.write_all(b"9\n");
            let mut buf = [0u8; 3];
            match s.read(&mut buf) {
                Ok(0) | Err(_) => refused += 1,
                Ok(_) => assert_eq!(read_n_after(&mut s, &buf), b"34\n", "{model}"),
            }
            if !m.one_at_a_time() {
                kept.push(s); // keep its descriptor taken
            }
        }
        if m.ceiling == Ceiling::FdSetSize {
            assert!(refused > 0, "{model}: clients past FD_SETSIZE were served");
            let logged = server.wait_for_log(">= FD_SETSIZE", IO_TIMEOUT);
            assert!(logged, "{model}: refusal not logged");
        } else {
            assert_eq!(refused, 0, "{model}: refused clients past FD_SETSIZE");
        }
        if let Some(s) = &mut first {
            s.write_all(b"10\n").unwrap();
            assert_eq!(read_n(s, 3), b"55\n", "{model}: the first client");
        }
        drop(kept);
    });
}

/// The bytes already read (`head`, up to its first zero) and the rest of a 3-byte
/// reply.
fn read_n_after(s: &mut std::net::TcpStream, head: &[u8; 3]) -> Vec<u8> {
    let have = head.iter().position(|&b| b == 0).unwrap_or(3);
    let mut got = head[..have].to_vec();
    got.extend(read_n(s, 3 - have));
    got
}

/// The talk's per-connection lines go to stderr, and only with -v.
#[test]
fn connection_lines_only_with_verbose() {
    for_each_model(|m| {
        for verbose in [false, true] {
            let extra: &[&str] = if verbose { &["-v"] } else { &[] };
            let mut server = Server::start_exact(m.name, "echo", extra);
            echo_client(&server, 8, 100, true);
            server.signal(libc::SIGTERM);
            let status = server.wait_exit(IO_TIMEOUT).expect("exit");
            assert_eq!(status.code(), Some(0), "{}", m.name);
            let text = server.final_log(IO_TIMEOUT);
            assert_eq!(
                text.contains("Connection from 127.0.0.1:"),
                verbose,
                "{}: {text}",
                m.name
            );
            assert_eq!(text.contains(" closed"), verbose, "{}: {text}", m.name);
        }
    });
}

/// `--prefix ''` is plain echo: the reply stream is the request stream.
#[test]
fn empty_prefix_is_plain_echo() {
    for_each_model(|m| {
        let server = Server::start(m.name, "echo", &["--prefix", ""]);
        let mut s = server.connect();
        let data: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        let mut rng = fastrand::Rng::with_seed(9);
        write_split(&mut s, &data, &mut rng);
        s.shutdown(Shutdown::Write).unwrap();
        assert!(read_to_eof(&mut s) == data, "{}", m.name);
    });
}

/// A pool of processes (prefork): workers killed mid-client are replaced, and the
/// places they held under `--max-conns` are freed.
#[test]
fn process_pools_replace_dead_workers() {
    let pools = REGISTRY
        .iter()
        .filter(|m| m.forks && m.ceiling == Ceiling::Workers);
    for m in pools {
        let args = ["--workers", "2", "--max-conns", "2"];
        let server = Server::start(m.name, "fib", &args);
        let mut held = server.connect();
        held.write_all(b"5\n").unwrap();
        assert_eq!(read_n(&mut held, 2), b"5\n");
        let deadline = Instant::now() + IO_TIMEOUT;
        let before = loop {
            let kids = concur::sys::children(server.pid);
            if kids.len() == 2 || Instant::now() >= deadline {
                break kids;
            }
            std::thread::sleep(Duration::from_millis(20)); // the second fork may trail
        };
        assert_eq!(before.len(), 2, "{}: {before:?}", m.name);
        for kid in &before {
            // SAFETY: kill(2) on the server's child.
            unsafe { libc::kill(*kid as libc::pid_t, libc::SIGKILL) };
        }
        let mut buf = [0u8; 8];
        assert!(matches!(held.read(&mut buf), Ok(0) | Err(_)));
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            let now = concur::sys::children(server.pid);
            if now.len() == 2 && now.iter().all(|p| !before.contains(p)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: workers not replaced: {now:?}",
                m.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Both places are free again: two clients at once are served.
        let mut a = server.connect();
        let mut b = server.connect();
        for s in [&mut a, &mut b] {
            s.write_all(b"7\n").unwrap();
            assert_eq!(read_n(s, 3), b"13\n", "{}", m.name);
        }
    }
}

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
    for model in REGISTRY.iter().filter(|m| m.event_loop).map(|m| m.name) {
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
    for model in REGISTRY.iter().filter(|m| !m.event_loop).map(|m| m.name) {
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
    use concur::models::threadpool::QUEUE_PER_WORKER;
    let server = Server::start("threadpool", "fib", &["--workers", "1"]);
    let mut busy = server.connect();
    busy.write_all(b"5\n").unwrap();
    assert_eq!(read_n(&mut busy, 2), b"5\n"); // the only worker is now on `busy`
    let queued: Vec<_> = (0..QUEUE_PER_WORKER).map(|_| server.connect()).collect();
    let mut extra = server.connect();
    let mut buf = [0u8; 8];
    match extra.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("a client past the full queue was not closed: {other:?}"),
    }
    drop(busy);
    drop(queued);
    // Places free up as the worker goes through the departed clients.
    served_again(&server);
}
