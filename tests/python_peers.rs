//! The talk's servers in Python (`peers/python/`), which the lab measures beside the
//! Rust models: each one starts, prints concur's listening line, and answers echo and
//! fib correctly over a real socket, including a request split across writes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const PEERS: [&str; 5] = [
    "blocking.py",
    "threads.py",
    "processes.py",
    "selectors_loop.py",
    "asyncio_server.py",
];

struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(file: &str, service: &str) -> (Peer, String) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/python");
    let mut child = Command::new("python3")
        .arg(format!("{dir}/{file}"))
        .args(["--addr", "127.0.0.1:0", "--service", service])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 is on every machine concur supports (see .ci/run)");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .strip_prefix("listening on ")
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("{file}: no listening line, got {line:?}"))
        .to_string();
    assert!(line.contains(&format!("service={service}")), "{line}");
    (Peer(child), addr)
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

#[test]
fn every_peer_echoes_like_the_talk() {
    for file in PEERS {
        let (_peer, addr) = start(file, "echo");
        let mut s = connect(&addr);
        s.write_all(b"hello").unwrap();
        let mut buf = [0u8; 15];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"Received: hello", "{file}");
    }
}

#[test]
fn every_peer_answers_fib_split_and_pipelined() {
    for file in PEERS {
        let (_peer, addr) = start(file, "fib");
        let mut s = connect(&addr);
        s.write_all(b"1").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        s.write_all(b"0\n11?x\n").unwrap();
        let mut reader = BufReader::new(s);
        let mut lines = Vec::new();
        for _ in 0..3 {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            lines.push(line);
        }
        assert_eq!(lines, ["55\n", "89\n", "ERR not a number\n"], "{file}");
    }
}
