//! The task sampler: every thread of every process below a server, followed while a
//! run goes on, remembered after it exits.
//!
//! A thread's counters (CPU time, context switches) live in the thread: when it exits
//! they go with it, and a server that starts a thread or a process per client loses
//! its clients' work the moment they leave. So the sampler keeps a table of every task
//! it has ever seen, keyed by its thread id, holding the descriptor of its counters'
//! file open and the counts it read last. A task that is gone keeps those last counts;
//! what it did after the last sample is what a sampler cannot see, which is why every
//! figure it gives is labelled "sampled".
//!
//! One read per task per sample: `/proc/PID/task/TID/sched` holds the task's CPU time
//! in nanoseconds and its voluntary and involuntary switches together (kernels built
//! with `CONFIG_SCHED_DEBUG`). Where it is missing, `status` (the switches) and
//! `schedstat` (CPU in nanoseconds) are read instead, two reads. The descriptors stay
//! open between samples, and a descriptor of /proc names one task, not a number: once
//! the task is reaped, a read fails, even if its thread id was given to another task
//! meanwhile. The sampler runs inside the client, whose descriptors are its
//! connections, so it keeps at most 256 open (`MAX_OPEN`); the tasks past that are read by
//! name at each sample, and one whose counts went down is taken for a new task under
//! a reused number. A zombie (a child that exited and is not yet reaped, as the talk's
//! `Process(...).start()` without `join()` leaves behind) still reads, with its counts.
//!
//! New tasks are found by listing: `/proc` itself for new processes (a new pid whose
//! parent is in the tree joins it), and each live process's `task/` for new threads.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;

/// What one task has done, as its counters say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// CPU time on any core, nanoseconds.
    pub cpu_ns: u64,
    pub voluntary: u64,
    pub involuntary: u64,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.cpu_ns += other.cpu_ns;
        self.voluntary += other.voluntary;
        self.involuntary += other.involuntary;
    }

    fn since(&self, base: Counts) -> Counts {
        Counts {
            cpu_ns: self.cpu_ns.saturating_sub(base.cpu_ns),
            voluntary: self.voluntary.saturating_sub(base.voluntary),
            involuntary: self.involuntary.saturating_sub(base.involuntary),
        }
    }

    /// Voluntary plus involuntary.
    pub fn switches(&self) -> u64 {
        self.voluntary + self.involuntary
    }
}

/// Parse `/proc/PID/task/TID/sched`: `se.sum_exec_runtime` (milliseconds with six
/// decimals) and the two switch counts.
pub fn parse_sched(text: &str) -> Option<Counts> {
    let value = |key: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == key).then(|| v.trim())
        })
    };
    let runtime = value("se.sum_exec_runtime")?;
    let (ms, frac) = runtime.split_once('.').unwrap_or((runtime, "0"));
    let frac: String = frac.chars().chain(std::iter::repeat('0')).take(6).collect();
    let cpu_ns = ms.parse::<u64>().ok()? * 1_000_000 + frac.parse::<u64>().ok()?;
    Some(Counts {
        cpu_ns,
        voluntary: value("nr_voluntary_switches")?.parse().ok()?,
        involuntary: value("nr_involuntary_switches")?.parse().ok()?,
    })
}

/// Parse the switch counts of `/proc/PID/task/TID/status`.
pub fn parse_status_switches(text: &str) -> Option<(u64, u64)> {
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.trim().parse::<u64>().ok())
    };
    Some((
        value("voluntary_ctxt_switches:")?,
        value("nonvoluntary_ctxt_switches:")?,
    ))
}

/// The state letter of a `/proc/PID/stat` line (after the command's last `)`).
fn stat_state(stat: &str) -> Option<char> {
    stat.get(stat.rfind(')')? + 2..)?.chars().next()
}

/// The parent pid of a `/proc/PID/stat` line.
fn stat_ppid(stat: &str) -> Option<u32> {
    stat.get(stat.rfind(')')? + 2..)?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The numbered entries of a /proc directory (pids, or a process's thread ids);
/// none if it is gone.
fn numbered(dir: &str) -> impl Iterator<Item = u32> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
}

/// The most descriptors the sampler keeps open: it runs inside the client, whose
/// descriptors are its connections (a hold of 10,000 connections against a process
/// per client must not lose 20,000 of them to the sampler).
const MAX_OPEN: usize = 256;

/// A /proc file read again at every sample: kept open while the budget allows (a
/// descriptor names one task, so a number given to another task meanwhile cannot be
/// mistaken for it), else opened by name each time (and a task whose counts went
/// down is taken for a new one under the old number).
enum ProcFile {
    Open(File),
    Named(String),
}

impl ProcFile {
    fn new(path: String, keep: bool) -> Option<ProcFile> {
        let f = File::open(&path).ok()?;
        Some(if keep {
            ProcFile::Open(f)
        } else {
            ProcFile::Named(path)
        })
    }

    fn read<'b>(&self, buf: &'b mut Vec<u8>) -> Option<&'b str> {
        let n = match self {
            ProcFile::Open(f) => read(f, buf)?,
            ProcFile::Named(path) => read(&File::open(path).ok()?, buf)?,
        };
        std::str::from_utf8(&buf[..n]).ok()
    }

    fn fds(&self) -> usize {
        usize::from(matches!(self, ProcFile::Open(_)))
    }
}

/// Where one task's counters are read from.
enum Source {
    Sched(ProcFile),
    StatusAndSchedstat(ProcFile, ProcFile),
}

fn read(file: &File, buf: &mut Vec<u8>) -> Option<usize> {
    buf.resize(4096, 0);
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        match file.read_at(&mut buf[len..], len as u64) {
            Ok(0) => return Some(len),
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

impl Source {
    fn open(pid: u32, tid: u32, keep: bool) -> Option<Source> {
        let dir = format!("/proc/{pid}/task/{tid}");
        if let Some(f) = ProcFile::new(format!("{dir}/sched"), keep) {
            return Some(Source::Sched(f));
        }
        Some(Source::StatusAndSchedstat(
            ProcFile::new(format!("{dir}/status"), keep)?,
            ProcFile::new(format!("{dir}/schedstat"), keep)?,
        ))
    }

    fn fds(&self) -> usize {
        match self {
            Source::Sched(f) => f.fds(),
            Source::StatusAndSchedstat(a, b) => a.fds() + b.fds(),
        }
    }

    /// The task's counts now; `None` once it has been reaped.
    fn read(&self, buf: &mut Vec<u8>) -> Option<Counts> {
        match self {
            Source::Sched(f) => parse_sched(f.read(buf)?),
            Source::StatusAndSchedstat(status, schedstat) => {
                let (voluntary, involuntary) = parse_status_switches(status.read(buf)?)?;
                let cpu_ns = schedstat
                    .read(buf)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()?;
                Some(Counts {
                    cpu_ns,
                    voluntary,
                    involuntary,
                })
            }
        }
    }
}

struct Task {
    source: Source,
    /// Counts when the watch began (0 for a task born since).
    base: Counts,
    last: Counts,
}

struct Process {
    /// `/proc/PID/stat`: its state says whether the process is a zombie.
    stat: ProcFile,
    zombie: bool,
}

/// What the tree did since the watch began, and how large it grew.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Summed over every task seen, exited ones at their last counts.
    pub counts: Counts,
    /// Threads alive (not zombies) at once, the most seen in one sample.
    pub threads_peak: u64,
    /// Processes alive (not zombies) at once, the most seen in one sample.
    pub processes_peak: u64,
    /// Threads alive at the latest sample.
    pub threads_now: u64,
    pub processes_now: u64,
    /// Distinct tasks and processes ever seen, and the tasks seen to exit.
    pub tasks_seen: u64,
    pub processes_seen: u64,
    pub tasks_exited: u64,
    pub samples: u64,
}

/// Every task below one root process, sampled.
pub struct Tasks {
    live: HashMap<u32, Task>,
    procs: HashMap<u32, Process>,
    /// Pids looked at in /proc and found outside the tree (dropped once they are gone
    /// from /proc, so a reused number is looked at again).
    foreign: HashSet<u32>,
    /// Threads each process listed in its `task/` at the latest sample.
    threads: HashMap<u32, u64>,
    exited: Counts,
    totals: Totals,
    /// Descriptors held open now (at most [`MAX_OPEN`]).
    open: usize,
    buf: Vec<u8>,
}

impl Tasks {
    /// Start following `root`'s tree: every task alive now is read, and what it did
    /// before now is not counted. `None` if `root` is not in /proc.
    pub fn start(root: u32) -> Option<Tasks> {
        let stat = ProcFile::new(format!("/proc/{root}/stat"), true)?;
        let mut t = Tasks {
            live: HashMap::new(),
            procs: HashMap::from([(
                root,
                Process {
                    stat,
                    zombie: false,
                },
            )]),
            foreign: HashSet::new(),
            threads: HashMap::new(),
            exited: Counts::default(),
            totals: Totals::default(),
            open: 1,
            buf: Vec::with_capacity(4096),
        };
        t.discover(true);
        t.count();
        Some(t)
    }

    /// One sample: read every known task (a task that is gone keeps its last counts),
    /// then look for new processes and threads.
    pub fn sample(&mut self) {
        let mut gone = Vec::new();
        for (&tid, task) in &mut self.live {
            match task.source.read(&mut self.buf) {
                // Counts never go down: a task read by name whose counts did is a
                // new task under the old one's number, and the old one has exited.
                Some(c) if c.cpu_ns < task.last.cpu_ns || c.switches() < task.last.switches() => {
                    self.exited.add(task.last.since(task.base));
                    self.totals.tasks_exited += 1;
                    self.totals.tasks_seen += 1;
                    task.base = Counts::default();
                    task.last = c;
                }
                Some(c) => task.last = c,
                None => gone.push(tid),
            }
        }
        for tid in gone {
            if let Some(task) = self.live.remove(&tid) {
                self.open -= task.source.fds();
                self.exited.add(task.last.since(task.base));
                self.totals.tasks_exited += 1;
            }
        }
        self.discover(false);
        self.count();
    }

    /// What the tree did since the start, as of the latest sample.
    pub fn totals(&self) -> Totals {
        self.totals
    }

    fn count(&mut self) {
        let mut counts = self.exited;
        for task in self.live.values() {
            counts.add(task.last.since(task.base));
        }
        self.totals.counts = counts;
        self.totals.samples += 1;
        let mut procs = 0;
        let mut threads = 0;
        for (pid, p) in &self.procs {
            if !p.zombie {
                procs += 1;
                threads += self.threads.get(pid).copied().unwrap_or(0);
            }
        }
        self.totals.threads_now = threads;
        self.totals.processes_now = procs;
        self.totals.threads_peak = self.totals.threads_peak.max(threads);
        self.totals.processes_peak = self.totals.processes_peak.max(procs);
    }

    /// Find new processes (children of the tree) and new threads of every process.
    fn discover(&mut self, at_start: bool) {
        // Processes: a pid new to us whose parent is in the tree joins it. Parents
        // usually have lower pids, but not after the numbers wrap: repeat until no
        // more join.
        let mut candidates: Vec<(u32, u32)> = Vec::new();
        let mut present = HashSet::new();
        for pid in numbered("/proc") {
            present.insert(pid);
            if self.procs.contains_key(&pid) || self.foreign.contains(&pid) {
                continue;
            }
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            match stat_ppid(&stat) {
                Some(ppid) => candidates.push((pid, ppid)),
                None => {
                    self.foreign.insert(pid);
                }
            }
        }
        self.foreign.retain(|p| present.contains(p));
        loop {
            let before = candidates.len();
            candidates.retain(|&(pid, ppid)| {
                if !self.procs.contains_key(&ppid) {
                    return true;
                }
                let keep = self.open < MAX_OPEN;
                if let Some(stat) = ProcFile::new(format!("/proc/{pid}/stat"), keep) {
                    self.open += stat.fds();
                    self.procs.insert(
                        pid,
                        Process {
                            stat,
                            zombie: false,
                        },
                    );
                    self.totals.processes_seen += 1;
                }
                false
            });
            if candidates.len() == before {
                break;
            }
        }
        self.foreign.extend(candidates.iter().map(|&(pid, _)| pid));
        // Threads of every process, and whether each process is a zombie by now.
        let mut dead = Vec::new();
        let mut threads = HashMap::new();
        for (&pid, p) in &mut self.procs {
            match p.stat.read(&mut self.buf).and_then(stat_state) {
                Some(state) => p.zombie = matches!(state, 'Z' | 'X'),
                None => {
                    dead.push(pid);
                    continue;
                }
            }
            let mut n = 0;
            for tid in numbered(&format!("/proc/{pid}/task")) {
                n += 1;
                if self.live.contains_key(&tid) {
                    continue;
                }
                let Some(source) = Source::open(pid, tid, self.open < MAX_OPEN) else {
                    continue;
                };
                self.open += source.fds();
                let Some(now) = source.read(&mut self.buf) else {
                    continue;
                };
                // A task alive at the start counts from there; one born since counts
                // from its birth.
                let base = if at_start { now } else { Counts::default() };
                self.live.insert(
                    tid,
                    Task {
                        source,
                        base,
                        last: now,
                    },
                );
                self.totals.tasks_seen += 1;
            }
            threads.insert(pid, n);
        }
        for pid in dead {
            if let Some(p) = self.procs.remove(&pid) {
                self.open -= p.stat.fds();
            }
        }
        if at_start {
            self.totals.processes_seen = self.procs.len() as u64;
        }
        self.threads = threads;
    }
}
