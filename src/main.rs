//! The `concur` command line: parse, dispatch, and turn errors into a short message and
//! an exit status (2 for what the user can fix, 1 otherwise). Nothing else lives here.
//!
//! Errors keep what the user needs to fix them and drop the rest. A bad value is one
//! line (with the valid values folded in); a command line of the wrong shape (a missing
//! argument, an unknown one) is clap's own message trimmed of blank lines and of "For
//! more information": the names it lists and the usage line stay. Bare `concur` prints
//! the help. Every numeric option takes negative numbers as values, so `--conns -5`
//! says the value must be positive instead of "unexpected argument '-5'".
//!
//! Everything printed on stdout goes through [`print_out`]: a failed write (a full
//! disk, `> /dev/full`) is one line and exit 1, never a panic; a closed pipe (`concur
//! man | head`) ends quietly, as it does for other Unix tools.

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use concur::output::print_out;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "concur",
    version,
    about = "The talk 'Concurrent Programming in Python', measured in Rust (Linux only)",
    long_about = "The talk 'Concurrent Programming in Python', measured in Rust.\n\n\
        Linux only: the servers use epoll and io_uring, and the measurements read /proc.",
    arg_required_else_help = true
)]
struct Cli {
    /// For scripts: no warnings or logs on stderr (overrides -v), no lab progress
    /// bar; results still go to stdout and an error still gets its line
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Which is faster for CPU-bound work: threads or processes? Measures fib(n) five ways
    Fib(concur::fib::command::FibArgs),
    /// The talk's echo and fib servers, one concurrency model at a time
    Serve(concur::serve_cmd::ServeArgs),
    /// List the concurrency models `serve` has and the facts about each (for scripts)
    Models,
    /// Load a server with verified requests: closed or open loop, latency percentiles
    Load(concur::load::LoadArgs),
    /// Merge the JSON reports of several `concur load` (or `concur hold`) agents exactly (histograms added)
    Merge(concur::merge::command::MergeArgs),
    /// The C10K question: open N connections, hold them all, one verified round trip each
    Hold(concur::hold::HoldArgs),
    /// Run the whole talk as experiments on this machine and write a report (the main job)
    Lab(concur::lab::LabArgs),
    /// Print a shell completion script, e.g. `concur completions bash > /etc/bash_completion.d/concur`
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `concur man | man -l -`; with a subcommand, its own page
    Man {
        /// The subcommand whose page to print (concur-serve(1), ...) [default: concur(1)]
        subcommand: Option<String>,
    },
    /// Internal: compute one fib(n) and print it (the `processes` mode's child)
    #[command(hide = true)]
    FibWorker { n: u32 },
}

/// The command line's definition, as parsing, completions and the man page see it:
/// every option that takes a value accepts a negative number as that value, so the
/// value's parser (and [`render_error`]) can say what is wrong with it.
fn definition() -> clap::Command {
    fn negatives_are_values(cmd: clap::Command) -> clap::Command {
        cmd.mut_args(|arg| {
            if arg.get_action().takes_values() {
                arg.allow_negative_numbers(true)
            } else {
                arg
            }
        })
        .mut_subcommands(negatives_are_values)
    }
    negatives_are_values(Cli::command())
}

/// [`definition`] without the hidden subcommands, for completion scripts (which would
/// otherwise offer `fib-worker`, an internal command, beside `fib`).
fn public_definition() -> clap::Command {
    let full = definition();
    clap::Command::new("concur")
        .version(env!("CARGO_PKG_VERSION"))
        .about(full.get_about().cloned().unwrap_or_default())
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|c| !c.is_hide_set()).cloned())
}

fn main() -> ExitCode {
    let parsed = definition()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            eprintln!("{}", render_error(&e));
            return ExitCode::from(2);
        }
        // --help and --version.
        Err(e) => {
            return match print_out(&e.render().to_string()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => fail(&err),
            };
        }
    };
    if cli.quiet {
        concur::logging::set_quiet();
    }
    match dispatch(cli.command) {
        Ok(code) => ExitCode::from(code),
        Err(e) => fail(&e),
    }
}

fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::from(concur::error::exit_code(e))
}

fn dispatch(command: Command) -> anyhow::Result<u8> {
    use concur::fib::command as fib;
    match command {
        Command::Fib(args) => {
            let report = fib::run(&args, &fib::current_exe()?)?;
            if args.json {
                print_out(&format!("{}\n", serde_json::to_string(&report)?))?;
            } else {
                print_out(&fib::render_table(&report))?;
            }
            Ok(0)
        }
        Command::Serve(args) => concur::serve_cmd::run(&args).map(|()| 0),
        Command::Models => {
            print_out(&concur::models::render_table())?;
            Ok(0)
        }
        Command::Load(args) => concur::load::run(&args),
        Command::Merge(args) => concur::merge::command::run(&args),
        Command::Hold(args) => concur::hold::run(&args),
        Command::Lab(args) => concur::lab::run(&args, &fib::current_exe()?),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut public_definition(), "concur", &mut script);
            print_out(&String::from_utf8_lossy(&script))?;
            Ok(0)
        }
        Command::Man { subcommand } => {
            print_out(&man_page(subcommand.as_deref())?)?;
            Ok(0)
        }
        Command::FibWorker { n } => {
            print_out(&format!("{}\n", fib::worker(n)?))?;
            Ok(0)
        }
    }
}

/// The roff man page of `concur`, or of one of its subcommands (`concur-serve(1)`).
fn man_page(subcommand: Option<&str>) -> anyhow::Result<String> {
    let mut root = definition().disable_help_subcommand(true);
    root.build();
    let cmd = match subcommand {
        None => root,
        Some(name) => root
            .find_subcommand(name)
            .filter(|c| !c.is_hide_set())
            .map(|c| c.clone().version(env!("CARGO_PKG_VERSION")))
            .ok_or_else(|| {
                let names: Vec<&str> = root
                    .get_subcommands()
                    .filter(|c| !c.is_hide_set())
                    .map(|c| c.get_name())
                    .collect();
                concur::error::bad_input(format!(
                    "no subcommand '{name}'; man pages exist for {}",
                    names.join(", ")
                ))
            })?,
    };
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd).render(&mut page)?;
    Ok(String::from_utf8_lossy(&page).into_owned())
}

/// clap's error, short: see the module docs for what is kept.
fn render_error(e: &clap::Error) -> String {
    let text = e.render().to_string();
    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        return text.trim_end().to_string();
    }
    let value = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => Some(s.as_str()),
        _ => None,
    };
    let value_error = matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    );
    if value_error
        && let (Some(arg), Some(bad)) = (
            value(ContextKind::InvalidArg),
            value(ContextKind::InvalidValue),
        )
        && bad.starts_with('-')
        && bad.parse::<f64>().is_ok()
    {
        return format!("error: invalid value '{bad}' for '{arg}': must be positive");
    }
    // A negative value that is not a plain number (`--duration -1s`) reaches clap as
    // an unknown option: say what it is, keeping the usage line.
    let negative_value = e.kind() == ErrorKind::UnknownArgument
        && value(ContextKind::InvalidArg).is_some_and(|a| {
            a.strip_prefix('-')
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit() || c == '.'))
        });
    let text = if negative_value {
        let short = value(ContextKind::InvalidArg).unwrap_or_default();
        // clap names only the first "short flag" of `-1s`; the user wrote all of it.
        let bad = std::env::args()
            .find(|a| a.starts_with(short))
            .unwrap_or_else(|| short.to_string());
        let usage = text.lines().find(|l| l.starts_with("Usage:")).unwrap_or("");
        format!("error: unexpected argument '{bad}': values must be positive\n{usage}")
    } else {
        text
    };
    let mut lines = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty() && !l.starts_with("For more information"));
    let first = lines
        .next()
        .unwrap_or("error: bad command line")
        .to_string();
    if value_error {
        // One line: the possible values and clap's tip follow the error on it.
        lines.fold(first, |line, more| match more.trim() {
            tip if tip.starts_with("tip:") => format!("{line} ({tip})"),
            more => format!("{line} {more}"),
        })
    } else {
        std::iter::once(first.as_str())
            .chain(lines)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_definition_is_consistent() {
        super::definition().debug_assert();
    }
}
