//! What concur prints on stdout (reports, tables, JSON) goes through
//! [`print_out`], so a full disk or a closed descriptor is one clear error line
//! and exit 1, never a panic from `println!`. A closed pipe (`| head`) is not an
//! error: the reader has what it wanted.

use std::io::Write;

/// Write `text` to stdout and flush.
pub fn print_out(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::anyhow!("writing to stdout: {e}"))
        }
        _ => Ok(()),
    }
}
