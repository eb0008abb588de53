//! The talk's questions as experiments. Each function measures, repeats, and pushes
//! [`Point`]s; `report.rs` turns them into tables, charts and answers.
//!
//! 1. `cpu`: `concur fib` in its five modes, and the same list in CPython.
//! 2. `echo`: every model x connections with 64-byte requests, and 4 KiB at 100.
//! 3. `scaling`: `concur hold` at growing connection counts until a model fails.
//! 4. `fibload`: a fib server with one client asking a heavy fib in a loop.
//!
//! Python's versions of the talk's servers (`peers/python/`) run beside the Rust
//! models wherever python3 is found.

use super::results::{self, FibRun};
use super::runner::{self, Server};
use super::stats::Point;
use super::{Lab, Plan};
use crate::hold::HoldReport;
use crate::load::report::LoadReport;
use crate::models::{Ceiling, ModelInfo};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

/// Every model `concur serve` has, in its registry's order. One the binary cannot run
/// here (io_uring refused by the kernel, say) is reported as not available.
pub fn rust_models() -> Vec<&'static str> {
    crate::models::REGISTRY.iter().map(|m| m.name).collect()
}

/// Whether `name` is a concur model with a fact (false for the Python peers).
fn model_has(name: &str, fact: impl Fn(&ModelInfo) -> bool) -> bool {
    crate::models::by_name(name).is_some_and(fact)
}

/// Whether `name` is an event-loop model: fib is inline there unless `--offload`.
pub fn is_event_loop(name: &str) -> bool {
    model_has(name, |m| m.event_loop)
}

/// The talk's servers in Python: (name, file under peers/python/).
pub const PYTHON_SERVERS: [(&str, &str); 5] = [
    ("python-blocking", "blocking.py"),
    ("python-threads", "threads.py"),
    ("python-processes", "processes.py"),
    ("python-selectors", "selectors_loop.py"),
    ("python-asyncio", "asyncio_server.py"),
];

/// A server the lab can start: a concur model or a Python peer.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    pub name: String,
    python_file: Option<&'static str>,
}

impl ServerSpec {
    pub fn rust(model: &str) -> Self {
        ServerSpec {
            name: model.to_string(),
            python_file: None,
        }
    }

    pub fn is_python(&self) -> bool {
        self.python_file.is_some()
    }

    /// The command that starts it on a free loopback port.
    fn command(&self, lab: &Lab, service: &str, extra: &[String]) -> Command {
        let mut cmd = match (self.python_file, &lab.python) {
            (Some(file), Some(python)) => {
                let mut c = Command::new(python);
                c.arg(lab.peers_dir.join(file));
                c
            }
            _ => {
                let mut c = Command::new(&lab.exe);
                c.args(["serve", "--model", &self.name]);
                c
            }
        };
        cmd.args(["--service", service, "--addr", "127.0.0.1:0"])
            .args(extra);
        cmd
    }

    fn start(&self, lab: &Lab, service: &str, extra: &[String], tag: &str) -> Result<Server> {
        let log = lab
            .logs
            .join(format!("{}-{}-{tag}.log", self.name, service));
        let core = lab.pins.map(|(server, _)| server);
        Server::start(&self.name, self.command(lab, service, extra), core, &log)
    }
}

/// The servers an experiment runs: the chosen models, then the Python peers.
pub fn servers(plan: &Plan, python: bool, filter: impl Fn(&str) -> bool) -> Vec<ServerSpec> {
    let mut list: Vec<ServerSpec> = plan
        .models
        .iter()
        .filter(|m| filter(m))
        .map(|m| ServerSpec::rust(m))
        .collect();
    if python {
        list.extend(
            PYTHON_SERVERS
                .iter()
                .filter(|(name, _)| filter(name))
                .map(|(name, file)| ServerSpec {
                    name: name.to_string(),
                    python_file: Some(file),
                }),
        );
    }
    list
}

fn secs(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

// ---------------------------------------------------------------- 1. cpu

/// `concur fib --json` (both cores, not pinned) and `peers/python/fib_cpu.py`.
pub fn cpu(lab: &mut Lab) -> Result<()> {
    let list = |ns: &[u32]| ns.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let rust_list = list(&lab.plan.fib_rust_n);
    let mut runs: BTreeMap<String, Vec<BTreeMap<String, f64>>> = BTreeMap::new();
    let mut py_runs: BTreeMap<String, Vec<BTreeMap<String, f64>>> = BTreeMap::new();
    let mut py_error = None;
    for _ in 0..lab.plan.repeat {
        if runner::interrupted() {
            break;
        }
        lab.step("cpu: concur fib, five modes");
        let mut cmd = Command::new(&lab.exe);
        cmd.args(["fib", "--n", &rust_list, "--json"]);
        let report: FibRun = runner::run_json(cmd, None, Duration::from_secs(600), |_| {})?;
        collect_fib_rows(&report, &mut runs);
        if let Some(python) = lab.python.clone() {
            lab.step("cpu: the same in CPython");
            let mut cmd = Command::new(python);
            cmd.arg(lab.peers_dir.join("fib_cpu.py"))
                .arg(list(&lab.plan.fib_python_n));
            match runner::run_json(cmd, None, Duration::from_secs(600), |_| {}) {
                Ok(report) => collect_fib_rows(&report, &mut py_runs),
                Err(e) => py_error = Some(format!("{e:#}")),
            }
        }
    }
    for (server, ns, runs) in [
        ("rust", &lab.plan.fib_rust_n, runs),
        ("python", &lab.plan.fib_python_n, py_runs),
    ] {
        for (mode, mode_runs) in runs {
            let mut p = Point::new("cpu", server, &format!("mode={mode}"));
            p.params.insert("n".into(), serde_json::json!(ns));
            p.set_runs(&mode_runs);
            lab.points.push(p);
        }
    }
    if let Some(e) = py_error {
        let mut p = Point::new("cpu", "python", "mode=all");
        p.error = Some(e);
        lab.points.push(p);
    }
    Ok(())
}

fn collect_fib_rows(report: &FibRun, into: &mut BTreeMap<String, Vec<BTreeMap<String, f64>>>) {
    for row in &report.rows {
        into.entry(row.mode.clone())
            .or_default()
            .push(row.metrics());
    }
}

// ---------------------------------------------------------------- 2. echo

/// The echo matrix: every server x connection count (64 B), plus 4 KiB at 100.
pub fn echo(lab: &mut Lab) -> Result<()> {
    let mut cases: Vec<(u32, u32)> = lab.plan.echo_conns.iter().map(|&c| (c, 64)).collect();
    cases.push((lab.plan.big_conns, 4096));
    for spec in servers(&lab.plan, lab.python.is_some(), |_| true) {
        if runner::interrupted() {
            return Ok(());
        }
        lab.step(&format!("echo: starting {}", spec.name));
        let server = match spec.start(lab, "echo", &[], "echo") {
            Ok(s) => s,
            Err(e) => {
                lab.unavailable("echo", &spec.name, &e);
                lab.skip_steps(cases.len() * lab.plan.repeat);
                continue;
            }
        };
        for &(conns, size) in &cases {
            let case = format!("conns={conns} size={size}");
            let mut p = Point::new("echo", &spec.name, &case);
            p.params.insert("conns".into(), conns.into());
            p.params.insert("size".into(), size.into());
            p.params.insert(
                "duration_ms".into(),
                (lab.plan.duration.as_millis() as u64).into(),
            );
            let args = [
                "--conns".to_string(),
                conns.to_string(),
                "--size".into(),
                size.to_string(),
            ];
            repeat_load(lab, &server, "echo", &args, p);
        }
        lab.stop(server, "echo");
    }
    Ok(())
}

/// A server answered wrongly: its point is reported as failing verification, unmeasured.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Unverified(String);

/// Run one point `plan.repeat` times and record it (medians, spread, or why it failed).
fn repeat_load(lab: &mut Lab, server: &Server, service: &str, args: &[String], mut p: Point) {
    let mut runs = Vec::new();
    for _ in 0..lab.plan.repeat {
        if runner::interrupted() {
            break;
        }
        lab.step(&format!("{}: {} {}", p.experiment, p.server, p.case));
        match load_run(lab, server, service, args) {
            Ok(m) => runs.push(m),
            Err(e) if e.is::<Unverified>() => {
                // A wrong answer is not a fast one: nothing of this point is shown.
                p.error = Some(e.to_string());
                runs.clear();
                break;
            }
            Err(e) => p.error = Some(format!("{e:#}")),
        }
    }
    p.set_runs(&runs);
    lab.points.push(p);
}

/// One `concur load` run against `server`, with the server sampled around it.
fn load_run(
    lab: &Lab,
    server: &Server,
    service: &str,
    extra: &[String],
) -> Result<BTreeMap<String, f64>> {
    let pid = server.pid();
    let before = crate::sys::tree_stat(pid).context("the server died")?;
    let mut cmd = Command::new(&lab.exe);
    cmd.args([
        "load",
        "--addr",
        &server.addr,
        "--service",
        service,
        "--json",
    ])
    .args([
        "--duration",
        &secs(lab.plan.duration),
        "--timeout",
        &secs(lab.plan.timeout),
    ])
    .args(extra);
    let mut peak = before;
    let half = lab.plan.duration / 2;
    let mut sampled = false;
    let limit = lab.plan.duration + lab.plan.timeout + Duration::from_secs(20);
    let report: LoadReport = runner::run_json(cmd, lab.pins.map(|(_, c)| c), limit, |t| {
        if !sampled && t >= half {
            if let Some(s) = crate::sys::tree_stat(pid) {
                peak = s;
            }
            sampled = true;
        }
    })?;
    let after = crate::sys::tree_stat(pid).context("the server died during the run")?;
    if let Some(why) = results::verification_failure(&report) {
        return Err(Unverified(why).into());
    }
    let mut m = results::load_metrics(&report);
    let ok = report.requests_ok as f64;
    let cpu = after.cpu.since(&before.cpu).total().as_secs_f64();
    m.insert("server_cpu_secs".into(), cpu);
    if ok > 0.0 {
        m.insert("server_cpu_us_per_req".into(), cpu * 1e6 / ok);
        let switches = after
            .context_switches
            .saturating_sub(before.context_switches) as f64;
        m.insert("ctx_switches_per_req".into(), switches / ok);
    }
    m.insert("server_rss_mb".into(), peak.rss_bytes as f64 / 1048576.0);
    m.insert("server_threads".into(), peak.threads as f64);
    m.insert("server_children".into(), peak.children as f64);
    Ok(m)
}

// ---------------------------------------------------------------- 3. scaling

/// The rungs a server climbs: one-at-a-time servers only the first; servers that
/// fork, or serve a fixed pool's worth of clients at once, stop at 10k (50k forked
/// processes would not fit in this machine's memory, and a pool fails well before).
fn rungs(plan: &Plan, server: &str) -> Vec<u32> {
    let small_only = model_has(server, ModelInfo::one_at_a_time) || server == "python-blocking";
    let no_top = model_has(server, |m| m.forks || m.ceiling == Ceiling::Workers)
        || ["python-processes", "python-threads"].contains(&server);
    plan.hold_conns
        .iter()
        .copied()
        .filter(|&n| {
            if small_only {
                n <= plan.hold_conns[0]
            } else if no_top {
                n <= 10_000
            } else {
                true
            }
        })
        .collect()
}

/// `concur hold` at each rung, on a fresh server, until the first failure.
pub fn scaling(lab: &mut Lab) -> Result<()> {
    for spec in servers(&lab.plan, lab.python.is_some(), |_| true) {
        let ladder = rungs(&lab.plan, &spec.name);
        let mut failed = false;
        for (i, &n) in ladder.iter().enumerate() {
            if runner::interrupted() {
                return Ok(());
            }
            if failed {
                lab.skip_steps(1);
                continue;
            }
            lab.step(&format!("scaling: {} holding {n} connections", spec.name));
            let extra: Vec<String> = if spec.is_python() {
                vec![]
            } else {
                vec!["--max-conns".into(), (n + 1000).to_string()]
            };
            let server = match spec.start(lab, "echo", &extra, &format!("hold{n}")) {
                Ok(s) => s,
                Err(e) => {
                    lab.unavailable("scaling", &spec.name, &e);
                    lab.skip_steps(ladder.len() - i - 1);
                    break;
                }
            };
            let mut p = Point::new("scaling", &spec.name, &format!("conns={n}"));
            p.params.insert("conns".into(), n.into());
            match hold_run(lab, &server, n) {
                Ok((m, shortfall)) => {
                    p.set_runs(&[m]);
                    if let Some(why) = shortfall {
                        let log = runner::last_line(&server.log)
                            .map(|l| format!("; server said: {l}"))
                            .unwrap_or_default();
                        p.error = Some(format!("{why}{log}"));
                        failed = true;
                    }
                }
                Err(e) => {
                    p.error = Some(format!("{e:#}"));
                    failed = true;
                }
            }
            lab.points.push(p);
            lab.stop(server, "scaling");
        }
    }
    Ok(())
}

/// One hold; returns the metrics and, when not every connection opened, answered and
/// stayed open, why not.
fn hold_run(lab: &Lab, server: &Server, n: u32) -> Result<(BTreeMap<String, f64>, Option<String>)> {
    let pid = server.pid();
    let before = crate::sys::tree_stat(pid).context("the server died")?;
    let mut cmd = Command::new(&lab.exe);
    cmd.args([
        "hold",
        "--addr",
        &server.addr,
        "--service",
        "echo",
        "--json",
    ])
    .args([
        "--conns",
        &n.to_string(),
        "--duration",
        &secs(lab.plan.hold_duration),
    ])
    .args(["--server-pid", &pid.to_string()]);
    let mut peak = before;
    let mut next_sample = Duration::ZERO;
    let limit = lab.plan.hold_duration + Duration::from_secs(120);
    let report: HoldReport = runner::run_json(cmd, lab.pins.map(|(_, c)| c), limit, |t| {
        if t >= next_sample {
            if let Some(s) = crate::sys::tree_stat(pid) {
                if s.rss_bytes > peak.rss_bytes {
                    peak.rss_bytes = s.rss_bytes;
                }
                peak.threads = peak.threads.max(s.threads);
                peak.children = peak.children.max(s.children);
            }
            next_sample = t + Duration::from_millis(500);
        }
    })?;
    let mut m = results::hold_metrics(&report);
    m.insert(
        "server_rss_mb".to_string(),
        peak.rss_bytes as f64 / 1048576.0,
    );
    m.insert("server_threads".to_string(), peak.threads as f64);
    m.insert("server_children".to_string(), peak.children as f64);
    if report.opened > 0 {
        let grown = peak.rss_bytes.saturating_sub(before.rss_bytes) as f64;
        m.insert(
            "rss_kb_per_conn".into(),
            grown / 1024.0 / report.opened as f64,
        );
    }
    Ok((m, results::hold_shortfall(&report)))
}

// ---------------------------------------------------------------- 4. fibload

/// A fib server with fib(1) clients, without and with one client asking fib(K) in a loop.
pub fn fibload(lab: &mut Lab) -> Result<()> {
    let configs = fibload_configs(&lab.plan, lab.python.is_some());
    for (spec, offload) in configs {
        if runner::interrupted() {
            return Ok(());
        }
        let heavy = if spec.is_python() {
            lab.plan.heavy_python
        } else {
            lab.plan.heavy
        };
        let mut extra = vec!["--max-n".to_string(), heavy.to_string()];
        if offload {
            extra.push("--offload".into());
        }
        let label = if offload { "offload" } else { "inline" };
        lab.step(&format!("fibload: starting {} ({label})", spec.name));
        let server = match spec.start(lab, "fib", &extra, label) {
            Ok(s) => s,
            Err(e) => {
                let mut p = Point::new("fibload", &spec.name, &format!("{label} unloaded"));
                p.error = Some(format!("not available: {e:#}"));
                lab.points.push(p);
                lab.skip_steps(2 * lab.plan.repeat);
                continue;
            }
        };
        for loaded in [false, true] {
            let case = format!("{label} {}", if loaded { "loaded" } else { "unloaded" });
            let mut p = Point::new("fibload", &spec.name, &case);
            p.params.insert("offload".into(), offload.into());
            p.params.insert("heavy_n".into(), heavy.into());
            let mut args = vec!["--n".to_string(), "1".into(), "--conns".into(), "4".into()];
            if loaded {
                args = vec!["--n".into(), "1".into(), "--conns".into(), "5".into()];
                args.extend(["--mix".to_string(), format!("heavy={heavy}")]);
            }
            repeat_load(lab, &server, "fib", &args, p);
        }
        lab.stop(server, "fibload");
    }
    Ok(())
}

/// The fibload servers: every event loop inline and with `--offload`, and the
/// thread-per-client servers (Rust and Python) and Python's asyncio for comparison.
fn fibload_configs(plan: &Plan, python: bool) -> Vec<(ServerSpec, bool)> {
    let chosen = |s: &str| {
        model_has(s, |m| m.event_loop || m.ceiling == Ceiling::Threads)
            || ["python-asyncio", "python-threads"].contains(&s)
    };
    let mut configs = Vec::new();
    for spec in servers(plan, python, chosen) {
        if is_event_loop(&spec.name) {
            configs.push((spec.clone(), true));
        }
        configs.push((spec, false));
    }
    configs.sort_by_key(|(s, offload)| (s.is_python(), s.name.clone(), *offload));
    configs
}

/// How many progress steps the plan takes (for the progress bar).
pub fn planned_steps(plan: &Plan, python: bool) -> usize {
    let all = servers(plan, python, |_| true);
    let cpu = plan.repeat * if python { 2 } else { 1 };
    let echo_cases = plan.echo_conns.len() + 1;
    let echo: usize = all.len() * (1 + echo_cases * plan.repeat);
    let scaling: usize = all.iter().map(|s| rungs(plan, &s.name).len()).sum();
    let fib_configs = fibload_configs(plan, python).len();
    let fibload = fib_configs * (1 + 2 * plan.repeat);
    cpu + echo + scaling + fibload
}
