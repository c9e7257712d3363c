//! The `herald` command: `serve`, account administration and config checking.
//! Thin on purpose: parse arguments, load config, call into herald-server.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use herald_server::accounts::{self, user_jid};
use herald_server::{Config, Settings};

mod files;

/// mimalloc instead of the system allocator: the server allocates and frees many small
/// objects per stanza (element trees, per-stanza handler futures) from several threads;
/// glibc's malloc spent ~18% of the CPU of a 40,000 msg/s chat run in its own bookkeeping
/// (chunk consolidation on every larger request).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "herald",
    version,
    about = "Herald XMPP instant messaging and presence server"
)]
struct Cli {
    /// TOML configuration file (default: built-in defaults for domain `localhost`).
    #[arg(long, short, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve,
    /// Manage accounts (works whether or not the server is running).
    #[command(subcommand)]
    User(UserCmd),
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// XEP-0106 JID escaping, for names coming from directories.
    #[command(subcommand)]
    Jid(JidCmd),
    /// Uploaded files (XEP-0363): the transfer audit log, and purging.
    #[command(subcommand)]
    Files(files::FilesCmd),
    /// Manage persistent chat rooms (XEP-0045).
    #[command(subcommand)]
    Room(RoomCmd),
}

#[derive(Subcommand)]
enum RoomCmd {
    /// List the stored rooms of a domain (or of a chat service domain).
    List { domain: String },
    /// Create a persistent room with its owners.
    Create {
        /// The room's JID, e.g. team@conference.example.org.
        room: String,
        /// An owner's JID (repeat for several).
        #[arg(long = "owner", required = true)]
        owners: Vec<String>,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// Only members may enter.
        #[arg(long)]
        members_only: bool,
        /// Not listed in the room directory.
        #[arg(long)]
        hidden: bool,
        #[arg(long)]
        password: Option<String>,
    },
    /// Destroy a room (its archive is kept until retention removes it).
    Destroy { room: String },
    /// Show a room's configuration and affiliations.
    Show { room: String },
    /// Set one JID's affiliation: owner, admin, member, outcast or none.
    Affiliate {
        room: String,
        jid: String,
        affiliation: String,
    },
}

#[derive(Subcommand)]
enum JidCmd {
    /// Escape a raw name into a valid localpart (e.g. "d'artagnan" -> "d\\27artagnan").
    Escape { name: String },
    /// Turn an escaped localpart back into the raw name.
    Unescape { localpart: String },
}

#[derive(Subcommand)]
enum UserCmd {
    /// Create an account.
    Add {
        jid: String,
        /// The password (visible in the process list: prefer --password-stdin).
        #[arg(long, conflicts_with = "password_stdin")]
        password: Option<String>,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Delete an account and everything it owns.
    Del { jid: String },
    /// Change an account's password (asks for it, or --password / --password-stdin).
    Passwd {
        jid: String,
        #[arg(long, conflicts_with = "password_stdin")]
        password: Option<String>,
        #[arg(long)]
        password_stdin: bool,
    },
    /// List the accounts of a domain.
    List { domain: String },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate the configuration and print a summary.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Config::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("herald: config error: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Serve => serve(settings).await,
            Command::User(cmd) => user(settings, cmd).await,
            Command::Files(cmd) => match open_store(&settings).await {
                Ok(store) => files::run(&settings, store, cmd).await,
                Err(e) => Err(e),
            },
            Command::Room(cmd) => room(settings, cmd).await,
            Command::Jid(JidCmd::Escape { name }) => {
                println!("{}", herald_core::jid::escape_node(&name));
                Ok(())
            }
            Command::Jid(JidCmd::Unescape { localpart }) => {
                println!("{}", herald_core::jid::unescape_node(&localpart));
                Ok(())
            }
            Command::Config(ConfigCmd::Check) => {
                check(&settings);
                Ok(())
            }
        }
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check(s: &Settings) {
    println!("configuration OK");
    println!("  domains:        {}", s.domains.join(", "));
    println!("  storage:        {}", redact(&s.storage_url));
    let list = |v: &[std::net::SocketAddr]| {
        v.iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("  c2s (STARTTLS): {}", list(&s.c2s));
    println!("  c2s direct TLS: {}", list(&s.c2s_direct_tls));
    println!("  http:           {}", list(&s.http));
    println!("  https:          {}", list(&s.https));
    println!("  components:     {}", list(&s.component));
    println!("  proxy65:        {}", list(&s.proxy65));
    match (&s.raw.tls.cert, &s.raw.tls.key) {
        (Some(c), Some(_)) => println!("  tls:            {}", c.display()),
        _ => println!(
            "  tls:            self-signed in {}",
            s.raw.server.data_dir.display()
        ),
    }
}

/// Hides a password in a database URL.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Every connection is a file descriptor, and distributions start processes with a soft
/// limit of 1024: raise it to the hard limit, as far as the system allows.
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        if lim.rlim_cur < lim.rlim_max {
            let wanted = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
        tracing::info!(max_open_files = lim.rlim_cur, "file descriptor limit");
    }
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HERALD_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: log files and journald get plain text.
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_writer(std::io::stderr)
        .init();
}

async fn open_store(s: &Settings) -> Result<std::sync::Arc<dyn herald_storage::Storage>, String> {
    herald_storage::open(&s.storage_url)
        .await
        .map_err(|e| format!("storage {}: {e}", redact(&s.storage_url)))
}

async fn serve(settings: Settings) -> Result<(), String> {
    init_logging(&settings.raw.log.level);
    let store = open_store(&settings).await?;
    raise_fd_limit();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let grace = Duration::from_secs(settings.raw.server.shutdown_grace_secs + 2);
    let running = herald_server::start(settings, store, rx)
        .await
        .map_err(|e| e.to_string())?;
    wait_for_signal().await;
    tracing::info!("shutting down");
    let _ = tx.send(true);
    if tokio::time::timeout(grace, running.wait()).await.is_err() {
        tracing::warn!("some connections did not close in time");
    }
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ok();
    let int = tokio::signal::ctrl_c();
    match term.as_mut() {
        Some(t) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = int => {}
            }
        }
        None => {
            let _ = int.await;
        }
    }
}

fn read_password(given: Option<String>, stdin: bool) -> Result<String, String> {
    if let Some(p) = given {
        return Ok(p);
    }
    if stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read password: {e}"))?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_string());
    }
    let p = rpassword::prompt_password("Password: ")
        .map_err(|e| format!("cannot read password: {e} (use --password-stdin)"))?;
    let again =
        rpassword::prompt_password("Again: ").map_err(|e| format!("cannot read password: {e}"))?;
    if p != again {
        return Err("passwords do not match".into());
    }
    Ok(p)
}

async fn user(settings: Settings, cmd: UserCmd) -> Result<(), String> {
    let iterations = settings.raw.auth.scram_iterations;
    let domains = settings.domains.clone();
    let err = |e: accounts::AccountError| e.to_string();
    match cmd {
        UserCmd::Add {
            jid,
            password,
            password_stdin,
        } => {
            let jid = user_jid(&jid, &domains).map_err(err)?;
            let pw = read_password(password, password_stdin)?;
            let store = open_store(&settings).await?;
            accounts::add(store.as_ref(), &jid, &pw, iterations)
                .await
                .map_err(err)?;
            println!("created {jid}");
        }
        UserCmd::Del { jid } => {
            let jid = user_jid(&jid, &domains).map_err(err)?;
            let store = open_store(&settings).await?;
            accounts::delete(store.as_ref(), &jid).await.map_err(err)?;
            println!("deleted {jid}");
        }
        UserCmd::Passwd {
            jid,
            password,
            password_stdin,
        } => {
            let jid = user_jid(&jid, &domains).map_err(err)?;
            let pw = read_password(password, password_stdin)?;
            let store = open_store(&settings).await?;
            accounts::set_password(store.as_ref(), &jid, &pw, iterations)
                .await
                .map_err(err)?;
            println!("password changed for {jid}");
        }
        UserCmd::List { domain } => {
            let d = herald_core::Jid::parse(&domain)
                .map_err(|_| format!("{domain:?} is not a domain"))?;
            if !domains.iter().any(|x| x == d.domain()) {
                return Err(format!(
                    "{} is not served by this server (server.domains)",
                    d.domain()
                ));
            }
            let store = open_store(&settings).await?;
            for u in store
                .list_accounts(d.domain())
                .await
                .map_err(|e| e.to_string())?
            {
                println!("{u}@{}", d.domain());
            }
        }
    }
    Ok(())
}

async fn room(settings: Settings, cmd: RoomCmd) -> Result<(), String> {
    use herald_server::ext::muc::manage;
    let err = |e: manage::ManageError| e.to_string();
    match cmd {
        RoomCmd::List { domain } => {
            manage::services_for(&settings, &domain).map_err(err)?;
            let store = open_store(&settings).await?;
            for r in manage::list(store.as_ref(), &settings, &domain)
                .await
                .map_err(err)?
            {
                let c = &r.record.config;
                let mut flags = vec![if c.public { "public" } else { "hidden" }];
                if c.members_only {
                    flags.push("members-only");
                }
                if c.password_protected() {
                    flags.push("password");
                }
                if c.moderated {
                    flags.push("moderated");
                }
                let owners: Vec<&str> = r
                    .affiliations
                    .iter()
                    .filter(|a| a.affiliation == "owner")
                    .map(|a| a.jid.as_str())
                    .collect();
                println!(
                    "{}\t{}\t{}\towners: {}",
                    r.jid,
                    c.name,
                    flags.join(","),
                    owners.join(",")
                );
            }
        }
        RoomCmd::Create {
            room,
            owners,
            name,
            description,
            members_only,
            hidden,
            password,
        } => {
            let jid = manage::room_jid(&settings, &room).map_err(err)?;
            let store = open_store(&settings).await?;
            let opts = manage::CreateOptions {
                name,
                description,
                members_only,
                hidden,
                password,
            };
            manage::create(store.as_ref(), &settings, &jid, &owners, &opts)
                .await
                .map_err(err)?;
            println!("created {jid}");
        }
        RoomCmd::Destroy { room } => {
            let jid = manage::room_jid(&settings, &room).map_err(err)?;
            let store = open_store(&settings).await?;
            manage::destroy(store.as_ref(), &jid).await.map_err(err)?;
            println!("destroyed {jid}");
        }
        RoomCmd::Show { room } => {
            let jid = manage::room_jid(&settings, &room).map_err(err)?;
            let store = open_store(&settings).await?;
            let v = manage::show(store.as_ref(), &settings, &jid)
                .await
                .map_err(err)?;
            let c = &v.record.config;
            println!("room:          {}", v.jid);
            println!("name:          {}", c.name);
            println!("description:   {}", c.description);
            println!("subject:       {}", v.record.subject);
            println!(
                "created:       {}",
                herald_server::ext::stamp_from_micros(v.created_micros)
            );
            println!("public:        {}", c.public);
            println!("members-only:  {}", c.members_only);
            println!("moderated:     {}", c.moderated);
            println!("password:      {}", c.password_protected());
            println!(
                "max users:     {}",
                if c.max_users == 0 {
                    "service limit".to_string()
                } else {
                    c.max_users.to_string()
                }
            );
            println!(
                "whois:         {}",
                if c.whois_anyone {
                    "anyone"
                } else {
                    "moderators"
                }
            );
            println!("history:       {}", c.history_length);
            println!("archived:      {}", c.logging);
            for a in &v.affiliations {
                match &a.nick {
                    Some(n) => {
                        println!("{:<14} {} (nick {n})", format!("{}:", a.affiliation), a.jid)
                    }
                    None => println!("{:<14} {}", format!("{}:", a.affiliation), a.jid),
                }
            }
        }
        RoomCmd::Affiliate {
            room,
            jid,
            affiliation,
        } => {
            let rj = manage::room_jid(&settings, &room).map_err(err)?;
            let store = open_store(&settings).await?;
            manage::affiliate(store.as_ref(), &rj, &jid, &affiliation)
                .await
                .map_err(err)?;
            println!("{jid} is now {affiliation} of {rj}");
        }
    }
    Ok(())
}
