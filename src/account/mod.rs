//! One account of a server's resources, for `load --server-pid`, `hold --server-pid`
//! and every experiment of the lab (which passes `--server-pid` to them): what the
//! server spent while it was measured, whatever it forks, spawns or reaps.
//!
//! A server is not one process at one moment. A thread per client, or a process per
//! client, comes and goes with its client, and takes its counters with it; a parent
//! that never reaps its children leaves zombies whose CPU no parent counts. So a
//! [`Watch`] reads the server two ways:
//!
//! - **its cgroup**, where the server's tree has one of its own ([`cgroup`]): the lab
//!   makes one per server; a systemd service or a container has one. The group
//!   counts every task it ever held, so its CPU is exact.
//! - **a sampler** ([`tasks`]) that follows the tree from the client's core while the
//!   run goes on, remembers every task it has seen with its last counts, and reads
//!   zombies. It gives the context switches and threads a cgroup does not count, and
//!   the CPU where there is no group; a task's last moments before it exits (up to one
//!   sampling interval) can escape it, and its figures say so.
//!
//! The last reading is taken while the clients are still connected (the caller
//! finishes the watch before it closes them), so a thread per client is still there
//! to be read. Every figure says how it was measured ([`How`]): a figure that could
//! not be measured is `null` with the reason, never 0.

pub mod cgroup;
pub mod tasks;

use crate::proctree::{self, TreeSample};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How a figure was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum How {
    /// From the server's cgroup: every task it ever held, exited ones included.
    Cgroup,
    /// From /proc, sampled while the run went on (see [`tasks`]).
    Sampled,
    /// Not measured; the figure's note says why.
    NotMeasured,
}

impl How {
    /// The word the tables and answers use.
    pub fn label(self) -> &'static str {
        match self {
            How::Cgroup => "cgroup",
            How::Sampled => "sampled",
            How::NotMeasured => "not measured",
        }
    }
}

/// One figure and how it was measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    /// `null` when not measured.
    pub value: Option<f64>,
    pub measured: How,
    /// Where it came from, or why it could not be measured.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

impl Figure {
    fn cgroup(value: Option<u64>, scale: f64, note: String) -> Option<Figure> {
        value.map(|v| Figure {
            value: Some(v as f64 * scale),
            measured: How::Cgroup,
            note,
        })
    }

    fn sampled(value: f64, note: &str) -> Figure {
        Figure {
            value: Some(value),
            measured: How::Sampled,
            note: note.to_string(),
        }
    }

    fn not_measured(why: &str) -> Figure {
        Figure {
            value: None,
            measured: How::NotMeasured,
            note: why.to_string(),
        }
    }
}

/// What a server spent while it was watched, every figure with how it was measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerAccount {
    pub pid: u32,
    /// The cgroup read, per controller, when the server's tree had one of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// CPU time, user plus system, seconds.
    pub cpu_secs: Figure,
    /// Voluntary plus involuntary context switches.
    pub context_switches: Figure,
    /// Threads alive at once, at most (zombies are not threads).
    pub threads_peak: Figure,
    /// Processes alive at once, at most, the server's own included.
    pub processes_peak: Figure,
    /// Tasks (threads) and processes seen in all, and the tasks seen to exit.
    pub tasks_seen: u64,
    pub tasks_exited: u64,
    pub processes_seen: u64,
    /// The group's memory at the last reading, clients still connected.
    pub memory_bytes: Figure,
    /// The group's own TCP socket memory at the last reading.
    pub sock_bytes: Figure,
    /// PSS and RSS summed over the process tree, the most seen in the readings asked
    /// for ([`Watch::read_memory`]).
    pub pss_bytes: Figure,
    pub rss_bytes: Figure,
    /// How often the sampler read the tree, and what it cost on the client's core
    /// (the load generator's own CPU figure leaves it out).
    pub samples: u64,
    pub sample_interval_ms: f64,
    pub sampler_cpu_secs: f64,
}

impl ServerAccount {
    /// A figure per request, `None` when the figure was not measured or nothing was
    /// answered.
    pub fn per_request(figure: &Figure, requests: u64) -> Option<f64> {
        (requests > 0).then_some(())?;
        Some(figure.value? / requests as f64)
    }

    /// The account in a few lines for a terminal (per request when `requests` is
    /// given), each figure followed by how it was measured; the caller names the
    /// server.
    pub fn summary(&self, requests: Option<u64>) -> String {
        let per = |f: &Figure, unit: &str, scale: f64| match requests
            .and_then(|r| ServerAccount::per_request(f, r))
        {
            Some(x) => format!(" = {:.2}{unit}/request", x * scale),
            None => String::new(),
        };
        let value = |f: &Figure, show: &dyn Fn(f64) -> String| {
            f.value.map_or("not measured".to_string(), show)
        };
        let how = |f: &Figure| match f.value {
            Some(_) => format!(" ({})", f.measured.label()),
            None => String::new(),
        };
        let mb = |b: f64| format!("{:.1} MB", b / 1e6);
        let count = |x: f64| format!("{x:.0}");
        let cpu = &self.cpu_secs;
        let mut out = format!(
            "cpu {}{}{}; context switches {}{}{}; threads at most {}, \
             processes at most {} ({} tasks seen, {} exited){}",
            value(cpu, &|s| format!("{s:.3} s")),
            per(cpu, " us", 1e6),
            how(cpu),
            value(&self.context_switches, &count),
            per(&self.context_switches, "", 1.0),
            how(&self.context_switches),
            value(&self.threads_peak, &count),
            value(&self.processes_peak, &count),
            self.tasks_seen,
            self.tasks_exited,
            how(&self.threads_peak),
        );
        out.push_str(&format!(
            "\n  memory: group {}{}, its TCP sockets {}{}; PSS over the tree {}{}",
            value(&self.memory_bytes, &mb),
            how(&self.memory_bytes),
            value(&self.sock_bytes, &mb),
            how(&self.sock_bytes),
            value(&self.pss_bytes, &mb),
            how(&self.pss_bytes),
        ));
        if self.cpu_secs.measured == How::Sampled {
            out.push_str(&format!("\n  ({})", self.cpu_secs.note));
        }
        out
    }
}

/// Sampling is at most this frequent.
const FASTEST: Duration = Duration::from_millis(10);
/// The sampler's time between samples is this many times what a sample costs, so it
/// uses at most about 1/20 of the client's core however large the tree grows (a
/// thousand tasks: a few samples a second; ten thousand: one every few seconds, the
/// last reading, before the clients close, exact all the same).
const COST_FACTOR: u32 = 20;

struct Shared {
    tasks: tasks::Tasks,
}

struct Stop {
    stopped: Mutex<bool>,
    wake: Condvar,
}

/// A server being watched; see the module doc.
pub struct Watch {
    pid: u32,
    places: cgroup::Places,
    start: cgroup::Reading,
    started: Instant,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<Stop>,
    thread: Option<std::thread::JoinHandle<Duration>>,
    memory: Option<TreeSample>,
}

/// This thread's own CPU time.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl Watch {
    /// Start watching `pid` and its tree: find its own cgroup if it has one, read the
    /// starting counts, and start the sampler on this thread's cores. `None` if `pid`
    /// is not in /proc.
    pub fn start(pid: u32) -> Option<Watch> {
        let tasks = tasks::Tasks::start(pid)?;
        let places = cgroup::Places::of_tree(pid);
        let start = cgroup::Reading::of(&places);
        let shared = Arc::new(Mutex::new(Shared { tasks }));
        let stop = Arc::new(Stop {
            stopped: Mutex::new(false),
            wake: Condvar::new(),
        });
        let thread = {
            let (shared, stop) = (shared.clone(), stop.clone());
            std::thread::Builder::new()
                .name("server-sampler".into())
                .spawn(move || sampler(&shared, &stop))
                .ok()
        };
        Some(Watch {
            pid,
            places,
            start,
            started: Instant::now(),
            shared,
            stop,
            thread,
            memory: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Read the tree's memory (PSS, private, RSS) now, keeping the largest of each
    /// reading; returns this reading.
    pub fn read_memory(&mut self) -> Option<TreeSample> {
        let now = proctree::sample(self.pid, true)?;
        self.memory = Some(match self.memory {
            None => now,
            Some(m) => TreeSample {
                rss_bytes: m.rss_bytes.max(now.rss_bytes),
                // A peak of part of the tree is no peak.
                pss_bytes: m.pss_bytes.zip(now.pss_bytes).map(|(a, b)| a.max(b)),
                private_bytes: m
                    .private_bytes
                    .zip(now.private_bytes)
                    .map(|(a, b)| a.max(b)),
                descendants: m.descendants.max(now.descendants),
            },
        });
        Some(now)
    }

    /// The largest of each memory figure read so far.
    pub fn memory_peak(&self) -> Option<TreeSample> {
        self.memory
    }

    /// Threads and processes alive at the latest sample.
    pub fn now(&self) -> tasks::Totals {
        lock(&self.shared).tasks.totals()
    }

    /// Stop the sampler, take the last reading (call it before the clients close), and
    /// give the account.
    /// Stop the sampler thread (once) and give the CPU it used.
    fn stop_sampler(&mut self) -> Duration {
        *self.stop.stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.stop.wake.notify_all();
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }

    pub fn finish(mut self) -> ServerAccount {
        let sampler_cpu = self.stop_sampler();
        let end = cgroup::Reading::of(&self.places);
        let mut shared = lock(&self.shared);
        shared.tasks.sample();
        let t = shared.tasks.totals();
        let interval = self.started.elapsed().as_secs_f64() * 1e3 / t.samples.max(1) as f64;
        let sampled_note = format!(
            "sampled from /proc every {interval:.0} ms on average: what a task did in its \
             last {interval:.0} ms before exiting may be missed"
        );
        let group = |place: &Option<cgroup::Place>| {
            place.as_ref().map_or(String::new(), |p| {
                format!("the server's cgroup {}", p.dir.display())
            })
        };
        let cpu = Figure::cgroup(
            end.cpu_ns
                .zip(self.start.cpu_ns)
                .map(|(e, s)| e.saturating_sub(s)),
            1e-9,
            group(&self.places.cpu),
        )
        .unwrap_or_else(|| Figure::sampled(t.counts.cpu_ns as f64 * 1e-9, &sampled_note));
        let no_group = if self.places.memory.is_some() {
            "its cgroup has no such figure"
        } else {
            "the server has no cgroup of its own (one that holds its processes and no other)"
        };
        let memory = self.memory;
        let pss_note =
            "summed over the process tree (PSS: each shared page split among its sharers)";
        ServerAccount {
            pid: self.pid,
            cgroup: (!self.places.is_empty()).then(|| self.places.describe()),
            cpu_secs: cpu,
            context_switches: Figure::sampled(t.counts.switches() as f64, &sampled_note),
            threads_peak: Figure::sampled(t.threads_peak as f64, &sampled_note),
            processes_peak: Figure::sampled(t.processes_peak as f64, &sampled_note),
            tasks_seen: t.tasks_seen,
            tasks_exited: t.tasks_exited,
            processes_seen: t.processes_seen,
            memory_bytes: Figure::cgroup(end.memory_bytes, 1.0, group(&self.places.memory))
                .unwrap_or_else(|| Figure::not_measured(no_group)),
            sock_bytes: Figure::cgroup(end.sock_bytes, 1.0, group(&self.places.memory))
                .unwrap_or_else(|| Figure::not_measured(no_group)),
            pss_bytes: match memory.and_then(|m| m.pss_bytes) {
                Some(b) => Figure::sampled(b as f64, pss_note),
                None => Figure::not_measured(
                    "no PSS for the whole tree (a kernel before 4.14, or a process not readable)",
                ),
            },
            rss_bytes: match memory {
                Some(m) => Figure::sampled(m.rss_bytes as f64, "summed over the process tree"),
                None => Figure::not_measured("the tree's memory was not read"),
            },
            samples: t.samples,
            sample_interval_ms: interval,
            sampler_cpu_secs: sampler_cpu.as_secs_f64(),
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop_sampler();
    }
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// The sampler thread: sample, then wait `COST_FACTOR` times what the sample cost
/// (at least `FASTEST`), until stopped; returns its own CPU time.
fn sampler(shared: &Mutex<Shared>, stop: &Stop) -> Duration {
    let mut interval = FASTEST;
    loop {
        {
            let stopped = stop.stopped.lock().unwrap_or_else(|e| e.into_inner());
            let (stopped, _) = stop
                .wake
                .wait_timeout_while(stopped, interval, |s| !*s)
                .unwrap_or_else(|e| e.into_inner());
            if *stopped {
                return thread_cpu();
            }
        }
        // Its cost is the CPU it took, not the wall time (the load's threads share the
        // core and may preempt it).
        let began = thread_cpu();
        lock(shared).tasks.sample();
        let cost = thread_cpu().saturating_sub(began);
        interval = (cost * COST_FACTOR).max(FASTEST);
    }
}

/// Tests that watch this test process's own tree take this lock: a watch of the
/// whole process sees every other test's children and threads, and holds
/// descriptors into them.
#[cfg(test)]
pub(crate) fn watching_self() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn spin_thread_cpu(until: Duration) {
        while thread_cpu() < until {
            std::hint::black_box(0u64);
        }
    }

    /// A thread that spun 30 ms of its own CPU and then exited keeps its 30 ms in
    /// the account: the sampler saw it alive once, and remembers it.
    #[test]
    fn an_exited_thread_keeps_its_cpu() {
        let _serial = watching_self();
        let mut tasks = tasks::Tasks::start(std::process::id()).unwrap();
        let (spun_tx, spun_rx) = std::sync::mpsc::channel();
        let (exit_tx, exit_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            spin_thread_cpu(Duration::from_millis(30));
            spun_tx.send(()).unwrap();
            let _ = exit_rx.recv();
        });
        spun_rx.recv().unwrap();
        tasks.sample();
        let alive = tasks.totals();
        exit_tx.send(()).unwrap();
        t.join().unwrap();
        tasks.sample();
        let after = tasks.totals();
        assert!(alive.counts.cpu_ns >= 30_000_000, "{alive:?}");
        assert!(
            after.counts.cpu_ns >= alive.counts.cpu_ns,
            "{alive:?} then {after:?}"
        );
        assert!(after.tasks_exited >= 1, "{after:?}");
        assert!(after.tasks_seen >= 2, "{after:?}");
    }

    /// A child that ran and exited without being reaped (a zombie) is read whole,
    /// even when the sampler first sees it dead.
    #[test]
    fn a_zombie_child_is_read_with_its_cpu() {
        // sh spins in a child it never waits for, then sleeps (exec keeps the pid).
        let mut root = Command::new("sh")
            .args([
                "-c",
                "(i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done) & exec sleep 30",
            ])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let pid = root.id();
        let mut tasks = tasks::Tasks::start(pid).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            tasks.sample();
            let zombie = proctree::descendants(pid).into_iter().any(|k| {
                std::fs::read_to_string(format!("/proc/{k}/stat"))
                    .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
            });
            if zombie {
                break;
            }
            assert!(Instant::now() < deadline, "no zombie appeared");
            std::thread::sleep(Duration::from_millis(5));
        }
        tasks.sample();
        let t = tasks.totals();
        // The child's loop costs milliseconds of CPU; a zombie still reads them.
        assert!(t.counts.cpu_ns > 1_000_000, "{t:?}");
        assert!(t.processes_seen >= 2, "{t:?}");
        assert_eq!(t.processes_now, 1, "a zombie is not a live process: {t:?}");
        root.kill().unwrap();
        root.wait().unwrap();
    }

    /// A tree larger than the sampler's descriptor budget is read whole, by name past
    /// the budget, and the sampler never holds more than the budget open: it runs in
    /// a client whose descriptors are its connections. (The descriptors counted are
    /// those that point into the tree, so other tests' files do not count.)
    #[test]
    fn a_large_tree_is_read_within_the_descriptor_budget() {
        let _serial = watching_self();
        let extra = 300;
        let mut root = Command::new("sh")
            .args([
                "-c",
                &format!("for i in $(seq {extra}); do sleep 30 & done; wait"),
            ])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let pid = root.id();
        let deadline = Instant::now() + Duration::from_secs(30);
        while proctree::descendants(pid).len() < extra {
            assert!(Instant::now() < deadline, "the tree never grew");
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut tasks = tasks::Tasks::start(pid).unwrap();
        tasks.sample();
        let t = tasks.totals();
        assert!(t.tasks_seen > extra as u64, "{t:?}");
        assert!(t.processes_now > extra as u64, "{t:?}");
        let mut tree: Vec<u32> = proctree::descendants(pid);
        tree.push(pid);
        let into_tree = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .filter(|link| {
                let mut parts = link.iter().skip(2);
                link.starts_with("/proc")
                    && parts
                        .next()
                        .and_then(|p| p.to_str()?.parse::<u32>().ok())
                        .is_some_and(|p| tree.contains(&p))
            })
            .count();
        assert!(into_tree <= 256, "{into_tree} descriptors into the tree");
        assert!(into_tree > 0, "the first tasks are kept open");
        for kid in proctree::descendants(pid) {
            // SAFETY: our own child's children.
            unsafe { libc::kill(kid as libc::pid_t, libc::SIGKILL) };
        }
        root.wait().unwrap();
        tasks.sample();
        assert!(
            tasks.totals().tasks_exited > extra as u64,
            "{:?}",
            tasks.totals()
        );
    }

    #[test]
    fn sched_and_status_are_parsed() {
        let sched = "cat (5552, #threads: 1)\n---\nse.exec_start : 432266.123551\nse.sum_exec_runtime                          :             12.607158\nnr_switches : 3\nnr_voluntary_switches                        :                    2\nnr_involuntary_switches                      :                    1\n";
        assert_eq!(
            tasks::parse_sched(sched),
            Some(tasks::Counts {
                cpu_ns: 12_607_158,
                voluntary: 2,
                involuntary: 1
            })
        );
        assert_eq!(tasks::parse_sched("se.sum_exec_runtime : 5\n"), None);
        let status = "Name:\tx\nvoluntary_ctxt_switches:\t7\nnonvoluntary_ctxt_switches:\t4\n";
        assert_eq!(tasks::parse_status_switches(status), Some((7, 4)));
    }

    /// The account of this test process: figures present, each saying how.
    #[test]
    fn a_watch_gives_every_figure_with_how() {
        let _serial = watching_self();
        let mut w = Watch::start(std::process::id()).unwrap();
        w.read_memory();
        spin_thread_cpu(thread_cpu() + Duration::from_millis(20));
        let a = w.finish();
        assert!(a.cpu_secs.value.is_some_and(|c| c >= 0.02), "{a:?}");
        assert!(a.threads_peak.value.is_some_and(|t| t >= 1.0), "{a:?}");
        assert!(a.samples >= 2, "{a:?}");
        // The test runner shares its groups with the rest of the machine: no group of
        // its own, so the group's figures are not measured (and not 0).
        if a.cgroup.is_none() {
            assert_eq!(a.memory_bytes.measured, How::NotMeasured);
            assert_eq!(a.memory_bytes.value, None);
            assert_eq!(a.cpu_secs.measured, How::Sampled);
        }
        assert!(Watch::start(u32::MAX - 1).is_none());
    }
}
