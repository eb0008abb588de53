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

/// One process as /proc shows it now. (What a server and everything it ran *spent*
/// over a run is `crate::account`'s, which remembers the threads and children that
/// exit; this is one process at one moment.)
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcStat {
    /// The process's own CPU, its live and exited threads (10 ms ticks).
    pub cpu: CpuTime,
    /// Resident set size in bytes.
    pub rss_bytes: u64,
    pub threads: u64,
}

/// Read /proc/PID/stat. `None` if the process is gone.
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    let field = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<u64>().ok());
    let ticks = clock_ticks();
    let to_dur = |t: u64| Duration::from_secs_f64(t as f64 / ticks as f64);
    Some(ProcStat {
        cpu: CpuTime {
            user: to_dur(field(14)?),
            system: to_dur(field(15)?),
        },
        rss_bytes: field(24)? * page_size(),
        threads: field(20)?,
    })
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

/// Descriptors a process keeps for everything but its connections: standard
/// streams, listeners, epoll, the shutdown pipe, an eventfd, an offload pool, a spread
/// hold's pipes and netlink socket. A server, a hold and the lab's ladder all count
/// `limit - SPARE_FDS` connections per process.
pub const SPARE_FDS: u64 = 64;

/// The processes needed to hold `conns` connections when each process may open `limit`
/// descriptors ([`SPARE_FDS`] of them kept for other things), rounded up.
pub fn processes_for(conns: u64, limit: u64) -> u64 {
    conns.div_ceil(limit.saturating_sub(SPARE_FDS).max(1))
}

/// Raise this process's descriptor limit as far as it goes; returns the new soft limit.
///
/// The soft limit goes up to the hard limit. If the process may raise the hard limit
/// too (root, or CAP_SYS_RESOURCE), both go up to the kernel's `fs.nr_open`: this
/// machine's default hard limit (20000) would otherwise cap every test of the talk's
/// "tens of thousands of connections" below 20k.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    let mut lim = fd_limits()?;
    // SAFETY: setrlimit gets a valid rlimit pointer.
    unsafe {
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

/// This process's descriptor limit (the soft RLIMIT_NOFILE) as it stands.
pub fn fd_limit() -> std::io::Result<u64> {
    fd_limits().map(|lim| lim.rlim_cur)
}

fn fd_limits() -> std::io::Result<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit gets a valid rlimit pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(lim)
}

/// The kernel's memory as the whole machine sees it: what sockets cost lives here,
/// not in any process's RSS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelMemory {
    /// /proc/meminfo `Slab`: every slab cache (socket structures, files, dentries,
    /// epoll items; also caches that have nothing to do with sockets).
    pub slab_bytes: u64,
    /// /proc/meminfo `SUnreclaim`: the part of the slab that cannot be reclaimed
    /// under pressure (TCP sockets, open files, epoll items are here).
    pub sunreclaim_bytes: u64,
    /// /proc/meminfo `MemAvailable`.
    pub mem_available_bytes: u64,
    /// /proc/net/sockstat `TCP: mem`: pages charged to TCP socket buffers, in bytes.
    pub tcp_mem_bytes: u64,
    /// /proc/net/sockstat `TCP: inuse`: TCP sockets in use (this network namespace).
    pub tcp_inuse: u64,
}

/// `key` followed by a number in a whitespace-separated line.
fn field_after(line: &str, key: &str) -> Option<u64> {
    let mut words = line.split_whitespace();
    words.by_ref().find(|w| *w == key)?;
    words.next()?.parse().ok()
}

impl KernelMemory {
    /// Read /proc/meminfo and /proc/net/sockstat. `None` if either is unreadable.
    pub fn read() -> Option<KernelMemory> {
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let kb = |key: &str| {
            meminfo
                .lines()
                .find_map(|l| field_after(l, key))
                .map(|v| v * 1024)
        };
        let sockstat = std::fs::read_to_string("/proc/net/sockstat").ok()?;
        let tcp = sockstat.lines().find(|l| l.starts_with("TCP:"))?;
        Some(KernelMemory {
            slab_bytes: kb("Slab:")?,
            sunreclaim_bytes: kb("SUnreclaim:")?,
            mem_available_bytes: kb("MemAvailable:")?,
            tcp_mem_bytes: field_after(tcp, "mem")? * page_size(),
            tcp_inuse: field_after(tcp, "inuse")?,
        })
    }

    /// The larger of each figure (a peak over samples); `mem_available` keeps `self`'s.
    pub fn max(self, other: KernelMemory) -> KernelMemory {
        KernelMemory {
            slab_bytes: self.slab_bytes.max(other.slab_bytes),
            sunreclaim_bytes: self.sunreclaim_bytes.max(other.sunreclaim_bytes),
            mem_available_bytes: self.mem_available_bytes,
            tcp_mem_bytes: self.tcp_mem_bytes.max(other.tcp_mem_bytes),
            tcp_inuse: self.tcp_inuse.max(other.tcp_inuse),
        }
    }
}

/// The kernel's count of connections a listener dropped because its accept queue was
/// full (`TcpExt: ListenOverflows` in /proc/net/netstat, this network namespace):
/// each one is a SYN the client must send again a second or more later.
pub fn listen_overflows() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next()?, lines.next()?);
    let i = names
        .split_whitespace()
        .position(|w| w == "ListenOverflows")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// The accept queues of the TCP listeners a connection to one address could reach
/// (on its port, bound to its IP or to the wildcard), read from the kernel
/// with sock_diag (netlink, the interface `ss -lnt` uses): for a listener, the
/// kernel reports the connections waiting for accept() (`idiag_rqueue`) and the
/// queue's length (`idiag_wqueue`, the backlog given to listen()).
///
/// `concur hold` reads them to open connections no faster than the server accepts
/// them: a full queue makes the kernel drop SYNs, and each dropped SYN costs its
/// client a retransmission a second or more later. Only the listeners of this
/// network namespace are visible, so a remote server shows none.
pub struct AcceptQueues {
    fd: std::os::fd::OwnedFd,
    target: std::net::SocketAddr,
}

/// `struct inet_diag_sockid` (linux/inet_diag.h).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagSockId {
    sport: u16,
    dport: u16,
    src: [u32; 4],
    dst: [u32; 4],
    interface: u32,
    cookie: [u32; 2],
}

/// `struct inet_diag_req_v2`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagReqV2 {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: InetDiagSockId,
}

/// `struct inet_diag_msg`, the reply's payload.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagMsg {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: InetDiagSockId,
    expires: u32,
    rqueue: u32,
    wqueue: u32,
    uid: u32,
    inode: u32,
}

#[repr(C)]
struct DiagRequest {
    header: libc::nlmsghdr,
    body: InetDiagReqV2,
}

/// `SOCK_DIAG_BY_FAMILY` (linux/sock_diag.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const TCP_LISTEN: u32 = 10;

impl AcceptQueues {
    /// A netlink socket to ask about the listeners `target` could reach.
    pub fn new(target: std::net::SocketAddr) -> std::io::Result<AcceptQueues> {
        use std::os::fd::FromRawFd;
        // SAFETY: socket() has no memory preconditions; the descriptor is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd was just opened and is owned by nothing else.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        Ok(AcceptQueues { fd, target })
    }

    /// (waiting, queue length) of every TCP listener (IPv4 and IPv6) on the target's
    /// port bound to its address or to the wildcard.
    pub fn read(&self) -> std::io::Result<Vec<(u32, u32)>> {
        let mut found = Vec::new();
        for family in [libc::AF_INET, libc::AF_INET6] {
            self.dump(family as u8, &mut found)?;
        }
        Ok(found)
    }

    /// The fewest free places in any of the port's accept queues (a new connection may
    /// land in any of them); `None` if no listener on the port is visible.
    pub fn room(&self) -> Option<u32> {
        let queues = self.read().ok()?;
        queues
            .iter()
            .map(|&(waiting, len)| len.saturating_sub(waiting))
            .min()
    }

    /// Whether a listener bound to `src` (as sock_diag gives it, network byte order)
    /// takes connections to the target's address.
    fn reaches(&self, family: u8, src: &[u32; 4]) -> bool {
        use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
        let mut bytes = [0u8; 16];
        for (chunk, word) in bytes.chunks_mut(4).zip(src) {
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        let bound = if i32::from(family) == libc::AF_INET {
            IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
        } else {
            let v6 = Ipv6Addr::from(bytes);
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        };
        bound.is_unspecified() || bound == self.target.ip().to_canonical()
    }

    fn dump(&self, family: u8, found: &mut Vec<(u32, u32)>) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let request = DiagRequest {
            header: libc::nlmsghdr {
                nlmsg_len: std::mem::size_of::<DiagRequest>() as u32,
                nlmsg_type: SOCK_DIAG_BY_FAMILY,
                nlmsg_flags: (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
                nlmsg_seq: 1,
                nlmsg_pid: 0,
            },
            body: InetDiagReqV2 {
                family,
                protocol: libc::IPPROTO_TCP as u8,
                states: 1 << TCP_LISTEN,
                ..InetDiagReqV2::default()
            },
        };
        let fd = self.fd.as_raw_fd();
        // SAFETY: sending a fully initialised repr(C) struct of the stated size.
        let sent = unsafe {
            libc::send(
                fd,
                (&request as *const DiagRequest).cast(),
                std::mem::size_of::<DiagRequest>(),
                0,
            )
        };
        if sent < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 32 * 1024];
        let header = std::mem::size_of::<libc::nlmsghdr>();
        loop {
            // SAFETY: recv writes at most buf.len() bytes into buf.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let mut at = 0usize;
            let n = n as usize;
            while at + header <= n {
                // SAFETY: at + header <= n bytes were received; read_unaligned copies.
                let h: libc::nlmsghdr =
                    unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
                let len = h.nlmsg_len as usize;
                if len < header || at + len > n {
                    return Err(std::io::Error::other("sock_diag: a truncated reply"));
                }
                match h.nlmsg_type as libc::c_int {
                    libc::NLMSG_DONE => return Ok(()),
                    libc::NLMSG_ERROR => {
                        // The error code follows the header (negative errno).
                        let code: i32 = if len >= header + 4 {
                            // SAFETY: 4 bytes inside the message.
                            unsafe { std::ptr::read_unaligned(buf[at + header..].as_ptr().cast()) }
                        } else {
                            0
                        };
                        if code == 0 {
                            return Ok(());
                        }
                        return Err(std::io::Error::from_raw_os_error(-code));
                    }
                    _ if len >= header + std::mem::size_of::<InetDiagMsg>() => {
                        // SAFETY: the message holds a whole inet_diag_msg.
                        let m: InetDiagMsg =
                            unsafe { std::ptr::read_unaligned(buf[at + header..].as_ptr().cast()) };
                        if u16::from_be(m.id.sport) == self.target.port()
                            && u32::from(m.state) == TCP_LISTEN
                            && self.reaches(family, &m.id.src)
                        {
                            found.push((m.rqueue, m.wqueue));
                        }
                    }
                    _ => {}
                }
                at += len.next_multiple_of(4);
            }
        }
    }
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
    }

    #[test]
    fn kernel_memory_is_read() {
        let k = KernelMemory::read().expect("/proc/meminfo and /proc/net/sockstat");
        assert!(
            k.slab_bytes >= k.sunreclaim_bytes && k.sunreclaim_bytes > 0,
            "{k:?}"
        );
        assert!(k.mem_available_bytes > 0);
        assert!(listen_overflows().is_some());
    }

    /// sock_diag sees a listener's accept queue fill as clients connect that nobody
    /// accepts, and its length as given to listen().
    #[test]
    fn accept_queue_is_read_from_the_kernel() {
        let listener = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        listener.bind(&any.into()).unwrap();
        listener.listen(7).unwrap();
        let addr = listener.local_addr().unwrap().as_socket().unwrap();
        let queues = AcceptQueues::new(addr).expect("netlink");
        assert_eq!(queues.read().unwrap(), vec![(0, 7)]);
        // Another address on the same port reaches another listener, not this one.
        let elsewhere = std::net::SocketAddr::new([127, 0, 0, 2].into(), addr.port());
        assert_eq!(AcceptQueues::new(elsewhere).unwrap().room(), None);
        let clients: Vec<_> = (0..3)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        // The handshake ends in the kernel; wait (bounded) for it to queue all three.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while queues.read().unwrap() != vec![(3, 7)] && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(queues.read().unwrap(), vec![(3, 7)]);
        assert_eq!(queues.room(), Some(4));
        drop(clients);
        drop(listener);
        assert_eq!(queues.room(), None, "no listener left on the port");
    }

    #[test]
    fn processes_for_rounds_up() {
        assert_eq!(processes_for(100_000, 20_000), 6);
        assert_eq!(processes_for(19_936, 20_000), 1);
        assert_eq!(processes_for(19_937, 20_000), 2);
        assert_eq!(processes_for(10, 10), 10, "a limit below the margin");
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
