//! What every exact merge of agents' reports needs, whatever the reports measured:
//! the one error type ([`MergeError`]), the check that the reports measured the same
//! thing ([`alike`]), a report's histogram read back and added ([`add_histogram`]), and
//! the windows that overlap no other ([`lonely_windows`]).
//!
//! `concur load`'s merge (`merge::merge`) and `concur hold`'s (`hold::merge_hold`,
//! beside the report it merges) are both built on these pieces, and this module
//! names neither report: it sits below `hold` and reads histograms through
//! `load::report`, so a spread hold merges its own processes' reports without reaching
//! up to the `concur merge` command. Why a merge adds histograms rather than averaging
//! percentiles is told in `merge`'s module doc.

use crate::load::report::{decode_histogram, histogram};
use hdrhistogram::Histogram;

/// Why reports could not be merged.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MergeError {
    #[error("nothing to merge: give at least one report")]
    Empty,
    #[error(
        "the reports measured different things: {field} is {first} in {first_name} but {other} in {other_name}"
    )]
    Mismatch {
        field: &'static str,
        first_name: String,
        first: String,
        other_name: String,
        other: String,
    },
    #[error(
        "{name}: its {what} histogram is missing or unreadable ({why}); was it made by `concur load --json` or `concur hold --json`?"
    )]
    Histogram {
        name: String,
        what: &'static str,
        why: String,
    },
}

/// The first of `reports`, once every other has measured the same thing: the fields
/// `identity` gives are compared with the first report's, in order, and the first that
/// differs is refused, naming both reports.
pub fn alike<R, const N: usize>(
    reports: &[(String, R)],
    identity: impl Fn(&R) -> [(&'static str, String); N],
) -> Result<&R, MergeError> {
    let Some((first_name, first)) = reports.first() else {
        return Err(MergeError::Empty);
    };
    let want = identity(first);
    for (name, r) in &reports[1..] {
        for ((field, a), (_, b)) in want.iter().zip(identity(r)) {
            if *a != b {
                return Err(MergeError::Mismatch {
                    field,
                    first_name: first_name.clone(),
                    first: a.clone(),
                    other_name: name.clone(),
                    other: b,
                });
            }
        }
    }
    Ok(first)
}

/// One report's histogram (`what`: "latency", "round-trip"...) read back into one of
/// [`histogram`]'s bounds, naming the report if it cannot be.
fn decode(name: &str, what: &'static str, text: &str) -> Result<Histogram<u64>, MergeError> {
    let fail = |why: String| MergeError::Histogram {
        name: name.to_string(),
        what,
        why,
    };
    if text.is_empty() {
        return Err(fail("absent".into()));
    }
    let h = decode_histogram(text).map_err(|e| fail(e.to_string()))?;
    let mut into = histogram();
    into.add(&h).map_err(|e| fail(format!("{e:?}")))?;
    Ok(into)
}

/// Add one report's histogram to `into`, naming the report if it cannot be read.
pub fn add_histogram(
    into: &mut Histogram<u64>,
    name: &str,
    what: &'static str,
    text: &str,
) -> Result<(), MergeError> {
    into.add(decode(name, what, text)?)
        .map_err(|e| MergeError::Histogram {
            name: name.to_string(),
            what,
            why: format!("{e:?}"),
        })
}

/// A warning for each window (name, start, end in Unix seconds) that overlaps no other
/// one's: that agent did `what` alone, not at the same time as the others.
pub fn lonely_windows(windows: &[(&str, f64, f64)], what: &str) -> Vec<String> {
    if windows.len() < 2 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (i, &(name, start, end)) in windows.iter().enumerate() {
        let overlaps = windows
            .iter()
            .enumerate()
            .any(|(j, &(_, s, e))| j != i && start < e && s < end);
        if !overlaps {
            out.push(format!(
                "{name}: its window ({start:.3} to {end:.3}, Unix seconds) overlaps no other report's; \
                 it did not {what} at the same time"
            ));
        }
    }
    out
}

/// A change to one report, for the merges' tests.
#[cfg(test)]
pub type Change<R> = fn(&mut R);

/// For the merges' tests: the refusals every merge makes, through `merge` (reports in,
/// named as the test names them). Each case's change, applied to a copy of `base`, is
/// refused naming the field and the changed report (`second`), in one line; no report
/// at all is [`MergeError::Empty`]; a report whose histogram `blank` removed is
/// [`MergeError::Histogram`].
#[cfg(test)]
pub fn assert_refused<R: Clone, M: std::fmt::Debug>(
    base: R,
    cases: &[(&str, Change<R>)],
    second: &str,
    blank: fn(&mut R),
    merge: impl Fn(Vec<R>) -> Result<M, MergeError>,
) {
    for &(field, change) in cases {
        let mut other = base.clone();
        change(&mut other);
        let e = merge(vec![base.clone(), other]).unwrap_err();
        assert!(
            matches!(&e, MergeError::Mismatch { field: f, .. } if *f == field),
            "{field}: {e}"
        );
        let text = e.to_string();
        assert!(text.contains(field) && text.contains(second), "{text}");
        assert_eq!(text.lines().count(), 1);
    }
    assert_eq!(merge(Vec::new()).unwrap_err(), MergeError::Empty);
    let mut no_histogram = base.clone();
    blank(&mut no_histogram);
    let e = merge(vec![base, no_histogram]).unwrap_err();
    assert!(matches!(e, MergeError::Histogram { .. }), "{e}");
}
