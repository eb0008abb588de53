//! `concur merge` on the command line: read the reports (files or standard input, a
//! file may hold several), tell `load` reports from `hold` reports, merge them with
//! [`super::merge`] (or [`merge_hold`]) and print the usual table or JSON.

use crate::error::bad_input;
use crate::hold::{HoldMerge, merge_hold};
use crate::load::{LoadReport, report};
use anyhow::Result;

/// `concur merge` on the command line.
#[derive(Debug, Clone, clap::Args)]
pub struct MergeArgs {
    /// Reports of `concur load --json`, or of `concur hold --json` (all of one kind), or
    /// of earlier merges: files, or - for standard input; a file may hold several
    /// reports one after another
    #[arg(required = true, value_name = "REPORT")]
    pub reports: Vec<String>,
    /// Print one JSON object (the schema of the reports merged: `concur load --json`
    /// or `concur hold --json`) instead of the table
    #[arg(long)]
    pub json: bool,
}

/// One report read by `concur merge`: of `load`, or of `hold` (which has `rtt_us`).
// One per input file, moved out at once: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum AnyReport {
    Load(LoadReport),
    Hold(HoldMerge),
}

/// Read every report in `text` (one JSON object after another), naming each.
fn parse_reports(source: &str, text: &str) -> Result<Vec<(String, AnyReport)>> {
    let mut out = Vec::new();
    for (i, value) in serde_json::Deserializer::from_str(text)
        .into_iter::<serde_json::Value>()
        .enumerate()
    {
        let value = value.map_err(|e| bad_input(format!("{source}: not JSON: {e}")))?;
        let name = if i == 0 {
            source.to_string()
        } else {
            format!("{source}#{}", i + 1)
        };
        let report = if value.get("rtt_us").is_some() {
            AnyReport::Hold(serde_json::from_value(value).map_err(|e| {
                bad_input(format!("{name}: not a `concur hold --json` report: {e}"))
            })?)
        } else {
            AnyReport::Load(serde_json::from_value(value).map_err(|e| {
                bad_input(format!("{name}: not a `concur load --json` report: {e}"))
            })?)
        };
        out.push((name, report));
    }
    if out.is_empty() {
        return Err(bad_input(format!("{source}: no report in it")));
    }
    Ok(out)
}

/// `concur merge`: read the reports, merge them exactly, print, return the exit status
/// (that of one run of the command that made them: `load`'s or `hold`'s).
pub fn run(args: &MergeArgs) -> Result<u8> {
    use std::io::Read as _;
    let mut reports = Vec::new();
    for source in &args.reports {
        let text = if source == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| anyhow::anyhow!("reading standard input: {e}"))?;
            text
        } else {
            std::fs::read_to_string(source).map_err(|e| bad_input(format!("{source}: {e}")))?
        };
        let name = if source == "-" { "stdin" } else { source };
        reports.extend(parse_reports(name, &text)?);
    }
    let (mut loads, mut holds) = (Vec::new(), Vec::new());
    for (name, r) in reports {
        match r {
            AnyReport::Load(r) => loads.push((name, r)),
            AnyReport::Hold(r) => holds.push((name, r)),
        }
    }
    if let (Some((l, _)), Some((h, _))) = (loads.first(), holds.first()) {
        return Err(bad_input(format!(
            "{h} is a `concur hold` report but {l} is a `concur load` report; merge reports of one kind"
        )));
    }
    if !holds.is_empty() {
        let merged = merge_hold(&holds).map_err(|e| bad_input(e.to_string()))?;
        for w in &merged.merge_warnings {
            eprintln!("warning: {w}");
        }
        if args.json {
            crate::output::print_out(&format!("{}\n", serde_json::to_string(&merged)?))?;
        } else {
            let mut table = crate::hold::render(&merged.report);
            if merged.agents > 1 {
                table.push_str(&format!(
                    "merged from {} agents; the window they spanned: {:.3} to {:.3} (Unix seconds)\n",
                    merged.agents, merged.report.window_start_unix, merged.report.window_end_unix
                ));
            }
            crate::output::print_out(&table)?;
        }
        return Ok(merged.report.exit_code());
    }
    let merged = super::merge(&loads).map_err(|e| bad_input(e.to_string()))?;
    for w in &merged.merge_warnings {
        eprintln!("warning: {w}");
    }
    if args.json {
        crate::output::print_out(&format!("{}\n", serde_json::to_string(&merged)?))?;
    } else {
        crate::output::print_out(&report::render(&merged))?;
    }
    Ok(merged.exit_code())
}
