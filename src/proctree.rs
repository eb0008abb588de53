//! A process and everything below it, read from /proc as one: the lab measures a
//! server that may be a shell running an interpreter that forks a child per client,
//! so its memory is that of the whole tree, not of the pid it started. (What the
//! tree spends, CPU and context switches, is counted by `crate::account`, which
//! remembers the tasks that exit; this is the tree's memory now.)
//!
//! Memory is given two ways. RSS summed over the tree counts a page shared by N
//! processes (the copy-on-write pages a forked child keeps from its parent, the
//! interpreter's code) N times, so "memory per connection" of a server that forks per
//! client looks like the size of a whole process. PSS (`Pss:` in
//! `/proc/PID/smaps_rollup`) charges each process 1/N of a page shared by N: summed
//! over a tree it is what the tree really costs. Reading it walks every mapping, so it
//! is taken only when asked for. Private memory (`Private_Clean` + `Private_Dirty`)
//! comes from the same read: a process's PSS also moves when *other* processes map or
//! unmap the pages it shares with them (libc's, say), while its private memory moves
//! only with what it does itself, so the growth of what a connection costs
//! (`concur hold --server-pid`) is read there.

use crate::sys;

/// One reading of a process tree's memory.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TreeSample {
    /// RSS summed over the tree (shared pages counted once per process).
    pub rss_bytes: u64,
    /// PSS summed over the tree, when asked for and the kernel has smaps_rollup (4.14+).
    pub pss_bytes: Option<u64>,
    /// Private pages summed over the tree, read alongside PSS.
    pub private_bytes: Option<u64>,
    /// Live processes below the root (children, grandchildren...).
    pub descendants: u64,
}

/// Every live process below `pid`, parents before their children.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    // A server that forks per client can have ten thousand children: look them up in
    // a set, not the list.
    let mut seen = std::collections::HashSet::from([pid]);
    let mut next = 0;
    let mut current = pid;
    loop {
        for kid in sys::children(current) {
            if seen.insert(kid) {
                found.push(kid);
            }
        }
        let Some(&p) = found.get(next) else {
            return found;
        };
        current = p;
        next += 1;
    }
}

/// One process's `/proc/PID/smaps_rollup`, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rollup {
    pub pss: u64,
    /// `Private_Clean` + `Private_Dirty`.
    pub private: u64,
}

/// PSS and private memory of one process; `None` if it is gone, the kernel is older
/// than 4.14, or it is another user's.
pub fn smaps_rollup(pid: u32) -> Option<Rollup> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    parse_rollup(&text)
}

fn parse_rollup(smaps_rollup: &str) -> Option<Rollup> {
    let kb = |key: &str| {
        smaps_rollup.lines().find_map(|l| {
            l.strip_prefix(key)?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
    };
    Some(Rollup {
        pss: kb("Pss:")? * 1024,
        private: (kb("Private_Clean:")? + kb("Private_Dirty:")?) * 1024,
    })
}

/// Whether `pid` has exited: gone from /proc, or a zombie (`Z`) or dead (`X`) entry
/// whose memory the kernel has already released.
fn holds_no_memory(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat.get(i + 2..))
        .and_then(|rest| rest.chars().next());
    matches!(state, Some('Z' | 'X'))
}

/// Read `pid` and every process below it; `None` if `pid` is gone. With `pss`, PSS and
/// private memory are summed too (`None` in the sample if any process's could not be
/// read: a sum over part of the tree is no total).
pub fn sample(pid: u32, pss: bool) -> Option<TreeSample> {
    let mut tree = TreeSample {
        pss_bytes: pss.then_some(0),
        private_bytes: pss.then_some(0),
        ..TreeSample::default()
    };
    let mut add = |p: u32| -> bool {
        let Some(s) = sys::proc_stat(p) else {
            return false;
        };
        tree.rss_bytes += s.rss_bytes;
        if pss {
            // A process that has exited (a zombie waiting to be reaped, or gone since
            // its stat was read) maps nothing: it adds 0, and must not void the
            // tree's total. One that is alive and unreadable does.
            let r = smaps_rollup(p)
                .or_else(|| holds_no_memory(p).then_some(Rollup { pss: 0, private: 0 }));
            tree.pss_bytes = tree.pss_bytes.zip(r).map(|(t, r)| t + r.pss);
            tree.private_bytes = tree.private_bytes.zip(r).map(|(t, r)| t + r.private);
        }
        true
    };
    if !add(pid) {
        return None;
    }
    for kid in descendants(pid) {
        // A child that exited between the listing and the read is simply not counted.
        if add(kid) {
            tree.descendants += 1;
        }
    }
    Some(tree)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    /// Wait (bounded) until `pid` has `n` descendants that are running `sleep`.
    fn wait_for_tree(pid: u32, n: usize) -> Vec<u32> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let kids: Vec<u32> = descendants(pid)
                .into_iter()
                .filter(|k| {
                    std::fs::read_to_string(format!("/proc/{k}/comm"))
                        .is_ok_and(|c| c.trim() == "sleep")
                })
                .collect();
            if kids.len() >= n {
                return kids;
            }
            assert!(Instant::now() < deadline, "the tree never grew");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn grandchildren_are_part_of_the_tree() {
        // sh -> (sh -> sleep), sh -> sleep: one child and one grandchild run sleep.
        let mut root = Command::new("sh")
            .args(["-c", "sh -c 'sleep 30; true' & sleep 30; wait"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let pid = root.id();
        let sleepers = wait_for_tree(pid, 2);
        let t = sample(pid, true).unwrap();
        assert!(t.descendants >= 3, "{t:?}");
        assert!(t.rss_bytes > 0);
        if std::path::Path::new(&format!("/proc/{pid}/smaps_rollup")).exists() {
            let pss = t.pss_bytes.expect("pss read");
            let private = t.private_bytes.expect("private read");
            // PSS never exceeds RSS (shared pages are split, never added), and private
            // pages are part of PSS.
            assert!(0 < private && private <= pss && pss <= t.rss_bytes, "{t:?}");
        }
        for s in sleepers {
            // SAFETY: our own descendants.
            unsafe { libc::kill(s as i32, libc::SIGKILL) };
        }
        root.wait().unwrap();
        assert!(sample(pid, false).is_none(), "a reaped root is gone");
    }

    /// A child that has exited but is not yet reaped (a zombie, as a server forking
    /// per client has while it catches up) counts 0 and keeps the tree's PSS.
    #[test]
    fn a_zombie_child_does_not_void_the_total() {
        if !std::path::Path::new("/proc/self/smaps_rollup").exists() {
            return; // a kernel before 4.14 has no PSS to keep
        }
        // sh runs `true` in the background and then waits on stdin without reaping
        // it (exec keeps the pid, the zombie stays its child).
        let mut root = Command::new("sh")
            .args(["-c", "true & exec sleep 30"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let pid = root.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        let zombie = loop {
            let kids = descendants(pid);
            if let Some(&z) = kids.iter().find(|&&k| holds_no_memory(k)) {
                break z;
            }
            assert!(
                Instant::now() < deadline,
                "no zombie child appeared: {kids:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(
            smaps_rollup(zombie).is_none(),
            "a zombie has no rollup to read"
        );
        let t = sample(pid, true).unwrap();
        assert!(t.pss_bytes.is_some_and(|b| b > 0), "{t:?}");
        assert!(t.private_bytes.is_some(), "{t:?}");
        root.kill().unwrap();
        root.wait().unwrap();
    }

    #[test]
    fn rollup_is_parsed() {
        let text = "55d0-7ffc ---p 00000000 00:00 0 [rollup]\nRss:  1204 kB\nPss:  311 kB\nPss_Anon: 100 kB\nPrivate_Clean: 8 kB\nPrivate_Dirty: 200 kB\n";
        let want = Rollup {
            pss: 311 * 1024,
            private: 208 * 1024,
        };
        assert_eq!(parse_rollup(text), Some(want));
        assert_eq!(parse_rollup("Rss: 1 kB\nPss: 3 kB\n"), None);
    }
}
