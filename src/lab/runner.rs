//! Starting, pinning, sampling and stopping the processes an experiment needs.
//!
//! Every server the lab starts runs in its own process group, pinned to core 0, so a
//! terminal's Ctrl-C reaches only the lab, and stopping the group also takes the
//! server's forked children. Clients (`concur load`, `concur hold`) run pinned to
//! core 1. A [`Server`] kills its whole group when dropped, whatever happened, and
//! every wait polls [`interrupted`] so Ctrl-C stops the lab within a fraction of a second.

use crate::account::cgroup::{GROUP_PREFIX, Group};
use anyhow::{Context, Result, bail};
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

/// Put the child in its own process group, pin it to `core` and move it into a
/// cgroup (writing "0" to each of `join`, the group's `cgroup.procs`) before it runs.
fn prepare(cmd: &mut Command, core: Option<usize>, join: Vec<std::os::fd::RawFd>) {
    cmd.process_group(0);
    if let Some(mark) = MARK.get() {
        cmd.env(RUN_MARK, mark);
    }
    if core.is_none() && join.is_empty() {
        return;
    }
    // SAFETY: only async-signal-safe calls (sched_setaffinity, write) between fork and
    // exec, on memory prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(core) = core {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(core, &mut set);
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            }
            for &fd in &join {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// A cgroup of its own for each server the lab starts, where the machine allows one:
/// `concur-lab-<lab pid>-<n>` under the lab's own group. `None` (and the account is
/// sampled, and says so) where it does not.
fn server_group(name: &str) -> Option<Group> {
    if std::env::var_os(NO_CGROUP).is_some() {
        return None;
    }
    Group::create(name)
}

/// The name of the next server's group (or systemd scope): `concur-lab-<pid>-<n>`.
fn next_group_name() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{GROUP_PREFIX}{}-{n}", std::process::id())
}

/// Whether systemd can give a server a cgroup where the lab cannot make one itself:
/// on cgroup v2 without write access to its own group (a user's login session), the
/// user's systemd manager makes delegated transient scopes (`systemd-run --user
/// --scope`). Asked once, with a scope that runs `true`.
fn user_scope() -> bool {
    static CAN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CAN.get_or_init(|| {
        let v2 = std::fs::read_to_string("/proc/self/cgroup")
            .is_ok_and(|t| t.lines().count() == 1 && t.starts_with("0::"));
        v2 && std::env::var_os(NO_CGROUP).is_none()
            && Command::new("systemd-run")
                .args(["--user", "--scope", "--quiet", "true"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
    })
}

/// The command line that runs `command` through `sh -c`, in a transient systemd
/// scope named `unit` when `scope` (systemd-run then execs it in place: the pid the
/// lab started is the server's, and the scope's cgroup holds its tree alone).
fn server_argv(command: &str, scope: Option<&str>) -> Vec<String> {
    let mut argv = Vec::new();
    if let Some(unit) = scope {
        argv.extend(
            [
                "systemd-run",
                "--user",
                "--scope",
                "--quiet",
                "--collect",
                "--unit",
                unit,
                "--",
            ]
            .map(String::from),
        );
    }
    argv.extend(["sh".to_string(), "-c".to_string(), command.to_string()]);
    argv
}

/// Set (to anything) to make the lab run its servers without cgroups, as on a
/// machine that allows none: every figure is then sampled.
pub const NO_CGROUP: &str = "CONCUR_LAB_NO_CGROUP";

/// Remove the groups of earlier labs that died before they could.
pub fn sweep_stale_groups() {
    Group::sweep_stale();
}

/// A running server: its pid, address, and its output log.
pub struct Server {
    child: Child,
    pub addr: String,
    pub log: PathBuf,
    pub name: String,
    grace: Duration,
    /// Every process seen below it, killed at the end even if it left the group.
    seen: Vec<u32>,
    /// Its cgroup, removed at the end.
    cgroup: Option<Group>,
}

/// How a server is started: its name, the shell command (placeholders already
/// replaced but for `{port}`), where its output goes and how long it may take to listen.
pub struct Launch<'a> {
    pub name: &'a str,
    pub command: &'a str,
    pub core: Option<usize>,
    pub log: &'a Path,
    pub ready_timeout: Duration,
    pub grace: Duration,
}

/// A free loopback port: bound to port 0, read, released.
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

impl Server {
    /// Run `command` through `sh -c` with `{port}` replaced by a free port, in its own
    /// process group, pinned, output to the log; it is ready once a connection to the
    /// port succeeds. One that exits first, or does not listen in time, is an error
    /// carrying the end of its output, and is gone (with its group) when this returns.
    pub fn start(launch: &Launch) -> Result<Server> {
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let command = launch.command.replace("{port}", &port.to_string());
        let log_file = std::fs::File::create(launch.log)
            .with_context(|| format!("creating server log {}", launch.log.display()))?;
        let group = next_group_name();
        let cgroup = server_group(&group);
        let scope = (cgroup.is_none() && user_scope()).then_some(group.as_str());
        let argv = server_argv(&command, scope);
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        prepare(
            &mut cmd,
            launch.core,
            cgroup.as_ref().map_or_else(Vec::new, Group::join_fds),
        );
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                if let Some(g) = cgroup {
                    g.remove();
                }
                return Err(e).with_context(|| format!("starting server {}", launch.name));
            }
        };
        let mut server = Server {
            child,
            addr: addr.clone(),
            log: launch.log.to_path_buf(),
            name: launch.name.into(),
            grace: launch.grace,
            seen: Vec::new(),
            cgroup,
        };
        let sock: std::net::SocketAddr = addr.parse().expect("a loopback address");
        let deadline = Instant::now() + launch.ready_timeout;
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                bail!(
                    "{} exited ({status}) before listening on {addr}; {}",
                    launch.name,
                    output_tail(&server.log)
                );
            }
            if interrupted() {
                bail!("interrupted");
            }
            if std::net::TcpStream::connect_timeout(&sock, Duration::from_millis(200)).is_ok() {
                return Ok(server);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not listen on {addr} within {:.0} s; {}",
                    launch.name,
                    launch.ready_timeout.as_secs_f64(),
                    output_tail(&server.log)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Read the server's whole process tree (with PSS when `pss`); remembers every
    /// process seen, so none escapes the final cleanup.
    pub fn sample(&mut self, pss: bool) -> Option<crate::proctree::TreeSample> {
        let pid = self.pid();
        for p in crate::proctree::descendants(pid) {
            if !self.seen.contains(&p) {
                self.seen.push(p);
            }
        }
        crate::proctree::sample(pid, pss)
    }

    /// Why the server is gone, when it is: its exit status and the end of its output.
    pub fn gone(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!(
                "the server exited ({status}) during the run; {}",
                output_tail(&self.log)
            )),
            _ => None,
        }
    }

    /// Ask the server to stop (SIGTERM), wait for it, then kill whatever is left of its
    /// group and every process seen below it.
    pub fn stop(mut self) -> Result<()> {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let status = self.child.wait_timeout_kill(self.grace);
        self.kill_all();
        match status {
            Some(s) if s.success() => Ok(()),
            Some(s) => bail!("server {} exited with {s}", self.name),
            None => bail!(
                "server {} ignored SIGTERM for {} s and was killed",
                self.name,
                self.grace.as_secs()
            ),
        }
    }

    /// SIGKILL the group and every process ever seen below the server, then wait
    /// (bounded) until none of them is alive.
    fn kill_all(&mut self) {
        let pid = self.child.id();
        let mut all = self.seen.clone();
        all.extend(crate::proctree::descendants(pid));
        // Its cgroup holds whatever it started, even a process that left its group
        // and its tree.
        all.extend(self.cgroup.as_ref().map(Group::pids).unwrap_or_default());
        kill_group(pid as libc::pid_t);
        for p in &all {
            // SAFETY: a process that was below our child; if it died and its pid was
            // reused within this call the signal could hit another of ours, never init.
            unsafe { libc::kill(*p as libc::pid_t, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let deadline = Instant::now() + Duration::from_secs(3);
        while (group_alive(pid) || all.iter().any(|p| alive(*p))) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some(g) = self.cgroup.take() {
            g.remove();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// True while `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| s[i + 2..].starts_with('Z')))
        .is_some_and(|zombie| !zombie)
}

/// "its output ends: ..." with the last lines of a server's log, or "it printed nothing".
pub fn output_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<String> = text
        .lines()
        .map(|l| strip_ansi(l).trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        return "it printed nothing".into();
    }
    let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
    let tail = if tail.chars().count() > 300 {
        let skip = tail.chars().count() - 300;
        format!("...{}", tail.chars().skip(skip).collect::<String>())
    } else {
        tail
    };
    format!("its output ends: {tail}")
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

/// A command as one line a shell would run again: program and arguments, each quoted
/// when it holds anything a shell would read.
pub fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| {
            let a = a.to_string_lossy();
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+{}".contains(c))
            {
                a.into_owned()
            } else {
                super::servers::sh_quote(&a)
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
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
    prepare(&mut cmd, core, Vec::new());
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

    fn launch<'a>(name: &'a str, command: &'a str, log: &'a Path) -> Launch<'a> {
        Launch {
            name,
            command,
            core: None,
            log,
            ready_timeout: Duration::from_secs(10),
            grace: Duration::from_secs(3),
        }
    }

    fn temp(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("concur-runner-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn server_that_exits_first_is_an_error_with_its_last_words() {
        let dir = temp("exit");
        let log = dir.join("fake.log");
        let err = Server::start(&launch("fake", "echo 'error: port busy' >&2; exit 2", &log))
            .err()
            .unwrap();
        let msg = format!("{err:#}");
        assert!(msg.contains("exited") && msg.contains("port busy"), "{msg}");
    }

    #[test]
    fn server_that_never_listens_times_out_with_its_output() {
        let dir = temp("mute");
        let log = dir.join("mute.log");
        let mut l = launch("mute", "echo 'thinking about {port}'; exec sleep 30", &log);
        l.ready_timeout = Duration::from_millis(300);
        let err = Server::start(&l).err().unwrap();
        let msg = format!("{err:#}");
        assert!(msg.contains("did not listen on 127.0.0.1:"), "{msg}");
        assert!(msg.contains("its output ends: thinking about"), "{msg}");
    }

    #[test]
    fn server_is_ready_when_it_listens_and_stopped_with_its_whole_tree() {
        let dir = temp("ok");
        let log = dir.join("ok.log");
        // A server with a child that leaves the group (setsid), like a daemonizing one.
        let command = "setsid sleep 30 & exec python3 -c 'import socket,signal,sys,time\n\
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n\
s=socket.socket(); s.bind((\"127.0.0.1\", {port})); s.listen()\n\
while True: time.sleep(0.05)'";
        let mut server = Server::start(&launch("fake", command, &log)).unwrap();
        assert!(server.addr.starts_with("127.0.0.1:"));
        let pid = server.pid();
        let tree = server.sample(false).unwrap();
        assert!(group_alive(pid));
        let escaped: Vec<u32> = crate::proctree::descendants(pid);
        assert!(tree.rss_bytes > 0);
        // Where the machine gives the lab cgroups, the server and all it started are
        // in one of its own, and the group goes with it.
        let made: Vec<std::path::PathBuf> = server
            .cgroup
            .as_ref()
            .map(|g| g.places().dirs().iter().map(|d| d.to_path_buf()).collect())
            .unwrap_or_default();
        if let Some(g) = &server.cgroup {
            let inside = g.pids();
            assert!(inside.contains(&pid), "{inside:?} lacks the server {pid}");
            for p in &escaped {
                assert!(inside.contains(p), "{inside:?} lacks its child {p}");
            }
        }
        server.stop().unwrap();
        assert!(!group_alive(pid), "the group must be gone");
        for d in made {
            assert!(!d.exists(), "the server's cgroup {} is left", d.display());
        }
        for p in escaped {
            assert!(!alive(p), "a process that left the group survived: {p}");
        }
    }

    #[test]
    fn command_lines_are_quoted_only_where_needed() {
        let mut cmd = Command::new("/bin/concur");
        cmd.args([
            "load",
            "--prefix",
            "Received: ",
            "--addr",
            "127.0.0.1:80",
            "--x",
            "",
        ]);
        assert_eq!(
            command_line(&cmd),
            "/bin/concur load --prefix 'Received: ' --addr 127.0.0.1:80 --x ''"
        );
    }

    #[test]
    fn a_server_runs_through_sh_or_in_a_systemd_scope() {
        assert_eq!(server_argv("echo hi", None), ["sh", "-c", "echo hi"]);
        assert_eq!(
            server_argv("echo hi", Some("concur-lab-7-0")),
            [
                "systemd-run",
                "--user",
                "--scope",
                "--quiet",
                "--collect",
                "--unit",
                "concur-lab-7-0",
                "--",
                "sh",
                "-c",
                "echo hi"
            ]
        );
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
