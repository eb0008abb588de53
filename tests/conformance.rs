//! One protocol, every server: a table of protocol cases (bytes sent, exact bytes
//! expected back, and whether the server then closes) run over loopback against
//! every `concur serve` model and every Python peer in `peers/python/`, so the lab
//! compares servers that say the same thing. The same table is first checked
//! against concur's sans-I/O protocol (`concur::protocol`), which defines the rules.
//!
//! A case is a conversation on one connection. Each `Send` is one write, and the
//! reply to it is read in full (`Expect`) before the next write, so the server
//! sees each write as a read of its own whatever its read size: split requests are
//! really split, and an echo reply is one prefix per write. A case the server does
//! not close ends with a sentinel round trip, which would expose any extra byte
//! the server sent; a closing case ends with `Eof`: a clean EOF, no more bytes and
//! no reset.

mod serve_harness;

use concur::protocol::{DEFAULT_MAX_N, Flow, ServiceSpec};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Socket timeouts: a guard against a hung server, never part of a verdict.
const GUARD: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
enum Step {
    /// One write.
    Send(Vec<u8>),
    /// The next bytes the server sends, exactly.
    Expect(Vec<u8>),
    /// shutdown(Write): the client has nothing more to say.
    ShutWrite,
    /// The server closes: EOF, with nothing before it and no reset.
    Eof,
}

use Step::{Eof, ShutWrite};

fn send(b: impl AsRef<[u8]>) -> Step {
    Step::Send(b.as_ref().to_vec())
}

fn expect(b: impl AsRef<[u8]>) -> Step {
    Step::Expect(b.as_ref().to_vec())
}

fn rep(byte: u8, n: usize) -> Vec<u8> {
    vec![byte; n]
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

struct Case {
    name: &'static str,
    steps: Vec<Step>,
}

fn case(name: &'static str, steps: Vec<Step>) -> Case {
    Case { name, steps }
}

/// Servers started one way (service and options), and the cases for them.
struct Config {
    name: &'static str,
    service: &'static str,
    args: &'static [&'static str],
    /// What concur's protocol does with these options.
    spec: ServiceSpec,
    /// A round trip that ends every case the server does not close.
    sentinel: (Vec<u8>, Vec<u8>),
    cases: Vec<Case>,
}

impl Config {
    /// A case's steps with the sentinel appended where the connection stays open.
    fn steps(&self, case: &Case) -> Vec<Step> {
        let mut steps = case.steps.clone();
        if !matches!(steps.last(), Some(Eof)) {
            steps.push(Step::Send(self.sentinel.0.clone()));
            steps.push(Step::Expect(self.sentinel.1.clone()));
        }
        steps
    }
}

fn fib_cases() -> Vec<Case> {
    let max = format!("ERR n out of range 0..={DEFAULT_MAX_N}\n");
    let unterminated = b"ERR unterminated request at end of stream\n";
    let too_long = b"ERR request too long\n";
    vec![
        case("one request", vec![send("10\n"), expect("55\n")]),
        case(
            "the talk's fib: fib(0) = fib(1) = fib(2) = 1",
            vec![send("0\n1\n2\n3\n"), expect("1\n1\n1\n2\n")],
        ),
        case("\\r\\n accepted", vec![send("10\r\n"), expect("55\n")]),
        case(
            "? frames (the talk's select example)",
            vec![send("10?11?"), expect("55\n89\n")],
        ),
        case(
            "spaces and tabs around n",
            vec![send(" 12 \t\n"), expect("144\n")],
        ),
        case("leading zeros", vec![send("0010\n"), expect("55\n")]),
        case(
            "blank requests are skipped",
            vec![send("\n\r\n  \n\t?5?\n"), expect("5\n")],
        ),
        // Why blank lines are not requests: `10?` typed into nc or telnet ends with the
        // Enter key's newline, which would otherwise draw an ERR after every answer.
        case(
            "'10?' then Enter, as typed at a terminal: one reply",
            vec![
                send("10?\n"),
                expect("55\n"),
                send("11?\r\n"),
                expect("89\n"),
            ],
        ),
        case(
            "pipelined, mixed terminators, one write",
            vec![send("1\n2?3\r\n4\n5?6\n"), expect("1\n1\n2\n3\n5\n8\n")],
        ),
        case(
            "a request split across writes",
            vec![send("5\n1"), expect("5\n"), send("0\n"), expect("55\n")],
        ),
        case(
            "\\r\\n split between writes",
            vec![
                send("7\n20\r"),
                expect("13\n"),
                send("\n"),
                expect("6765\n"),
            ],
        ),
        case(
            "a bad request split across writes",
            vec![
                send("4\nab"),
                expect("3\n"),
                send("c\n"),
                expect("ERR not a number: abc\n"),
            ],
        ),
        case(
            "not a number keeps the connection",
            vec![send("abc\n7\n"), expect("ERR not a number: abc\n13\n")],
        ),
        case(
            "signs and inner spaces are not numbers",
            vec![
                send("-1\n+2\n1 2\n"),
                expect("ERR not a number: -1\nERR not a number: +2\nERR not a number: 1 2\n"),
            ],
        ),
        case(
            "the quote is escaped like Rust's escape_default",
            vec![
                send(b"\x00\xff\"x\na\tb'\\\n"),
                expect(b"ERR not a number: \\x00\\xff\\\"x\nERR not a number: a\\tb\\'\\\\\n"),
            ],
        ),
        case(
            "\\r is dropped only before \\n",
            vec![send("5\r?"), expect("ERR not a number: 5\\r\n")],
        ),
        case(
            "the quote is cut at 32 bytes",
            vec![
                send(cat(&[&rep(b'z', 60), b"\n"])),
                expect(cat(&[b"ERR not a number: ", &rep(b'z', 32), b"\n"])),
            ],
        ),
        case(
            "above the maximum",
            vec![send(format!("{}\n", DEFAULT_MAX_N + 1)), expect(&max)],
        ),
        case(
            "too big for any integer",
            vec![send("99999999999999999999999\n"), expect(&max)],
        ),
        case(
            "64 bytes is still a request",
            vec![send(cat(&[&rep(b'0', 64), b"\n"])), expect("1\n")],
        ),
        case(
            "64 bytes wait for their terminator",
            vec![send(rep(b'1', 64)), send("\n"), expect(&max)],
        ),
        case(
            "64 bytes split across writes",
            vec![
                send(cat(&[b"6\n", &rep(b'0', 32)])),
                expect("8\n"),
                send(cat(&[&rep(b'0', 32), b"\n"])),
                expect("1\n"),
            ],
        ),
        case(
            "65 bytes is too long: replies before it, then close",
            vec![
                send(cat(&[b"5\n", &rep(b'1', 65), b"\n6\n"])),
                expect(cat(&[b"5\n", too_long])),
                Eof,
            ],
        ),
        case(
            "the \\r of \\r\\n counts toward the 64",
            vec![send(cat(&[&rep(b'0', 64), b"\r\n"])), expect(too_long), Eof],
        ),
        case(
            "too long without a terminator",
            vec![send(rep(b'7', 1000)), expect(too_long), Eof],
        ),
        case(
            "too long across writes",
            vec![
                send(cat(&[b"6\n", &rep(b'1', 40)])),
                expect("8\n"),
                send(rep(b'1', 30)),
                expect(too_long),
                Eof,
            ],
        ),
        case(
            "half-close: what is owed is sent, then EOF",
            vec![send("1\n2\n3\n"), ShutWrite, expect("1\n1\n2\n"), Eof],
        ),
        case(
            "half-close with an unterminated request",
            vec![
                send("5\n12"),
                ShutWrite,
                expect(cat(&[b"5\n", unterminated])),
                Eof,
            ],
        ),
        case(
            "half-close with a blank tail",
            vec![send("5\n \t"), ShutWrite, expect("5\n"), Eof],
        ),
        case(
            "half-close with a lone \\r (not blank)",
            vec![
                send("5\n\r"),
                ShutWrite,
                expect(cat(&[b"5\n", unterminated])),
                Eof,
            ],
        ),
        case("half-close at once", vec![ShutWrite, Eof]),
    ]
}

fn echo_cases(prefix: &[u8]) -> Vec<Case> {
    let reply = |data: &[u8]| cat(&[prefix, data]);
    let every_byte: Vec<u8> = (0..=255).collect();
    let long_line = cat(&[&rep(b'9', 100), b"\n"]);
    vec![
        case(
            "the talk's reply",
            vec![send("hello"), expect(reply(b"hello"))],
        ),
        case(
            "one reply per read",
            vec![
                send("a"),
                expect(reply(b"a")),
                send("bc\n"),
                expect(reply(b"bc\n")),
            ],
        ),
        case(
            "every byte value, unchanged",
            vec![send(&every_byte), expect(reply(&every_byte))],
        ),
        case(
            "fib's rules do not apply",
            vec![send(&long_line), expect(reply(&long_line))],
        ),
        case(
            "half-close: the reply, then EOF",
            vec![send("bye"), ShutWrite, expect(reply(b"bye")), Eof],
        ),
        case("half-close at once", vec![ShutWrite, Eof]),
    ]
}

fn configs() -> Vec<Config> {
    let prefix = b"Received: ".to_vec();
    vec![
        Config {
            name: "fib",
            service: "fib",
            args: &[],
            spec: ServiceSpec::Fib {
                max_n: DEFAULT_MAX_N,
            },
            sentinel: (b"1\n".to_vec(), b"1\n".to_vec()),
            cases: fib_cases(),
        },
        Config {
            name: "fib --max-n 20",
            service: "fib",
            args: &["--max-n", "20"],
            spec: ServiceSpec::Fib { max_n: 20 },
            sentinel: (b"1\n".to_vec(), b"1\n".to_vec()),
            cases: vec![case(
                "the maximum is --max-n",
                vec![
                    send("20\n21\n"),
                    expect("6765\nERR n out of range 0..=20\n"),
                ],
            )],
        },
        Config {
            name: "echo",
            service: "echo",
            args: &[],
            spec: ServiceSpec::Echo {
                prefix: prefix.clone(),
            },
            sentinel: (b"z".to_vec(), cat(&[&prefix, b"z"])),
            cases: echo_cases(&prefix),
        },
        Config {
            name: "echo --prefix ''",
            service: "echo",
            args: &["--prefix", ""],
            spec: ServiceSpec::Echo { prefix: Vec::new() },
            sentinel: (b"z".to_vec(), b"z".to_vec()),
            cases: echo_cases(b""),
        },
    ]
}

// ------------------------------------------------------------------ the servers

/// Every `concur serve` model from the registry, each with why it cannot run on
/// this machine, if so. The one place that names the registry.
fn concur_models() -> Vec<(String, Result<(), String>)> {
    concur::models::REGISTRY
        .iter()
        .map(|m| (m.name.to_string(), m.check().map_err(|e| format!("{e:#}"))))
        .collect()
}

/// The Python peers, as the lab lists them: (name, file under peers/python/).
fn python_peers() -> &'static [(&'static str, &'static str)] {
    &concur::lab::experiments::PYTHON_SERVERS
}

fn peers_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/python")
}

fn python3() -> bool {
    Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A running Python peer; it and its children (processes.py forks) are killed on drop.
struct Peer {
    child: Child,
    addr: SocketAddr,
}

impl Peer {
    fn start(file: &str, config: &Config) -> Result<Peer, String> {
        let mut child = Command::new("python3")
            .arg(peers_dir().join(file))
            .args(["--addr", "127.0.0.1:0", "--service", config.service])
            .args(config.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawn python3 {file}: {e}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut peer = Peer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let line = rx
            .recv_timeout(GUARD)
            .map_err(|_| format!("{file}: no listening line"))?;
        let tail = format!(" service={}", config.service);
        peer.addr = line
            .strip_prefix("listening on ")
            .and_then(|rest| rest.trim_end().strip_suffix(&tail))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("{file}: bad listening line {line:?}"))?;
        Ok(peer)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        for kid in concur::sys::children(self.child.id()) {
            // SAFETY: kill(2) on a child of our own child.
            unsafe { libc::kill(kid as libc::pid_t, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------ running a case

fn show(bytes: &[u8]) -> String {
    format!("\"{}\"", bytes.escape_ascii())
}

/// Run one case on a fresh connection; the first difference, if any.
fn run_case(addr: SocketAddr, steps: &[Step]) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&addr, GUARD).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(GUARD)).unwrap();
    s.set_write_timeout(Some(GUARD)).unwrap();
    s.set_nodelay(true).unwrap();
    for (i, step) in steps.iter().enumerate() {
        let at = format!("step {} ({step:?})", i + 1);
        match step {
            Step::Send(bytes) => s.write_all(bytes).map_err(|e| format!("{at}: {e}"))?,
            Step::ShutWrite => s
                .shutdown(Shutdown::Write)
                .map_err(|e| format!("{at}: {e}"))?,
            Step::Expect(want) => {
                // Read exactly as many bytes as expected: anything extra is left for
                // the next step to trip over.
                let mut got = vec![0u8; want.len()];
                let mut have = 0;
                while have < want.len() {
                    match s.read(&mut got[have..]) {
                        Ok(0) => {
                            return Err(format!(
                                "expected {}, got {} then EOF",
                                show(want),
                                show(&got[..have])
                            ));
                        }
                        Ok(n) => have += n,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) => {
                            return Err(format!(
                                "expected {}, got {} then {e}",
                                show(want),
                                show(&got[..have])
                            ));
                        }
                    }
                }
                if &got != want {
                    return Err(format!("expected {}, got {}", show(want), show(&got)));
                }
            }
            Step::Eof => {
                let mut extra = [0u8; 256];
                match s.read(&mut extra) {
                    Ok(0) => {}
                    Ok(n) => {
                        return Err(format!(
                            "expected EOF, got more bytes {}",
                            show(&extra[..n])
                        ));
                    }
                    Err(e) => return Err(format!("expected EOF, got {e}")),
                }
            }
        }
    }
    Ok(())
}

/// A started server's address, and what stops it when dropped.
type Started = (SocketAddr, Box<dyn std::any::Any>);

/// Every case of every config against one server kind, each config on a fresh
/// server; the failures, each named.
fn run_all(target: &str, start: impl Fn(&Config) -> Result<Started, String>) -> Vec<String> {
    let mut failures = Vec::new();
    for config in configs() {
        let (addr, _server) = match start(&config) {
            Ok(started) => started,
            Err(e) => {
                failures.push(format!("{target} [{}]: did not start: {e}", config.name));
                continue;
            }
        };
        for case in &config.cases {
            if let Err(e) = run_case(addr, &config.steps(case)) {
                failures.push(format!("{target} [{}] {}: {e}", config.name, case.name));
            }
        }
    }
    failures
}

/// Run `each` for every target on its own thread; fail with every failure listed.
fn all_conform<T: Sync>(targets: &[T], each: impl Fn(&T) -> Vec<String> + Sync) {
    let failures: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = targets.iter().map(|t| scope.spawn(|| each(t))).collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a conformance thread panicked"))
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} protocol difference(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ------------------------------------------------------------------ the tests

/// The table says what concur's protocol says: feed each case's writes to a
/// session (a shutdown is `eof`) and compare with the expected bytes and closes.
#[test]
fn the_table_is_concurs_protocol() {
    for config in configs() {
        for case in &config.cases {
            let mut session = config.spec.session();
            let (mut got, mut want) = (Vec::new(), Vec::new());
            let mut closed = false;
            let mut ends_in_eof = false;
            for step in config.steps(case) {
                match step {
                    Step::Send(bytes) => {
                        if !closed && session.feed(&bytes, &mut got) == Flow::Close {
                            closed = true;
                        }
                    }
                    Step::ShutWrite => {
                        if !closed {
                            session.eof(&mut got);
                            closed = true;
                        }
                    }
                    Step::Expect(bytes) => want.extend(bytes),
                    Step::Eof => ends_in_eof = true,
                }
            }
            let name = format!("[{}] {}", config.name, case.name);
            assert_eq!(show(&got), show(&want), "{name}");
            assert_eq!(closed, ends_in_eof, "{name}: closes");
        }
    }
}

#[test]
fn every_concur_model_speaks_the_protocol() {
    let models = concur_models();
    assert!(models.len() >= 10, "the registry lists {models:?}");
    all_conform(&models, |(model, runnable)| {
        if let Err(why) = runnable {
            println!("skipping model {model}: {why}");
            return Vec::new();
        }
        run_all(model, |config| {
            let server = serve_harness::Server::start(model, config.service, config.args);
            Ok((server.addr, Box::new(server)))
        })
    });
}

#[test]
fn every_python_peer_speaks_the_protocol() {
    if !python3() {
        println!(
            "SKIPPED: python3 not found, so the Python peers in peers/python/ were not checked \
             (.ci/run installs it)"
        );
        return;
    }
    all_conform(python_peers(), |(name, file)| {
        run_all(name, |config| {
            let peer = Peer::start(file, config)?;
            Ok((peer.addr, Box::new(peer)))
        })
    });
}

/// Every server in peers/python/ is one the lab runs and this test checks.
#[test]
fn every_python_server_is_listed() {
    let not_servers = ["common.py", "fib_cpu.py"];
    let mut files: Vec<String> = std::fs::read_dir(peers_dir())
        .expect("peers/python")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|f| f.ends_with(".py") && !not_servers.contains(&f.as_str()))
        .collect();
    files.sort();
    let mut listed: Vec<String> = python_peers().iter().map(|(_, f)| f.to_string()).collect();
    listed.sort();
    assert_eq!(files, listed);
}
