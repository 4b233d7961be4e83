//! The `shoal` command line: run a site (`shoal node`), talk to one
//! (`put`, `get`, `del`, `status`, `sync`, `elect`, `transfer`, `remove`),
//! send application messages between sites (`msg`, `request`, `listen`),
//! watch a whole group at work (`demo`), measure one (`bench`), or make a
//! group key (`keygen`).

use clap::{Args, Parser, Subcommand};
use shoal_native::api::{self, Request, Response, Status};
use shoal_native::settings::{NodeArgs, Settings};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "shoal",
    version,
    about = "A replicated, embeddable key-value database"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one site of a replication group until SIGINT or SIGTERM.
    Node(Box<NodeArgs>),
    /// Write a key (on the master).
    Put(PutArgs),
    /// Read a key on this node.
    Get(KeyArgs),
    /// Delete a key (on the master).
    Del(KeyArgs),
    /// Show a node's role, LSNs, peers and traffic.
    Status(StatusArgs),
    /// Start synchronising with the master (for --delay-client sites).
    Sync(ApiArgs),
    /// Hold an election.
    Elect(ApiArgs),
    /// Hand mastership to another site (run against the master).
    Transfer(SiteArgs),
    /// Remove a site from the group (run against the master).
    Remove(SiteArgs),
    /// Send an application message to a site or the master (fire-and-forget).
    #[command(after_help = "The message goes over the group's own connections. \
Every part is one argument; the receiving node hands the parts to its \
dispatch (an embedding application's callback, or a `shoal listen` \
connection). Without a dispatch the message is dropped.\n\n\
Examples:\n  shoal msg --to master hello world\n  shoal msg --to 3 --api 127.0.0.1:7101 'cache-invalidate users'")]
    Msg(MsgArgs),
    /// Send an application request to a site or the master; print the response.
    #[command(after_help = "Waits for one response part, or fails: when the \
receiving node has no dispatch (no listener), when its dispatch does not \
answer, when no master is known, when the connection or the master changes \
before the answer, or at the timeout. A channel to `master` always reaches \
the current master; a master sending to `master` receives its own request.\n\n\
Examples:\n  shoal request --to master ping\n  shoal request --to 2 --timeout-ms 500 stats")]
    Request(RequestArgs),
    /// Be a node's message dispatch: print what it receives, answer requests.
    #[command(after_help = "One line per message: the sender, whether it was \
sent to the master, the parts, and whether it waits for a response. With \
--reply TEXT every request is answered TEXT; with --echo, with its parts \
joined by spaces; with neither, requests are refused at once (the sender \
gets \"no response\"). A node has one dispatch: a second listener is \
refused. When the listener stops, requests to that node get \"no dispatch\".\n\n\
Examples:\n  shoal listen --reply pong\n  shoal listen --echo --count 1 --api 127.0.0.1:7102")]
    Listen(ListenArgs),
    /// Start a local 5-site group and play failures, narrated (the main demo).
    Demo(shoal_native::demo::DemoArgs),
    /// Measure a real local group: commits/s, latency, failover, catch-up.
    Bench(shoal_native::bench::BenchArgs),
    /// Show what a site of this build runs with by default.
    Config,
    /// Write a fresh random group key for `shoal node --group-key-file`.
    ///
    /// The key is 32 random bytes as 64 hex digits, in a new file readable
    /// by its owner only (mode 0600). Copy the same file to every site of
    /// the group: a site that cannot prove it holds the key is refused
    /// (authenticated sites, B4).
    Keygen(KeygenArgs),
}

#[derive(Args)]
struct KeygenArgs {
    /// The file to write (it must not exist yet, unless --force).
    file: std::path::PathBuf,
    /// Replace the file if it exists (every site then needs the new key).
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct ApiArgs {
    /// The node's API address (its --api).
    #[arg(long, default_value = "127.0.0.1:7100")]
    api: String,
}

#[derive(Args)]
struct KeyArgs {
    /// The key.
    key: String,
    /// Database name.
    #[arg(long, default_value = "default")]
    db: String,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Args)]
struct PutArgs {
    /// The key.
    key: String,
    /// The value.
    value: String,
    /// Database name.
    #[arg(long, default_value = "default")]
    db: String,
    /// Durability: sync, write-no-sync or no-sync (default: the node's).
    #[arg(long)]
    sync: Option<String>,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Args)]
struct StatusArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Args)]
struct MsgArgs {
    /// Where to send: a site id, or "master" (whichever site is master
    /// when it is sent).
    #[arg(long, value_name = "SITE|master")]
    to: String,
    /// The message parts, one per argument (at most 16).
    #[arg(required = true, value_name = "PART")]
    parts: Vec<String>,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Args)]
struct RequestArgs {
    /// Where to send: a site id, or "master" (whichever site is master
    /// when it is sent).
    #[arg(long, value_name = "SITE|master")]
    to: String,
    /// How long to wait for the response, ms (default: the node's
    /// --channel-timeout-ms, 5000).
    #[arg(long, value_name = "N")]
    timeout_ms: Option<u64>,
    /// The request parts, one per argument (at most 16).
    #[arg(required = true, value_name = "PART")]
    parts: Vec<String>,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Args)]
struct ListenArgs {
    /// Answer every request with this text.
    #[arg(long, value_name = "TEXT", conflicts_with = "echo")]
    reply: Option<String>,
    /// Answer every request with its own parts, joined by spaces.
    #[arg(long)]
    echo: bool,
    /// Stop after this many messages (default: run until interrupted).
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Print each message as a JSON line instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Args)]
struct SiteArgs {
    /// The site id (see `shoal status`).
    site: u32,
    #[command(flatten)]
    api: ApiArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A node's settings are read first: they say how many threads its
    // runtime has. The other commands are clients (the bench drives 64
    // API connections) and keep two.
    let (threads, command) = match cli.command {
        Command::Node(args) => match (*args).resolve() {
            Ok(s) => (s.worker_threads, Run::Node(Box::new(s))),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
        other => (2, Run::Other(other)),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match command {
            Run::Node(settings) => run_node(*settings).await,
            Run::Other(cmd) => run(cmd).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn call(api: &ApiArgs, req: Request) -> Result<Response, String> {
    let r = api::call(&api.api, &req, Duration::from_secs(35))
        .await
        .map_err(|e| e.to_string())?;
    if r.ok {
        Ok(r)
    } else {
        Err(r
            .error
            .unwrap_or_else(|| "the node refused the request".into()))
    }
}

/// What `main` runs once the runtime is built.
enum Run {
    Node(Box<Settings>),
    Other(Command),
}

async fn run_node(settings: Settings) -> Result<ExitCode, String> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&settings.log_level));
    // Colours only for a terminal: a log redirected to a file stays plain.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    for w in &settings.warnings {
        tracing::warn!("{w}");
    }
    shoal_native::node::run(settings).await?;
    Ok(ExitCode::SUCCESS)
}

async fn run(cmd: Command) -> Result<ExitCode, String> {
    match cmd {
        // `main` resolves a node's settings and runs it through `run_node`.
        Command::Node(_) => return Err("a node is started through run_node".into()),
        Command::Put(a) => {
            let r = call(
                &a.api,
                Request::Put {
                    db: a.db,
                    key: a.key,
                    value: a.value,
                    sync: a.sync,
                },
            )
            .await?;
            if let Some(c) = r.commit {
                shoal_native::out!(
                    "committed at {} (generation {}); {}: {}/{} acks, {}",
                    c.lsn,
                    c.generation,
                    if c.permanent {
                        "permanent"
                    } else {
                        "NOT permanent (PERM_FAILED)"
                    },
                    c.acks,
                    c.needed,
                    if c.flushed {
                        "flushed"
                    } else {
                        "not yet flushed"
                    }
                );
                if !c.permanent {
                    return Ok(ExitCode::from(2));
                }
            }
        }
        Command::Get(a) => {
            let r = call(
                &a.api,
                Request::Get {
                    db: a.db,
                    key: a.key,
                },
            )
            .await?;
            match r.value {
                Some(v) => shoal_native::out!("{v}"),
                None => {
                    eprintln!("(not found)");
                    return Ok(ExitCode::from(1));
                }
            }
        }
        Command::Del(a) => {
            let r = call(
                &a.api,
                Request::Del {
                    db: a.db,
                    key: a.key,
                },
            )
            .await?;
            if let Some(c) = r.commit {
                shoal_native::out!("deleted at {}; permanent: {}", c.lsn, c.permanent);
            }
        }
        Command::Status(a) => {
            let r = call(&a.api, Request::Status).await?;
            let st = r.status.ok_or("the node sent no status")?;
            if a.json {
                shoal_native::out!(
                    "{}",
                    serde_json::to_string_pretty(&st).map_err(|e| e.to_string())?
                );
            } else {
                print_status(&st);
            }
        }
        Command::Sync(a) => {
            call(&a, Request::Sync).await?;
            shoal_native::out!("synchronisation started");
        }
        Command::Elect(a) => {
            call(&a, Request::Elect).await?;
            shoal_native::out!("election called");
        }
        Command::Transfer(a) => {
            call(&a.api, Request::Transfer { site: a.site }).await?;
            shoal_native::out!("hand-over to site {} started", a.site);
        }
        Command::Remove(a) => {
            call(&a.api, Request::Remove { site: a.site }).await?;
            shoal_native::out!("site {} removed", a.site);
        }
        Command::Msg(a) => {
            let r = call(
                &a.api,
                Request::Msg {
                    to: a.to,
                    parts: a.parts,
                },
            )
            .await?;
            match r.site {
                Some(s) => shoal_native::out!("sent to site {s}"),
                None => shoal_native::out!("sent"),
            }
        }
        Command::Request(a) => {
            // The node answers by the request's own timeout; wait a little
            // longer for its answer.
            let wait =
                Duration::from_millis(a.timeout_ms.unwrap_or(30_000)) + Duration::from_secs(5);
            let req = Request::ChannelRequest {
                to: a.to,
                parts: a.parts,
                timeout_ms: a.timeout_ms,
            };
            let r = api::call(&a.api.api, &req, wait)
                .await
                .map_err(|e| e.to_string())?;
            if !r.ok {
                return Err(r.error.unwrap_or_else(|| "the request failed".into()));
            }
            shoal_native::out!("{}", r.response.unwrap_or_default());
        }
        Command::Listen(a) => return listen(a).await,
        Command::Demo(a) => {
            let ok = shoal_native::demo::run(a).await?;
            return Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        Command::Bench(a) => shoal_native::bench::run(a).await?,
        Command::Keygen(a) => {
            shoal_native::auth::GroupKey::write_new_file(&a.file, a.force)?;
            shoal_native::out!(
                "wrote a new group key to {} (readable by its owner only); copy it to every \
                 site of the group and start each with --group-key-file FILE",
                a.file.display()
            );
        }
        Command::Config => {
            let config = shoal_core::Config::default();
            shoal_native::out!(
                "shoal {} (protocol version {})",
                env!("CARGO_PKG_VERSION"),
                shoal_core::wire::PROTOCOL_VERSION
            );
            config.validate().map_err(|e| e.to_string())?;
            shoal_native::out!("default site configuration (valid):\n{config:#?}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `shoal listen`: subscribe as the node's dispatch, print every message,
/// answer requests.
async fn listen(a: ListenArgs) -> Result<ExitCode, String> {
    let mut c = api::Client::subscribe(&a.api.api, Duration::from_secs(5)).await?;
    if !a.json {
        eprintln!(
            "listening on {} ({}); Ctrl-C stops",
            a.api.api,
            match (&a.reply, a.echo) {
                (Some(t), _) => format!("requests are answered {t:?}"),
                (None, true) => "requests are answered with their own parts".into(),
                (None, false) =>
                    "requests are refused: pass --reply TEXT or --echo to answer".into(),
            }
        );
    }
    let mut seen = 0u64;
    while a.count.is_none_or(|n| seen < n) {
        let line = c.read().await.map_err(|e| e.to_string())?;
        let Some(m) = line.message else {
            if let Some(e) = line.error {
                eprintln!("error: {e}");
            }
            continue;
        };
        seen += 1;
        if a.json {
            shoal_native::out!("{}", serde_json::to_string(&m).map_err(|e| e.to_string())?);
        } else {
            let parts: Vec<String> = m.parts.iter().map(|p| format!("{p:?}")).collect();
            shoal_native::out!(
                "from site {}{}: {}{}",
                m.from,
                if m.to_master { " (to the master)" } else { "" },
                parts.join(" "),
                if m.id.is_some() { "  [request]" } else { "" }
            );
        }
        if let Some(id) = m.id {
            let answer = match (&a.reply, a.echo) {
                (Some(t), _) => Some(t.clone()),
                (None, true) => Some(m.parts.join(" ")),
                (None, false) => None,
            };
            let req = match answer {
                Some(part) => Request::Respond { id, part },
                None => Request::Refuse { id },
            };
            c.send(&req).await.map_err(|e| e.to_string())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_status(st: &Status) {
    let view = match (st.view, st.view_databases.as_slice()) {
        (false, _) => String::new(),
        (true, []) => ", view of every database".to_string(),
        (true, dbs) => format!(", view of {}", dbs.join(", ")),
    };
    shoal_native::out!(
        "site {} at {} — {}{view}{}{}",
        st.id,
        st.address,
        st.role,
        st.master
            .map(|m| format!(" (master: site {m})"))
            .unwrap_or_default(),
        if st.authenticated {
            "; links authenticated with the group key"
        } else {
            ""
        }
    );
    shoal_native::out!(
        "generation {}  egen {}  last LSN {}  flushed {}  nsites {}  keys {}  digest {}{}{}",
        st.generation,
        st.egen,
        st.last_lsn,
        st.flushed_lsn,
        st.nsites,
        st.keys,
        st.digest,
        if st.view_databases.is_empty() {
            ""
        } else {
            " (of the view's databases)"
        },
        if st.synchronizing {
            "  (synchronising)"
        } else {
            ""
        }
    );
    shoal_native::out!(
        "\n{:>4}  {:<22} {:<10} {:<9} {:>12} {:>10} {:>10} {:>10} {:>10}",
        "site",
        "address",
        "link",
        "electable",
        "acked LSN",
        "lag B",
        "sent B",
        "recv B",
        "frames"
    );
    for s in &st.sites {
        let link = if s.id == st.id {
            "self"
        } else if s.blocked {
            "cut"
        } else if s.connected {
            "up"
        } else {
            "down"
        };
        shoal_native::out!(
            "{:>4}  {:<22} {:<10} {:<9} {:>12} {:>10} {:>10} {:>10} {:>10}",
            s.id,
            s.address,
            link,
            if s.view {
                "view"
            } else if s.electable {
                "yes"
            } else {
                "no"
            },
            s.acked_lsn,
            s.lag_bytes,
            s.bytes_sent,
            s.bytes_received,
            s.frames_sent + s.frames_received
        );
    }
    let line = |v: &[(String, u64)]| {
        v.iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    shoal_native::out!("\ncounters: {}", line(&st.counters));
    shoal_native::out!("received: {}", line(&st.received_by_type));
    shoal_native::out!("sent:     {}", line(&st.sent_by_type));
}
