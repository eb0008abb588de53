//! `concur lab`: the whole talk run as experiments on this machine, written up as a
//! report that answers each of the talk's questions with numbers.
//!
//! The lab starts every server as a separate process pinned to core 0 and drives it
//! with `concur load` / `concur hold` pinned to core 1, reads the server's CPU time,
//! memory, threads and context switches from /proc around each run, repeats each
//! point (median shown, spread kept), and writes `report.html` (charts and tables,
//! self-contained), `summary.md` and `results.json` into `--out`. Ctrl-C stops the run
//! and still writes what was measured; every server it started is gone when it exits.

pub mod chart;
pub mod config;
pub mod experiments;
pub mod fmt;
pub mod ladder;
pub mod progress;
pub mod render;
pub mod results;
pub mod runner;
pub mod servers;
pub mod stats;
pub mod views;

use crate::error::bad_input;
use anyhow::{Context, Result};
use results::{Machine, Results};
use stats::Point;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `concur lab` options.
#[derive(Debug, Clone, clap::Args)]
pub struct LabArgs {
    /// A small matrix that finishes in under a minute (what CI runs)
    #[arg(long)]
    pub quick: bool,
    /// Where to write report.html, summary.md, results.json and logs/; must be empty or
    /// new, unless --force
    #[arg(long, default_value = "lab-report")]
    pub out: PathBuf,
    /// Write into a non-empty --out: replace its report and remove its old logs/
    #[arg(long)]
    pub force: bool,
    /// Repeats per point; the median is shown [default: 3, or 1 with --quick]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub repeat: Option<u32>,
    /// The top of the scaling experiment's ladder (1k, 10k, 100k, 1M), to stop lower
    /// (the million rung takes about three minutes and 11 GB of memory: 100000 saves
    /// them) [default: 1000000; with --quick the ladder is 200, 2000]
    #[arg(long, value_parser = clap::value_parser!(u32).range(10..=1_000_000))]
    pub conns_max: Option<u32>,
    /// Comma-separated models to run [default: every model concur serve has]
    #[arg(long, value_delimiter = ',')]
    pub models: Option<Vec<String>>,
    /// Comma-separated experiments to run: cpu, echo, scaling, fibload [default: all]
    #[arg(long, value_delimiter = ',')]
    pub experiments: Option<Vec<String>>,
    /// Leave out the Python references even when python3 is found
    #[arg(long)]
    pub no_python: bool,
    /// Print what changed from OLD (a results.json) to the run in --out, point by point, and exit
    #[arg(long, value_name = "OLD")]
    pub compare: Option<PathBuf>,
    /// Your own echo server, measured beside the models: COMMAND runs through sh with
    /// {port} replaced by the port it must listen on (127.0.0.1); repeatable
    #[arg(long = "server", value_name = "NAME=COMMAND")]
    pub servers: Vec<String>,
    /// The echo prefix your server NAME puts before each chunk it read ('NAME=' for
    /// plain echo) [default: "Received: ", the talk's]; repeatable
    #[arg(long = "server-prefix", value_name = "NAME=PREFIX")]
    pub server_prefixes: Vec<String>,
    /// Your own fib server (the fib protocol, one `n` per line), joins the fibload
    /// experiment; {port} as for --server; repeatable
    #[arg(long = "fib-server", value_name = "NAME=COMMAND")]
    pub fib_servers: Vec<String>,
    /// Only the servers given with --server, --fib-server or --config: skip concur's
    /// models and the Python peers
    #[arg(long)]
    pub servers_only: bool,
    /// A lab file (TOML) with servers, experiments and parameters; options given on
    /// the command line win
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// How long a server may take to accept a connection after it starts [default: 15s]
    #[arg(long, value_parser = crate::load::parse_duration)]
    pub ready_timeout: Option<Duration>,
}

/// What a run measures, resolved from the options.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    pub quick: bool,
    pub repeat: usize,
    #[serde(serialize_with = "as_millis")]
    pub duration: Duration,
    #[serde(serialize_with = "as_millis")]
    pub timeout: Duration,
    pub models: Vec<String>,
    pub experiments: Vec<String>,
    pub echo_conns: Vec<u32>,
    pub big_conns: u32,
    /// The scaling ladder's rungs (each server climbs as far as it can).
    pub hold_conns: Vec<u32>,
    #[serde(serialize_with = "as_millis")]
    pub hold_duration: Duration,
    pub fib_rust_n: Vec<u32>,
    pub fib_python_n: Vec<u32>,
    pub heavy: u32,
    pub heavy_python: u32,
    /// concur's models and the Python peers skipped.
    pub servers_only: bool,
    pub no_python: bool,
    #[serde(serialize_with = "as_millis")]
    pub ready_timeout: Duration,
    /// The user's servers, as given.
    pub user_servers: Vec<servers::UserServer>,
}

impl Plan {
    /// Resolve the options.
    pub fn from_args(args: &LabArgs, file: &config::LabFile) -> Result<Plan> {
        let servers_only = args.servers_only || file.servers_only.unwrap_or(false);
        let models = if servers_only {
            Vec::new()
        } else {
            chosen(
                args.models.as_ref().or(file.models.as_ref()),
                &experiments::rust_models(),
                "model",
            )?
        };
        let experiments = chosen(
            args.experiments.as_ref().or(file.experiments.as_ref()),
            &results::EXPERIMENTS,
            "experiment",
        )?;
        let quick = args.quick || file.quick.unwrap_or(false);
        let conns_max = match (args.conns_max, file.conns_max) {
            (Some(c), _) | (None, Some(c)) => c,
            (None, None) => ladder::DEFAULT_CONNS_MAX,
        };
        if !(10..=1_000_000).contains(&conns_max) {
            return Err(bad_input(format!(
                "conns_max {conns_max} is not in 10..=1000000"
            )));
        }
        let repeat = args.repeat.or(file.repeat);
        if repeat.is_some_and(|r| !(1..=50).contains(&r)) {
            return Err(bad_input("repeat must be in 1..=50"));
        }
        let ready_timeout = match (&args.ready_timeout, &file.ready_timeout) {
            (Some(d), _) => *d,
            (None, Some(text)) => crate::load::parse_duration(text)
                .map_err(|e| bad_input(format!("ready_timeout: {e}")))?,
            (None, None) => Duration::from_secs(15),
        };
        let user_servers = user_servers(args, file)?;
        if servers_only && user_servers.is_empty() {
            return Err(bad_input(
                "--servers-only skips the built-in servers: give your own with --server, \
                 --fib-server or --config",
            ));
        }
        let hold_conns = ladder::rungs(
            if quick {
                &ladder::QUICK_RUNGS
            } else {
                &ladder::RUNGS
            },
            conns_max,
        );
        Ok(Plan {
            quick,
            repeat: repeat.map_or(if quick { 1 } else { 3 }, |r| r as usize),
            duration: Duration::from_millis(if quick { 250 } else { 1000 }),
            timeout: Duration::from_millis(if quick { 1000 } else { 2000 }),
            models,
            experiments,
            echo_conns: if quick {
                vec![10]
            } else {
                vec![1, 10, 100, 1000]
            },
            big_conns: if quick { 10 } else { 100 },
            hold_conns,
            hold_duration: Duration::from_millis(if quick { 300 } else { 1000 }),
            fib_rust_n: vec![if quick { 36 } else { 40 }; 4],
            fib_python_n: vec![if quick { 27 } else { 30 }; 4],
            heavy: if quick { 30 } else { 36 },
            heavy_python: if quick { 22 } else { 27 },
            servers_only,
            no_python: servers_only || args.no_python || file.no_python.unwrap_or(false),
            ready_timeout,
            user_servers,
        })
    }
}

/// The user's servers from the command line, then from the lab file.
fn user_servers(args: &LabArgs, file: &config::LabFile) -> Result<Vec<servers::UserServer>> {
    let mut list = Vec::new();
    for text in &args.servers {
        let (name, command) = servers::split_named("--server", text)?;
        list.push(servers::UserServer {
            name,
            command: Some(command),
            ..Default::default()
        });
    }
    for text in &args.fib_servers {
        let (name, command) = servers::split_named("--fib-server", text)?;
        list.push(servers::UserServer {
            name,
            fib_command: Some(command),
            ..Default::default()
        });
    }
    list.extend(file.server.iter().cloned());
    for text in &args.server_prefixes {
        let Some((name, prefix)) = text.split_once('=') else {
            return Err(bad_input(format!(
                "--server-prefix '{text}': give NAME=PREFIX (NAME= for plain echo)"
            )));
        };
        let Some(s) = list
            .iter_mut()
            .find(|s| s.name == name && s.command.is_some())
        else {
            return Err(bad_input(format!(
                "--server-prefix {name}: no echo server named {name} (give it with --server)"
            )));
        };
        s.prefix = Some(prefix.to_string());
    }
    Ok(list)
}

/// The names asked for, each checked against `known`; all of `known` when none were given.
fn chosen(asked: Option<&Vec<String>>, known: &[&str], what: &str) -> Result<Vec<String>> {
    let Some(list) = asked else {
        return Ok(known.iter().map(|s| s.to_string()).collect());
    };
    match list.iter().find(|name| !known.contains(&name.as_str())) {
        Some(bad) => Err(bad_input(format!(
            "unknown {what} '{bad}'; {what}s are {}",
            known.join(", ")
        ))),
        None => Ok(list.clone()),
    }
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

/// A lab run in progress.
pub struct Lab {
    pub exe: PathBuf,
    pub python: Option<PathBuf>,
    pub peers_dir: PathBuf,
    pub logs: PathBuf,
    pub plan: Plan,
    pub pins: Option<(usize, usize)>,
    pub points: Vec<Point>,
    pub notes: Vec<String>,
    /// Every server this run measures: the built-in entries, then the user's.
    pub servers: Vec<servers::ServerDecl>,
    /// Servers that answered wrongly, with where: they are not measured again.
    pub unverified: std::collections::BTreeMap<String, String>,
    /// Experiment id to the exact command lines it ran (servers and clients).
    pub commands: std::collections::BTreeMap<String, Vec<String>>,
    /// Descriptors each process may open (raised as far as it goes; children inherit it).
    pub fd_limit: u64,
    /// The limits the scaling ladder read when it started.
    pub scaling_limits: Option<results::ScalingLimits>,
    progress: progress::Progress,
}

impl Lab {
    /// Advance the progress (bar or log line) and name what runs now.
    pub fn step(&mut self, what: &str) {
        self.progress.step(what);
    }

    pub fn skip_steps(&mut self, n: usize) {
        self.progress.skip(n);
    }

    /// Remember a command line an experiment ran (each distinct one once).
    pub fn record(&mut self, experiment: &str, line: String) {
        let list = self.commands.entry(experiment.to_string()).or_default();
        if !list.contains(&line) {
            list.push(line);
        }
    }

    /// Record that a server could not be started for an experiment.
    pub fn unavailable(&mut self, experiment: &str, server: &str, err: &anyhow::Error) {
        let mut p = Point::new(experiment, server, "start");
        p.error = Some(format!("not available: {err:#}"));
        self.points.push(p);
    }

    /// Stop a server; a built-in one that does not exit cleanly on SIGTERM is noted in
    /// the report (a user's server owes the lab no exit status).
    pub fn stop(&mut self, server: runner::Server, decl: &servers::ServerDecl, experiment: &str) {
        if let Err(e) = server.stop()
            && decl.family != servers::Family::User
        {
            self.notes.push(format!("{experiment}: {e:#}"));
        }
    }
}

/// Find python3 and its version, unless told not to.
fn find_python(no_python: bool) -> Option<(PathBuf, String)> {
    if no_python {
        return None;
    }
    let out = std::process::Command::new("python3")
        .arg("--version")
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let version = String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches("Python ")
        .to_string();
    Some((PathBuf::from("python3"), version))
}

/// The talk's Python servers: beside the binary's source tree, or under the current directory.
fn peers_dir() -> PathBuf {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/python");
    if built.is_dir() {
        built
    } else {
        PathBuf::from("peers/python")
    }
}

/// Run `concur lab`; returns the process exit code.
pub fn run(args: &LabArgs, exe: &Path) -> Result<u8> {
    if let Some(old) = &args.compare {
        let old = load_results(old)?;
        let new = load_results(&args.out.join("results.json"))?;
        print_out(&render::compare(&old, &new))?;
        return Ok(0);
    }
    // Servers and clients inherit the raised limit: the scaling experiment needs it.
    let file = match &args.config {
        Some(path) => config::LabFile::read(path)?,
        None => config::LabFile::default(),
    };
    let fd_limit = crate::sys::raise_fd_limit().unwrap_or(1024);
    let plan = Plan::from_args(args, &file)?;
    let python = find_python(plan.no_python);
    let peers = peers_dir();
    let python_ok = python.is_some() && peers.join("common.py").is_file();
    let python_path = python.as_ref().filter(|_| python_ok).map(|p| p.0.clone());
    let mut servers = servers::builtin(&servers::Builtins {
        exe,
        python: python_path.as_deref().map(|p| (p, peers.as_path())),
        models: &plan.models,
        heavy: plan.heavy,
        heavy_python: plan.heavy_python,
    });
    // A user's server may not take a built-in's name, whether or not this run has it.
    let builtin_names: Vec<String> = if plan.servers_only {
        Vec::new()
    } else {
        experiments::rust_models()
            .into_iter()
            .chain(servers::PYTHON_SERVERS.iter().map(|s| s.0))
            .map(String::from)
            .collect()
    };
    servers.extend(servers::user(
        &plan.user_servers,
        &builtin_names,
        plan.heavy_python,
    )?);
    prepare_out(&args.out, args.force)?;
    std::fs::create_dir_all(args.out.join("logs"))
        .with_context(|| format!("creating {}", args.out.display()))?;
    runner::catch_interrupts();
    runner::sweep_stale_groups();
    let out_abs = std::fs::canonicalize(&args.out).unwrap_or_else(|_| args.out.clone());
    runner::set_run_mark(&out_abs.to_string_lossy());
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let limits = ladder::Limits::read(fd_limit, runner::pinning().is_some());
    let progress = progress::Progress::new(experiments::planned_steps(
        &plan, &servers, python_ok, &limits,
    ));
    let mut lab = Lab {
        exe: exe.to_path_buf(),
        python: python_path.clone(),
        peers_dir: peers,
        logs: args.out.join("logs"),
        plan: plan.clone(),
        pins: runner::pinning(),
        points: Vec::new(),
        notes: Vec::new(),
        servers,
        unverified: Default::default(),
        commands: Default::default(),
        fd_limit,
        scaling_limits: None,
        progress,
    };
    let mut experiment_secs = std::collections::BTreeMap::new();
    for exp in &plan.experiments {
        if runner::interrupted() {
            break;
        }
        let began = std::time::Instant::now();
        let outcome = match exp.as_str() {
            "cpu" => experiments::cpu(&mut lab),
            "echo" => experiments::echo(&mut lab),
            "scaling" => experiments::scaling(&mut lab),
            "fibload" => experiments::fibload(&mut lab),
            _ => Ok(()),
        };
        if let Err(e) = outcome {
            lab.notes.push(format!("{exp}: {e:#}"));
        }
        experiment_secs.insert(exp.clone(), began.elapsed().as_secs_f64());
    }
    lab.progress.finish();
    let mut results = Results {
        concur_version: env!("CARGO_PKG_VERSION").to_string(),
        started_unix,
        machine: Machine::read(python.map(|p| p.1)),
        params: serde_json::to_value(&plan)?,
        pinned: lab.pins.is_some(),
        interrupted: runner::interrupted(),
        points: lab.points,
        answers: Default::default(),
        notes: lab.notes,
        commands: lab.commands,
        servers: lab
            .servers
            .iter()
            .map(|d| results::ServerInfo {
                name: d.name.clone(),
                family: d.family,
                ceiling: d.nature.ceiling.map(|c| c.name().to_string()),
                counterpart: d.counterpart.clone(),
            })
            .collect(),
        experiment_secs,
        scaling_limits: lab.scaling_limits.clone(),
    };
    let mut views = views::views(&results);
    views.retain(|v| plan.experiments.iter().any(|e| e == v.id));
    results.answers = views
        .iter()
        .map(|v| (v.id.to_string(), v.answer.clone()))
        .collect();
    write(
        &args.out,
        "results.json",
        &serde_json::to_string_pretty(&results)?,
    )?;
    write(&args.out, "summary.md", &render::markdown(&results, &views))?;
    write(&args.out, "report.html", &render::html(&results, &views))?;
    let mut answers = String::new();
    for v in &views {
        answers.push_str(&format!("{}\n  {}\n", v.title, v.answer));
        for line in unmeasured(&results.points, v.id) {
            answers.push_str(&format!("  not measured: {line}\n"));
        }
        answers.push('\n');
    }
    answers.push_str(&format!(
        "wrote {}\n",
        args.out.join("report.html").display()
    ));
    print_out(&answers)?;
    let measured = results.points.iter().any(|p| !p.metrics.is_empty());
    Ok(match (results.interrupted, measured) {
        (true, _) => 130,
        (false, true) => 0,
        // A lab that measured nothing failed, however well it wrote its report.
        (false, false) => 1,
    })
}

/// The servers of `experiment` of which nothing was measured, each with why, in one
/// line: "mine: not available: mine exited (exit status: 127) before listening ...".
fn unmeasured(points: &[Point], experiment: &str) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut named: Vec<&str> = Vec::new();
    for p in points.iter().filter(|p| p.experiment == experiment) {
        let measured = points
            .iter()
            .any(|q| q.experiment == experiment && q.server == p.server && !q.metrics.is_empty());
        if measured || named.contains(&p.server.as_str()) {
            continue;
        }
        if let Some(why) = &p.error {
            named.push(&p.server);
            let why: String = why.split_whitespace().collect::<Vec<_>>().join(" ");
            let why = match why.char_indices().nth(240) {
                Some((i, _)) => format!("{}...", &why[..i]),
                None => why,
            };
            lines.push(format!("{}: {why}", p.server));
        }
    }
    lines
}

/// Write to stdout; a failed write is an error (one line, exit 1), not a panic.
fn print_out(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("writing to stdout")
}

/// `--out` must be new or empty, so one run's report and logs never mix with an
/// earlier run's (and an old `results.json` kept for `--compare` is never lost by
/// accident); with `--force` the old logs go and the report files are replaced.
fn prepare_out(out: &Path, force: bool) -> Result<()> {
    let entries: Vec<String> = match std::fs::read_dir(out) {
        Ok(dir) => dir
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(bad_input(format!("--out {}: {e}", out.display()))),
    };
    if entries.is_empty() {
        return Ok(());
    }
    if !force {
        let mut shown = entries.clone();
        shown.sort();
        let more = shown.len().saturating_sub(3);
        shown.truncate(3);
        return Err(bad_input(format!(
            "--out {} is not empty (it holds {}{}); pass --force to replace the report \
             in it, or give another --out",
            out.display(),
            shown.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        )));
    }
    let logs = out.join("logs");
    if logs.is_dir() {
        std::fs::remove_dir_all(&logs)
            .with_context(|| format!("removing the old {}", logs.display()))?;
    }
    Ok(())
}

fn write(dir: &Path, name: &str, text: &str) -> Result<()> {
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

fn load_results(path: &Path) -> Result<Results> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| bad_input(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| {
        bad_input(format!(
            "{} is not a concur lab results.json: {e}",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        lab: LabArgs,
    }

    fn plan(args: &[&str]) -> Result<Plan> {
        let cli = Cli::try_parse_from(std::iter::once("lab").chain(args.iter().copied())).unwrap();
        Plan::from_args(&cli.lab, &config::LabFile::default())
    }

    /// The estimate of the time left, at every quarter of a real full run, is within
    /// 1.5x of what really was left: the planner's expected step times against the
    /// times the steps of one full run took (`testdata/full-run-steps.txt`), with no
    /// clock of this test's own.
    #[test]
    fn the_time_left_is_estimated_within_one_and_a_half_times() {
        let real: Vec<f64> = include_str!("testdata/full-run-steps.txt")
            .lines()
            .filter(|l| !l.starts_with('#'))
            .flat_map(|l| l.split_whitespace().map(|x| x.parse::<f64>().unwrap()))
            .collect();
        let plan = plan(&[]).unwrap();
        let servers = servers::builtin(&servers::Builtins {
            exe: Path::new("concur"),
            python: Some((Path::new("python3"), Path::new("peers/python"))),
            models: &plan.models,
            heavy: plan.heavy,
            heavy_python: plan.heavy_python,
        });
        // The machine the run was on: 2 cores (server pinned to one), the limits its
        // ladder read.
        let limits = ladder::Limits {
            fd_limit: 20_000,
            thread_ceiling: 13_106,
            process_ceiling: 32_768,
            server_cores: 1,
            mem_available: Some(23_000_000_000),
        };
        let expected = experiments::planned_steps(&plan, &servers, true, &limits);
        assert_eq!(expected.len(), real.len(), "the plan's steps are the run's");
        let total: f64 = real.iter().sum();
        let mut elapsed = 0.0;
        let mut checked = 0;
        let mut quarter = 1;
        for (done, took) in real.iter().enumerate() {
            if elapsed >= total * quarter as f64 / 4.0 && quarter < 4 {
                let left = total - elapsed;
                let guess = progress::estimate_left(
                    std::time::Duration::from_secs_f64(elapsed),
                    &expected,
                    done,
                )
                .unwrap()
                .as_secs_f64();
                assert!(
                    guess <= 1.5 * left && left <= 1.5 * guess,
                    "at {elapsed} s of {total} s (step {done}): {guess:.0} s estimated, {left} s left"
                );
                checked += 1;
                quarter += 1;
            }
            elapsed += took;
        }
        assert_eq!(checked, 3, "a quarter, a half and three quarters through");
        // The mean of the steps so far, the estimate this replaces, is off by more.
        let at_half = real
            .iter()
            .scan(0.0, |t, x| {
                *t += x;
                Some(*t)
            })
            .position(|t| t >= total / 2.0)
            .unwrap();
        let uniform = total / 2.0 / at_half as f64 * (real.len() - at_half) as f64;
        assert!(
            uniform < total / 2.0 / 1.5,
            "{uniform} s would be estimated uniformly"
        );
    }

    #[test]
    fn the_scaling_ladder_climbs_to_conns_max() {
        assert_eq!(
            plan(&[]).unwrap().hold_conns,
            [1000, 10_000, 100_000, 1_000_000]
        );
        assert_eq!(
            plan(&["--conns-max", "100000"]).unwrap().hold_conns,
            [1000, 10_000, 100_000]
        );
        assert_eq!(
            plan(&["--conns-max", "5000"]).unwrap().hold_conns,
            [1000, 5000]
        );
        assert_eq!(plan(&["--quick"]).unwrap().hold_conns, [200, 2000]);
        assert_eq!(
            plan(&["--quick", "--conns-max", "1000000"])
                .unwrap()
                .hold_conns,
            [200, 2000],
            "--quick stays small"
        );
    }

    #[test]
    fn quick_is_small_and_defaults_repeat_three_times() {
        let quick = plan(&["--quick"]).unwrap();
        assert_eq!((quick.repeat, quick.echo_conns.len()), (1, 1));
        let full = plan(&[]).unwrap();
        assert_eq!(
            (full.repeat, full.echo_conns.clone()),
            (3, vec![1, 10, 100, 1000])
        );
        assert_eq!(plan(&["--repeat", "5", "--quick"]).unwrap().repeat, 5);
    }

    #[test]
    fn unknown_names_are_refused() {
        let err = plan(&["--models", "threads,fibers"]).unwrap_err();
        assert_eq!(crate::error::exit_code(&err), 2);
        assert!(err.to_string().contains("unknown model 'fibers'"), "{err}");
        assert_eq!(
            plan(&["--models", "epoll,async"]).unwrap().models,
            ["epoll", "async"]
        );
    }
}
