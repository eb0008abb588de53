//! `concur serve` says "listening on ..." only once it can serve: everything a model
//! sets up (threads, worker processes, extra listeners, rings, the offload pool)
//! is in place first, and anything that fails before then exits 2 with one line
//! and no listening line. Failures are made real with a seccomp filter installed in
//! the child before exec, which makes chosen system calls fail with an errno.

use std::os::unix::process::CommandExt;
use std::process::{Command, Output};

/// Run `concur serve ARGS` with the system calls `deny` failing with `errno`.
fn serve_denied(args: &[&str], deny: &'static [libc::c_long], errno: i32) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_concur"));
    cmd.arg("serve").args(args).args(["--addr", "127.0.0.1:0"]);
    // SAFETY: only prctl(2) runs between fork and exec, on data built beforehand.
    unsafe {
        cmd.pre_exec(move || {
            // A = seccomp_data.nr; for each denied call: if A == nr, return errno.
            let mut filter = vec![libc::sock_filter {
                code: 0x20, // BPF_LD | BPF_W | BPF_ABS, offset 0: the syscall number
                jt: 0,
                jf: 0,
                k: 0,
            }];
            for &nr in deny {
                filter.push(libc::sock_filter {
                    code: 0x15, // BPF_JMP | BPF_JEQ | BPF_K
                    jt: 0,
                    jf: 1,
                    k: nr as u32,
                });
                filter.push(libc::sock_filter {
                    code: 0x06, // BPF_RET | BPF_K
                    jt: 0,
                    jf: 0,
                    k: libc::SECCOMP_RET_ERRNO | errno as u32,
                });
            }
            filter.push(libc::sock_filter {
                code: 0x06,
                jt: 0,
                jf: 0,
                k: libc::SECCOMP_RET_ALLOW,
            });
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_mut_ptr(),
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.output().expect("run concur serve")
}

fn assert_refused_before_listening(what: &str, out: &Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{what}: {}", stderr.trim_end());
    assert_eq!(out.status.code(), Some(2), "{what}: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{what}: {stderr}");
    assert!(
        !stdout.contains("listening"),
        "{what}: announced before it could serve: {stdout}"
    );
}

/// No new thread or process can be made (clone and clone3 fail with EAGAIN, as
/// under a process limit): every model that needs one to serve refuses to start,
/// without announcing itself first.
#[test]
fn no_listening_line_when_threads_or_workers_cannot_start() {
    const CLONE: &[libc::c_long] = &[libc::SYS_clone, libc::SYS_clone3];
    for args in [
        &["--model", "threadpool", "--service", "echo"][..],
        &["--model", "prefork", "--service", "echo"],
        &[
            "--model",
            "reuseport",
            "--service",
            "echo",
            "--workers",
            "2",
        ],
        &["--model", "async", "--service", "echo"],
        &["--model", "epoll", "--service", "fib", "--offload"],
        &["--model", "select", "--service", "fib", "--offload"],
        &["--model", "uring", "--service", "fib", "--offload"],
    ] {
        let out = serve_denied(args, CLONE, libc::EAGAIN);
        assert_refused_before_listening(&args.join(" "), &out);
    }
}

/// io_uring exists but its registrations are refused: the probe finds out before
/// the listener is bound, and says what is missing.
#[test]
fn uring_refuses_a_kernel_without_what_it_uses() {
    let out = serve_denied(
        &["--model", "uring", "--service", "echo"],
        &[libc::SYS_io_uring_register],
        libc::EINVAL,
    );
    assert_refused_before_listening("uring", &out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("buffer rings"), "{stderr}");
}

/// A model needing io_uring on a kernel that refuses it (io_uring_setup failing
/// with ENOSYS, as on a kernel built without it): exit 2 with one line saying so.
#[test]
fn io_uring_models_without_io_uring_exit_2() {
    let needs = concur::models::REGISTRY
        .iter()
        .filter(|m| m.requires.is_some_and(|r| r.feature == "io_uring"));
    for m in needs {
        let out = serve_denied(
            &["--model", m.name, "--service", "echo"],
            &[libc::SYS_io_uring_setup],
            libc::ENOSYS,
        );
        assert_refused_before_listening(m.name, &out);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("io_uring is not available on this kernel"),
            "{stderr}"
        );
    }
}
