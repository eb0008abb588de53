//! Control groups: the kernel's own account of a group of tasks, the way systemd,
//! Kubernetes (cAdvisor) and `docker stats` account a service.
//!
//! A cgroup charges every task it ever held: a thread or a child that exits leaves
//! its CPU time in the group's counter, whether or not anyone reaps it. So where the
//! machine allows, the lab runs each server in a group of its own ([`Group`]), created
//! under the lab's own group in each hierarchy (the server stays inside the lab's
//! limits), joined by the server's first process before it runs, removed at the end.
//!
//! Two layouts exist. cgroup v1 mounts one hierarchy per controller
//! (`/sys/fs/cgroup/cpuacct`, `.../memory`, `.../pids`), each with its own files:
//! `cpuacct.usage` (ns), `memory.usage_in_bytes`, `memory.max_usage_in_bytes`,
//! `memory.kmem.tcp.usage_in_bytes` (the group's TCP socket memory, counted only once
//! a TCP limit has been written), `pids.current`, `pids.peak`. cgroup v2 has one tree
//! and one directory per group: `cpu.stat` (`usage_usec`, always there),
//! `memory.current`, `memory.peak`, `memory.stat` (`sock`), `pids.current`,
//! `pids.peak`, the last ones only where the parent enables the controller. A machine
//! may have both ("hybrid"): each controller is read where it is mounted.
//!
//! A server the user started is never moved: its group is read only if it holds that
//! server's process tree and nothing else ([`Places::of_tree`]), as a systemd service's
//! or a container's does.

use std::collections::HashSet;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

/// The layout a directory belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// One controller's directory for a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub version: Version,
    pub dir: PathBuf,
}

/// Where a group's CPU, memory and task counts are, controller by controller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Places {
    pub cpu: Option<Place>,
    pub memory: Option<Place>,
    pub pids: Option<Place>,
}

/// A cgroup file system as `/proc/self/mountinfo` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub version: Version,
    /// v1: the controllers it carries (`cpu`, `cpuacct`...); v2: empty.
    pub controllers: Vec<String>,
    /// The hierarchy's path mounted there (`/` unless a container mounted a subtree).
    pub root: String,
    pub point: PathBuf,
}

/// The cgroup mounts in a `mountinfo` text.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    let mut mounts = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split_whitespace().collect();
        let right: Vec<&str> = right.split_whitespace().collect();
        let (Some(root), Some(point), Some(fstype)) = (left.get(3), left.get(4), right.first())
        else {
            continue;
        };
        let version = match *fstype {
            "cgroup" => Version::V1,
            "cgroup2" => Version::V2,
            _ => continue,
        };
        let controllers = match version {
            Version::V1 => right
                .get(2)
                .map(|o| {
                    o.split(',')
                        .filter(|c| !c.contains('=') && *c != "rw" && *c != "ro")
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default(),
            Version::V2 => Vec::new(),
        };
        mounts.push(Mount {
            version,
            controllers,
            root: root.to_string(),
            point: PathBuf::from(unescape(point)),
        });
    }
    mounts
}

/// mountinfo escapes spaces and the like as `\040`.
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            if let Ok(b) = u8::from_str_radix(&code, 8) {
                out.push(b as char);
                continue;
            }
            out.push(c);
            out.push_str(&code);
        } else {
            out.push(c);
        }
    }
    out
}

/// One line of `/proc/PID/cgroup`: the hierarchy's controllers (empty for v2) and
/// the group's path in it.
pub fn parse_proc_cgroup(text: &str) -> Vec<(Vec<String>, String)> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            let controllers = controllers
                .split(',')
                .filter(|c| !c.is_empty() && !c.starts_with("name="))
                .map(String::from)
                .collect();
            Some((controllers, path.to_string()))
        })
        .collect()
}

/// The v1 controller that holds each figure.
const V1_CPU: &str = "cpuacct";
const V1_MEMORY: &str = "memory";
const V1_PIDS: &str = "pids";

impl Places {
    /// Where the groups of `pid` are, from `mountinfo` and its `/proc/PID/cgroup`.
    pub fn of_pid_in(mounts: &[Mount], proc_cgroup: &str) -> Places {
        let lines = parse_proc_cgroup(proc_cgroup);
        let dir_of = |m: &Mount, path: &str| {
            let rel = path.strip_prefix(m.root.as_str()).unwrap_or(path);
            m.point.join(rel.trim_start_matches('/'))
        };
        let v1 = |controller: &str| {
            let m = mounts.iter().find(|m| {
                m.version == Version::V1 && m.controllers.iter().any(|c| c == controller)
            })?;
            let (_, path) = lines
                .iter()
                .find(|(cs, _)| cs.iter().any(|c| c == controller))?;
            Some(Place {
                version: Version::V1,
                dir: dir_of(m, path),
            })
        };
        let v2 = |file: &str| {
            let m = mounts.iter().find(|m| m.version == Version::V2)?;
            let (_, path) = lines.iter().find(|(cs, _)| cs.is_empty())?;
            let dir = dir_of(m, path);
            dir.join(file).exists().then_some(Place {
                version: Version::V2,
                dir,
            })
        };
        Places {
            cpu: v1(V1_CPU).or_else(|| v2("cpu.stat")),
            memory: v1(V1_MEMORY).or_else(|| v2("memory.current")),
            pids: v1(V1_PIDS).or_else(|| v2("pids.current")),
        }
    }

    /// The groups `pid` is in on this machine.
    pub fn of_pid(pid: u32) -> Places {
        let mounts =
            parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default());
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        Places::of_pid_in(&mounts, &text)
    }

    /// The groups of `pid` that hold its process tree (`pid` and every process below
    /// it) and nothing else; a group shared with anything else (the root group, a
    /// login session) is left out. A zombie in the tree is in no group (the kernel
    /// takes a task out of its group when it exits), so only the tree's live
    /// processes must be inside. The tree is listed after the group is read, so a
    /// child forked meanwhile is in both; a few tries cover a child reaped meanwhile.
    pub fn of_tree(pid: u32) -> Places {
        let all = Places::of_pid(pid);
        let own = |p: Option<Place>| {
            p.filter(|p| {
                (0..5).any(|_| {
                    let procs = procs_in(&p.dir);
                    let mut tree: HashSet<u32> =
                        crate::proctree::descendants(pid).into_iter().collect();
                    tree.insert(pid);
                    procs.contains(&pid)
                        && procs.is_subset(&tree)
                        && tree.iter().all(|t| procs.contains(t) || exited(*t))
                })
            })
        };
        Places {
            cpu: own(all.cpu),
            memory: own(all.memory),
            pids: own(all.pids),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.cpu.is_none() && self.memory.is_none() && self.pids.is_none()
    }

    /// The group's directories, each once (v2 has one for all controllers).
    pub fn dirs(&self) -> Vec<&Path> {
        let mut dirs: Vec<&Path> = Vec::new();
        for p in [&self.cpu, &self.memory, &self.pids].into_iter().flatten() {
            if !dirs.contains(&p.dir.as_path()) {
                dirs.push(&p.dir);
            }
        }
        dirs
    }

    /// In words: "cgroup v1 cpuacct:/concur-lab-1-2, memory:/..." for the report.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (what, p) in [
            ("cpu", &self.cpu),
            ("memory", &self.memory),
            ("pids", &self.pids),
        ] {
            if let Some(p) = p {
                let v = match p.version {
                    Version::V1 => "v1",
                    Version::V2 => "v2",
                };
                parts.push(format!("{what}: {v} {}", p.dir.display()));
            }
        }
        parts.join("; ")
    }
}

/// Whether `pid` has exited: gone, or a zombie waiting to be reaped.
fn exited(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.get(s.rfind(')')? + 2..)?.chars().next())
        .is_none_or(|state| matches!(state, 'Z' | 'X'))
}

/// Every process in a group (its `cgroup.procs`).
pub fn procs_in(dir: &Path) -> HashSet<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn read_u64(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.trim().parse().ok()
}

/// The value of `key` in a flat keyed file (`cpu.stat`, `memory.stat`).
pub fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// One reading of a group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reading {
    /// CPU of every task the group ever held, nanoseconds.
    pub cpu_ns: Option<u64>,
    pub memory_bytes: Option<u64>,
    /// The most the group's memory has been since it was created (or last reset).
    pub memory_peak_bytes: Option<u64>,
    /// The group's own TCP socket memory (v1: only once TCP accounting is on, which
    /// shows as a non-zero figure; v2: `memory.stat` `sock`).
    pub sock_bytes: Option<u64>,
    pub pids: Option<u64>,
    pub pids_peak: Option<u64>,
}

impl Reading {
    pub fn of(places: &Places) -> Reading {
        let mut r = Reading::default();
        if let Some(p) = &places.cpu {
            r.cpu_ns = match p.version {
                Version::V1 => read_u64(&p.dir.join("cpuacct.usage")),
                Version::V2 => std::fs::read_to_string(p.dir.join("cpu.stat"))
                    .ok()
                    .and_then(|t| keyed(&t, "usage_usec"))
                    .map(|us| us * 1000),
            };
        }
        if let Some(p) = &places.memory {
            match p.version {
                Version::V1 => {
                    r.memory_bytes = read_u64(&p.dir.join("memory.usage_in_bytes"));
                    r.memory_peak_bytes = read_u64(&p.dir.join("memory.max_usage_in_bytes"));
                    r.sock_bytes = read_u64(&p.dir.join("memory.kmem.tcp.usage_in_bytes"))
                        .filter(|&b| b > 0 || tcp_accounted(&p.dir));
                }
                Version::V2 => {
                    r.memory_bytes = read_u64(&p.dir.join("memory.current"));
                    r.memory_peak_bytes = read_u64(&p.dir.join("memory.peak"));
                    r.sock_bytes = std::fs::read_to_string(p.dir.join("memory.stat"))
                        .ok()
                        .and_then(|t| keyed(&t, "sock"));
                }
            }
        }
        if let Some(p) = &places.pids {
            r.pids = read_u64(&p.dir.join("pids.current"));
            r.pids_peak = read_u64(&p.dir.join("pids.peak"));
        }
        r
    }
}

/// v1 charges a group's TCP memory only once a TCP limit has been written, and a
/// group that does not count reads 0, which is not a measurement. The lab writes one
/// into every group it makes ([`GROUP_PREFIX`]); of another group, only a non-zero
/// figure is taken.
fn tcp_accounted(dir: &Path) -> bool {
    dir.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(GROUP_PREFIX))
}

/// The name every group the lab creates starts with, then the lab's pid and a number.
pub const GROUP_PREFIX: &str = "concur-lab-";

/// A group the lab made for one server, in every hierarchy it could.
#[derive(Debug)]
pub struct Group {
    places: Places,
    /// Every directory made, each removed at the end.
    made: Vec<PathBuf>,
    /// `cgroup.procs` of each, open for writing: the server's first process writes
    /// its own pid there before it runs anything.
    procs: Vec<File>,
}

impl Group {
    /// Make `name` under this process's own group in each hierarchy with CPU, memory
    /// or pids accounting. `None` where no hierarchy lets it (no cgroup file system,
    /// no permission): the caller falls back to sampling and says so.
    pub fn create(name: &str) -> Option<Group> {
        let own = Places::of_pid(std::process::id());
        let mut made: Vec<PathBuf> = Vec::new();
        let mut procs = Vec::new();
        let mut place = |p: Option<Place>| -> Option<Place> {
            let p = p?;
            let dir = p.dir.join(name);
            if !made.contains(&dir) {
                std::fs::create_dir(&dir).ok()?;
                match File::options().write(true).open(dir.join("cgroup.procs")) {
                    Ok(f) => procs.push(f),
                    Err(_) => {
                        let _ = std::fs::remove_dir(&dir);
                        return None;
                    }
                }
                made.push(dir.clone());
            }
            Some(Place {
                version: p.version,
                dir,
            })
        };
        let places = Places {
            cpu: place(own.cpu),
            memory: place(own.memory),
            pids: place(own.pids),
        };
        // v2: a controller shows in a new group only where its parent enables it for
        // its children; whatever does not is read another way.
        let places = Places {
            cpu: places
                .cpu
                .filter(|p| has_file(p, "cpu.stat", "cpuacct.usage")),
            memory: places
                .memory
                .filter(|p| has_file(p, "memory.current", "memory.usage_in_bytes")),
            pids: places
                .pids
                .filter(|p| has_file(p, "pids.current", "pids.current")),
        };
        if let Some(Place {
            version: Version::V1,
            dir,
        }) = &places.memory
        {
            // TCP memory is charged to a v1 group only once a limit is written;
            // "-1" is no limit.
            let _ = std::fs::write(dir.join("memory.kmem.tcp.limit_in_bytes"), "-1");
        }
        if places.is_empty() {
            for d in made.iter().rev() {
                let _ = std::fs::remove_dir(d);
            }
            return None;
        }
        Some(Group {
            places,
            made,
            procs,
        })
    }

    pub fn places(&self) -> &Places {
        &self.places
    }

    /// The descriptors of every `cgroup.procs`: writing "0" to each from a process
    /// moves that process in (used between fork and exec).
    pub fn join_fds(&self) -> Vec<RawFd> {
        self.procs.iter().map(|f| f.as_raw_fd()).collect()
    }

    /// Every process in the group, in any hierarchy.
    pub fn pids(&self) -> HashSet<u32> {
        self.made.iter().flat_map(|d| procs_in(d)).collect()
    }

    /// Kill whatever is left inside and remove the directories (bounded: a task the
    /// kernel is still tearing down keeps its group busy for a moment).
    pub fn remove(self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        for dir in self.made.iter().rev() {
            loop {
                for pid in procs_in(dir) {
                    // SAFETY: a process in the group the lab made for its own server.
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                }
                if std::fs::remove_dir(dir).is_ok() || std::time::Instant::now() >= deadline {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }

    /// Remove the groups a lab that died without cleaning up left behind (their lab's
    /// pid is gone), killing what they still hold.
    pub fn sweep_stale() {
        let own = Places::of_pid(std::process::id());
        for parent in own.dirs() {
            let Ok(entries) = std::fs::read_dir(parent) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                let Some(rest) = name.strip_prefix(GROUP_PREFIX) else {
                    continue;
                };
                let owner = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
                if owner.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
                    Group {
                        places: Places::default(),
                        made: vec![e.path()],
                        procs: Vec::new(),
                    }
                    .remove();
                }
            }
        }
    }
}

fn has_file(p: &Place, v2: &str, v1: &str) -> bool {
    p.dir
        .join(match p.version {
            Version::V1 => v1,
            Version::V2 => v2,
        })
        .exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTINFO: &str = "\
24 30 0:22 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
25 24 0:23 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
26 24 0:24 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
27 24 0:25 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
28 24 0:26 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
29 24 0:27 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
30 24 0:28 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
31 30 0:5 / /proc rw - proc proc rw
";

    const HYBRID_PROC_CGROUP: &str = "\
9:name=systemd:/
8:pids:/
4:memory:/process_api/579b
2:cpuacct:/
1:cpu:/
0::/
";

    #[test]
    fn mountinfo_finds_v1_controllers_and_v2() {
        let m = parse_mountinfo(HYBRID_MOUNTINFO);
        assert_eq!(m.len(), 6, "{m:?}");
        assert_eq!(m[1].controllers, vec!["cpuacct".to_string()]);
        assert_eq!(
            m[4].controllers,
            Vec::<String>::new(),
            "name= is no controller"
        );
        assert_eq!(m[5].version, Version::V2);
        assert_eq!(m[5].point, PathBuf::from("/sys/fs/cgroup/unified"));
        let escaped = "40 1 0:30 / /mnt/my\\040groups rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_mountinfo(escaped)[0].point,
            PathBuf::from("/mnt/my groups")
        );
    }

    #[test]
    fn places_on_a_hybrid_machine_are_the_v1_hierarchies() {
        let mounts = parse_mountinfo(HYBRID_MOUNTINFO);
        let p = Places::of_pid_in(&mounts, HYBRID_PROC_CGROUP);
        assert_eq!(
            p.cpu,
            Some(Place {
                version: Version::V1,
                dir: "/sys/fs/cgroup/cpuacct".into()
            })
        );
        assert_eq!(
            p.memory.unwrap().dir,
            PathBuf::from("/sys/fs/cgroup/memory/process_api/579b")
        );
        assert_eq!(p.pids.unwrap().dir, PathBuf::from("/sys/fs/cgroup/pids"));
    }

    #[test]
    fn a_container_mount_of_a_subtree_is_followed() {
        // The hierarchy's /docker/abc is what the container sees as its root.
        let mounts = parse_mountinfo(
            "50 40 0:40 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n",
        );
        let p = Places::of_pid_in(&mounts, "3:memory:/docker/abc/web\n");
        assert_eq!(
            p.memory.unwrap().dir,
            PathBuf::from("/sys/fs/cgroup/memory/web")
        );
    }

    #[test]
    fn proc_cgroup_lines() {
        let lines =
            parse_proc_cgroup("2:cpu,cpuacct:/a\n1:name=systemd:/b\n0::/user.slice/x.scope\n");
        assert_eq!(
            lines,
            vec![
                (
                    vec!["cpu".to_string(), "cpuacct".to_string()],
                    "/a".to_string()
                ),
                (vec![], "/b".to_string()),
                (vec![], "/user.slice/x.scope".to_string()),
            ]
        );
    }

    /// A group directory in the v2 layout, made of fixture files.
    fn v2_fixture() -> tempdir::Dir {
        let d = tempdir::Dir::new("v2");
        d.write(
            "cpu.stat",
            "usage_usec 1234567\nuser_usec 1000000\nsystem_usec 234567\nnr_periods 0\n",
        );
        d.write("memory.current", "8388608\n");
        d.write("memory.peak", "9437184\n");
        d.write(
            "memory.stat",
            "anon 4194304\nfile 1048576\nkernel 2097152\nkernel_stack 65536\nsock 409600\nshmem 0\n",
        );
        d.write("pids.current", "7\n");
        d.write("pids.peak", "12\n");
        d
    }

    #[test]
    fn v2_files_are_read() {
        let d = v2_fixture();
        let place = || {
            Some(Place {
                version: Version::V2,
                dir: d.path().to_path_buf(),
            })
        };
        let r = Reading::of(&Places {
            cpu: place(),
            memory: place(),
            pids: place(),
        });
        assert_eq!(r.cpu_ns, Some(1_234_567_000));
        assert_eq!(r.memory_bytes, Some(8_388_608));
        assert_eq!(r.memory_peak_bytes, Some(9_437_184));
        assert_eq!(r.sock_bytes, Some(409_600));
        assert_eq!((r.pids, r.pids_peak), (Some(7), Some(12)));
    }

    #[test]
    fn v1_files_are_read_and_an_unaccounted_tcp_counter_is_not_a_zero() {
        let d = tempdir::Dir::new("v1");
        d.write("cpuacct.usage", "279331592\n");
        d.write("memory.usage_in_bytes", "23171072\n");
        d.write("memory.max_usage_in_bytes", "30000000\n");
        d.write("memory.kmem.tcp.usage_in_bytes", "0\n");
        d.write("pids.current", "3\n");
        d.write("pids.peak", "7\n");
        let place = || {
            Some(Place {
                version: Version::V1,
                dir: d.path().to_path_buf(),
            })
        };
        let places = Places {
            cpu: place(),
            memory: place(),
            pids: place(),
        };
        let r = Reading::of(&places);
        assert_eq!(r.cpu_ns, Some(279_331_592));
        assert_eq!(r.memory_bytes, Some(23_171_072));
        assert_eq!(r.memory_peak_bytes, Some(30_000_000));
        // A zero from a group whose TCP accounting is not known to be on is no figure.
        assert_eq!(r.sock_bytes, None);
        d.write("memory.kmem.tcp.usage_in_bytes", "106496\n");
        assert_eq!(Reading::of(&places).sock_bytes, Some(106_496));
        assert_eq!((r.pids, r.pids_peak), (Some(3), Some(7)));
    }

    #[test]
    fn keyed_files() {
        assert_eq!(keyed("usage_usec 5\nuser_usec 3\n", "user_usec"), Some(3));
        assert_eq!(keyed("usage_usec 5\n", "sock"), None);
    }

    /// A scratch directory removed when dropped (the tests' fixtures).
    mod tempdir {
        pub struct Dir(std::path::PathBuf);
        impl Dir {
            pub fn new(tag: &str) -> Dir {
                static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let p = std::env::temp_dir()
                    .join(format!("concur-cgroup-{tag}-{}-{n}", std::process::id()));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
            pub fn write(&self, name: &str, text: &str) {
                std::fs::write(self.0.join(name), text).unwrap();
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }
}
