//! The `concur` command line: parse, dispatch, and turn errors into one line and an
//! exit status (2 for what the user can fix, 1 otherwise). Nothing else lives here.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "concur",
    version,
    about = "The talk 'Concurrent Programming in Python', measured in Rust (Linux only)",
    long_about = "The talk 'Concurrent Programming in Python', measured in Rust.\n\n\
        Linux only: the servers use epoll and io_uring, and the measurements read /proc."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Which is faster for CPU-bound work: threads or processes? Measures fib(n) five ways
    Fib(concur::fib::command::FibArgs),
    /// The talk's echo and fib servers, one concurrency model at a time
    Serve(concur::serve::ServeArgs),
    /// List the concurrency models `serve` has and the facts about each (for scripts)
    Models,
    /// Load a server with verified requests: closed or open loop, latency percentiles
    Load(concur::load::LoadArgs),
    /// Merge the JSON reports of several `concur load` agents exactly (histograms added)
    Merge(concur::load::MergeArgs),
    /// The C10K question: open N connections, hold them all, one verified round trip each
    Hold(concur::hold::HoldArgs),
    /// Run the whole talk as experiments on this machine and write a report (the main job)
    Lab(concur::lab::LabArgs),
    /// Internal: compute one fib(n) and print it (the `processes` mode's child)
    #[command(hide = true)]
    FibWorker { n: u32 },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            let text = e.render().to_string();
            eprintln!(
                "{}",
                text.lines().next().unwrap_or("error: bad command line")
            );
            return ExitCode::from(2);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    match dispatch(cli.command) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(concur::error::exit_code(&e))
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<u8> {
    use concur::fib::command as fib;
    match command {
        Command::Fib(args) => {
            let report = fib::run(&args, &fib::current_exe()?)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", fib::render_table(&report));
            }
            Ok(0)
        }
        Command::Serve(args) => concur::serve::run(&args).map(|()| 0),
        Command::Models => {
            use std::io::Write;
            let table = concur::models::render_table();
            std::io::stdout()
                .lock()
                .write_all(table.as_bytes())
                .map_err(|e| anyhow::anyhow!("writing the table to stdout: {e}"))?;
            Ok(0)
        }
        Command::Load(args) => concur::load::run(&args),
        Command::Merge(args) => concur::load::run_merge(&args),
        Command::Hold(args) => concur::hold::run(&args),
        Command::Lab(args) => concur::lab::run(&args, &fib::current_exe()?),
        Command::FibWorker { n } => fib::worker_main(n).map(|()| 0),
    }
}
