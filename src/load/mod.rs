//! `concur load`: a load generator that verifies every reply byte and is cheaper
//! per request than the servers it measures.
//!
//! A measurement is only as good as its client. This one keeps three promises:
//!
//! 1. **Exact.** Every reply byte is checked ([`verify`]): echo payloads against
//!    what was sent (with the talk's `Received: ` prefix allowed wherever the server's
//!    reads were split), fib replies against the exact fib. Counts are exact too:
//!    with `--requests R` exactly R requests are sent, and each is either verified
//!    or counted as an error by kind ([`report::ErrorCounts`]).
//! 2. **Honest latency.** Closed loop (the default) keeps `--pipeline` requests in
//!    flight per connection. Open loop (`--rate`) sends on a fixed schedule and counts
//!    latency from each request's *intended* send time, so a server that stalls
//!    cannot hide the requests that queued behind the stall (coordinated omission,
//!    corrected as wrk2 does; unlike wrk2, the generator's own timer lateness is
//!    not charged to the server).
//! 3. **Not the bottleneck.** [`engine`] runs a few threads, each one epoll loop over
//!    its share of non-blocking connections, with one reusable read buffer, no
//!    allocation per request and a per-thread HDR histogram merged at the end.
//!
//! [`run_load`] is the library entry (for `concur lab` and tests); [`run`] is the
//! command line's, which prints the report and returns the exit status.

pub mod engine;
pub mod report;
pub mod verify;

pub use report::{CpuReport, CpuUse, ErrorCounts, FirstMismatch, HeavyReport, Latency, LoadReport};

use crate::error::bad_input;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// Which of the talk's protocols to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    /// Send random payload bytes; expect them back, each server read prefixed.
    Echo,
    /// Send `n\n` (or `n?`); expect `fib(n)\n`.
    Fib,
}

/// Parse a duration such as `10s`, `500ms`, `2m`, `1.5s`, `250us` or `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| {
        format!("'{text}' is not a duration; write a number and a unit, e.g. 10s, 500ms, 2m")
    })?;
    let scale = match unit {
        "us" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "" => {
            return Err(format!(
                "'{text}' has no unit; write e.g. {num}s or {num}ms"
            ));
        }
        _ => {
            return Err(format!(
                "'{text}' has an unknown unit '{unit}'; use us, ms, s, m or h"
            ));
        }
    };
    let secs = value * scale;
    if !secs.is_finite() || secs > 86_400.0 * 365.0 {
        return Err(format!("'{text}' is too long"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parse `--mix heavy=K`.
pub fn parse_mix(text: &str) -> Result<u32, String> {
    let k = text
        .strip_prefix("heavy=")
        .ok_or_else(|| format!("'{text}' is not a mix; write heavy=K, e.g. heavy=30"))?;
    let k: u32 = k
        .parse()
        .map_err(|_| format!("'{k}' is not a number; write heavy=K, e.g. heavy=30"))?;
    if k > MAX_FIB_N {
        return Err(format!("heavy={k} is out of range 0..={MAX_FIB_N}"));
    }
    Ok(k)
}

/// The largest n whose fib the verifier knows exactly (u128).
pub const MAX_FIB_N: u32 = crate::fib::MAX_EXACT_N;

/// `concur load` on the command line.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// The server, HOST:PORT
    #[arg(long)]
    pub addr: String,
    /// The protocol the server speaks
    #[arg(long, value_enum, default_value_t = Service::Echo)]
    pub service: Service,
    /// Concurrent connections
    #[arg(long, default_value_t = 10)]
    pub conns: usize,
    /// How long to run (e.g. 10s, 500ms, 2m); default 10s unless --requests is given
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Stop after exactly this many requests (over all connections)
    #[arg(long)]
    pub requests: Option<u64>,
    /// Echo payload size in bytes
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// The n of fib(n) each fib request asks, in 0..=185: the largest fib the verifier knows exactly (a server refuses n above its --max-n) [default: 10; 1 with --mix]
    #[arg(long)]
    pub n: Option<u32>,
    /// Requests in flight per connection
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// Open loop: total requests per second, latency from intended send times
    #[arg(long)]
    pub rate: Option<f64>,
    /// The prefix the echo server puts before each chunk it read ('' for plain echo)
    #[arg(long, default_value = crate::protocol::echo::DEFAULT_PREFIX)]
    pub prefix: String,
    /// End fib requests with '?' as in the talk's select example (default: newline)
    #[arg(long)]
    pub question: bool,
    /// A connection whose reply does not arrive in this time is a timeout error
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub timeout: Duration,
    /// heavy=K: one connection asks fib(K) in a loop, the others measure fib(--n)
    #[arg(long, value_parser = parse_mix, value_name = "heavy=K")]
    pub mix: Option<u32>,
    /// Load threads, each an epoll loop over its share of the connections
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// The server's process id: also report its CPU time per request (from /proc)
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// Print one JSON object on stdout instead of the table
    #[arg(long)]
    pub json: bool,
}

/// Everything a load run needs; [`LoadConfig::new`] gives the command line's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadConfig {
    pub addr: String,
    pub service: Service,
    pub conns: usize,
    /// Stop after this long (if neither this nor `requests` is set: 10 s).
    pub duration: Option<Duration>,
    /// Stop after exactly this many requests.
    pub requests: Option<u64>,
    pub size: usize,
    pub n: u32,
    pub pipeline: usize,
    pub rate: Option<f64>,
    pub prefix: Vec<u8>,
    pub question: bool,
    pub timeout: Duration,
    /// `--mix heavy=K`.
    pub heavy: Option<u32>,
    pub threads: usize,
    /// Draw a progress bar on stderr (the command line sets it when stderr is a terminal).
    pub progress: bool,
    /// Report this process's CPU time per request beside the load generator's.
    pub server_pid: Option<u32>,
}

impl LoadConfig {
    /// The command line's defaults for `addr` and `service`.
    pub fn new(addr: impl Into<String>, service: Service) -> Self {
        LoadConfig {
            addr: addr.into(),
            service,
            conns: 10,
            duration: None,
            requests: None,
            size: 64,
            n: 10,
            pipeline: 1,
            rate: None,
            prefix: crate::protocol::echo::DEFAULT_PREFIX.as_bytes().to_vec(),
            question: false,
            timeout: Duration::from_secs(5),
            heavy: None,
            threads: 1,
            progress: false,
            server_pid: None,
        }
    }

    /// Check the settings against each other; errors are the user's to fix (exit 2).
    pub fn validate(&self) -> Result<()> {
        if self.conns == 0 {
            return Err(bad_input("--conns must be at least 1"));
        }
        if self.pipeline == 0 {
            return Err(bad_input("--pipeline must be at least 1"));
        }
        if self.threads == 0 || self.threads > self.conns {
            return Err(bad_input(format!(
                "--threads must be in 1..={} (one per connection at most)",
                self.conns
            )));
        }
        if self.service == Service::Echo && self.size == 0 {
            return Err(bad_input("--size must be at least 1 byte"));
        }
        if self.n > MAX_FIB_N {
            return Err(bad_input(format!("--n must be in 0..={MAX_FIB_N}")));
        }
        if let Some(rate) = self.rate
            && !(rate.is_finite() && rate > 0.0)
        {
            return Err(bad_input("--rate must be a positive number of requests/s"));
        }
        if self.requests == Some(0) {
            return Err(bad_input("--requests must be at least 1"));
        }
        if self.duration == Some(Duration::ZERO) {
            return Err(bad_input("--duration must be more than 0"));
        }
        if let Some(pid) = self.server_pid
            && crate::sys::proc_stat(pid).is_none()
        {
            return Err(bad_input(format!(
                "--server-pid {pid}: no such process in /proc"
            )));
        }
        if self.timeout.is_zero() {
            return Err(bad_input("--timeout must be more than 0"));
        }
        if self.heavy.is_some() {
            if self.service != Service::Fib {
                return Err(bad_input("--mix heavy=K needs --service fib"));
            }
            if self.conns < 2 {
                return Err(bad_input(
                    "--mix heavy=K needs --conns 2 or more (one heavy, the rest measured)",
                ));
            }
        }
        Ok(())
    }

    /// The server's address, resolved.
    pub fn socket_addr(&self) -> Result<SocketAddr> {
        resolve(&self.addr)
    }
}

/// Resolve HOST:PORT to its first address; failure is the user's to fix.
pub fn resolve(addr: &str) -> Result<SocketAddr> {
    addr.to_socket_addrs()
        .map_err(|e| bad_input(format!("--addr {addr}: {e} (write HOST:PORT)")))?
        .next()
        .ok_or_else(|| bad_input(format!("--addr {addr}: no address found")))
}

impl LoadArgs {
    /// The library configuration these arguments ask for.
    pub fn config(&self) -> LoadConfig {
        use std::io::IsTerminal;
        LoadConfig {
            addr: self.addr.clone(),
            service: self.service,
            conns: self.conns,
            duration: self.duration,
            requests: self.requests,
            size: self.size,
            n: self.n.unwrap_or(if self.mix.is_some() { 1 } else { 10 }),
            pipeline: self.pipeline,
            rate: self.rate,
            prefix: self.prefix.as_bytes().to_vec(),
            question: self.question,
            timeout: self.timeout,
            heavy: self.mix,
            threads: self.threads,
            progress: std::io::stderr().is_terminal(),
            server_pid: self.server_pid,
        }
    }
}

/// Run a load test and return its report. Errors only for bad settings or when the
/// machine cannot run it; server failures are counted in the report.
pub fn run_load(config: &LoadConfig) -> Result<LoadReport> {
    config.validate()?;
    let addr = config.socket_addr()?;
    let limit = crate::sys::raise_fd_limit().unwrap_or(1024);
    let need = config.conns as u64 + 64;
    if need > limit {
        return Err(bad_input(format!(
            "--conns {} needs about {need} file descriptors, but this process may open only \
             {limit} (its hard limit); raise it (ulimit -Hn, LimitNOFILE) or use concur hold",
            config.conns
        )));
    }
    engine::run(config, addr)
}

/// `concur load`: run, print the table (or JSON), return the exit status.
pub fn run(args: &LoadArgs) -> Result<u8> {
    let report = run_load(&args.config())?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report::render(&report));
        if report.requests_ok == 0 && report.errors_total == 0 {
            println!("no request completed: nothing was verified");
        }
    }
    Ok(report.exit_code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert!(parse_duration("10").unwrap_err().contains("no unit"));
        assert!(parse_duration("10x").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn mix() {
        assert_eq!(parse_mix("heavy=30"), Ok(30));
        assert!(parse_mix("light=3").is_err());
        assert!(parse_mix("heavy=x").is_err());
        assert!(parse_mix("heavy=999").is_err());
    }

    #[test]
    fn validation() {
        let ok = LoadConfig::new("127.0.0.1:1", Service::Echo);
        assert!(ok.validate().is_ok());
        let mut c = ok.clone();
        c.heavy = Some(30);
        assert!(c.validate().is_err(), "mix needs fib");
        c.service = Service::Fib;
        assert!(c.validate().is_ok());
        c.conns = 1;
        c.threads = 1;
        assert!(c.validate().is_err(), "mix needs two connections");
        let mut c = ok;
        c.threads = 11;
        assert!(c.validate().is_err());
    }
}
