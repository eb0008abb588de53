//! Errors a user can act on.
//!
//! Library code returns `anyhow::Result` with context at each step; an error that is
//! the user's to fix (bad input, a busy port, a missing kernel feature) carries a
//! [`BadInput`] somewhere in its chain, and the binary exits 2 for it, 1 otherwise.
//! Either way the user sees one line.

/// An error caused by what the user asked for, not by concur: exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

/// The exit status for an error: 2 if the user can fix it by asking differently.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    if err.chain().any(|e| e.is::<BadInput>()) {
        2
    } else {
        1
    }
}

/// Shorthand for a [`BadInput`] error.
pub fn bad_input(msg: impl Into<String>) -> anyhow::Error {
    BadInput(msg.into()).into()
}
