//! What the lab records: every measured point, with the spread of its repeats.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One metric over the repeats of a point: the median is what tables show.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: Vec<f64>,
}

impl Stat {
    /// `None` for no runs; NaN runs are dropped.
    pub fn of(mut runs: Vec<f64>) -> Option<Stat> {
        runs.retain(|x| x.is_finite());
        if runs.is_empty() {
            return None;
        }
        let mut sorted = runs.clone();
        sorted.sort_by(f64::total_cmp);
        let mid = sorted.len() / 2;
        let median = if sorted.len() % 2 == 1 {
            sorted[mid]
        } else {
            (sorted[mid - 1] + sorted[mid]) / 2.0
        };
        Some(Stat {
            median,
            min: sorted[0],
            max: sorted[sorted.len() - 1],
            runs,
        })
    }
}

/// One measured point: a server (model) under one case of one experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// `cpu`, `echo`, `scaling` or `fibload`.
    pub experiment: String,
    /// The model (`epoll`), a Python peer (`python-asyncio`), or `rust`/`python` for cpu.
    pub server: String,
    /// The case within the experiment, e.g. `conns=100 size=64`.
    pub case: String,
    /// The exact parameters of the case.
    pub params: BTreeMap<String, serde_json::Value>,
    /// Metric name to its value over the repeats.
    pub metrics: BTreeMap<String, Stat>,
    /// Why the point failed, in one line.
    pub error: Option<String>,
    /// Why the point was not run: decided beforehand from the server's nature and the
    /// machine's limits (the scaling ladder), in words with the arithmetic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// How the server's figures were measured, metric name to "cgroup", "sampled" or
    /// "not measured": over the repeats, the least exact of them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub measured: BTreeMap<String, String>,
}

impl Point {
    pub fn new(experiment: &str, server: &str, case: &str) -> Point {
        Point {
            experiment: experiment.into(),
            server: server.into(),
            case: case.into(),
            params: BTreeMap::new(),
            metrics: BTreeMap::new(),
            error: None,
            skipped: None,
            measured: BTreeMap::new(),
        }
    }

    /// The identity `--compare` matches points by.
    pub fn key(&self) -> String {
        format!("{} / {} / {}", self.experiment, self.server, self.case)
    }

    /// The median of a metric, if measured.
    pub fn get(&self, metric: &str) -> Option<f64> {
        self.metrics.get(metric).map(|s| s.median)
    }

    /// How `metric` was measured ("cgroup", "sampled", "not measured"), if recorded.
    pub fn how(&self, metric: &str) -> Option<&str> {
        self.measured.get(metric).map(String::as_str)
    }

    /// Record how each run measured its figures, keeping for each metric the least
    /// exact: a median over a sampled run and a cgroup run is not exact.
    pub fn set_measured<'a>(
        &mut self,
        runs: impl IntoIterator<Item = &'a BTreeMap<String, String>>,
    ) {
        let rank = |how: &str| match how {
            "cgroup" => 2,
            "sampled" => 1,
            _ => 0,
        };
        for run in runs {
            for (metric, how) in run {
                let keep = self
                    .measured
                    .get(metric)
                    .is_some_and(|old| rank(old) <= rank(how));
                if !keep {
                    self.measured.insert(metric.clone(), how.clone());
                }
            }
        }
    }

    /// Gather repeats (`runs`, each a map of metric to value) into medians.
    pub fn set_runs(&mut self, runs: &[BTreeMap<String, f64>]) {
        let mut names: Vec<&String> = runs.iter().flat_map(|r| r.keys()).collect();
        names.sort();
        names.dedup();
        for name in names {
            let values = runs.iter().filter_map(|r| r.get(name).copied()).collect();
            if let Some(stat) = Stat::of(values) {
                self.metrics.insert(name.clone(), stat);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        let s = Stat::of(vec![3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Stat::of(vec![1.0, 4.0]).unwrap().median, 2.5);
        assert!(Stat::of(vec![]).is_none());
        assert_eq!(Stat::of(vec![f64::NAN, 5.0]).unwrap().runs, vec![5.0]);
    }

    #[test]
    fn runs_become_metrics() {
        let mut p = Point::new("echo", "epoll", "conns=1");
        let run = |x: f64| BTreeMap::from([("req_per_s".to_string(), x)]);
        p.set_runs(&[run(10.0), run(30.0), run(20.0)]);
        assert_eq!(p.get("req_per_s"), Some(20.0));
        assert_eq!(p.key(), "echo / epoll / conns=1");
    }
}
