//! What `concur load` found: the result struct, its JSON, and the human table.
//!
//! The JSON keys are a contract with scripts (and with `concur lab`): `requests_ok`,
//! `errors_total`, `errors` (counts by kind), `req_per_s`, `mb_per_s` and
//! `latency_us` (`p50`, `p90`, `p99`, `p999`, `max`) are always present; other keys
//! may be added but these keep their names and meanings. Latencies are microseconds
//! read from an HDR histogram (3 significant digits), so a percentile is exact to
//! 0.1 %. In open loop (`--rate`) a latency counts from the request's *intended*
//! send time, so time a request spent waiting behind a stalled server is included
//! (the load loop's own timer lateness is not: see `engine`).
//!
//! Time, and what the rates are over. A run has two ends: the *run* ends when
//! `--duration` is over, the last of `--requests` is answered, every connection has
//! been given up, or Ctrl-C; the *answered window* ends with the last verified reply.
//! The rates are over the answered window (`req_per_s = requests_ok / elapsed_secs`,
//! `mb_per_s = bytes_received / elapsed_secs / 10^6`), so a server that hangs or dies
//! mid-run is not credited with a rate diluted by the time it answered nothing (nor
//! a healthy one with the last round trip the run did not wait for). Both windows
//! start when the first request goes out (`window_start_unix`); the answered one
//! ends at `window_end_unix` (`elapsed_secs` long), the run at `run_end_unix`
//! (`run_secs` long). For a server that answered to the end the two ends are one
//! round trip apart; when nothing was verified, the answered window is empty and the
//! rates are 0. Reports written before `run_secs` was recorded had one window, the
//! run's, and their rates were over it: read back, their run is their window.

use base64::Engine as _;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// What a report records of the protocol spoken, the parameters a merge must see
/// equal: echo's payload size and prefix, fib's n (the other service's are zero or
/// empty). Returns `(size, n, prefix)`.
pub fn spoken(service: super::Service, size: usize, n: u32, prefix: &[u8]) -> (usize, u32, String) {
    match service {
        super::Service::Echo => (size, 0, String::from_utf8_lossy(prefix).into_owned()),
        super::Service::Fib => (0, n, String::new()),
    }
}

/// The latency histogram every report records into: 1 ns to one hour, 3 significant
/// digits. Reports carry it whole (see [`encode_histogram`]) so that several agents'
/// reports can be merged exactly: percentiles cannot be averaged, histograms can be
/// added.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

/// A histogram (nanoseconds) in HdrHistogram's standard compressed V2 encoding, base64:
/// the form HdrHistogram's own tools read (e.g. `HistogramLogProcessor`, or any
/// `decodeFromCompressedByteBuffer`).
pub fn encode_histogram(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    match V2DeflateSerializer::new().serialize(h, &mut bytes) {
        Ok(_) => base64::engine::general_purpose::STANDARD.encode(&bytes),
        // Only a histogram too large for the encoding's i32 lengths can fail; ours
        // is bounded well below that.
        Err(_) => String::new(),
    }
}

/// Why a report's histogram could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum HistogramError {
    #[error("the histogram is not base64: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("the histogram is not HdrHistogram's V2 encoding: {0:?}")]
    Decode(hdrhistogram::serialization::DeserializeError),
}

/// The inverse of [`encode_histogram`] (also reads uncompressed V2).
pub fn decode_histogram(text: &str) -> Result<Histogram<u64>, HistogramError> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(text.trim())?;
    Deserializer::new()
        .deserialize(&mut &bytes[..])
        .map_err(HistogramError::Decode)
}

/// Failures by kind. A connection that fails is closed and counted once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCounts {
    /// The connection was refused (nothing listening, or the backlog was full).
    pub refused: u64,
    /// A reply did not arrive within `--timeout`.
    pub timeout: u64,
    /// A reply byte differed from what a correct server sends.
    pub mismatch: u64,
    /// The server closed (or reset) the connection while we were using it.
    pub closed_early: u64,
    /// Connecting failed for another reason (unreachable, timed out...).
    pub connect: u64,
    /// Any other socket error.
    pub io: u64,
}

impl ErrorCounts {
    pub fn total(&self) -> u64 {
        self.refused + self.timeout + self.mismatch + self.closed_early + self.connect + self.io
    }

    pub fn add(&mut self, other: &ErrorCounts) {
        self.refused += other.refused;
        self.timeout += other.timeout;
        self.mismatch += other.mismatch;
        self.closed_early += other.closed_early;
        self.connect += other.connect;
        self.io += other.io;
    }
}

/// Where the first wrong reply byte was seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirstMismatch {
    /// Connection index (0-based).
    pub conn: usize,
    /// Request index on that connection (0-based).
    pub request: u64,
    /// Byte offset in that connection's reply stream.
    pub offset: u64,
    /// The byte a correct server could have sent (absent: nothing more was owed).
    pub expected: Option<u8>,
    /// The byte received.
    pub got: u8,
    /// What the server sent there, escaped (`\n`, `\"`, `\xff`...): its line (fib) or
    /// reply (echo) from the start (at most 100 bytes before the bad byte) to the
    /// newline that ends it, at most 200 bytes, e.g. `ERR n out of range 0..=42`.
    /// Absent from reports written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received: Option<String>,
    /// The offset in the reply stream where `received` starts.
    #[serde(default)]
    pub received_offset: u64,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    /// Percentiles of a histogram recorded in nanoseconds.
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Latency::default();
        }
        let us = |ns: u64| (ns as f64 / 100.0).round() / 10.0;
        Latency {
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
            mean: (h.mean() / 100.0).round() / 10.0,
        }
    }
}

/// The heavy connection of `--mix heavy=K`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeavyReport {
    /// The K in fib(K).
    pub n: u32,
    pub requests_ok: u64,
    pub latency_us: Latency,
    /// The heavy requests' latencies (ns), see [`encode_histogram`].
    #[serde(default)]
    pub histogram: String,
}

/// The result of one `concur load` run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    pub addr: String,
    pub service: String,
    /// `closed` (each connection keeps `pipeline` requests in flight) or `open` (`--rate`).
    pub mode: String,
    pub conns: usize,
    pub threads: usize,
    pub pipeline: usize,
    /// The open-loop target rate, requests per second.
    pub rate: Option<f64>,
    /// The time the server answered, which the rates are over: from the first
    /// request to the last verified reply (light or heavy); 0 if none was verified.
    /// See the module doc.
    pub elapsed_secs: f64,
    /// Wall time from the first request to the end of the run (see the module doc);
    /// absent in older reports, whose run was `elapsed_secs` (see [`LoadReport::run_secs`]).
    #[serde(default)]
    pub run_secs: Option<f64>,
    /// Replies verified byte for byte (with `--mix`, the light requests only).
    pub requests_ok: u64,
    /// Requests issued (with `--mix`, the light ones): every one is either verified
    /// (`requests_ok`), lost with a connection that failed (`requests_failed`: the one
    /// that failed and any pipelined behind it), or still in flight when `--duration`
    /// ended (`requests_unfinished`). `requests_sent = requests_ok + requests_failed +
    /// requests_unfinished`, exactly.
    #[serde(default)]
    pub requests_sent: u64,
    #[serde(default)]
    pub requests_failed: u64,
    #[serde(default)]
    pub requests_unfinished: u64,
    /// Failures by kind: one per connection given up (a refused connect sent nothing).
    pub errors_total: u64,
    pub errors: ErrorCounts,
    pub first_mismatch: Option<FirstMismatch>,
    pub req_per_s: f64,
    /// Reply bytes received per second, in 10^6 bytes.
    pub mb_per_s: f64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub latency_us: Latency,
    /// Present with `--mix heavy=K`.
    pub heavy: Option<HeavyReport>,
    /// CPU time (user+sys) spent during the run, by this load generator and, given
    /// `--server-pid`, by the server (when its CPU could be measured).
    pub cpu: Option<CpuReport>,
    /// Given `--server-pid`: what the server's whole tree spent, each figure saying
    /// how it was measured (see `crate::account`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<crate::account::ServerAccount>,
    /// The answered window in wall-clock time, Unix seconds: from the first request
    /// to the last verified reply (`window_end_unix - window_start_unix =
    /// elapsed_secs`). Merging takes the rates over the agents' joint window.
    #[serde(default)]
    pub window_start_unix: f64,
    #[serde(default)]
    pub window_end_unix: f64,
    /// When the run ended, Unix seconds (`run_end_unix - window_start_unix = run_secs`);
    /// absent in older reports (see [`LoadReport::run_end_unix`]). Merging uses the
    /// runs to tell agents that loaded the server at the same time.
    #[serde(default)]
    pub run_end_unix: Option<f64>,
    /// With `--start-at`: how late the first request went out after the time asked.
    #[serde(default)]
    pub start_late_secs: Option<f64>,
    /// The parameters a merge must see equal (the protocol spoken): echo payload size
    /// and prefix, fib n and terminator.
    #[serde(default)]
    pub size: usize,
    #[serde(default)]
    pub n: u32,
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub question: bool,
    /// `--duration` in seconds and `--requests`, as asked.
    #[serde(default)]
    pub duration_secs: Option<f64>,
    #[serde(default)]
    pub requests: Option<u64>,
    /// How many `concur load` runs this report is: 1, or the sum of a merge's inputs.
    #[serde(default = "one")]
    pub agents: u64,
    /// The verified light requests' latencies (ns), see [`encode_histogram`].
    #[serde(default)]
    pub histogram: String,
    /// What a merge found suspicious (a report whose window overlaps no other).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merge_warnings: Vec<String>,
}

fn one() -> u64 {
    1
}

/// CPU time of one process over the run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CpuUse {
    /// User plus system seconds.
    pub secs: f64,
    /// Those seconds per verified request (light and heavy), in microseconds.
    pub us_per_request: f64,
}

/// Who paid how much CPU for the requests: the yardstick for "the load generator is
/// never the bottleneck" (its cost per request must stay below the server's).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CpuReport {
    /// This process's own (getrusage), the server sampler's time left out.
    pub load: CpuUse,
    /// The server's, as `server.cpu_secs` measured it (cgroup, or sampled).
    pub server: Option<CpuUse>,
}

impl LoadReport {
    /// How long the run lasted; for a report without `run_secs` (written before it
    /// was recorded), its one window.
    pub fn run_secs(&self) -> f64 {
        self.run_secs.unwrap_or(self.elapsed_secs)
    }

    /// When the run ended; for a report without `run_end_unix`, its window's end.
    pub fn run_end_unix(&self) -> f64 {
        self.run_end_unix.unwrap_or(self.window_end_unix)
    }

    /// 0 if every reply verified, 1 otherwise (or if nothing completed at all).
    pub fn exit_code(&self) -> u8 {
        if self.errors_total == 0 && self.requests_ok > 0 {
            0
        } else {
            1
        }
    }
}

fn lat_row(out: &mut String, label: &str, l: &Latency) {
    let _ = writeln!(
        out,
        "{label:<10} p50 {:>9.1}  p90 {:>9.1}  p99 {:>9.1}  p99.9 {:>9.1}  max {:>9.1}  (us)",
        l.p50, l.p90, l.p99, l.p999, l.max
    );
}

/// The human report.
pub fn render(r: &LoadReport) -> String {
    let mut out = String::new();
    let rate = r.rate.map(|x| format!(" at {x} req/s")).unwrap_or_default();
    let _ = writeln!(
        out,
        "{} {} | {} loop{rate} | {} conns, pipeline {}, {} thread(s) | {:.2} s",
        r.service,
        r.addr,
        r.mode,
        r.conns,
        r.pipeline,
        r.threads,
        r.run_secs()
    );
    if r.agents > 1 {
        let _ = writeln!(
            out,
            "merged from {} agents; the window they shared: {:.3} to {:.3} (Unix seconds)",
            r.agents, r.window_start_unix, r.window_end_unix
        );
    }
    if let Some(late) = r.start_late_secs {
        let _ = writeln!(out, "started {:.6} s after --start-at", late);
    }
    for w in &r.merge_warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    // No rate without requests: bytes of replies that never verified are not a rate
    // of anything.
    if r.requests_ok > 0 {
        let _ = writeln!(
            out,
            "requests ok {}   errors {}   {:.0} req/s   {:.2} MB/s",
            r.requests_ok, r.errors_total, r.req_per_s, r.mb_per_s
        );
        // Said when it shows: the server stopped answering before the run ended.
        let (run, answered) = (r.run_secs(), r.elapsed_secs);
        if format!("{run:.2}") != format!("{answered:.2}") {
            let _ = writeln!(
                out,
                "rates over the {answered:.3} s the server answered (first request to last \
                 verified reply); the run went on {:.2} s more",
                run - answered
            );
        }
    } else {
        let _ = writeln!(out, "requests ok 0   errors {}", r.errors_total);
    }
    if r.requests_failed + r.requests_unfinished > 0 {
        let _ = writeln!(
            out,
            "requests sent {}   = ok {} + lost to errors {} + unfinished at the end {}",
            r.requests_sent, r.requests_ok, r.requests_failed, r.requests_unfinished
        );
    }
    if r.errors_total > 0 {
        let e = &r.errors;
        let _ = writeln!(
            out,
            "errors: refused {}  timeout {}  mismatch {}  closed_early {}  connect {}  io {}",
            e.refused, e.timeout, e.mismatch, e.closed_early, e.connect, e.io
        );
    }
    if let Some(m) = &r.first_mismatch {
        let byte = |b: u8| std::ascii::escape_default(b).to_string();
        let expected = m
            .expected
            .map_or("end of reply".to_string(), |b| format!("'{}'", byte(b)));
        let _ = match &m.received {
            // The server's own words first: an `ERR` line explains itself.
            Some(line) => writeln!(
                out,
                "first mismatch: server answered \"{line}\" at offset {}, conn {} \
                 (request {}: expected {expected}, got '{}' at offset {})",
                m.received_offset,
                m.conn,
                m.request,
                byte(m.got),
                m.offset
            ),
            None => writeln!(
                out,
                "first mismatch: conn {} request {} offset {}: expected {expected}, got '{}'",
                m.conn,
                m.request,
                m.offset,
                byte(m.got)
            ),
        };
    }
    if r.requests_ok > 0 {
        lat_row(&mut out, "latency", &r.latency_us);
    }
    if let Some(h) = &r.heavy {
        let _ = writeln!(out, "heavy fib({}): requests ok {}", h.n, h.requests_ok);
        lat_row(&mut out, "heavy", &h.latency_us);
    }
    if let Some(cpu) = r.cpu.as_ref().filter(|c| c.load.us_per_request > 0.0) {
        let _ = write!(
            out,
            "cpu: load {:.3} s = {:.2} us/request",
            cpu.load.secs, cpu.load.us_per_request
        );
        let _ = writeln!(out);
    }
    if let Some(a) = &r.server {
        let requests = r.requests_ok + r.heavy.as_ref().map_or(0, |h| h.requests_ok);
        let _ = writeln!(out, "server pid {}: {}", a.pid, a.summary(Some(requests)));
    }
    out
}
