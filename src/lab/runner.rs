//! Starting, pinning, sampling and stopping the processes an experiment needs.
//!
//! Every server the lab starts runs in its own process group, pinned to core 0, so a
//! terminal's Ctrl-C reaches only the lab, and stopping the group also takes the
//! server's forked children. Clients (`concur load`, `concur hold`) run pinned to
//! core 1. A [`Server`] kills its whole group when dropped, whatever happened, and
//! every wait polls [`interrupted`] so Ctrl-C stops the lab within a fraction of a second.

use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Catch SIGINT and SIGTERM: the lab stops at the next check and still writes its report.
pub fn catch_interrupts() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_sigint as *const () as libc::sighandler_t);
    }
}

/// True once Ctrl-C (or SIGTERM) arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Where the lab may pin: `Some((server_core, client_core))` with two or more cores.
pub fn pinning() -> Option<(usize, usize)> {
    (crate::sys::cores() >= 2).then_some((0, 1))
}

/// The environment variable that marks every process a lab run starts (its value is
/// the run's output directory), so a test can prove none is left behind.
pub const RUN_MARK: &str = "CONCUR_LAB_RUN";

static MARK: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Mark the processes of this run with `value` (the output directory).
pub fn set_run_mark(value: &str) {
    let _ = MARK.set(value.to_string());
}

/// Put the child in its own process group and pin it to `core` before it runs.
fn prepare(cmd: &mut Command, core: Option<usize>) {
    cmd.process_group(0);
    if let Some(mark) = MARK.get() {
        cmd.env(RUN_MARK, mark);
    }
    if let Some(core) = core {
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(core, &mut set);
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
                Ok(())
            });
        }
    }
}

/// A running server: its pid, address, and its stderr log.
pub struct Server {
    child: Child,
    pub addr: String,
    pub log: PathBuf,
    pub name: String,
}

impl Server {
    /// Start `cmd`, which must print `listening on HOST:PORT ...` on stdout once ready.
    pub fn start(name: &str, mut cmd: Command, core: Option<usize>, log: &Path) -> Result<Server> {
        let log_file = std::fs::File::create(log)
            .with_context(|| format!("creating server log {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file);
        prepare(&mut cmd, core);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting server {name}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut server = Server {
            child,
            addr: String::new(),
            log: log.to_path_buf(),
            name: name.into(),
        };
        let line = rx.recv_timeout(Duration::from_secs(15)).unwrap_or_default();
        match line
            .strip_prefix("listening on ")
            .and_then(|r| r.split_whitespace().next())
        {
            Some(addr) => server.addr = addr.to_string(),
            None => {
                let _ = server.child.wait_timeout_kill(Duration::from_secs(2));
                bail!(
                    "{name} did not start: {}",
                    last_line(log).unwrap_or_else(|| "no output".into())
                );
            }
        }
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Ask the server to stop (SIGTERM), wait for it, then kill whatever is left of its group.
    pub fn stop(mut self) -> Result<()> {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let status = self.child.wait_timeout_kill(Duration::from_secs(8));
        kill_group(pid);
        let deadline = Instant::now() + Duration::from_secs(3);
        while group_alive(pid as u32) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        match status {
            Some(s) if s.success() => Ok(()),
            Some(s) => bail!("server {} exited with {s}", self.name),
            None => bail!(
                "server {} ignored SIGTERM for 8 s and was killed",
                self.name
            ),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let pid = self.child.id() as libc::pid_t;
        kill_group(pid);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kill_group(pgid: libc::pid_t) {
    // SAFETY: the group was created for this server (process_group(0)).
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
}

/// True while any live (non-zombie) process belongs to the group `pgid`. Zombies are
/// skipped: an orphan's zombie waits for init to reap it, and in a container init may
/// never do so, but it holds no socket and runs nothing.
pub fn group_alive(pgid: u32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|e| {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            return false;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            return false;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        fields.first() != Some(&"Z")
            && fields.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid)
    })
}

trait WaitTimeout {
    fn wait_timeout_kill(&mut self, limit: Duration) -> Option<std::process::ExitStatus>;
}

impl WaitTimeout for Child {
    /// Wait up to `limit`; past it, kill. `None` if it had to be killed.
    fn wait_timeout_kill(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                let _ = self.kill();
                let _ = self.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The last non-empty line of a log file.
pub fn last_line(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    Some(strip_ansi(line).trim().to_string())
}

/// Remove ANSI escape sequences (`ESC [ ... letter`): logs written by a program that
/// thought it had a terminal.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Run a client that prints one JSON object, pinned to `core`, killed after `limit`.
/// `during` is called every 50 ms while it runs (the lab samples the server then).
/// Exit status 0 and 1 both carry a report; anything else is an error.
pub fn run_json<T: serde::de::DeserializeOwned>(
    mut cmd: Command,
    core: Option<usize>,
    limit: Duration,
    mut during: impl FnMut(Duration),
) -> Result<T> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    prepare(&mut cmd, core);
    let mut child = cmd.spawn().context("starting the load client")?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if interrupted() || start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        during(start.elapsed());
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = out_reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    let Some(status) = status else {
        if interrupted() {
            bail!("interrupted");
        }
        bail!("client did not finish within {:.0} s", limit.as_secs_f64());
    };
    if !matches!(status.code(), Some(0) | Some(1)) {
        let why = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no message");
        bail!("client failed ({status}): {why}");
    }
    serde_json::from_str(out.trim())
        .with_context(|| format!("client printed no report the lab can read: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_that_never_listens_is_an_error_with_its_last_words() {
        let dir = std::env::temp_dir().join(format!("concur-runner-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo 'error: port busy' >&2; exit 2"]);
        let err = Server::start("fake", cmd, None, &dir.join("fake.log"))
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("port busy"), "{err:#}");
    }

    #[test]
    fn server_is_started_and_stopped_with_its_group() {
        let dir = std::env::temp_dir().join(format!("concur-runner2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = Command::new("sh");
        // A server with a child of its own, like the processes model.
        cmd.args(["-c", "sleep 30 & echo 'listening on 127.0.0.1:9 model=x service=echo'; trap 'exit 0' TERM; while :; do sleep 0.05; done"]);
        let server = Server::start("fake", cmd, None, &dir.join("ok.log")).unwrap();
        assert_eq!(server.addr, "127.0.0.1:9");
        let pid = server.pid();
        assert!(group_alive(pid));
        server.stop().unwrap();
        assert!(!group_alive(pid), "the server's child must be gone too");
    }

    #[test]
    fn colour_codes_are_stripped() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m refused"),
            "2026  WARN refused"
        );
    }

    #[test]
    fn json_client_output_is_parsed() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo '{\"requests_ok\": 3}'; exit 1"]);
        let mut calls = 0;
        let v: serde_json::Value =
            run_json(cmd, None, Duration::from_secs(5), |_| calls += 1).unwrap();
        assert_eq!(v["requests_ok"], 3);
        let mut bad = Command::new("sh");
        bad.args(["-c", "echo 'error: bad --conns' >&2; exit 2"]);
        let err =
            run_json::<serde_json::Value>(bad, None, Duration::from_secs(5), |_| {}).unwrap_err();
        assert!(format!("{err:#}").contains("bad --conns"));
    }
}
