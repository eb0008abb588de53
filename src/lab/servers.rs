//! The servers a lab run measures, all declared the same way: a name, a shell command
//! per protocol with `{port}` where the port goes, and a few facts the experiments
//! need. concur's own models and the Python peers are entries the lab declares itself
//! ([`builtin`]); a user's own servers come from `--server NAME=COMMAND`,
//! `--fib-server NAME=COMMAND` and `lab.toml` ([`user`]). Every one of them is then
//! started, measured and stopped by the same code (`runner::Server`).
//!
//! Placeholders in a command: `{port}` (required: the free loopback port the server
//! must listen on, 127.0.0.1), `{max_conns}` (the connections the experiment will
//! open, plus headroom) and `{max_n}` (the largest fib the experiment asks).

use super::ladder::Nature;
use crate::error::bad_input;
use crate::models::Ceiling;
use anyhow::Result;

/// Which family a server belongs to: the report groups them so each can be found.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// The talk's five models in Rust.
    Talk,
    /// concur's further models (epoll, io_uring, pools...).
    Further,
    /// The talk's servers in CPython (`peers/python/`).
    Python,
    /// The user's own, from `--server`, `--fib-server` or `lab.toml`.
    User,
}

impl Family {
    pub fn label(self) -> &'static str {
        match self {
            Family::Talk => "the talk's models (Rust)",
            Family::Further => "further models (Rust)",
            Family::Python => "the talk's servers in CPython",
            Family::User => "your servers",
        }
    }
}

/// One server the lab can run.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerDecl {
    pub name: String,
    pub family: Family,
    /// Shell command serving the echo protocol.
    pub echo: Option<String>,
    /// What the echo server puts before each chunk it read (`""`: plain echo).
    pub prefix: String,
    /// Shell command serving the fib protocol (inline, as the talk's fib server).
    pub fib: Option<String>,
    /// The same server handing fib to a worker pool (`--offload`).
    pub fib_offload: Option<String>,
    /// The heavy fib(K) the fibload experiment asks of it.
    pub heavy_n: u32,
    /// What the scaling ladder knows of it before each rung.
    pub nature: Nature,
    /// Its echo command as `--fork --workers {workers}` event-loop processes, for a
    /// model whose loops can fork (`fork_loops`): the rungs one process cannot hold.
    pub echo_forked: Option<String>,
    /// For a Python peer, the concur model written the same way (the answers compare them).
    pub counterpart: Option<String>,
    /// A concur model: its facts (the ten are compared by them in the answers).
    pub model: bool,
    /// Seconds to wait for it to exit after SIGTERM before killing it (and noting it).
    pub grace_secs: u64,
}

/// Quote `s` for `sh`: one word, whatever it holds.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The talk's servers in Python: (name, file under peers/python/).
pub const PYTHON_SERVERS: [(&str, &str); 5] = [
    ("python-blocking", "blocking.py"),
    ("python-threads", "threads.py"),
    ("python-processes", "processes.py"),
    ("python-selectors", "selectors_loop.py"),
    ("python-asyncio", "asyncio_server.py"),
];

/// What the lab knows of a Python peer, declared here beside [`PYTHON_SERVERS`] as the
/// registry declares it of concur's models.
struct PeerFacts {
    name: &'static str,
    /// What bounds the clients it serves at once.
    ceiling: Ceiling,
    /// It holds every connection in one process.
    one_process: bool,
    /// The concur model written the same way.
    counterpart: &'static str,
}

/// The facts of each of [`PYTHON_SERVERS`]. The selectors loop uses
/// `selectors.DefaultSelector`, epoll on Linux: FD_SETSIZE does not bound it.
const PEER_FACTS: [PeerFacts; 5] = [
    PeerFacts {
        name: "python-blocking",
        ceiling: Ceiling::One,
        one_process: true,
        counterpart: "blocking",
    },
    PeerFacts {
        name: "python-threads",
        ceiling: Ceiling::Threads,
        one_process: true,
        counterpart: "threads",
    },
    PeerFacts {
        name: "python-processes",
        ceiling: Ceiling::Processes,
        one_process: false,
        counterpart: "processes",
    },
    PeerFacts {
        name: "python-selectors",
        ceiling: Ceiling::Descriptors,
        one_process: true,
        counterpart: "select",
    },
    PeerFacts {
        name: "python-asyncio",
        ceiling: Ceiling::Descriptors,
        one_process: true,
        counterpart: "async",
    },
];

fn peer_facts(name: &str) -> Option<&'static PeerFacts> {
    PEER_FACTS.iter().find(|f| f.name == name)
}

/// The models the talk shows; the rest of the registry are "further models".
pub(crate) const TALK_MODELS: [&str; 5] = ["blocking", "threads", "processes", "select", "async"];

/// What the built-in entries need to know of this run.
pub struct Builtins<'a> {
    pub exe: &'a std::path::Path,
    /// python3 and the directory of the talk's Python servers, when both are here.
    pub python: Option<(&'a std::path::Path, &'a std::path::Path)>,
    /// The concur models asked for.
    pub models: &'a [String],
    pub heavy: u32,
    pub heavy_python: u32,
}

/// The entries the lab declares itself: the chosen concur models, then the Python peers.
pub fn builtin(b: &Builtins) -> Vec<ServerDecl> {
    let exe = sh_quote(&b.exe.to_string_lossy());
    let mut list = Vec::new();
    for info in crate::models::REGISTRY
        .iter()
        .filter(|m| b.models.iter().any(|n| n == m.name))
    {
        let serve = format!(
            "exec {exe} serve --model {} --addr 127.0.0.1:{{port}}",
            info.name
        );
        let fib_capable = info.event_loop || info.ceiling == Ceiling::Threads;
        list.push(ServerDecl {
            name: info.name.to_string(),
            family: if TALK_MODELS.contains(&info.name) {
                Family::Talk
            } else {
                Family::Further
            },
            echo: Some(format!("{serve} --service echo --max-conns {{max_conns}}")),
            prefix: "Received: ".into(),
            fib: fib_capable.then(|| format!("{serve} --service fib --max-n {{max_n}}")),
            fib_offload: info
                .event_loop
                .then(|| format!("{serve} --service fib --max-n {{max_n}} --offload")),
            heavy_n: b.heavy,
            nature: Nature::of_model(info),
            echo_forked: info.fork_loops.then(|| {
                format!(
                    "{serve} --service echo --max-conns {{max_conns}} --workers {{workers}} --fork"
                )
            }),
            counterpart: None,
            model: true,
            grace_secs: 8,
        });
    }
    if let Some((python, dir)) = b.python {
        for (name, file) in PYTHON_SERVERS {
            let run = format!(
                "exec {} {} --addr 127.0.0.1:{{port}}",
                sh_quote(&python.to_string_lossy()),
                sh_quote(&dir.join(file).to_string_lossy())
            );
            let fib = ["python-asyncio", "python-threads"].contains(&name);
            let facts = peer_facts(name);
            list.push(ServerDecl {
                name: name.to_string(),
                family: Family::Python,
                echo: Some(format!("{run} --service echo")),
                prefix: "Received: ".into(),
                fib: fib.then(|| format!("{run} --service fib --max-n {{max_n}}")),
                fib_offload: None,
                heavy_n: b.heavy_python,
                nature: facts.map_or(Nature::UNKNOWN, |f| Nature {
                    ceiling: Some(f.ceiling),
                    one_process: f.one_process,
                    fork_loops: false,
                    pool_per_core: 0,
                }),
                echo_forked: None,
                counterpart: facts.map(|f| f.counterpart.to_string()),
                model: false,
                grace_secs: 8,
            });
        }
    }
    list
}

/// A user's server as given on the command line or in lab.toml.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserServer {
    pub name: String,
    /// Shell command of its echo service.
    #[serde(default)]
    pub command: Option<String>,
    /// Shell command of its fib service.
    #[serde(default)]
    pub fib_command: Option<String>,
    /// Its echo prefix; `""` for plain echo [default: the talk's `Received: `].
    #[serde(default)]
    pub prefix: Option<String>,
    /// The heavy fib(K) of the fibload experiment [default: the one CPython gets].
    #[serde(default)]
    pub heavy_n: Option<u32>,
}

/// Split `NAME=COMMAND` (the flag names the option in the error).
pub fn split_named(flag: &str, text: &str) -> Result<(String, String)> {
    let Some((name, command)) = text.split_once('=') else {
        return Err(bad_input(format!(
            "{flag} '{text}': give NAME=COMMAND, e.g. {flag} 'mine=python3 server.py --port {{port}}'"
        )));
    };
    Ok((name.trim().to_string(), command.to_string()))
}

/// The user's servers as entries: names checked (distinct, not a built-in's, printable
/// in a file name), commands checked for `{port}`; an echo and a fib command given
/// under one name make one server.
pub fn user(
    servers: &[UserServer],
    builtin_names: &[String],
    default_heavy: u32,
) -> Result<Vec<ServerDecl>> {
    let mut list: Vec<ServerDecl> = Vec::new();
    for s in servers {
        let name = s.name.as_str();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(bad_input(format!(
                "server name '{name}': use letters, digits, '-', '_' and '.' only"
            )));
        }
        if builtin_names.iter().any(|b| b == name) {
            return Err(bad_input(format!(
                "server name '{name}' is a built-in server's; pick another (or pass --servers-only)"
            )));
        }
        for cmd in [&s.command, &s.fib_command].into_iter().flatten() {
            if !cmd.contains("{port}") {
                return Err(bad_input(format!(
                    "server {name}: its command must contain {{port}}, where the lab puts the \
                     port it must listen on (127.0.0.1): '{cmd}'"
                )));
            }
        }
        if s.command.is_none() && s.fib_command.is_none() {
            return Err(bad_input(format!(
                "server {name}: give a command (echo) or a fib_command"
            )));
        }
        let decl = match list.iter_mut().find(|d| d.name == name) {
            Some(d) => d,
            None => {
                list.push(ServerDecl {
                    name: name.to_string(),
                    family: Family::User,
                    echo: None,
                    prefix: "Received: ".into(),
                    fib: None,
                    fib_offload: None,
                    heavy_n: default_heavy,
                    nature: Nature::UNKNOWN,
                    echo_forked: None,
                    counterpart: None,
                    model: false,
                    grace_secs: 3,
                });
                list.last_mut().expect("just pushed")
            }
        };
        let clash =
            |what: &str| bad_input(format!("server {name}: its {what} command is given twice"));
        if let Some(c) = &s.command
            && decl.echo.replace(c.clone()).is_some()
        {
            return Err(clash("echo"));
        }
        if let Some(c) = &s.fib_command
            && decl.fib.replace(c.clone()).is_some()
        {
            return Err(clash("fib"));
        }
        if let Some(p) = &s.prefix {
            decl.prefix = p.clone();
        }
        if let Some(h) = s.heavy_n {
            decl.heavy_n = h;
        }
    }
    Ok(list)
}

/// The command for one experiment: every placeholder replaced but `{port}`, which the
/// runner fills with the free port it found (`{workers}` only a forked command has).
pub fn fill(template: &str, max_conns: u32, max_n: u32, workers: u64) -> String {
    template
        .replace("{max_conns}", &max_conns.to_string())
        .replace("{max_n}", &max_n.to_string())
        .replace("{workers}", &workers.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(name: &str, echo: Option<&str>, fib: Option<&str>) -> UserServer {
        UserServer {
            name: name.into(),
            command: echo.map(String::from),
            fib_command: fib.map(String::from),
            ..UserServer::default()
        }
    }

    #[test]
    fn builtins_are_plain_entries() {
        let models: Vec<String> = ["blocking", "epoll", "threads"].map(String::from).to_vec();
        let b = Builtins {
            exe: std::path::Path::new("/x/it's/concur"),
            python: Some((std::path::Path::new("python3"), std::path::Path::new("/p"))),
            models: &models,
            heavy: 36,
            heavy_python: 27,
        };
        let list = builtin(&b);
        let names: Vec<&str> = list.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names[..3], ["blocking", "threads", "epoll"]);
        assert_eq!(list.len(), 3 + PYTHON_SERVERS.len());
        let epoll = &list[2];
        assert_eq!(epoll.family, Family::Further);
        assert_eq!(epoll.nature.ceiling, Some(Ceiling::Descriptors));
        assert!(epoll.nature.one_process && epoll.echo_forked.is_none());
        assert!(epoll.fib_offload.is_some());
        assert_eq!(
            fill(epoll.echo.as_deref().unwrap(), 11000, 0, 0).replace("{port}", "4000"),
            "exec '/x/it'\\''s/concur' serve --model epoll --addr 127.0.0.1:4000 --service echo --max-conns 11000"
        );
        assert_eq!(list[0].nature.ceiling, Some(Ceiling::One));
        assert!(
            list[0].fib.is_none(),
            "blocking serves one client: no fibload"
        );
        let threads_py = list.iter().find(|d| d.name == "python-threads").unwrap();
        assert!(
            threads_py
                .echo
                .as_deref()
                .unwrap()
                .contains("'/p/threads.py'")
        );
        assert_eq!(threads_py.heavy_n, 27);
        assert_eq!(threads_py.nature.ceiling, Some(Ceiling::Threads));
        assert_eq!(threads_py.counterpart.as_deref(), Some("threads"));
        // reuseport's loops fork: its forked command takes the workers.
        let reuseport = builtin(&Builtins {
            models: &["reuseport".to_string()],
            python: None,
            ..b
        });
        let forked = fill(reuseport[0].echo_forked.as_deref().unwrap(), 101_000, 0, 6);
        assert!(
            forked.ends_with("--service echo --max-conns 101000 --workers 6 --fork"),
            "{forked}"
        );
        assert!(reuseport[0].nature.fork_loops);
        // Every peer has its facts, and each counterpart is a model.
        for (name, _) in PYTHON_SERVERS {
            let f = peer_facts(name).unwrap_or_else(|| panic!("{name} has no facts"));
            assert!(crate::models::by_name(f.counterpart).is_some(), "{name}");
        }
    }

    #[test]
    fn user_servers_merge_by_name_and_are_checked() {
        let list = user(
            &[
                us("mine", Some("./srv {port}"), None),
                us("mine", None, Some("./fib {port}")),
                UserServer {
                    prefix: Some(String::new()),
                    ..us("plain", Some("./echo {port}"), None)
                },
            ],
            &["epoll".into()],
            27,
        )
        .unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].fib.as_deref(), Some("./fib {port}"));
        assert_eq!(list[0].prefix, "Received: ");
        assert_eq!(list[1].prefix, "");
        for (bad, needle) in [
            (us("epoll", Some("x {port}"), None), "built-in"),
            (us("a b", Some("x {port}"), None), "letters"),
            (us("nop", Some("x 8080"), None), "{port}"),
            (us("none", None, None), "give a command"),
        ] {
            let err = user(&[bad], &["epoll".into()], 27).unwrap_err();
            assert_eq!(crate::error::exit_code(&err), 2);
            assert!(err.to_string().contains(needle), "{err}");
        }
        let twice = user(
            &[
                us("d", Some("a {port}"), None),
                us("d", Some("b {port}"), None),
            ],
            &[],
            27,
        );
        assert!(twice.unwrap_err().to_string().contains("given twice"));
        assert_eq!(
            split_named("--server", "x=python3 -c 'a=1' {port}").unwrap(),
            ("x".into(), "python3 -c 'a=1' {port}".into())
        );
        assert!(split_named("--server", "nocommand").is_err());
    }
}
