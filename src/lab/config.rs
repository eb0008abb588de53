//! `--config lab.toml`: a comparison written down, so it can be committed and rerun.
//! It holds the same choices as the command line (the command line wins where both
//! give one) and the user's servers:
//!
//! ```toml
//! experiments = ["echo", "scaling"]
//! servers_only = true        # skip concur's models and the Python peers
//! repeat = 3
//!
//! [[server]]
//! name = "mine"
//! command = "python3 my_server.py --port {port}"
//! prefix = ""                # plain echo: replies are the bytes read, nothing before
//!
//! [[server]]
//! name = "mine-fib"
//! fib_command = "./fib_server {port}"
//! heavy_n = 30
//! ```
//!
//! Unknown keys are refused by name, so a typo is not silently ignored.

use super::servers::UserServer;
use crate::error::bad_input;
use anyhow::Result;
use std::path::Path;

/// The contents of a lab file.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabFile {
    pub quick: Option<bool>,
    pub repeat: Option<u32>,
    pub conns_max: Option<u32>,
    pub models: Option<Vec<String>>,
    pub experiments: Option<Vec<String>>,
    pub no_python: Option<bool>,
    pub servers_only: Option<bool>,
    /// How long a server may take to listen, e.g. "15s".
    pub ready_timeout: Option<String>,
    #[serde(default)]
    pub server: Vec<UserServer>,
}

impl LabFile {
    pub fn read(path: &Path) -> Result<LabFile> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad_input(format!("--config {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| bad_input(format!("--config {}: {e}", path.display())))
    }

    fn parse(text: &str) -> Result<LabFile, String> {
        toml::from_str(text).map_err(|e| {
            // toml's message spans several lines (the offending line, a caret): keep
            // the first and say where.
            let first = e.message().lines().next().unwrap_or("invalid").to_string();
            match e.span() {
                Some(span) => {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    format!("line {line}: {first}")
                }
                None => first,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lab_file_lists_servers_and_choices() {
        let f = LabFile::parse(
            r#"
experiments = ["echo"]
servers_only = true
ready_timeout = "5s"

[[server]]
name = "mine"
command = "python3 s.py {port}"
prefix = ""

[[server]]
name = "fast"
fib_command = "./fib {port}"
heavy_n = 30
"#,
        )
        .unwrap();
        assert_eq!(f.experiments, Some(vec!["echo".to_string()]));
        assert_eq!(f.servers_only, Some(true));
        assert_eq!(f.server.len(), 2);
        assert_eq!(f.server[0].prefix.as_deref(), Some(""));
        assert_eq!(f.server[1].heavy_n, Some(30));
        assert_eq!(LabFile::parse("").unwrap(), LabFile::default());
    }

    #[test]
    fn a_typo_is_refused_on_one_line_with_where() {
        let err = LabFile::parse("repeat = 3\nreapet = 3\n").unwrap_err();
        assert!(err.starts_with("line 2: unknown field `reapet`"), "{err}");
        assert_eq!(err.lines().count(), 1);
        let err = LabFile::parse("[[server]]\nname = \"x\"\ncomand = \"y\"\n").unwrap_err();
        assert!(err.contains("comand"), "{err}");
        assert!(LabFile::parse("repeat = \"three\"").is_err());
    }
}
