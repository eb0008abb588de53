//! The account of a server's resources (`load --server-pid`, `hold --server-pid`, the
//! lab), checked against a server whose cost is known: tests/fixtures/known_cost.py
//! spends a fixed CPU time on its own CPU clock for every client, in a process per
//! client that it never reaps (zombies, as the talk's `Process(...).start()` without
//! `join()`) or in a thread per client. Whatever the kernel or the sampler says, the
//! server spent at least that much: the account must show it, say how it measured it,
//! and never show 0 for what it did not measure. The lab's own cgroups must go away
//! at the end, also after Ctrl-C.
//!
//! Every wait is bounded (a guard against hangs, never a verdict); every load is
//! bounded by `--requests` or the lab's quick plan. The tests run one at a time
//! ([`serial`]): the lab pins its servers to one core, and a test beside it would
//! take that core's time from the server being measured.

#[allow(dead_code)] // only `marked_processes` is used here
mod lab_support;
mod serve_harness;

use serde_json::Value;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A guard against hangs for one client run; never part of a verdict.
const RUN_LIMIT: Duration = Duration::from_secs(60);
/// A guard against hangs for one quick lab run.
const LAB_LIMIT: Duration = Duration::from_secs(120);
/// The CPU each client costs the fixture in the load and hold tests, milliseconds.
const SPIN_MS: f64 = 30.0;
/// The same in the lab tests. The lab pins its server to one core and its quick echo
/// runs last 250 ms at 10 connections: 10 x 30 ms would not fit in the run, and the
/// cost not spent while the run goes on is rightly not in its account. 10 x 10 ms
/// fits with room to spare.
const LAB_SPIN_MS: f64 = 10.0;
/// What the account must show at least: 90% of the known cost (a sampler may miss
/// the last instants of a task, a cgroup misses nothing).
const SHARE: f64 = 0.9;
/// Connections of the load and hold tests.
const CONNS: u64 = 8;

/// The tests one at a time (see the module doc).
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/known_cost.py")
}

/// A server this test started; it and every process below it are SIGKILLed on drop.
struct Server {
    child: Child,
    _stdout: BufReader<ChildStdout>,
    addr: String,
    pid: u32,
}

impl Server {
    /// Start `cmd` (stdout piped) and wait (bounded) for its "listening on ADDR" line.
    fn start(mut cmd: Command) -> Server {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        let mut child = cmd.spawn().expect("start the server");
        let pid = child.id();
        let (line, stdout) = serve_harness::first_line(child.stdout.take().unwrap());
        // "listening on 127.0.0.1:PORT", concur serve adds " model=... service=...".
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("bad listening line {line:?}"))
            .to_string();
        Server {
            child,
            _stdout: stdout,
            addr,
            pid,
        }
    }

    /// The fixture in `mode` (fork or thread), on port 0.
    fn known_cost(mode: &str) -> Server {
        let mut cmd = Command::new("python3");
        cmd.arg(fixture())
            .args(["--mode", mode, "--spin-ms", &SPIN_MS.to_string()])
            .args(["--addr", "127.0.0.1:0"]);
        Server::start(cmd)
    }

    /// `concur serve --model threads --service echo` on port 0.
    fn concur_threads() -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_concur"));
        cmd.args(["serve", "--model", "threads", "--service", "echo"])
            .args(["--addr", "127.0.0.1:0"])
            .stderr(Stdio::null());
        Server::start(cmd)
    }

    fn threads(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/task", self.pid)).map_or(0, |d| d.count())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for kid in concur::proctree::descendants(self.pid) {
            // SAFETY: kill(2) on a process below our own child (a zombie ignores it).
            unsafe { libc::kill(kid as libc::pid_t, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wait for `child` (bounded by `limit`; killed and a panic past it).
fn wait_bounded(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Run `cmd` to its end (bounded), its exit status, stdout and stderr.
fn run(mut cmd: Command, limit: Duration) -> (ExitStatus, String, String) {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start concur");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let status = wait_bounded(&mut child, limit, &what);
    (status, out.join().unwrap(), err.join().unwrap())
}

/// `concur ARGS`, which must exit 0 and print one JSON object.
fn concur_json(args: &[&str]) -> Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_concur"));
    cmd.args(args);
    let (status, out, err) = run(cmd, RUN_LIMIT);
    assert!(status.success(), "concur {args:?}: {status}\n{out}\n{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// `load --conns 8 --requests 80 --json --server-pid PID` against `server`.
fn load_with_account(server: &Server) -> Value {
    let pid = server.pid.to_string();
    let conns = CONNS.to_string();
    let requests = (CONNS * 10).to_string();
    let v = concur_json(&[
        "load",
        "--addr",
        &server.addr,
        "--conns",
        &conns,
        "--requests",
        &requests,
        "--timeout",
        "10s",
        "--json",
        "--server-pid",
        &pid,
    ]);
    assert_eq!(v["requests_ok"], CONNS * 10, "{v}");
    assert_eq!(v["errors_total"], 0, "{v}");
    assert_eq!(v["server"]["pid"], server.pid, "{v}");
    v
}

fn f64_of(v: &Value, what: &str) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"))
}

fn u64_of(v: &Value, what: &str) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("{what} is not an integer: {v}"))
}

/// The known cost of `conns` clients at `spin_ms` each, as the account must show it.
fn floor(conns: f64, spin_ms: f64) -> f64 {
    SHARE * conns * spin_ms / 1000.0
}

/// Check the CPU figure of an account: measured (by cgroup or by sampling), and at
/// least the known cost of `conns` clients.
fn assert_cpu_covers(account: &Value, conns: u64, whole: &Value) {
    let cpu = &account["cpu_secs"];
    let how = cpu["measured"].as_str().unwrap_or_default();
    assert!(
        how == "sampled" || how == "cgroup",
        "cpu_secs: {cpu}\n{whole}"
    );
    let secs = f64_of(&cpu["value"], "cpu_secs.value");
    let want = floor(conns as f64, SPIN_MS);
    assert!(
        secs >= want,
        "the server spent at least {want} s ({conns} clients x {SPIN_MS} ms), \
         the account says {secs} s: {account}"
    );
}

/// `load --server-pid` on the process-per-client server: every client's CPU is in
/// the account, though each was spent in a child process that is a zombie or still
/// serving by the time of the last reading, and all 8 children (and the parent) were
/// seen.
#[test]
fn load_counts_the_cpu_of_a_process_per_client() {
    let _serial = serial();
    let server = Server::known_cost("fork");
    let v = load_with_account(&server);
    let account = &v["server"];
    assert_cpu_covers(account, CONNS, &v);
    let seen = u64_of(&account["processes_seen"], "processes_seen");
    assert!(
        seen > CONNS,
        "the parent and its {CONNS} children: {account}"
    );
    // The figure the load report's own cpu table carries is the same one (up to the
    // rounding of nanoseconds into seconds).
    let table = f64_of(&v["cpu"]["server"]["secs"], "cpu.server.secs");
    let secs = f64_of(&account["cpu_secs"]["value"], "cpu_secs.value");
    assert_eq!(table, secs, "the table's CPU is the account's: {v}");
}

/// The same with a thread per client: each thread's CPU is in the account, and the
/// main thread and the 8 client threads were all seen.
#[test]
fn load_counts_the_cpu_of_a_thread_per_client() {
    let _serial = serial();
    let server = Server::known_cost("thread");
    let v = load_with_account(&server);
    let account = &v["server"];
    assert_cpu_covers(account, CONNS, &v);
    let seen = u64_of(&account["tasks_seen"], "tasks_seen");
    assert!(
        seen > CONNS,
        "the main thread and {CONNS} others: {account}"
    );
}

/// `hold --server-pid` carries the same account: the 8 held connections' children
/// spent their known CPU before answering their one round trip, and the account
/// (read before hold closes them) shows it.
#[test]
fn hold_counts_the_cpu_of_a_process_per_client() {
    let _serial = serial();
    let server = Server::known_cost("fork");
    let pid = server.pid.to_string();
    let conns = CONNS.to_string();
    let v = concur_json(&[
        "hold",
        "--addr",
        &server.addr,
        "--conns",
        &conns,
        "--duration",
        "0s",
        "--timeout",
        "10s",
        "--json",
        "--server-pid",
        &pid,
    ]);
    assert_eq!(v["answered_ok"], CONNS, "{v}");
    let account = &v["server"]["account"];
    assert_eq!(account["pid"], server.pid, "{v}");
    assert_cpu_covers(account, CONNS, &v);
}

/// Context switches are counted on the thread that serves the client: concur's
/// threads model blocks in a read for every request, one voluntary switch each, so
/// 400 requests on one connection make at least 200 whatever else happens. That
/// thread is gone once the client has left (its exit is seen in /proc), yet its
/// switches are in the account, read while it was still there.
#[test]
fn context_switches_of_the_client_thread_are_counted() {
    let _serial = serial();
    let server = Server::concur_threads();
    let before = server.threads();
    assert!(before >= 1);
    let pid = server.pid.to_string();
    let v = concur_json(&[
        "load",
        "--addr",
        &server.addr,
        "--conns",
        "1",
        "--requests",
        "400",
        "--timeout",
        "10s",
        "--json",
        "--server-pid",
        &pid,
    ]);
    assert_eq!(v["requests_ok"], 400, "{v}");
    // The client's thread exits once the client has gone: the server is back to the
    // threads it had before.
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.threads() != before {
        assert!(
            Instant::now() < deadline,
            "the server still has {} threads, {before} before the load",
            server.threads()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let account = &v["server"];
    let switches = &account["context_switches"];
    assert_eq!(switches["measured"], "sampled", "{account}");
    let n = f64_of(&switches["value"], "context_switches.value");
    assert!(n >= 200.0, "400 blocking reads, {n} switches: {account}");
    assert!(
        u64_of(&account["tasks_seen"], "tasks_seen") > before as u64,
        "the client's thread was seen: {account}"
    );
}

/// Not measured is never 0: a server this test started shares the test's cgroups
/// with everything else the test runs, so it has no group of its own and the group's
/// figures (memory, TCP socket memory) are `null` with "not_measured", never a number.
/// (A machine where the test runs in a group of its own would give one: then they may
/// be measured, and must say "cgroup".)
#[test]
fn what_is_not_measured_is_null_not_zero() {
    let _serial = serial();
    let server = Server::known_cost("fork");
    let v = load_with_account(&server);
    let account = &v["server"];
    for key in ["memory_bytes", "sock_bytes"] {
        let fig = &account[key];
        if account["cgroup"].is_string() {
            let how = fig["measured"].as_str().unwrap_or_default();
            assert!(
                (how == "cgroup" && fig["value"].is_number())
                    || (how == "not_measured" && fig["value"].is_null()),
                "{key}: {fig}"
            );
        } else {
            assert!(account.get("cgroup").is_none(), "{account}");
            assert!(fig["value"].is_null(), "{key}: {fig}");
            assert_eq!(fig["measured"], "not_measured", "{key}: {fig}");
            assert!(
                !fig["note"].as_str().unwrap_or_default().is_empty(),
                "{fig}"
            );
        }
    }
    // What was measured says how, and is a number.
    for key in [
        "cpu_secs",
        "context_switches",
        "threads_peak",
        "processes_peak",
    ] {
        let fig = &account[key];
        assert!(fig["value"].is_number(), "{key}: {fig}");
        assert_ne!(fig["measured"], "not_measured", "{key}: {fig}");
    }
}

// ---------------------------------------------------------------- the lab

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("concur-accounting-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// This process's group in the v1 hierarchy of `controller`, if there is one.
fn own_v1_group(controller: &str) -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let _id = parts.next()?;
        let controllers = parts.next()?;
        let path = parts.next()?;
        controllers
            .split(',')
            .any(|c| c == controller)
            .then(|| path.to_string())
    })?;
    let dir = Path::new("/sys/fs/cgroup")
        .join(controller)
        .join(path.trim_start_matches('/'));
    dir.is_dir().then_some(dir)
}

/// Whether this process may make a group under its own in the v1 hierarchy of
/// `controller` (as the lab, our child, will): make one and remove it.
fn cgroup_writable(controller: &str) -> bool {
    let Some(own) = own_v1_group(controller) else {
        return false;
    };
    let probe = own.join(format!("concur-accounting-probe-{}", std::process::id()));
    let made = std::fs::create_dir(&probe).is_ok();
    if made {
        let _ = std::fs::remove_dir(&probe);
    }
    made
}

/// Every directory named `concur-lab-<lab>-*` under /sys/fs/cgroup, six levels deep
/// at most (symbolic links not followed).
fn lab_groups(lab: u32) -> Vec<PathBuf> {
    fn walk(dir: &Path, depth: usize, prefix: &str, found: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if e.file_name().to_string_lossy().starts_with(prefix) {
                found.push(e.path());
            }
            if depth < 6 {
                walk(&e.path(), depth + 1, prefix, found);
            }
        }
    }
    let mut found = Vec::new();
    walk(
        Path::new("/sys/fs/cgroup"),
        1,
        &format!("concur-lab-{lab}-"),
        &mut found,
    );
    found
}

/// `concur lab --quick --servers-only --experiments echo` with the fixture in fork
/// mode as the one server `cost`, writing into `out`.
fn lab_command(out: &Path, spin_ms: f64, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_concur"));
    cmd.args(["lab", "--quick", "--servers-only", "--no-python"])
        .args(["--experiments", "echo"])
        .args(extra)
        .arg("--server")
        .arg(format!(
            "cost=python3 '{}' --mode fork --spin-ms {spin_ms} --addr 127.0.0.1:{{port}}",
            fixture().display()
        ))
        .arg("--out")
        .arg(out)
        .stdin(Stdio::null());
    cmd
}

/// Run the lab to its end (bounded); its pid, results.json and the directory holding
/// its output and log.
fn run_lab(tag: &str, no_cgroup: bool) -> (u32, Value, PathBuf) {
    // The lab's output (which must be new) and its own stdout and stderr, side by side
    // in one directory the test removes when it passes.
    let work = temp_dir(tag);
    std::fs::create_dir_all(&work).unwrap();
    let out = work.join("out");
    let mut cmd = lab_command(&out, LAB_SPIN_MS, &[]);
    if no_cgroup {
        cmd.env("CONCUR_LAB_NO_CGROUP", "1");
    } else {
        cmd.env_remove("CONCUR_LAB_NO_CGROUP");
    }
    let log_path = work.join("lab.log");
    let log = std::fs::File::create(&log_path).unwrap();
    cmd.stdout(log.try_clone().unwrap()).stderr(log);
    let mut child = cmd.spawn().expect("start concur lab");
    let pid = child.id();
    let status = wait_bounded(&mut child, LAB_LIMIT, "concur lab");
    let said = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(status.success(), "concur lab: {status}\n{said}");
    let text = std::fs::read_to_string(out.join("results.json")).expect("results.json");
    (pid, serde_json::from_str(&text).unwrap(), work)
}

/// The echo points of server `cost`, each with its connection count; at least one.
fn cost_points(results: &Value) -> Vec<(u64, &Value)> {
    let points: Vec<(u64, &Value)> = results["points"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["experiment"] == "echo" && p["server"] == "cost")
        .map(|p| (u64_of(&p["params"]["conns"], "params.conns"), p))
        .collect();
    assert!(!points.is_empty(), "no echo point of cost: {results}");
    for (_, p) in &points {
        assert!(p["error"].is_null(), "{p}");
    }
    points
}

/// Every echo point of `cost`: the server's CPU at least its clients' known cost,
/// measured as `how` (when given).
fn assert_lab_cpu(results: &Value, how: Option<&str>) {
    for (conns, p) in cost_points(results) {
        let secs = f64_of(
            &p["metrics"]["server_cpu_secs"]["median"],
            "server_cpu_secs.median",
        );
        let want = floor(conns as f64, LAB_SPIN_MS);
        assert!(
            secs >= want,
            "{conns} clients x {LAB_SPIN_MS} ms is at least {want} s, the lab says {secs} s: {p}"
        );
        if let Some(how) = how {
            assert_eq!(p["measured"]["server_cpu_secs"], how, "{p}");
        }
    }
}

/// The lab accounts a process-per-client server through the cgroup it makes for it:
/// every point's server CPU is at least what its clients cost (exact, the group
/// counts zombies and exited children), said to come from the cgroup wherever this
/// machine lets the lab make one, and no group of the lab's is left afterwards.
#[test]
fn lab_accounts_through_its_own_cgroup_and_removes_it() {
    let _serial = serial();
    let (lab, results, work) = run_lab("cgroup", false);
    let how = cgroup_writable("cpuacct").then_some("cgroup");
    if how.is_none() {
        eprintln!("no writable cpuacct hierarchy: the lab's cgroup is not asserted");
    }
    assert_lab_cpu(&results, how);
    let left = lab_groups(lab);
    assert!(left.is_empty(), "the lab left its cgroups: {left:?}");
    let _ = std::fs::remove_dir_all(&work);
}

/// Ctrl-C during a lab run: the lab removes the cgroups it made and leaves no process
/// of its run behind.
#[test]
fn lab_interrupted_removes_its_cgroups() {
    let _serial = serial();
    if !cgroup_writable("pids") {
        eprintln!("SKIPPED: no cgroup (this process cannot make one under /sys/fs/cgroup/pids)");
        return;
    }
    let out = temp_dir("interrupt");
    // Repeats make the run long enough to land in; the spin keeps children busy.
    let mut cmd = lab_command(&out, LAB_SPIN_MS, &["--repeat", "5"]);
    cmd.env_remove("CONCUR_LAB_NO_CGROUP")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("start concur lab");
    let lab = child.id();
    // Wait until the server's group holds the server and a child serving a client:
    // the lab is measuring.
    let deadline = Instant::now() + Duration::from_secs(60);
    let inside = loop {
        let procs: Vec<u32> = lab_groups(lab)
            .iter()
            .flat_map(|d| {
                std::fs::read_to_string(d.join("cgroup.procs"))
                    .unwrap_or_default()
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect::<Vec<u32>>()
            })
            .collect();
        let mut distinct = procs.clone();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() >= 2 {
            break distinct;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the lab ended ({status}) before its server's cgroup held a client");
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no cgroup concur-lab-{lab}-* with a client in it within 60 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // SAFETY: signalling our own child, not yet reaped.
    unsafe { libc::kill(lab as libc::pid_t, libc::SIGINT) };
    let status = wait_bounded(&mut child, Duration::from_secs(60), "the interrupted lab");
    assert_eq!(
        status.code(),
        Some(130),
        "the lab was interrupted: {status}"
    );
    let left = lab_groups(lab);
    assert!(left.is_empty(), "the lab left its cgroups: {left:?}");
    // Zombies reparented to init are dead, whoever reaps them.
    let alive = |pid: &u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rfind(')').map(|i| !s[i + 2..].starts_with('Z')))
            .unwrap_or(false)
    };
    let survivors: Vec<&u32> = inside.iter().filter(|p| alive(p)).collect();
    assert!(
        survivors.is_empty(),
        "processes of the group survived: {survivors:?}"
    );
    let marked = lab_support::marked_processes(&out.to_string_lossy());
    assert!(marked.is_empty(), "processes left behind: {marked:#?}");
    let _ = std::fs::remove_dir_all(&out);
}

/// Without cgroups (`CONCUR_LAB_NO_CGROUP=1`) the lab's account is sampled, and the
/// sampler, which remembers every child it saw, zombies included, still finds at
/// least the clients' known cost.
#[test]
fn lab_without_cgroups_samples_the_same_cost() {
    let _serial = serial();
    let (lab, results, work) = run_lab("sampled", true);
    assert_lab_cpu(&results, Some("sampled"));
    let left = lab_groups(lab);
    assert!(left.is_empty(), "a lab told not to made cgroups: {left:?}");
    let _ = std::fs::remove_dir_all(&work);
}
