//! `concur load`: a load generator that verifies every reply byte and is cheaper
//! per request than the servers it measures.
//!
//! A measurement is only as good as its client. This one keeps three promises:
//!
//! 1. **Exact.** Every reply byte is checked ([`verify`]): echo payloads against
//!    what was sent (with the talk's `Received: ` prefix allowed wherever the server's
//!    reads were split), fib replies against the exact fib. Counts are exact too:
//!    every request sent is verified, lost with a connection that failed (whose
//!    cause is counted once, by kind: [`report::ErrorCounts`]), or still in flight
//!    when `--duration` ended, and the report says how many of each; with
//!    `--requests R`, R are sent unless every connection failed first.
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
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

/// Parse `--start-at`: Unix seconds (`1767225600`, `1767225600.5`) or an RFC 3339
/// time (`2026-01-01T00:00:00Z`, `2026-01-01T01:00:00.250+01:00`).
pub fn parse_start_at(text: &str) -> Result<SystemTime, String> {
    let t = text.trim();
    let bad = || {
        format!(
            "'{text}' is not a time; write Unix seconds (e.g. $(( $(date +%s) + 5 ))) or \
             RFC 3339 (e.g. 2026-01-01T12:00:00Z)"
        )
    };
    if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit() || c == '.') {
        let secs: f64 = t.parse().map_err(|_| bad())?;
        return Ok(UNIX_EPOCH + Duration::from_secs_f64(secs));
    }
    let secs = rfc3339_unix(t).ok_or_else(bad)?;
    if secs < 0.0 {
        return Err(format!("'{text}' is before 1970"));
    }
    Ok(UNIX_EPOCH + Duration::from_secs_f64(secs))
}

/// `YYYY-MM-DD(T| )HH:MM:SS[.frac](Z|±HH:MM)` to Unix seconds.
fn rfc3339_unix(t: &str) -> Option<f64> {
    let b = t.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = t.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 {
        return None;
    }
    if sec > 60 {
        return None;
    }
    let mut rest = &t[19..];
    let mut frac = 0.0;
    if let Some(r) = rest.strip_prefix('.') {
        let digits = r.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        frac = format!("0.{}", &r[..digits]).parse().ok()?;
        rest = &r[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let o = rest.as_bytes();
            if o.len() != 6 || o[3] != b':' {
                return None;
            }
            let (h, m) = (
                rest[1..3].parse::<i64>().ok()?,
                rest[4..6].parse::<i64>().ok()?,
            );
            sign * (h * 3600 + m * 60)
        }
    };
    // Days from 1970-01-01 to the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + min * 60 + sec - offset;
    Some(secs as f64 + frac)
}

/// Sleep until `at` (wall clock); a time already past returns at once, and so does
/// Ctrl-C (see [`crate::interrupt`]).
pub fn wait_until(at: SystemTime) {
    while let Ok(left) = at.duration_since(SystemTime::now()) {
        if left.is_zero() || crate::interrupt::requested() {
            break;
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

/// A wall-clock time in Unix seconds.
pub fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
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

/// The largest `--requests`: the shared budget is a signed 64-bit counter (threads
/// may claim past zero before they see it spent).
pub const MAX_REQUESTS: u64 = i64::MAX as u64;

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
    /// How long to run (e.g. 10s, 500ms, 2m; more than 0); default 10s unless
    /// --requests is given (not both: each is a way to end the run)
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Stop after exactly this many requests (over all connections); not with --duration
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
    /// A connection whose reply does not arrive in this time is a timeout error (more
    /// than 0)
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
    /// Wait until this time (Unix seconds or RFC 3339), then start; with --duration the
    /// run ends at this time plus the duration, so agents given the same both start
    /// and stop together
    #[arg(long, value_parser = parse_start_at, value_name = "TIME")]
    pub start_at: Option<SystemTime>,
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
    /// `--start-at`: connect and start at this time; `--duration` counts from it.
    pub start_at: Option<SystemTime>,
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
            start_at: None,
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
        if self.requests.is_some_and(|r| r > MAX_REQUESTS) {
            return Err(bad_input(format!(
                "--requests must be at most {MAX_REQUESTS}"
            )));
        }
        if self.requests.is_some() && self.duration.is_some() {
            return Err(bad_input(
                "--requests and --duration both end the run: give one (--requests R stops \
                 after exactly R requests, --duration after that time)",
            ));
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
            progress: std::io::stderr().is_terminal() && !crate::logging::quiet(),
            server_pid: self.server_pid,
            start_at: self.start_at,
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
    // Connections open after the wait, not before: a server's idle timeout cannot
    // close them while this agent waits for the others.
    if let Some(at) = config.start_at {
        wait_until(at);
    }
    let mut report = engine::run(config, addr)?;
    // How late the first request went out: the wait's own wake-up plus connecting.
    report.start_late_secs = config
        .start_at
        .map(|at| (report.window_start_unix - unix_secs(at)).max(0.0));
    Ok(report)
}

/// Below this share of `--rate`, the rate asked was not the rate measured.
const RATE_SHORTFALL: f64 = 0.9;

/// One line when the open loop fell well short of `--rate`: the latencies then
/// describe the rate achieved, not the one asked (the server, or this client, could
/// not keep up).
pub fn rate_warning(r: &LoadReport) -> Option<String> {
    let asked = r.rate?;
    (r.req_per_s < RATE_SHORTFALL * asked).then(|| {
        format!(
            "--rate {asked} req/s asked, {:.0} req/s achieved: the server or this client \
             could not keep up, so the figures are for the rate achieved",
            r.req_per_s
        )
    })
}

/// The JSON `concur load` prints: the report, and `"interrupted": true` when Ctrl-C
/// stopped the run (the report then holds what was measured until then).
#[derive(Serialize)]
struct Printed<'a> {
    #[serde(flatten)]
    report: &'a LoadReport,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    interrupted: bool,
}

/// `concur load`: run, print the table (or JSON), return the exit status: the
/// report's, or [`crate::interrupt::EXIT_CODE`] when Ctrl-C stopped the run.
pub fn run(args: &LoadArgs) -> Result<u8> {
    crate::interrupt::catch();
    let report = run_load(&args.config())?;
    let interrupted = crate::interrupt::requested();
    if let Some(warning) = rate_warning(&report)
        && !crate::logging::quiet()
    {
        eprintln!("warning: {warning}");
    }
    if args.json {
        let printed = Printed {
            report: &report,
            interrupted,
        };
        crate::output::print_out(&format!("{}\n", serde_json::to_string(&printed)?))?;
    } else {
        if interrupted {
            crate::output::print_out(&format!(
                "interrupted: stopped by Ctrl-C after {:.2} s; what was measured until then\n",
                report.run_secs()
            ))?;
        }
        crate::output::print_out(&report::render(&report))?;
        if report.requests_ok == 0 && report.errors_total == 0 {
            crate::output::print_out("no request completed: nothing was verified\n")?;
        }
    }
    Ok(if interrupted {
        crate::interrupt::EXIT_CODE
    } else {
        report.exit_code()
    })
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
    fn start_times() {
        let unix = |t: &str| {
            parse_start_at(t)
                .unwrap()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs_f64()
        };
        assert_eq!(unix("1767225600"), 1_767_225_600.0);
        assert_eq!(unix("1767225600.5"), 1_767_225_600.5);
        assert_eq!(unix("2026-01-01T00:00:00Z"), 1_767_225_600.0);
        assert_eq!(unix("1970-01-01T00:00:00Z"), 0.0);
        assert_eq!(unix("2000-02-29T12:34:56Z"), 951_827_696.0);
        assert_eq!(unix("2026-01-01T01:00:00.25+01:00"), 1_767_225_600.25);
        assert_eq!(unix("2025-12-31 19:00:00-05:00"), 1_767_225_600.0);
        for bad in [
            "",
            "soon",
            "2026-13-01T00:00:00Z",
            "2026-01-01T00:00:00",
            "2026-01-01",
        ] {
            assert!(parse_start_at(bad).is_err(), "{bad}");
        }
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
        let mut c = ok.clone();
        c.threads = 11;
        assert!(c.validate().is_err());
        let mut c = ok;
        c.requests = Some(MAX_REQUESTS);
        assert!(c.validate().is_ok());
        c.requests = Some(MAX_REQUESTS + 1);
        let e = c.validate().unwrap_err();
        assert_eq!(crate::error::exit_code(&e), 2, "{e}");
    }
}
