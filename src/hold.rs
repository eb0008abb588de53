//! `concur hold`: being written on this branch; the subcommand exists so the command
//! line is stable, and it says so instead of pretending to measure.

/// `concur hold` on the command line (options arrive with the implementation).
#[derive(Debug, Clone, clap::Args)]
pub struct HoldArgs {
    /// The server, HOST:PORT
    #[arg(long)]
    pub addr: String,
    /// How long to hold the connections (e.g. 10s)
    #[arg(long, value_parser = crate::load::parse_duration, default_value = "10s")]
    pub duration: std::time::Duration,
}

/// Not implemented yet: exits 1 with a clear line.
pub fn run(_args: &HoldArgs) -> anyhow::Result<u8> {
    anyhow::bail!("concur hold is not implemented yet")
}
