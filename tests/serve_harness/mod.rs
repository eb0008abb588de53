//! The harness every `concur serve` model is tested with: start the real binary on
//! port 0, talk to it over 127.0.0.1, read /proc for its threads, descriptors,
//! children and memory, and read its log as it is written. The models come from the
//! registry ([`concur::models::REGISTRY`]): a model added there runs the whole suite,
//! and a test that expects different things of different models asks the registry's
//! facts, never a name.

#![allow(dead_code)]

#[allow(unused_imports)] // not every test binary that includes the harness uses each
pub use concur::models::{Ceiling, ModelInfo, REGISTRY};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

/// Socket timeout for test clients: generous, so a noisy machine never flakes, but a
/// hung server fails the test instead of hanging it.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// What the server wrote to stderr so far, line by line, and whether it has closed
/// it (the server and every child it forked have exited).
#[derive(Default)]
struct Log {
    lines: Mutex<(Vec<String>, bool)>,
    grew: Condvar,
}

/// A running `concur serve`; SIGKILLed on drop.
pub struct Server {
    child: Child,
    _stdout: BufReader<ChildStdout>,
    log: Arc<Log>,
    pub addr: SocketAddr,
    pub pid: u32,
    pub model: String,
    /// The model's registry row.
    pub info: &'static ModelInfo,
}

impl Server {
    pub fn start(model: &str, service: &str, extra: &[&str]) -> Server {
        Server::start_with(model, service, extra, |_| {})
    }

    /// Start with a hook to adjust the command (limits, say). With CONCUR_TEST_LOG
    /// set, the server runs with -vv and its log is copied to the test's stderr.
    pub fn start_with(
        model: &str,
        service: &str,
        extra: &[&str],
        adjust: impl FnOnce(&mut Command),
    ) -> Server {
        let verbose = std::env::var_os("CONCUR_TEST_LOG").is_some();
        Server::launch(model, service, extra, verbose, adjust)
    }

    /// Start with exactly these arguments, whatever CONCUR_TEST_LOG says.
    pub fn start_exact(model: &str, service: &str, extra: &[&str]) -> Server {
        Server::launch(model, service, extra, false, |_| {})
    }

    fn launch(
        model: &str,
        service: &str,
        extra: &[&str],
        verbose: bool,
        adjust: impl FnOnce(&mut Command),
    ) -> Server {
        raise_own_fd_limit();
        let info = concur::models::by_name(model)
            .unwrap_or_else(|| panic!("{model} is not in the registry"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_concur"));
        cmd.args([
            "serve",
            "--model",
            model,
            "--service",
            service,
            "--addr",
            "127.0.0.1:0",
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        if verbose {
            cmd.arg("-vv");
        }
        adjust(&mut cmd);
        let mut child = cmd.spawn().expect("spawn concur serve");
        let log = Arc::new(Log::default());
        if let Some(stderr) = child.stderr.take() {
            let (log, model) = (log.clone(), model.to_string());
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if verbose {
                        eprintln!("[{model}] {line}");
                    }
                    log.lines.lock().unwrap().0.push(line);
                    log.grew.notify_all();
                }
                log.lines.lock().unwrap().1 = true;
                log.grew.notify_all();
            });
        }
        let (line, stdout) = first_line(child.stdout.take().unwrap());
        let expected_tail = format!(" model={model} service={service}\n");
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|rest| rest.strip_suffix(&expected_tail))
            .unwrap_or_else(|| panic!("bad listening line {line:?}"))
            .parse()
            .expect("address in the listening line");
        Server {
            pid: child.id(),
            child,
            _stdout: stdout,
            log,
            addr,
            model: model.to_string(),
            info,
        }
    }

    /// Wait (bounded by `limit`) for a log line containing `needle`; whether one came.
    pub fn wait_for_log(&self, needle: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut lines = self.log.lines.lock().unwrap();
        loop {
            if lines.0.iter().any(|l| l.contains(needle)) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || lines.1 {
                return false;
            }
            lines = self.log.grew.wait_timeout(lines, left).unwrap().0;
        }
    }

    /// Whether a log line so far contains `needle`.
    pub fn log_contains(&self, needle: &str) -> bool {
        let lines = self.log.lines.lock().unwrap();
        lines.0.iter().any(|l| l.contains(needle))
    }

    /// The whole log, once the server and its children have closed stderr (bounded
    /// by `limit`: whatever came by then).
    pub fn final_log(&self, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        let mut lines = self.log.lines.lock().unwrap();
        while !lines.1 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            lines = self.log.grew.wait_timeout(lines, left).unwrap().0;
        }
        lines.0.join("\n")
    }

    /// A client socket with timeouts.
    pub fn connect(&self) -> TcpStream {
        self.try_connect().expect("connect")
    }

    /// [`Server::connect`], leaving the error to the caller.
    pub fn try_connect(&self) -> std::io::Result<TcpStream> {
        let s = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(s)
    }

    /// Send a signal to the server process.
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid as libc::pid_t, sig) };
    }

    /// Wait up to `limit` for the server to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the server process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Threads, descriptors and child processes of the server, from /proc.
    pub fn footprint(&self) -> Footprint {
        Footprint {
            threads: std::fs::read_dir(format!("/proc/{}/task", self.pid)).map_or(0, |d| d.count()),
            fds: concur::sys::open_fds(self.pid).unwrap_or(0),
            children: concur::sys::children(self.pid).len(),
        }
    }

    /// Resident memory of the server and its children, in bytes.
    pub fn rss(&self) -> u64 {
        std::iter::once(self.pid)
            .chain(concur::sys::children(self.pid))
            .filter_map(concur::sys::proc_stat)
            .map(|s| s.rss_bytes)
            .sum()
    }

    /// The footprint once it has stopped changing (three equal readings 100 ms
    /// apart, at most 5 s), for a baseline after the last client has left.
    pub fn steady_footprint(&self) -> Footprint {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut last = self.footprint();
        let mut same = 0;
        while same < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            let now = self.footprint();
            same = if now == last { same + 1 } else { 0 };
            last = now;
        }
        last
    }

    /// Wait (bounded) until the footprint equals `want`; returns the last reading.
    pub fn settle_to(&self, want: Footprint, limit: Duration) -> Footprint {
        let deadline = Instant::now() + limit;
        loop {
            let now = self.footprint();
            if now == want || Instant::now() >= deadline {
                return now;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Children first (processes model), so none outlives a failed test.
        for kid in concur::sys::children(self.pid) {
            // SAFETY: kill(2) on a child of our own child.
            unsafe { libc::kill(kid as libc::pid_t, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    pub threads: usize,
    pub fds: usize,
    pub children: usize,
}

/// Write `data` in pieces cut at random byte boundaries, pausing now and then so
/// the server really sees the pieces apart.
pub fn write_split(stream: &mut TcpStream, data: &[u8], rng: &mut fastrand::Rng) {
    let mut rest = data;
    while !rest.is_empty() {
        let n = rng.usize(1..=rest.len().min(64));
        stream.write_all(&rest[..n]).expect("write");
        rest = &rest[n..];
        if rng.u8(..) < 16 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Read until `want` bytes arrived (or EOF / error); returns what came.
pub fn read_n(stream: &mut TcpStream, want: usize) -> Vec<u8> {
    let mut got = Vec::with_capacity(want);
    let mut buf = [0u8; 8192];
    while got.len() < want {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("read after {} of {want} bytes: {e}", got.len()),
        }
    }
    got
}

/// Read until EOF; a reset or timeout is a failure.
pub fn read_to_eof(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    stream.read_to_end(&mut got).expect("read to EOF");
    got
}

/// A fib request list and the exact reply stream the server must send.
pub fn fib_script(rng: &mut fastrand::Rng, count: usize, max_n: u32) -> (Vec<u8>, Vec<u8>) {
    let mut req = Vec::new();
    let mut reply = Vec::new();
    for _ in 0..count {
        let n = rng.u32(0..=max_n);
        req.extend_from_slice(n.to_string().as_bytes());
        req.extend_from_slice(match rng.u8(0..4) {
            0 => b"?",
            1 => b"\r\n",
            _ => b"\n",
        });
        reply.extend_from_slice(format!("{}\n", concur::fib::exact(n)).as_bytes());
    }
    (req, reply)
}

/// Random echo payload that never contains the prefix's first byte, so the reply
/// stream can be split back into `prefix + chunk` pieces.
pub fn echo_payload(rng: &mut fastrand::Rng, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| b"abcdefghijklmnopqrstuvwxyz0123456789 \n"[rng.usize(0..38)])
        .collect()
}

pub const PREFIX: &[u8] = b"Received: ";

/// Payload bytes in an echo reply stream (reply length minus the prefixes).
pub fn echo_payload_len(reply: &[u8]) -> usize {
    reply.len() - PREFIX.len() * reply.windows(PREFIX.len()).filter(|w| *w == PREFIX).count()
}

/// Check an echo reply stream is `prefix + chunk` pieces whose chunks join to `sent`.
pub fn check_echo(sent: &[u8], reply: &[u8]) {
    let mut joined = Vec::new();
    let mut rest = reply;
    while !rest.is_empty() {
        rest = rest.strip_prefix(PREFIX).unwrap_or_else(|| {
            panic!(
                "reply piece without prefix: {:?}",
                String::from_utf8_lossy(&rest[..rest.len().min(40)])
            )
        });
        let end = rest
            .windows(PREFIX.len())
            .position(|w| w == PREFIX)
            .unwrap_or(rest.len());
        assert!(end > 0, "empty echo chunk");
        joined.extend_from_slice(&rest[..end]);
        rest = &rest[end..];
    }
    assert!(joined == sent, "echo payload differs from what was sent");
}

/// One well-behaved fib client: pipelined requests split at random boundaries, every
/// reply byte checked. `half_close` ends with shutdown(Write) and expects EOF.
pub fn fib_client(server: &Server, seed: u64, requests: usize, half_close: bool) {
    fib_exchange(server.connect(), &server.model, seed, requests, half_close);
}

/// [`fib_client`] on a socket already connected.
pub fn fib_exchange(mut s: TcpStream, model: &str, seed: u64, requests: usize, half_close: bool) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let (req, want) = fib_script(&mut rng, requests, 22);
    write_split(&mut s, &req, &mut rng);
    let got = if half_close {
        s.shutdown(Shutdown::Write).unwrap();
        read_to_eof(&mut s)
    } else {
        read_n(&mut s, want.len())
    };
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&want),
        "{model}: fib replies"
    );
}

/// One well-behaved echo client (see [`fib_client`]).
pub fn echo_client(server: &Server, seed: u64, len: usize, half_close: bool) {
    echo_exchange(server.connect(), &server.model, seed, len, half_close);
}

/// [`echo_client`] on a socket already connected.
pub fn echo_exchange(mut s: TcpStream, model: &str, seed: u64, len: usize, half_close: bool) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let sent = echo_payload(&mut rng, len);
    write_split(&mut s, &sent, &mut rng);
    let got = if half_close {
        s.shutdown(Shutdown::Write).unwrap();
        read_to_eof(&mut s)
    } else {
        let mut got = Vec::new();
        let mut buf = [0u8; 8192];
        while echo_payload_len(&got) < sent.len() {
            let n = s.read(&mut buf).expect("echo read");
            assert!(n > 0, "{model}: EOF before every echo arrived");
            got.extend_from_slice(&buf[..n]);
        }
        got
    };
    check_echo(&sent, &got);
}

/// A quick request/reply round on a fresh connection: the server is serving.
pub fn probe(server: &Server) {
    let mut s = server.connect();
    s.write_all(b"10\n").unwrap();
    assert_eq!(read_n(&mut s, 3), b"55\n", "{}: probe", server.model);
}

/// A quick echo round on a fresh connection.
pub fn probe_echo(server: &Server) {
    let mut s = server.connect();
    s.write_all(b"ping").unwrap();
    assert_eq!(
        read_n(&mut s, 14),
        b"Received: ping",
        "{}: probe",
        server.model
    );
}

/// Whether a reply has already arrived on `s` (a non-blocking peek).
pub fn has_reply(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let ready = s.peek(&mut [0u8; 1]).is_ok_and(|n| n > 0);
    s.set_nonblocking(false).unwrap();
    ready
}

/// Whether the server has already closed `s` (a non-blocking peek sees EOF or a
/// reset); false while it is open, with or without data waiting.
pub fn closed_by_server(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let closed = match s.peek(&mut [0u8; 1]) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != ErrorKind::WouldBlock,
    };
    s.set_nonblocking(false).unwrap();
    closed
}

/// Raise this test process's descriptor limit to its hard limit, once: the tests
/// run every model at once, each with up to a hundred clients.
fn raise_own_fd_limit() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = concur::sys::raise_fd_limit();
    });
}

/// Run `f` for every model in the registry, each on its own thread; panics name
/// the model.
pub fn for_each_model(f: impl Fn(&'static ModelInfo) + Sync) {
    std::thread::scope(|scope| {
        let handles: Vec<_> = REGISTRY
            .iter()
            .map(|m| (m.name, scope.spawn(|| f(m))))
            .collect();
        let failed: Vec<&str> = handles
            .into_iter()
            .filter_map(|(name, h)| h.join().is_err().then_some(name))
            .collect();
        assert!(failed.is_empty(), "failed for models: {failed:?}");
    });
}

/// Inodes of the sockets process `pid` has open (its /proc/PID/fd links).
pub fn socket_inodes(pid: u32) -> std::collections::BTreeSet<u64> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Default::default();
    };
    fds.flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy().into_owned();
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// A server's first line on stdout (its "listening on ..."), waited for at most 30 s
/// (a guard against a server that never starts), and the rest of its stdout.
pub fn first_line(stdout: ChildStdout) -> (String, BufReader<ChildStdout>) {
    let mut stdout = BufReader::new(stdout);
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut line = String::new();
        let _ = stdout.read_line(&mut line);
        let _ = tx.send(line);
        stdout
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("no listening line within 30 s");
    (line, reader.join().unwrap())
}
