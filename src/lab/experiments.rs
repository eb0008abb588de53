//! The talk's questions as experiments. Each function measures, repeats, and pushes
//! [`Point`]s; the views turn them into tables, charts and answers.
//!
//! 1. `cpu`: `concur fib` in its five modes, and the same list in CPython.
//! 2. `echo`: every model x connections with 64-byte requests, and 4 KiB at 100.
//! 3. `scaling`: `concur hold` up the ladder (1k, 10k, 100k, 1M) as far as each
//!    server's nature and the machine allow (`ladder`).
//! 4. `fibload`: a fib server with one client asking a heavy fib in a loop.
//!
//! Every server is a [`ServerDecl`] (concur's models, the Python peers wherever
//! python3 is found, the user's own), started by `runner::Server` on a free port. A
//! server that answers wrongly fails verification and is not measured further; one
//! that answers nothing or dies is reported with why, and the others go on.

use super::ladder;
use super::results::{self, FibRun, SAME_N_CASE};
use super::runner::{self, Launch, Server};
use super::servers::{ServerDecl, fill};
use super::stats::Point;
use super::{Lab, Plan};
use crate::hold::HoldReport;
use crate::load::report::LoadReport;
use crate::models::Ceiling;
use anyhow::{Result, anyhow};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

/// Every model `concur serve` has, in its registry's order. One the binary cannot run
/// here (io_uring refused by the kernel, say) is reported as not available.
pub fn rust_models() -> Vec<&'static str> {
    crate::models::REGISTRY.iter().map(|m| m.name).collect()
}

/// The talk's servers in Python, as the lab declares them (tests/conformance.rs reads it).
pub use super::servers::PYTHON_SERVERS;

/// `concur serve`'s own default `--max-conns`, given to the models in the echo experiment.
const SERVE_MAX_CONNS: u32 = 10_000;

/// The echo servers of this run, in declaration order.
fn echo_servers(lab: &Lab) -> Vec<ServerDecl> {
    lab.servers
        .iter()
        .filter(|d| d.echo.is_some())
        .cloned()
        .collect()
}

/// Start `decl` with `template` (placeholders filled but `{port}`) for one experiment.
fn start(
    lab: &mut Lab,
    decl: &ServerDecl,
    template: &str,
    tag: &str,
    max_conns: u32,
    max_n: u32,
    workers: u64,
) -> Result<Server> {
    let log = lab.logs.join(format!("{}-{tag}.log", decl.name));
    let command = fill(template, max_conns, max_n, workers);
    lab.record(experiment_of(tag), command.clone());
    Server::start(&Launch {
        name: &decl.name,
        command: &command,
        core: lab.pins.map(|(server, _)| server),
        log: &log,
        ready_timeout: lab.plan.ready_timeout,
        grace: Duration::from_secs(decl.grace_secs),
    })
}

/// The experiment a server log tag belongs to.
fn experiment_of(tag: &str) -> &'static str {
    if tag.starts_with("hold") {
        "scaling"
    } else if tag.starts_with("fib") {
        "fibload"
    } else {
        "echo"
    }
}

/// A point for a server that failed verification earlier: not measured again.
fn skip_unverified(lab: &mut Lab, experiment: &str, name: &str) -> bool {
    match lab.unverified.get(name) {
        Some(where_) => {
            let mut p = Point::new(experiment, name, "start");
            p.error = Some(format!("not measured: it failed verification in {where_}"));
            lab.points.push(p);
            true
        }
        None => false,
    }
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
    let mut same_n = Vec::new();
    for _ in 0..lab.plan.repeat {
        if runner::interrupted() {
            break;
        }
        lab.step("cpu: concur fib, five modes");
        let mut cmd = Command::new(&lab.exe);
        cmd.args(["fib", "--n", &rust_list, "--json"]);
        lab.record("cpu", runner::command_line(&cmd));
        let report: FibRun = runner::run_json(cmd, None, Duration::from_secs(600), |_| {})?;
        collect_fib_rows(&report, &mut runs);
        if let Some(python) = lab.python.clone() {
            lab.step("cpu: the same in CPython");
            let mut cmd = Command::new(python);
            cmd.arg(lab.peers_dir.join("fib_cpu.py"))
                .arg(list(&lab.plan.fib_python_n));
            lab.record("cpu", runner::command_line(&cmd));
            match runner::run_json(cmd, None, Duration::from_secs(600), |_| {}) {
                Ok(report) => collect_fib_rows(&report, &mut py_runs),
                Err(e) => py_error = Some(format!("{e:#}")),
            }
            // Per call on the same n: Rust runs CPython's list sequentially too.
            lab.step("cpu: CPython's list in Rust, sequentially");
            let mut cmd = Command::new(&lab.exe);
            cmd.args(["fib", "--n", &list(&lab.plan.fib_python_n)])
                .args(["--mode", "sequential", "--json"]);
            lab.record("cpu", runner::command_line(&cmd));
            let report: FibRun = runner::run_json(cmd, None, Duration::from_secs(600), |_| {})?;
            for row in &report.rows {
                same_n.push(row.metrics());
            }
        }
    }
    if !same_n.is_empty() {
        let mut p = Point::new("cpu", "rust", SAME_N_CASE);
        p.params
            .insert("n".into(), serde_json::json!(lab.plan.fib_python_n));
        p.set_runs(&same_n);
        lab.points.push(p);
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
    for decl in echo_servers(lab) {
        if runner::interrupted() {
            return Ok(());
        }
        let steps = cases.len() * lab.plan.repeat;
        if skip_unverified(lab, "echo", &decl.name) {
            lab.skip_steps(1 + steps);
            continue;
        }
        lab.step(&format!("echo: starting {}", decl.name));
        let template = decl.echo.clone().unwrap_or_default();
        let mut server = match start(lab, &decl, &template, "echo", SERVE_MAX_CONNS, 0, 0) {
            Ok(s) => s,
            Err(e) => {
                lab.unavailable("echo", &decl.name, &e);
                lab.skip_steps(steps);
                continue;
            }
        };
        let mut done = 0;
        for &(conns, size) in &cases {
            let case = format!("conns={conns} size={size}");
            let mut p = Point::new("echo", &decl.name, &case);
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
                "--prefix".into(),
                decl.prefix.clone(),
            ];
            let verdict = repeat_load(lab, &mut server, "echo", &args, p);
            done += lab.plan.repeat;
            if verdict == Verdict::GiveUp {
                lab.skip_steps(steps - done);
                break;
            }
        }
        lab.stop(server, &decl, "echo");
    }
    Ok(())
}

/// What a point's runs say about the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Measured (perhaps with errors): go on to the next case.
    Measured,
    /// Wrong answers, no answer at all, or gone: its remaining cases are not run.
    GiveUp,
}

/// Run one point `plan.repeat` times and record it (medians, spread, or why it failed).
fn repeat_load(
    lab: &mut Lab,
    server: &mut Server,
    service: &str,
    args: &[String],
    mut p: Point,
) -> Verdict {
    let mut runs = Vec::new();
    let mut verdict = Verdict::Measured;
    for i in 0..lab.plan.repeat {
        if runner::interrupted() {
            break;
        }
        lab.step(&format!("{}: {} {}", p.experiment, p.server, p.case));
        match load_run(lab, server, service, args) {
            Ok(m) => runs.push(m),
            Err(e) => {
                p.error = Some(format!("{e:#}"));
                if let Some(Stop::Unverified(why)) = e.downcast_ref::<Stop>() {
                    // A wrong answer is not a fast one: nothing of this point is shown.
                    lab.unverified
                        .insert(p.server.clone(), format!("{} ({})", p.experiment, p.case));
                    p.error = Some(why.clone());
                    runs.clear();
                }
                if e.downcast_ref::<Stop>().is_some() {
                    lab.skip_steps(lab.plan.repeat - i - 1);
                    verdict = Verdict::GiveUp;
                    break;
                }
            }
        }
    }
    let metrics: Vec<_> = runs.iter().map(|r| r.metrics.clone()).collect();
    p.set_runs(&metrics);
    p.set_measured(runs.iter().map(|r| &r.measured));
    lab.points.push(p);
    verdict
}

/// Why a server's remaining cases are not run.
#[derive(Debug, thiserror::Error)]
enum Stop {
    /// It answered wrongly (one line: where the first wrong byte was).
    #[error("{0}")]
    Unverified(String),
    /// It answered nothing, or is gone.
    #[error("{0}")]
    Silent(String),
}

/// One `concur load` run against `server`, which `load --server-pid` accounts for:
/// the lab reads the server the way a user's `concur load` would.
fn load_run(
    lab: &mut Lab,
    server: &mut Server,
    service: &str,
    extra: &[String],
) -> Result<results::Run> {
    if server.sample(false).is_none() {
        return Err(
            Stop::Silent(server.gone().unwrap_or_else(|| "the server is gone".into())).into(),
        );
    }
    let pid = server.pid();
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
    .args(extra)
    .args(["--server-pid", &pid.to_string()]);
    let experiment = if service == "fib" { "fibload" } else { "echo" };
    lab.record(
        experiment,
        runner::command_line(&cmd)
            .replace(&server.addr, "127.0.0.1:{port}")
            .replace(&format!("--server-pid {pid}"), "--server-pid {pid}"),
    );
    let limit = lab.plan.duration + lab.plan.timeout + Duration::from_secs(20);
    let report: LoadReport = runner::run_json(cmd, lab.pins.map(|(_, c)| c), limit, |_| {})?;
    if server.sample(false).is_none() {
        let why = server.gone().unwrap_or_else(|| "the server is gone".into());
        return Err(Stop::Silent(why).into());
    }
    if let Some(why) = results::verification_failure(&report) {
        return Err(Stop::Unverified(why).into());
    }
    if report.requests_ok == 0 && report.errors_total > 0 {
        return Err(Stop::Silent(format!(
            "no reply verified: {} of {} connections failed ({})",
            report.errors_total,
            report.conns,
            error_kinds(&report.errors)
        ))
        .into());
    }
    Ok(results::load_metrics(&report))
}

/// "3 timed out, 1 refused": the kinds a load run's failures were.
fn error_kinds(e: &crate::load::report::ErrorCounts) -> String {
    let kinds: Vec<String> = [
        ("refused", e.refused),
        ("timed out", e.timeout),
        ("answered wrongly", e.mismatch),
        ("closed early", e.closed_early),
        ("could not connect", e.connect),
        ("socket error", e.io),
    ]
    .iter()
    .filter(|(_, n)| *n > 0)
    .map(|(what, n)| format!("{n} {what}"))
    .collect();
    kinds.join(", ")
}

// ---------------------------------------------------------------- 3. scaling

/// `concur hold` at each rung of the ladder, on a fresh server each time. Before a
/// rung, [`ladder::decide`] says from the server's nature and the machine's limits
/// (memory read anew) whether it can fit: a rung that cannot is recorded as skipped
/// with the reason and not started; a forking event loop gets as many worker
/// processes as the rung needs. The climb ends at the first rung skipped or fallen short.
pub fn scaling(lab: &mut Lab) -> Result<()> {
    let start_limits = ladder::Limits::read(lab.fd_limit, lab.pins.is_some());
    lab.scaling_limits = Some(results::ScalingLimits {
        fd_limit: start_limits.fd_limit,
        thread_ceiling: start_limits.thread_ceiling,
        process_ceiling: start_limits.process_ceiling,
        mem_available_bytes: start_limits.mem_available,
    });
    let rungs = lab.plan.hold_conns.clone();
    for decl in echo_servers(lab) {
        if skip_unverified(lab, "scaling", &decl.name) {
            lab.skip_steps(rungs.len());
            continue;
        }
        let mut measured = ladder::Measured::default();
        for (i, &n) in rungs.iter().enumerate() {
            if runner::interrupted() {
                return Ok(());
            }
            let left = rungs.len() - i - 1;
            let mut p = Point::new("scaling", &decl.name, &format!("conns={n}"));
            p.params.insert("conns".into(), n.into());
            let limits = ladder::Limits::read(lab.fd_limit, lab.pins.is_some());
            let fork = match ladder::decide(&decl.nature, n, &limits, &measured) {
                ladder::Decision::Skip(why) => {
                    p.skipped = Some(why);
                    lab.points.push(p);
                    lab.skip_steps(1 + left);
                    break;
                }
                ladder::Decision::Run { fork_workers } => fork_workers,
            };
            let template = match (fork, &decl.echo_forked) {
                (Some(w), Some(t)) => {
                    p.params.insert("fork_workers".into(), w.into());
                    t.clone()
                }
                _ => decl.echo.clone().unwrap_or_default(),
            };
            lab.step(&format!(
                "scaling: {} holding {n} connections{}",
                decl.name,
                fork.map_or(String::new(), |w| format!(" ({w} worker processes)"))
            ));
            let tag = format!("hold{n}");
            let workers = fork.unwrap_or(0);
            let mut server = match start(lab, &decl, &template, &tag, n + 1000, 0, workers) {
                Ok(s) => s,
                Err(e) => {
                    lab.unavailable("scaling", &decl.name, &e);
                    lab.skip_steps(left);
                    break;
                }
            };
            let mut stop = false;
            match hold_run(lab, &mut server, n, &decl.prefix) {
                Ok((m, shortfall)) => {
                    measured = ladder::Measured {
                        server: m.get("server_b_per_conn").map(|&b| b as u64),
                    };
                    p.set_runs(&[m]);
                    if let Some(why) = shortfall {
                        let log = std::fs::read_to_string(&server.log).unwrap_or_default();
                        let said = results::server_reason(&log)
                            .map(|l| format!("; the server: {l}"))
                            .unwrap_or_default();
                        p.error = Some(format!("{why}{said}"));
                        stop = true;
                    }
                }
                Err(e) => {
                    p.error = Some(format!("{e:#}"));
                    stop = true;
                }
            }
            lab.points.push(p);
            lab.stop(server, &decl, "scaling");
            if stop {
                lab.skip_steps(left);
                break;
            }
        }
    }
    Ok(())
}

/// One hold of `n` connections; returns the metrics (the server's and the kernel's
/// memory per connection as hold measured them through `--server-pid`) and, when not
/// every connection opened, answered and stayed open, why not.
fn hold_run(
    lab: &mut Lab,
    server: &mut Server,
    n: u32,
    prefix: &str,
) -> Result<(BTreeMap<String, f64>, Option<String>)> {
    // The readiness check's connection may have left a process-per-client server a
    // child that has exited and is not yet reaped: /proc has no memory map for it, so
    // the tree reads without PSS, and hold would measure the whole run in RSS. Wait,
    // bounded, until the tree reads whole.
    let settle = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let Some(s) = server.sample(true) else {
            return Err(anyhow!(
                server.gone().unwrap_or_else(|| "the server is gone".into())
            ));
        };
        let no_rollup = !std::path::Path::new("/proc/self/smaps_rollup").exists();
        if s.pss_bytes.is_some() || no_rollup || std::time::Instant::now() >= settle {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = server.pid();
    let mut cmd = Command::new(&lab.exe);
    cmd.args([
        "hold",
        "--addr",
        &server.addr,
        "--service",
        "echo",
        "--json",
        "--prefix",
        prefix,
    ])
    .args([
        "--conns",
        &n.to_string(),
        "--duration",
        &secs(lab.plan.hold_duration),
    ]);
    // Past 10,000 connections a connect or reply may wait behind tens of thousands
    // of others on a shared machine: a failure there is not a slow answer.
    if n > 10_000 {
        cmd.args(["--timeout", "30s"]);
    }
    cmd.args(["--server-pid", &pid.to_string()]);
    lab.record(
        "scaling",
        runner::command_line(&cmd)
            .replace(&server.addr, "127.0.0.1:{port}")
            .replace(&format!("--server-pid {pid}"), "--server-pid {pid}"),
    );
    // About three minutes for a million (opening, round trips, the kernel closing two
    // million sockets), with room for a busy machine.
    let limit = lab.plan.hold_duration + Duration::from_secs(120 + u64::from(n) / 2_500);
    let report: HoldReport = runner::run_json(cmd, lab.pins.map(|(_, c)| c), limit, |_| {})?;
    Ok((
        results::hold_metrics(&report),
        results::hold_shortfall(&report),
    ))
}

// ---------------------------------------------------------------- 4. fibload

/// One fibload configuration: a server and the command it runs under.
struct FibConfig {
    decl: ServerDecl,
    /// `inline` (the talk's fib server) or `offload` (`--offload`).
    label: &'static str,
    template: String,
}

/// A fib server with fib(1) clients, without and with one client asking fib(K) in a loop.
pub fn fibload(lab: &mut Lab) -> Result<()> {
    for FibConfig {
        decl,
        label,
        template,
    } in fibload_configs(&lab.servers)
    {
        if runner::interrupted() {
            return Ok(());
        }
        let steps = 2 * lab.plan.repeat;
        if skip_unverified(lab, "fibload", &decl.name) {
            lab.skip_steps(1 + steps);
            continue;
        }
        let heavy = decl.heavy_n;
        lab.step(&format!("fibload: starting {} ({label})", decl.name));
        let mut server = match start(
            lab,
            &decl,
            &template,
            &format!("fib-{label}"),
            SERVE_MAX_CONNS,
            heavy,
            0,
        ) {
            Ok(s) => s,
            Err(e) => {
                let mut p = Point::new("fibload", &decl.name, &format!("{label} unloaded"));
                p.error = Some(format!("not available: {e:#}"));
                lab.points.push(p);
                lab.skip_steps(steps);
                continue;
            }
        };
        for loaded in [false, true] {
            let case = format!("{label} {}", if loaded { "loaded" } else { "unloaded" });
            let mut p = Point::new("fibload", &decl.name, &case);
            p.params
                .insert("offload".into(), (label == "offload").into());
            p.params.insert("heavy_n".into(), heavy.into());
            let mut args = vec!["--n".to_string(), "1".into(), "--conns".into(), "4".into()];
            if loaded {
                args = vec!["--n".into(), "1".into(), "--conns".into(), "5".into()];
                args.extend(["--mix".to_string(), format!("heavy={heavy}")]);
            }
            if repeat_load(lab, &mut server, "fib", &args, p) == Verdict::GiveUp {
                if !loaded {
                    lab.skip_steps(lab.plan.repeat);
                }
                break;
            }
        }
        lab.stop(server, &decl, "fibload");
    }
    Ok(())
}

/// The fibload servers: every event loop inline and with `--offload`, the
/// thread-per-client servers (Rust and Python), Python's asyncio, and every user fib
/// server, each as declared.
fn fibload_configs(servers: &[ServerDecl]) -> Vec<FibConfig> {
    let mut configs = Vec::new();
    for decl in servers {
        if let Some(t) = &decl.fib {
            configs.push(FibConfig {
                decl: decl.clone(),
                label: "inline",
                template: t.clone(),
            });
        }
        if let Some(t) = &decl.fib_offload {
            configs.push(FibConfig {
                decl: decl.clone(),
                label: "offload",
                template: t.clone(),
            });
        }
    }
    configs.sort_by_key(|c| (c.decl.family, c.decl.name.clone(), c.label));
    configs
}

/// What each progress step is expected to take, seconds, in the order the
/// experiments take them: the estimate of the time left weighs the steps left by
/// these, so a million-connection rung counts for minutes and a quick load run for a
/// fraction of a second. The figures are this machine's kind (measured from a full
/// run's log, 2 cores); what matters is their proportions, the estimate scales them
/// by the real pace of the run so far.
pub fn planned_steps(
    plan: &Plan,
    servers: &[ServerDecl],
    python: bool,
    limits: &ladder::Limits,
) -> Vec<f64> {
    let echo_list: Vec<&ServerDecl> = servers.iter().filter(|d| d.echo.is_some()).collect();
    let has = |e: &str| plan.experiments.iter().any(|x| x == e);
    let secs = |d: Duration| d.as_secs_f64();
    // One naive fib(n) call, Rust and CPython (fib(30): 2.4 ms and 100 ms).
    let fib = |n: u32, fib30: f64| fib30 * 1.618_f64.powi(n as i32 - 30);
    let list = |ns: &[u32], fib30: f64| ns.iter().map(|&n| fib(n, fib30)).sum::<f64>();
    let (rust30, python30) = (2.4e-3, 0.1);
    // A server's start, and what a load run adds to its duration.
    let (start, run_overhead) = (0.3, 0.1);
    let mut steps = Vec::new();
    if has("cpu") {
        for _ in 0..plan.repeat {
            // Five modes: the list sequentially, then four ways on two cores.
            steps.push(3.0 * list(&plan.fib_rust_n, rust30));
            if python {
                steps.push(4.0 * list(&plan.fib_python_n, python30));
                steps.push(list(&plan.fib_python_n, rust30));
            }
        }
    }
    if has("echo") {
        let cases = plan.echo_conns.len() + 1;
        for _ in &echo_list {
            steps.push(start);
            steps.extend(std::iter::repeat_n(
                secs(plan.duration) + run_overhead,
                cases * plan.repeat,
            ));
        }
    }
    if has("scaling") {
        for decl in &echo_list {
            // A thread or a process per connection is started for each (about 1 ms);
            // otherwise opening, a round trip each and the kernel closing both ends
            // take about 250 µs a connection, a million in four to five minutes.
            let per_conn = match decl.nature.ceiling {
                Some(Ceiling::Threads | Ceiling::Processes) => 1e-3,
                _ => 250e-6,
            };
            // The rungs the ladder will refuse from the server's nature are skipped
            // steps, which take no time.
            let mut climbing = true;
            for &n in &plan.hold_conns {
                climbing &= !matches!(
                    ladder::decide(&decl.nature, n, limits, &ladder::Measured::default()),
                    ladder::Decision::Skip(_)
                );
                steps.push(if climbing {
                    1.0 + secs(plan.hold_duration) + f64::from(n) * per_conn
                } else {
                    0.0
                });
            }
        }
    }
    if has("fibload") {
        for _ in fibload_configs(servers) {
            steps.push(start);
            steps.extend(std::iter::repeat_n(
                secs(plan.duration) + run_overhead,
                2 * plan.repeat,
            ));
        }
    }
    steps
}
