//! Small facts from the operating system: CPU time, /proc readings, CPU pinning and
//! descriptor limits. Everything that measures a process goes through here.

use std::time::Duration;

/// User and system CPU time.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuTime {
    pub user: Duration,
    pub system: Duration,
}

impl CpuTime {
    pub fn total(&self) -> Duration {
        self.user + self.system
    }

    /// `self - earlier`, saturating at zero.
    pub fn since(&self, earlier: &CpuTime) -> CpuTime {
        CpuTime {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }
}

fn rusage(who: libc::c_int) -> CpuTime {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a full rusage into the pointer we give it.
    let usage = unsafe {
        libc::getrusage(who, usage.as_mut_ptr());
        usage.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    CpuTime {
        user: tv(usage.ru_utime),
        system: tv(usage.ru_stime),
    }
}

/// CPU time of this process (all its threads) plus its waited-for children.
pub fn cpu_self_and_children() -> CpuTime {
    let own = rusage(libc::RUSAGE_SELF);
    let kids = rusage(libc::RUSAGE_CHILDREN);
    CpuTime {
        user: own.user + kids.user,
        system: own.system + kids.system,
    }
}

/// A process as /proc shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcStat {
    pub cpu: CpuTime,
    /// Resident set size in bytes.
    pub rss_bytes: u64,
    pub threads: u64,
    /// Voluntary plus involuntary context switches, summed over every thread.
    pub context_switches: u64,
    /// CPU time of children this process has already waited for (cutime, cstime).
    pub reaped_children_cpu: CpuTime,
}

/// Read /proc/PID/stat and /proc/PID/status. `None` if the process is gone.
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    let field = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<u64>().ok());
    let ticks = clock_ticks();
    let to_dur = |t: u64| Duration::from_secs_f64(t as f64 / ticks as f64);
    let page = page_size();
    Some(ProcStat {
        cpu: CpuTime {
            user: to_dur(field(14)?),
            system: to_dur(field(15)?),
        },
        rss_bytes: field(24)? * page,
        threads: field(20)?,
        context_switches: context_switches(pid),
        reaped_children_cpu: CpuTime {
            user: to_dur(field(16)?),
            system: to_dur(field(17)?),
        },
    })
}

/// Context switches of every thread of `pid` (/proc/PID/status counts only the leader).
fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    let mut total = 0;
    for task in tasks.flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        for line in status.lines() {
            if let Some(v) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    total
}

/// A server and its live child processes (prefork workers, per-client children) as one.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TreeStat {
    /// CPU of the process, its live children, and the children it has reaped.
    pub cpu: CpuTime,
    /// RSS summed over the process and its children (shared pages count once per process).
    pub rss_bytes: u64,
    pub threads: u64,
    pub context_switches: u64,
    pub children: u64,
}

/// Read `pid` and its live children. `None` if `pid` is gone.
pub fn tree_stat(pid: u32) -> Option<TreeStat> {
    let top = proc_stat(pid)?;
    let mut t = TreeStat {
        cpu: CpuTime {
            user: top.cpu.user + top.reaped_children_cpu.user,
            system: top.cpu.system + top.reaped_children_cpu.system,
        },
        rss_bytes: top.rss_bytes,
        threads: top.threads,
        context_switches: top.context_switches,
        children: 0,
    };
    for kid in children(pid) {
        if let Some(k) = proc_stat(kid) {
            t.cpu.user += k.cpu.user + k.reaped_children_cpu.user;
            t.cpu.system += k.cpu.system + k.reaped_children_cpu.system;
            t.rss_bytes += k.rss_bytes;
            t.threads += k.threads;
            t.context_switches += k.context_switches;
            t.children += 1;
        }
    }
    Some(t)
}

/// Child processes of `pid` (from /proc/PID/task/*/children).
pub fn children(pid: u32) -> Vec<u32> {
    let mut kids = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
                kids.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<u32>().ok()),
                );
            }
        }
    }
    kids
}

/// Open descriptors of `pid` (entries of /proc/PID/fd).
pub fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as u64 } else { 4096 }
}

/// How many threads this process can start before the kernel runs out of room for
/// them, with headroom for everything else. Each thread costs about four memory
/// mappings (its stack, its guard page, the signal stack Rust installs and that
/// stack's guard), and `vm.max_map_count` (65530 by default) caps mappings per
/// process; past it a new thread cannot even set up its signal stack and the whole
/// process aborts. `kernel.threads-max` and `kernel.pid_max` cap threads system-wide.
pub fn thread_ceiling() -> usize {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
    };
    let maps = read("/proc/sys/vm/max_map_count").map_or(usize::MAX, |m| m / 5);
    let threads = read("/proc/sys/kernel/threads-max").map_or(usize::MAX, |t| t / 2);
    let pids = read("/proc/sys/kernel/pid_max").map_or(usize::MAX, |p| p / 2);
    maps.min(threads).min(pids).max(64)
}

/// Number of CPUs this process may run on.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Pin process (or thread) `pid` to one CPU; 0 means the calling thread.
pub fn pin_to_core(pid: u32, core: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity get valid pointers.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        if libc::sched_setaffinity(
            pid as libc::pid_t,
            std::mem::size_of::<libc::cpu_set_t>(),
            &set,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Raise this process's descriptor limit as far as it goes; returns the new soft limit.
///
/// The soft limit goes up to the hard limit. If the process may raise the hard limit
/// too (root, or CAP_SYS_RESOURCE), both go up to the kernel's `fs.nr_open`: this
/// machine's default hard limit (20000) would otherwise cap every test of the talk's
/// "tens of thousands of connections" below 20k.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit get a valid rlimit pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<libc::rlim_t>().ok())
            .unwrap_or(0);
        if nr_open > lim.rlim_max {
            let wider = libc::rlimit {
                rlim_cur: nr_open,
                rlim_max: nr_open,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wider) == 0 {
                return Ok(nr_open);
            }
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(lim.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_proc_stat() {
        let me = proc_stat(std::process::id()).expect("own /proc entry");
        assert!(me.rss_bytes > 0);
        assert!(me.threads >= 1);
        assert!(open_fds(std::process::id()).unwrap() >= 3);
        let tree = tree_stat(std::process::id()).unwrap();
        assert!(tree.rss_bytes >= me.rss_bytes);
        assert!(tree.context_switches > 0);
    }

    #[test]
    fn fd_limit_only_goes_up() {
        let before = unsafe {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
            lim.rlim_cur
        };
        assert!(raise_fd_limit().unwrap() >= before);
    }

    #[test]
    fn thread_ceiling_is_below_the_mapping_limit() {
        let ceiling = thread_ceiling();
        let maps: usize = std::fs::read_to_string("/proc/sys/vm/max_map_count")
            .map_or(usize::MAX, |s| s.trim().parse().unwrap());
        assert!(
            ceiling >= 64 && ceiling.saturating_mul(4) < maps,
            "{ceiling}"
        );
    }

    #[test]
    fn missing_process_is_none() {
        assert!(proc_stat(u32::MAX - 1).is_none());
    }

    /// This thread's CPU time (CLOCK_THREAD_CPUTIME_ID), a clock independent of
    /// getrusage.
    fn thread_cpu() -> Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec into the pointer we give it.
        assert_eq!(
            unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) },
            0
        );
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }

    /// Work this thread does shows in the process's CPU time: it grows, and by no
    /// less than this thread's own clock says it burnt (give or take getrusage's
    /// truncation to whole microseconds, once for user and once for system time).
    #[test]
    fn cpu_time_counts_this_process_work() {
        let before = cpu_self_and_children();
        let start = thread_cpu();
        // Burn until this thread has run a millisecond, however fast the machine;
        // the count only guards against a clock that never moves.
        let mut x = 0u64;
        for round in 0.. {
            assert!(round < 1_000_000, "the thread CPU clock does not move");
            for i in 0..10_000u64 {
                x = std::hint::black_box(x.wrapping_add(i));
            }
            if thread_cpu() >= start + Duration::from_millis(1) {
                break;
            }
        }
        let burnt = thread_cpu() - start;
        let grew = cpu_self_and_children()
            .total()
            .saturating_sub(before.total());
        assert!(grew > Duration::ZERO, "process CPU did not grow ({x})");
        assert!(
            grew + Duration::from_micros(2) >= burnt,
            "process CPU grew {grew:?}, less than this thread burnt ({burnt:?})"
        );
    }

    /// A child's CPU time joins ours once it is reaped, by no less than the child
    /// itself used (as wait4 reports it).
    #[test]
    fn cpu_time_counts_reaped_children() {
        let own_before = rusage(libc::RUSAGE_SELF);
        let before = rusage(libc::RUSAGE_CHILDREN);
        // Reaped below with wait4, which also reports what the child used.
        let pid = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done"])
            .spawn()
            .expect("spawn sh")
            .id() as libc::pid_t;
        let mut status = 0;
        let mut used = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: wait4 on our own child, writing a full rusage into `used`.
        let (reaped, used) = unsafe {
            let reaped = libc::wait4(pid, &mut status, 0, used.as_mut_ptr());
            (reaped, used.assume_init())
        };
        assert_eq!(reaped, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
        let child_cpu = tv(used.ru_utime) + tv(used.ru_stime);
        assert!(child_cpu > Duration::ZERO, "the child burnt no CPU");
        // Other tests' children may be reaped meanwhile: they only add.
        let grew = rusage(libc::RUSAGE_CHILDREN).since(&before).total();
        assert!(
            grew >= child_cpu,
            "children's CPU grew {grew:?}, child used {child_cpu:?}"
        );
        let total = cpu_self_and_children().total();
        assert!(total >= own_before.total() + before.total() + child_cpu);
    }
}
