//! `concur merge` as a script sees it, and several `concur load` or `concur hold` agents
//! merged exactly.

mod common;
mod serve_harness;

use common::{Fault, echo, fib, serve};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

fn concur(args: &[&str], stdin: Option<&[u8]>) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_concur"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run concur");
    let input = child.stdin.take();
    if let (Some(mut pipe), Some(bytes)) = (input, stdin) {
        pipe.write_all(bytes).expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait for concur");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One agent's `--json` report, written to a file in `dir`.
fn agent(dir: &std::path::Path, name: &str, args: &[&str]) -> (std::path::PathBuf, String) {
    let (code, out, err) = concur(&[&["load", "--json"], args].concat(), None);
    assert_eq!(code, 0, "{err}");
    let path = dir.join(name);
    std::fs::write(&path, &out).unwrap();
    (path, out)
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("concur-merge-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn files_and_stdin_merge_and_nest() {
    let dir = temp_dir("cli");
    let addr = serve(echo(), Fault::None).to_string();
    let base = ["--addr", &addr, "--conns", "2", "--requests", "300"];
    let (a, a_json) = agent(&dir, "a.json", &base);
    let (b, _) = agent(&dir, "b.json", &base);
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());

    let (code, out, err) = concur(&["merge", "--json", a, b], None);
    assert_eq!(code, 0, "{err}");
    let m: concur::load::LoadReport = serde_json::from_str(&out).expect("load schema");
    assert_eq!((m.requests_ok, m.requests_sent, m.agents), (600, 600, 2));
    assert_eq!(m.conns, 4);
    let h = concur::load::report::decode_histogram(&m.histogram).unwrap();
    assert_eq!(h.len(), 600);
    std::fs::write(dir.join("ab.json"), &out).unwrap();

    // Standard input may hold several reports; a merge merges like a report.
    let (code, out, err) = concur(
        &[
            "merge",
            "--json",
            "-",
            dir.join("ab.json").to_str().unwrap(),
        ],
        Some(a_json.as_bytes()),
    );
    assert_eq!(code, 0, "{err}");
    let m: concur::load::LoadReport = serde_json::from_str(&out).unwrap();
    assert_eq!((m.requests_ok, m.agents), (900, 3));

    // The table says how many agents and what they shared.
    let (code, out, _) = concur(&["merge", a, b], None);
    assert_eq!(code, 0);
    assert!(out.contains("merged from 2 agents"), "{out}");
    assert!(out.contains("requests ok 600"), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn different_services_are_refused_in_one_line() {
    let dir = temp_dir("mismatch");
    let e = serve(echo(), Fault::None).to_string();
    let f = serve(fib(), Fault::None).to_string();
    let (a, _) = agent(&dir, "echo.json", &["--addr", &e, "--requests", "50"]);
    let (b, _) = agent(
        &dir,
        "fib.json",
        &["--addr", &f, "--service", "fib", "--requests", "50"],
    );
    let (code, out, err) = concur(&["merge", a.to_str().unwrap(), b.to_str().unwrap()], None);
    assert_eq!(code, 2, "{err}");
    assert!(out.is_empty());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("service") && err.contains("fib.json"), "{err}");

    let (code, _, err) = concur(&["merge", "-"], Some(b"{\"not\": 1}"));
    assert_eq!((code, err.lines().count()), (2, 1), "{err}");
    let (code, _, err) = concur(&["merge", "/nonexistent/report.json"], None);
    assert_eq!((code, err.lines().count()), (2, 1), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Now plus `secs`, in Unix seconds, as `--start-at` takes it.
fn unix_in(secs: f64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    format!("{:.3}", now + secs)
}

#[test]
fn start_at_starts_no_earlier_and_agents_with_a_duration_stop_together() {
    let addr = serve(echo(), Fault::None).to_string();
    let at = unix_in(1.0);
    let at_secs: f64 = at.parse().unwrap();
    let args = [
        "load",
        "--json",
        "--addr",
        &addr,
        "--conns",
        "2",
        "--duration",
        "300ms",
        "--start-at",
        &at,
    ];
    let agents: Vec<_> = (0..2)
        .map(|_| {
            let args = args.map(str::to_string);
            std::thread::spawn(move || {
                let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                concur(&refs, None)
            })
        })
        .collect();
    let reports: Vec<concur::load::LoadReport> = agents
        .into_iter()
        .map(|a| {
            let (code, out, err) = a.join().unwrap();
            assert_eq!(code, 0, "{err}");
            serde_json::from_str(&out).unwrap()
        })
        .collect();
    for r in &reports {
        // Not before the time asked, and the lateness reported is the window's.
        assert!(r.window_start_unix >= at_secs, "{r:?}");
        let late = r.start_late_secs.expect("lateness reported");
        let rounding = r.window_start_unix * f64::EPSILON * 4.0;
        assert!((r.window_start_unix - at_secs - late).abs() <= rounding);
        assert!(r.requests_ok > 0);
    }
    // Both runs end at the time asked plus the duration (each at its first look at
    // the clock past it), so each one's run overlaps the other's end; each answered
    // window ends with its last verified reply, within its run.
    let (a, b) = (&reports[0], &reports[1]);
    let (a_end, b_end) = (a.run_end_unix.unwrap(), b.run_end_unix.unwrap());
    assert!(a.window_start_unix < b_end && b.window_start_unix < a_end);
    let end = at_secs + 0.3;
    assert!(a_end >= end - 1e-3 && b_end >= end - 1e-3);
    for r in &reports {
        assert!(r.window_end_unix <= r.run_end_unix.unwrap(), "{r:?}");
    }

    // hold takes it too, and says how late it started.
    let (code, out, err) = concur(
        &[
            "hold",
            "--json",
            "--addr",
            &addr,
            "--conns",
            "3",
            "--duration",
            "10ms",
            "--start-at",
            &unix_in(0.2),
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let h: concur::hold::HoldReport = serde_json::from_str(&out).unwrap();
    assert!(h.start_late_secs.is_some());

    let (code, _, err) = concur(&["load", "--addr", &addr, "--start-at", "soon"], None);
    assert_eq!((code, err.lines().count()), (2, 1), "{err}");
}

/// A TCP relay in front of the server that counts, exactly, the bytes it delivered to
/// the server and those the server sent back. /proc/PID/io's `rchar` would be the
/// server's own count, but concur's servers read sockets with recv(2) or io_uring,
/// which it does not count (it stays at 0 here); the relay sees every byte instead.
struct Relay {
    addr: std::net::SocketAddr,
    to_server: Arc<AtomicU64>,
    to_clients: Arc<AtomicU64>,
}

fn relay(upstream: std::net::SocketAddr) -> Relay {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let to_server = Arc::new(AtomicU64::new(0));
    let to_clients = Arc::new(AtomicU64::new(0));
    let (up, down) = (to_server.clone(), to_clients.clone());
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(server) = TcpStream::connect(upstream) else {
                continue;
            };
            let _ = (client.set_nodelay(true), server.set_nodelay(true));
            let pipe = |mut from: TcpStream, mut to: TcpStream, count: Arc<AtomicU64>| {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        let n = match from.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        // Counted before it is passed on: by the time the other side
                        // has it, the count includes it.
                        count.fetch_add(n as u64, Ordering::SeqCst);
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            };
            let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            pipe(client, server, up.clone());
            pipe(s2, c2, down.clone());
        }
    });
    Relay {
        addr,
        to_server,
        to_clients,
    }
}

#[test]
fn three_agents_merged_match_what_the_server_was_sent() {
    let server = serve_harness::Server::start("epoll", "echo", &[]);
    let relay = relay(server.addr);
    let addr = relay.addr.to_string();
    let dir = temp_dir("three");
    let at = unix_in(1.0);
    let agents: Vec<_> = (0..3)
        .map(|i| {
            let (addr, at, dir) = (addr.clone(), at.clone(), dir.clone());
            std::thread::spawn(move || {
                let requests = (400 + 100 * i).to_string();
                let args = [
                    "--addr",
                    &addr,
                    "--conns",
                    "3",
                    "--pipeline",
                    "2",
                    "--requests",
                    &requests,
                    "--start-at",
                    &at,
                ];
                agent(&dir, &format!("agent{i}.json"), &args)
            })
        })
        .collect();
    let files: Vec<_> = agents.into_iter().map(|a| a.join().unwrap()).collect();
    let reports: Vec<concur::load::LoadReport> = files
        .iter()
        .map(|(_, json)| serde_json::from_str(json).unwrap())
        .collect();
    let paths: Vec<&str> = files.iter().map(|(p, _)| p.to_str().unwrap()).collect();
    let (code, out, err) = concur(&[&["merge", "--json"], &paths[..]].concat(), None);
    assert_eq!(code, 0, "{err}");
    let merged: concur::load::LoadReport = serde_json::from_str(&out).unwrap();

    let sum = |f: fn(&concur::load::LoadReport) -> u64| reports.iter().map(f).sum::<u64>();
    assert_eq!(merged.requests_ok, sum(|r| r.requests_ok));
    assert_eq!(merged.requests_ok, 400 + 500 + 600);
    assert_eq!(merged.requests_sent, merged.requests_ok);
    assert_eq!(merged.bytes_sent, sum(|r| r.bytes_sent));
    assert_eq!(merged.bytes_received, sum(|r| r.bytes_received));
    assert!(
        merged.merge_warnings.is_empty(),
        "{:?}",
        merged.merge_warnings
    );
    let h = concur::load::report::decode_histogram(&merged.histogram).unwrap();
    assert_eq!(h.len(), merged.requests_ok);

    // The server's side: it was delivered exactly the verified requests' 64 bytes
    // each (every reply came back, so every request had reached it), and it sent
    // exactly what the agents received.
    let to_server = relay.to_server.load(Ordering::SeqCst);
    assert_eq!(to_server, merged.requests_ok * 64);
    assert_eq!(to_server, merged.bytes_sent);
    assert_eq!(
        relay.to_clients.load(Ordering::SeqCst),
        merged.bytes_received
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Network namespaces made by the multi-host test, deleted (with every link in them)
/// when dropped, whether the test passed or panicked; the server process with them.
struct Hosts {
    names: Vec<String>,
    server: Option<std::process::Child>,
}

impl Drop for Hosts {
    fn drop(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

impl Hosts {
    /// `ip ARGS`, which must succeed.
    fn ip(&self, args: &[&str]) {
        let out = Command::new("ip").args(args).output().expect("run ip");
        assert!(
            out.status.success(),
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Add a namespace; false (nothing made) if the kernel or our rights refuse.
    fn add(&mut self, ns: &str) -> bool {
        let ok = Command::new("ip")
            .args(["netns", "add", ns])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            self.names.push(ns.to_string());
        }
        ok
    }
}

#[test]
fn agents_on_three_hosts_in_network_namespaces_merge() {
    // Hosts: a server and three agents, each a network namespace with one veth,
    // joined by a bridge in a fifth ("switch") namespace; 10.77.0.0/24 exists only
    // inside them, so no traffic leaves them and nothing outside changes.
    let tag = format!("concur-{}", std::process::id());
    let mut hosts = Hosts {
        names: Vec::new(),
        server: None,
    };
    let switch = format!("{tag}-sw");
    if !hosts.add(&switch) {
        eprintln!(
            "SKIPPED agents_on_three_hosts_in_network_namespaces_merge: `ip netns add` is \
             not permitted here (needs root and a kernel with network namespaces, and iproute2)"
        );
        return;
    }
    hosts.ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"]);
    hosts.ip(&["-n", &switch, "link", "set", "br0", "up"]);
    let names = ["srv", "a1", "a2", "a3"];
    for (i, name) in names.iter().enumerate() {
        let ns = format!("{tag}-{name}");
        assert!(hosts.add(&ns), "ip netns add {ns}");
        let port = format!("p{i}");
        hosts.ip(&[
            "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns",
            &switch,
        ]);
        hosts.ip(&["-n", &switch, "link", "set", &port, "master", "br0", "up"]);
        let addr = format!("10.77.0.{}/24", i + 1);
        hosts.ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
        hosts.ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        hosts.ip(&["-n", &ns, "link", "set", "lo", "up"]);
    }
    let exe = env!("CARGO_BIN_EXE_concur");
    let netns_exec = |name: &str| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &format!("{tag}-{name}"), exe]);
        c
    };
    // The server host: `ip netns exec` execs concur in place, so the child is it.
    let mut server = netns_exec("srv")
        .args(["serve", "--model", "epoll", "--service", "echo"])
        .args(["--addr", "10.77.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the server host");
    let stdout = server.stdout.take().unwrap();
    hosts.server = Some(server);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the server's listening line");
    let addr = line
        .strip_prefix("listening on ")
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("bad listening line {line:?}"))
        .to_string();
    assert!(addr.starts_with("10.77.0.1:"), "{addr}");

    // The launcher is `ip netns exec`, as ssh would be on real hosts.
    let at = unix_in(1.0);
    let agents: Vec<_> = ["a1", "a2", "a3"]
        .iter()
        .map(|name| {
            netns_exec(name)
                .args(["load", "--json", "--addr", &addr, "--conns", "3"])
                .args(["--requests", "500", "--start-at", &at])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start an agent host")
        })
        .collect();
    let mut all = String::new();
    let mut reports = Vec::new();
    for a in agents {
        let out = a.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: concur::load::LoadReport = serde_json::from_str(&text).unwrap();
        reports.push(r);
        all.push_str(&text);
    }
    // All three reports on one stream, as pdsh -N would deliver them.
    let (code, out, err) = concur(&["merge", "--json", "-"], Some(all.as_bytes()));
    assert_eq!(code, 0, "{err}");
    let merged: concur::load::LoadReport = serde_json::from_str(&out).unwrap();
    assert_eq!(merged.agents, 3);
    assert_eq!(merged.requests_ok, 1500);
    assert_eq!(
        merged.requests_ok,
        reports.iter().map(|r| r.requests_ok).sum::<u64>()
    );
    assert_eq!(merged.bytes_sent, merged.requests_ok * 64);
    assert_eq!(merged.conns, 9);
    assert!(
        merged.merge_warnings.is_empty(),
        "{:?}",
        merged.merge_warnings
    );
    let h = concur::load::report::decode_histogram(&merged.histogram).unwrap();
    assert_eq!(h.len(), 1500);
    drop(hosts);
    // Nothing of ours is left.
    let left = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(!left.contains(&tag), "{left}");
}

/// The server's open sockets, from /proc/PID/fd (its listener and every accepted
/// connection).
fn server_sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|l| l.to_string_lossy().starts_with("socket:"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn hold_agents_merged_count_what_the_server_held() {
    let server = serve_harness::Server::start("epoll", "echo", &[]);
    let addr = server.addr.to_string();
    let pid = server.pid.to_string();
    let before = server_sockets(server.pid);
    let dir = temp_dir("hold");
    let at = unix_in(1.0);
    // Three agents, 3 + 4 + 5 connections, starting together and holding for a while;
    // only the first reads the server's /proc, so its view survives the merge.
    let mut agents: Vec<_> = (0..3)
        .map(|i| {
            let conns = (3 + i).to_string();
            let mut args = vec![
                "hold",
                "--json",
                "--addr",
                &addr,
                "--conns",
                &conns,
                "--duration",
                "5s",
                "--start-at",
                &at,
            ];
            if i == 0 {
                args.extend(["--pid", &pid]);
            }
            Command::new(env!("CARGO_BIN_EXE_concur"))
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run concur hold")
        })
        .collect();
    // While they hold, the server's sockets reach the listener's plus all 12; the
    // most seen until the first agent is done (a guard of 60 s against a hang).
    let want = before + 12;
    let guard = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut most = before;
    while most < want
        && agents.iter_mut().all(|c| c.try_wait().unwrap().is_none())
        && std::time::Instant::now() < guard
    {
        most = most.max(server_sockets(server.pid));
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let mut paths = Vec::new();
    let mut reports = Vec::new();
    for (i, child) in agents.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        let path = dir.join(format!("hold{i}.json"));
        std::fs::write(&path, &out.stdout).unwrap();
        paths.push(path.to_str().unwrap().to_string());
        let r: concur::hold::HoldReport = serde_json::from_slice(&out.stdout).unwrap();
        reports.push(r);
    }
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    let (code, out, err) = concur(&[&["merge", "--json"], &paths[..]].concat(), None);
    assert_eq!(code, 0, "{err}");
    let merged: concur::merge::HoldMerge = serde_json::from_str(&out).unwrap();
    // It is hold's schema: it reads as one hold report.
    let as_hold: concur::hold::HoldReport = serde_json::from_str(&out).unwrap();
    assert_eq!(as_hold, merged.report);
    let m = &merged.report;
    let sum = |f: fn(&concur::hold::HoldReport) -> u64| reports.iter().map(f).sum::<u64>();
    assert_eq!(m.opened, sum(|r| r.opened));
    assert_eq!((m.opened, m.conns, m.failed), (12, 12, 0));
    assert_eq!(m.answered_ok, sum(|r| r.answered_ok));
    assert_eq!(m.answered_ok, m.opened);
    assert_eq!(m.closed_while_holding, 0);
    // The server held exactly the connections the agents say they opened.
    assert_eq!(
        most,
        before + m.opened as usize,
        "server sockets while holding"
    );
    let h = concur::load::report::decode_histogram(&m.histogram).unwrap();
    assert_eq!(h.len(), m.answered_ok);
    assert_eq!(merged.agents, 3);
    assert_eq!(merged.server_views, Some(1));
    assert_eq!(m.server.as_ref().map(|s| s.pid), Some(server.pid));
    assert!(
        merged.merge_warnings.is_empty(),
        "{:?}",
        merged.merge_warnings
    );
    let starts = reports.iter().map(|r| r.window_start_unix);
    let ends = reports.iter().map(|r| r.window_end_unix);
    assert_eq!(m.window_start_unix, starts.fold(f64::INFINITY, f64::min));
    assert_eq!(m.window_end_unix, ends.fold(f64::NEG_INFINITY, f64::max));

    // The table is hold's, and says it is a merge.
    let (code, table, err) = concur(&["merge", paths[0], paths[1], paths[2]], None);
    assert_eq!(code, 0, "{err}");
    assert!(table.starts_with("hold echo"), "{table}");
    assert!(table.contains("opened 12/12"), "{table}");
    assert!(table.contains("merged from 3 agents"), "{table}");

    // A hold report and a load report do not merge: one line, exit 2.
    let (load, _) = agent(&dir, "load.json", &["--addr", &addr, "--requests", "20"]);
    let (code, out, err) = concur(&["merge", paths[0], load.to_str().unwrap()], None);
    assert_eq!(code, 2, "{err}");
    assert!(out.is_empty());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("hold") && err.contains("load.json"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
