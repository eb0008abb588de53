//! `concur fib`: the talk's question "which will be faster, multi-threading or
//! multi-processing?" answered by measuring a list of fib(n) in five ways.
//!
//! - `sequential`: one after another on the main thread (the baseline).
//! - `threads`: one OS thread per number, joined (the talk's fixed dispatcher).
//! - `broken`: the talk's broken dispatcher, which reads the clock without joining.
//!   Its figure is reported as the talk's script would print it, then the threads are
//!   joined anyway and the real figure is reported beside it.
//! - `processes`: one child process per number (this binary, run as `concur
//!   fib-worker N`), each result read back from its stdout and verified.
//! - `pool`: `--workers` threads pulling numbers from a shared queue.
//!
//! Wall time is a monotonic clock; CPU time is user+sys of this process and its
//! waited-for children (getrusage), so processes are charged like threads.

use super::{MAX_N, exact, work};
use crate::error::BadInput;
use crate::sys::{self, CpuTime};
use anyhow::{Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The list of n to compute, as given to `--n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NList(pub Vec<u32>);

/// Parse `--n`: comma-separated integers, each in 0..=MAX_N.
pub fn parse_n_list(text: &str) -> Result<NList, String> {
    if text.trim().is_empty() {
        return Err(format!(
            "empty list; give comma-separated integers in 0..={MAX_N}, e.g. 36,36"
        ));
    }
    let mut ns = Vec::new();
    for item in text.split(',') {
        let item = item.trim();
        let n: u32 = item.parse().map_err(|_| {
            format!("'{item}' is not a number; give comma-separated integers in 0..={MAX_N}")
        })?;
        if n > MAX_N {
            return Err(format!(
                "{n} is out of range; each n must be in 0..={MAX_N} (one fib({MAX_N}) takes about 30 s)"
            ));
        }
        ns.push(n);
    }
    Ok(NList(ns))
}

/// A way of running the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Sequential,
    Threads,
    Broken,
    Processes,
    Pool,
}

impl Mode {
    pub const ALL: [Mode; 5] = [
        Mode::Sequential,
        Mode::Threads,
        Mode::Broken,
        Mode::Processes,
        Mode::Pool,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Sequential => "sequential",
            Mode::Threads => "threads",
            Mode::Broken => "broken",
            Mode::Processes => "processes",
            Mode::Pool => "pool",
        }
    }
}

/// `--mode`: one mode, or all five in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeChoice {
    All,
    Sequential,
    Threads,
    Broken,
    Processes,
    Pool,
}

impl ModeChoice {
    fn modes(self) -> Vec<Mode> {
        match self {
            ModeChoice::All => Mode::ALL.to_vec(),
            ModeChoice::Sequential => vec![Mode::Sequential],
            ModeChoice::Threads => vec![Mode::Threads],
            ModeChoice::Broken => vec![Mode::Broken],
            ModeChoice::Processes => vec![Mode::Processes],
            ModeChoice::Pool => vec![Mode::Pool],
        }
    }
}

/// `concur fib` options.
#[derive(Debug, Clone, clap::Args)]
pub struct FibArgs {
    /// Comma-separated list of n, each in 0..=50: the largest n concur computes with the
    /// naive fib (fib(50) takes about 30 s on one core; servers stop at serve's --max-n)
    #[arg(long, value_name = "LIST", default_value = "36,36,36,36", value_parser = parse_n_list)]
    pub n: NList,
    /// Which way to run the list; `all` runs the five in order
    #[arg(long, value_enum, default_value_t = ModeChoice::All)]
    pub mode: ModeChoice,
    /// Threads in the `pool` mode [default: available cores]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub workers: Option<u32>,
    /// Print one JSON object instead of the table
    #[arg(long)]
    pub json: bool,
}

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// `sequential`, `threads`, `broken (as reported)`, `broken (joined)`, `processes`, `pool`.
    pub mode: String,
    pub wall_secs: f64,
    pub cpu_secs: f64,
    /// Sequential wall time over this row's wall time, when sequential ran.
    pub speedup: Option<f64>,
    /// Every result matched the exact fib.
    pub verified: bool,
    /// True for the broken dispatcher's own figure, which is wrong.
    pub wrong: bool,
    pub note: Option<String>,
}

/// The whole measurement, as `--json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub n: Vec<u32>,
    pub cores: usize,
    pub workers: usize,
    pub rows: Vec<Row>,
    /// One plain sentence computed from the rows.
    pub answer: String,
}

/// Run `concur fib`; `worker_exe` is the binary the processes mode starts.
pub fn run(args: &FibArgs, worker_exe: &Path) -> Result<Report> {
    let workers = args.workers.map_or_else(sys::cores, |w| w as usize);
    let ns = &args.n.0;
    let mut rows = Vec::new();
    for mode in args.mode.modes() {
        rows.extend(measure(mode, ns, workers, worker_exe)?);
    }
    if let Some(base) = rows
        .iter()
        .find(|r| r.mode == "sequential")
        .map(|r| r.wall_secs)
    {
        for row in &mut rows {
            row.speedup = Some(base / row.wall_secs.max(1e-9));
        }
    }
    let answer = answer(&rows);
    Ok(Report {
        n: ns.clone(),
        cores: sys::cores(),
        workers,
        rows,
        answer,
    })
}

/// Measure one mode; `broken` gives two rows.
pub fn measure(mode: Mode, ns: &[u32], workers: usize, worker_exe: &Path) -> Result<Vec<Row>> {
    let cpu0 = sys::cpu_self_and_children();
    let start = Instant::now();
    let row = |name: &str, wall: Duration, cpu: CpuTime, results: &[u64]| Row {
        mode: name.to_string(),
        wall_secs: wall.as_secs_f64(),
        cpu_secs: cpu.since(&cpu0).total().as_secs_f64(),
        speedup: None,
        verified: verify(ns, results),
        wrong: false,
        note: None,
    };
    let rows = match mode {
        Mode::Sequential => {
            let results: Vec<u64> = ns.iter().map(|&n| work(n)).collect();
            vec![row(
                "sequential",
                start.elapsed(),
                sys::cpu_self_and_children(),
                &results,
            )]
        }
        Mode::Threads => {
            let handles: Vec<_> = ns
                .iter()
                .map(|&n| std::thread::spawn(move || work(n)))
                .collect();
            let results = join_all(handles)?;
            vec![row(
                "threads",
                start.elapsed(),
                sys::cpu_self_and_children(),
                &results,
            )]
        }
        Mode::Broken => {
            let handles: Vec<_> = ns
                .iter()
                .map(|&n| std::thread::spawn(move || work(n)))
                .collect();
            // The talk's bug: the clock is read here, before any thread has finished.
            let reported = start.elapsed();
            let reported_cpu = sys::cpu_self_and_children();
            let results = join_all(handles)?;
            let joined = start.elapsed();
            let mut wrong = row("broken (as reported)", reported, reported_cpu, &[]);
            wrong.verified = false;
            wrong.wrong = true;
            wrong.note = Some("WRONG: clock read before the threads finished (no join)".into());
            let mut real = row(
                "broken (joined)",
                joined,
                sys::cpu_self_and_children(),
                &results,
            );
            real.note = Some("the same threads, timed after join()".into());
            vec![wrong, real]
        }
        Mode::Processes => {
            let results = run_processes(ns, worker_exe)?;
            vec![row(
                "processes",
                start.elapsed(),
                sys::cpu_self_and_children(),
                &results,
            )]
        }
        Mode::Pool => {
            let results = run_pool(ns, workers.max(1));
            let mut r = row(
                "pool",
                start.elapsed(),
                sys::cpu_self_and_children(),
                &results,
            );
            r.note = Some(format!("{workers} worker threads"));
            vec![r]
        }
    };
    Ok(rows)
}

fn verify(ns: &[u32], results: &[u64]) -> bool {
    results.len() == ns.len()
        && ns
            .iter()
            .zip(results)
            .all(|(&n, &r)| u128::from(r) == exact(n))
}

fn join_all(handles: Vec<std::thread::JoinHandle<u64>>) -> Result<Vec<u64>> {
    handles
        .into_iter()
        .map(|h| {
            h.join()
                .map_err(|_| anyhow::anyhow!("a fib thread panicked"))
        })
        .collect()
}

/// `workers` threads take indices from one shared counter (a lock-free queue of the
/// list's positions) until it runs out; results land at their own index.
fn run_pool(ns: &[u32], workers: usize) -> Vec<u64> {
    let next = AtomicUsize::new(0);
    let mut results = vec![0u64; ns.len()];
    let slots: Vec<std::sync::Mutex<&mut u64>> =
        results.iter_mut().map(std::sync::Mutex::new).collect();
    std::thread::scope(|s| {
        for _ in 0..workers.min(ns.len().max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&n) = ns.get(i) else { break };
                    **slots[i].lock().unwrap() = work(n);
                }
            });
        }
    });
    drop(slots);
    results
}

/// Start one child per number, all at once, then collect each child's answer.
fn run_processes(ns: &[u32], exe: &Path) -> Result<Vec<u64>> {
    let children: Vec<_> = ns
        .iter()
        .map(|n| {
            Command::new(exe)
                .args(["fib-worker", &n.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .with_context(|| format!("starting worker process {}", exe.display()))
        })
        .collect::<Result<_>>()?;
    children
        .into_iter()
        .map(|child| {
            let out = child
                .wait_with_output()
                .context("waiting for a worker process")?;
            anyhow::ensure!(
                out.status.success(),
                "a worker process failed: {}",
                out.status
            );
            let text = String::from_utf8_lossy(&out.stdout);
            text.trim()
                .parse::<u64>()
                .with_context(|| format!("worker answered {text:?}"))
        })
        .collect()
}

/// The child side of the processes mode: compute one fib (the binary prints it).
pub fn worker(n: u32) -> Result<u64> {
    if n > MAX_N {
        return Err(BadInput(format!("n {n} is out of range 0..={MAX_N}")).into());
    }
    Ok(work(n))
}

/// The binary to run for the processes mode: this very executable.
pub fn current_exe() -> Result<PathBuf> {
    std::env::current_exe().context("finding the concur executable for the processes mode")
}

fn answer(rows: &[Row]) -> String {
    let speed = |m: &str| rows.iter().find(|r| r.mode == m).and_then(|r| r.speedup);
    match (speed("threads"), speed("processes")) {
        (Some(t), Some(p)) => {
            let verdict = if (t / p - 1.0).abs() < 0.15 {
                "about the same: Rust threads have no GIL, so both use every core"
            } else if t > p {
                "threads win: both run in parallel, and threads skip process start-up"
            } else {
                "processes win on this run"
            };
            format!("threads {t:.2}x, processes {p:.2}x against sequential: {verdict}.")
        }
        _ => "run with --mode all to compare threads with processes.".into(),
    }
}

/// The report as the table `concur fib` prints.
pub fn render_table(report: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let list = report
        .n
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let _ = writeln!(
        s,
        "fib of [{list}] on {} cores (pool: {} workers)\n",
        report.cores, report.workers
    );
    let _ = writeln!(
        s,
        "{:<22} {:>9} {:>9} {:>9}  verified",
        "mode", "wall s", "cpu s", "speedup"
    );
    for r in &report.rows {
        let speedup = r.speedup.map_or("-".to_string(), |x| format!("{x:.2}x"));
        let verified = if r.wrong {
            "no"
        } else if r.verified {
            "yes"
        } else {
            "NO"
        };
        let _ = write!(
            s,
            "{:<22} {:>9.3} {:>9.3} {:>9}  {verified}",
            r.mode, r.wall_secs, r.cpu_secs, speedup
        );
        if r.wrong {
            let _ = write!(s, "   <- {}", r.note.as_deref().unwrap_or("wrong"));
        }
        s.push('\n');
    }
    let _ = writeln!(s, "\n{}", report.answer);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists() {
        assert_eq!(parse_n_list("36,36").unwrap(), NList(vec![36, 36]));
        assert_eq!(parse_n_list(" 1 , 50 ").unwrap(), NList(vec![1, 50]));
        assert_eq!(
            parse_n_list("0").unwrap(),
            NList(vec![0]),
            "n starts at 0 everywhere"
        );
    }

    #[test]
    fn bad_lists_name_the_value() {
        assert!(
            parse_n_list("36,x")
                .unwrap_err()
                .contains("'x' is not a number")
        );
        assert!(
            parse_n_list("500")
                .unwrap_err()
                .contains("500 is out of range")
        );
        assert!(parse_n_list("51").unwrap_err().contains("0..=50"));
        assert!(parse_n_list("").unwrap_err().contains("empty list"));
        assert!(
            parse_n_list("36,,36")
                .unwrap_err()
                .contains("'' is not a number")
        );
    }

    #[test]
    fn in_process_modes_verify() {
        let exe = Path::new("/nonexistent");
        for mode in [Mode::Sequential, Mode::Threads, Mode::Pool] {
            let rows = measure(mode, &[20, 21, 22], 2, exe).unwrap();
            assert_eq!(rows.len(), 1);
            assert!(rows[0].verified, "{mode:?}");
            assert!(rows[0].wall_secs > 0.0);
        }
    }

    #[test]
    fn broken_gives_a_wrong_row_and_a_real_row() {
        let rows = measure(Mode::Broken, &[25, 25], 2, Path::new("/nonexistent")).unwrap();
        assert_eq!(rows.len(), 2);
        assert!(rows[0].wrong && !rows[0].verified);
        assert!(!rows[1].wrong && rows[1].verified);
        assert!(rows[1].wall_secs >= rows[0].wall_secs);
    }

    #[test]
    fn pool_with_more_workers_than_numbers() {
        assert_eq!(run_pool(&[10, 11], 8), vec![55, 89]);
        assert_eq!(run_pool(&[], 3), Vec::<u64>::new());
    }

    #[test]
    fn processes_need_a_worker_binary() {
        let err = measure(Mode::Processes, &[5], 1, Path::new("/nonexistent/concur")).unwrap_err();
        assert!(format!("{err:#}").contains("starting worker process"));
    }
}
