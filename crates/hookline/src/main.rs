//! The `hookline` command: `serve`, and account administration on the same storage.

use anyhow::{Context as _, bail};
use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand};
use hookline::dispatch::retry::{RetrySchedule, parse_duration};
use hookline::model::{Limits, Plan};
use hookline::server::{self, Config};
use hookline::store::{Location, Sealer, Store};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// mimalloc: the request and delivery paths allocate many small, short-lived buffers.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "hookline",
    version,
    about = "Durable, signed, real-time webhook delivery"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the API and the dispatcher.
    Serve(ServeArgs),
    /// Creates accounts, issues and revokes API keys.
    #[command(subcommand)]
    Account(AccountCommand),
    /// Prints a new random encryption key for HOOKLINE_ENCRYPTION_KEY.
    Keygen,
    /// Endpoint secrets at rest.
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// Measures Hookline end to end over loopback, against a raw reference client.
    Bench(hookline::bench::BenchArgs),
    /// Brings the database's schema up to date (`serve` also does this at start).
    Migrate {
        #[command(flatten)]
        storage: StorageArgs,
    },
}

#[derive(Args, Clone)]
struct StorageArgs {
    /// Where the embedded SQLite database lives.
    #[arg(long, env = "HOOKLINE_DATA_DIR", default_value = "./hookline-data")]
    data_dir: PathBuf,
    /// `postgres://…` to store everything in PostgreSQL instead of SQLite.
    #[arg(long, env = "HOOKLINE_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    storage: StorageArgs,
    /// The address to listen on.
    #[arg(long, env = "HOOKLINE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Waits between attempts, e.g. `5s,1m,10m,1h` (default: 14 steps over about 4 days).
    #[arg(long, env = "HOOKLINE_RETRY_SCHEDULE", value_parser = RetrySchedule::parse)]
    retry_schedule: Option<RetrySchedule>,
    /// Lets endpoints point at loopback and private addresses (development and tests).
    #[arg(long, env = "HOOKLINE_ALLOW_PRIVATE_TARGETS", value_parser = BoolishValueParser::new())]
    allow_private_targets: bool,
    /// Lets endpoint URLs use http:// (development).
    #[arg(long, env = "HOOKLINE_ALLOW_INSECURE_URLS", value_parser = BoolishValueParser::new())]
    allow_insecure_urls: bool,
    /// The total time an attempt may take.
    #[arg(long, env = "HOOKLINE_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    timeout: Duration,
    /// The time a connection may take to open.
    #[arg(long, env = "HOOKLINE_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// Requests in flight to one endpoint at most.
    #[arg(long, env = "HOOKLINE_ENDPOINT_CONCURRENCY", default_value_t = 32)]
    endpoint_concurrency: usize,
    /// Deliveries this node holds in memory at most, queued or in flight, over all
    /// endpoints; the rest wait `pending` in the database until there is room. This is what
    /// bounds the server's memory under a backlog.
    #[arg(long, env = "HOOKLINE_MAX_IN_MEMORY", default_value_t = 50_000)]
    max_in_memory: usize,
    /// Deliveries one endpoint holds in memory at most, so that one busy endpoint leaves
    /// room for the others (no more than --max-in-memory; default: half of it, at most
    /// 25,000).
    #[arg(long, env = "HOOKLINE_MAX_PER_ENDPOINT")]
    max_per_endpoint: Option<usize>,
    /// The longest wait between two probes of an endpoint whose circuit breaker is open
    /// (probes start 1 s apart and double): how late, at most, a recovered endpoint's backlog
    /// starts to drain. 1s to 1h.
    #[arg(long, env = "HOOKLINE_BREAKER_PROBE_MAX", default_value = "2s", value_parser = parse_duration)]
    breaker_probe_max: Duration,
    /// PostgreSQL, several nodes: how long a node silent in the database keeps its
    /// deliveries before the other nodes take them over.
    #[arg(long, env = "HOOKLINE_LEASE", default_value = "30s", value_parser = parse_duration)]
    lease: Duration,
    /// Free plan limits, e.g. `ingest=100,retention=7d` (Free never includes webhooks).
    #[arg(long, env = "HOOKLINE_PLAN_FREE", default_value = "")]
    plan_free: String,
    /// Pro plan limits, e.g. `endpoints=100,ingest=2000,retention=30d` (`ingest=none`:
    /// unlimited).
    #[arg(long, env = "HOOKLINE_PLAN_PRO", default_value = "")]
    plan_pro: String,
    /// Business plan limits, e.g. `endpoints=1000,ingest=20000,retention=90d`.
    #[arg(long, env = "HOOKLINE_PLAN_BUSINESS", default_value = "")]
    plan_business: String,
    /// Turns the admin API (`/admin/v1`) on, with this bearer token (at least 16 characters).
    #[arg(long, env = "HOOKLINE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Encrypts endpoint secrets at rest: base64 of 32 random bytes (`hookline keygen`).
    #[arg(long, env = "HOOKLINE_ENCRYPTION_KEY", hide_env_values = true)]
    encryption_key: Option<String>,
    /// How long a rotated-out endpoint secret keeps signing beside the new one.
    #[arg(long, env = "HOOKLINE_SECRET_OVERLAP", default_value = "24h", value_parser = parse_duration)]
    secret_overlap: Duration,
    /// How long an idempotency key answers repeats of its request.
    #[arg(long, env = "HOOKLINE_IDEMPOTENCY_WINDOW", default_value = "24h", value_parser = parse_duration)]
    idempotency_window: Duration,
    /// The largest request body accepted, in bytes.
    #[arg(long, env = "HOOKLINE_MAX_BODY_BYTES", default_value_t = 256 * 1024)]
    max_body_bytes: usize,
    /// How long a connection to the API may take to send a request's headers, from the end
    /// of its previous request: also how long an idle connection stays open (longer than
    /// the idle time of load balancers and client pools in front, 60 s for most).
    #[arg(long, env = "HOOKLINE_HEADER_READ_TIMEOUT", default_value = "75s", value_parser = parse_duration)]
    header_read_timeout: Duration,
    /// How long a request's body may take to arrive (`408` past it).
    #[arg(long, env = "HOOKLINE_BODY_READ_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    body_read_timeout: Duration,
    /// How long a write of an answer may wait for its client to make room: a client that
    /// stops reading loses its connection after as long. Also how long a shutdown waits for
    /// the API's requests in progress.
    #[arg(long, env = "HOOKLINE_WRITE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    write_timeout: Duration,
}

#[derive(Subcommand)]
enum AccountCommand {
    /// Creates an account; prints its API key on the last line.
    Create {
        #[arg(long, env = "HOOKLINE_ACCOUNT_NAME")]
        name: String,
        #[arg(long, env = "HOOKLINE_ACCOUNT_PLAN", default_value = "pro", value_parser = parse_plan)]
        plan: Plan,
        #[command(flatten)]
        storage: StorageArgs,
    },
    /// Issues one more API key for an account; prints it on the last line.
    Key {
        name: String,
        #[command(flatten)]
        storage: StorageArgs,
    },
    /// Lists an account's API keys (ids and first characters; keys are never stored).
    Keys {
        name: String,
        #[command(flatten)]
        storage: StorageArgs,
    },
    /// Revokes one of an account's API keys: by id (`key_…`), by its first characters as
    /// `account keys` shows them, or by the whole key. Refuses the account's last live key
    /// unless --allow-last is given.
    Revoke {
        name: String,
        key: String,
        /// Revoke the key even if it is the account's last live one (the account can then no
        /// longer call the API until `account key` issues another).
        #[arg(long)]
        allow_last: bool,
        #[command(flatten)]
        storage: StorageArgs,
    },
}

#[derive(Subcommand)]
enum SecretsCommand {
    /// Re-encrypts every endpoint secret under a new key: reads them with
    /// HOOKLINE_ENCRYPTION_KEY (none: stored in clear), writes them under --new-key (none:
    /// in clear). Stop every `hookline serve` on the database first.
    Reencrypt {
        /// The key secrets are encrypted under now.
        #[arg(long, env = "HOOKLINE_ENCRYPTION_KEY", hide_env_values = true)]
        encryption_key: Option<String>,
        /// The key to encrypt under from now on; `--decrypt` stores them in clear instead.
        // (Which of the two is given is checked by the command, not by clap: a variable set
        // to `0` would count as given.)
        #[arg(long, env = "HOOKLINE_NEW_ENCRYPTION_KEY", hide_env_values = true)]
        new_key: Option<String>,
        /// Store the secrets in clear (turning encryption off).
        #[arg(long, env = "HOOKLINE_DECRYPT_SECRETS", value_parser = BoolishValueParser::new())]
        decrypt: bool,
        #[command(flatten)]
        storage: StorageArgs,
    },
}

/// The sealer of a key given as base64; no key stores in clear. A key that is given but
/// empty or malformed is an error, never "no key".
fn sealer(key: Option<&str>) -> anyhow::Result<Sealer> {
    match key {
        None => Ok(Sealer::none()),
        Some(k) => Sealer::from_base64(k).map_err(|e| anyhow::anyhow!("{e}")),
    }
}

fn parse_plan(text: &str) -> Result<Plan, String> {
    Plan::parse(text).ok_or_else(|| format!("{text:?} is not a plan (free, pro or business)"))
}

impl StorageArgs {
    /// `--database-url` when given (it must be `postgres://…`), else the data directory.
    fn location(&self) -> anyhow::Result<Location> {
        match &self.database_url {
            None => Ok(Location::Sqlite(self.data_dir.clone())),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(Location::Postgres(url.clone()))
            }
            Some(_) => bail!(
                "--database-url must be a PostgreSQL URL (postgres://user@host:port/database); \
                 for the embedded database use --data-dir"
            ),
        }
    }
}

/// Fails unless `location` holds a Hookline database: for the commands that only work on
/// existing data, so that a mistyped `--data-dir` or URL is not taken for a new, empty one.
async fn must_exist(location: &Location) -> anyhow::Result<()> {
    let found = Store::exists(location)
        .await
        .with_context(|| format!("opening the store at {}", location.describe()))?;
    if !found {
        bail!(
            "there is no Hookline database at {} (check --data-dir / --database-url; \
             `hookline migrate` or `hookline serve` creates one); nothing was changed",
            location.describe()
        );
    }
    Ok(())
}

/// Opens the store of a command that works on existing data only ([`must_exist`]).
async fn open_existing_store(storage: &StorageArgs) -> anyhow::Result<Store> {
    must_exist(&storage.location()?).await?;
    open_store(storage).await
}

async fn open_store(storage: &StorageArgs) -> anyhow::Result<Store> {
    let location = storage.location()?;
    Store::open(&location)
        .await
        .with_context(|| format!("opening the store at {}", location.describe()))
}

/// The command line, with every flag's variable listed under `hookline --help`: taken from
/// the commands' own definitions, so the list cannot drift from them.
fn command_line() -> clap::Command {
    use clap::CommandFactory as _;
    let cmd = Cli::command();
    // Each variable once, in the order the commands define them, with the commands that
    // take it.
    let mut vars = Vec::new();
    variables(&cmd, "", &mut vars);
    let width = vars
        .iter()
        .map(|(name, _, _)| name.len())
        .max()
        .unwrap_or(0);
    let mut text = String::from(
        "Environment variables (each sets its flag; `hookline <command> --help` says more):\n",
    );
    for (name, flag, commands) in &vars {
        text.push_str(&format!(
            "  {name:width$}  {flag} ({})\n",
            commands.join(", ")
        ));
    }
    text.push_str(&format!(
        "  {:width$}  the log filter: `debug`, or `hookline::store=debug,warn` (default `info`)\n",
        "HOOKLINE_LOG"
    ));
    cmd.after_help(text)
}

/// A variable, its flag, and the commands that take it.
type Variable = (String, String, Vec<String>);

/// Adds the variables of `cmd` (named `path`) and of its subcommands to `vars`.
fn variables(cmd: &clap::Command, path: &str, vars: &mut Vec<Variable>) {
    for arg in cmd.get_arguments() {
        let (Some(env), Some(long)) = (arg.get_env(), arg.get_long()) else {
            continue;
        };
        let env = env.to_string_lossy().into_owned();
        match vars.iter_mut().find(|(name, _, _)| *name == env) {
            Some((_, _, commands)) => commands.push(path.to_owned()),
            None => vars.push((env, format!("--{long}"), vec![path.to_owned()])),
        }
    }
    for sub in cmd.get_subcommands() {
        let name = match path {
            "" => sub.get_name().to_owned(),
            _ => format!("{path} {}", sub.get_name()),
        };
        variables(sub, &name, vars);
    }
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, each cause once: a cause whose text the line holds
/// already is left out, and a store's error ends the line (its message says what its own
/// source is, in the words of a person rather than of a driver).
fn report(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        if cause.is::<hookline::store::StoreError>() {
            break;
        }
    }
    line
}

fn run() -> anyhow::Result<()> {
    let cli = {
        use clap::FromArgMatches as _;
        let mut cmd = command_line();
        let matches = cmd.get_matches_mut();
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.format(&mut cmd).exit())
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HOOKLINE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if matches!(cli.command, Command::Serve(_) | Command::Bench(_)) {
        raise_open_files_limit();
    }
    if matches!(cli.command, Command::Serve(_)) {
        no_huge_pages();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Bench(args) => hookline::bench::run(args).await.map(|_| ()),
            Command::Keygen => {
                println!("{}", Sealer::generate_key());
                Ok(())
            }
            Command::Secrets(SecretsCommand::Reencrypt {
                encryption_key,
                new_key,
                decrypt,
                storage,
            }) => {
                let location = storage.location()?;
                // Both keys are judged before the store is touched.
                let from = sealer(encryption_key.as_deref()).context("HOOKLINE_ENCRYPTION_KEY")?;
                // Only --decrypt stores in clear; an empty new key is refused.
                let to = match (decrypt, new_key) {
                    (true, Some(_)) => bail!("give either --new-key or --decrypt, not both"),
                    (true, None) => Sealer::none(),
                    (false, None) => bail!("give --new-key (or --decrypt)"),
                    (false, Some(key)) => {
                        sealer(Some(&key)).context("--new-key / HOOKLINE_NEW_ENCRYPTION_KEY")?
                    }
                };
                // No server may run meanwhile: one running with the old key fails on every
                // secret sealed under the new one. On SQLite the serve lock proves none runs;
                // on PostgreSQL the nodes' heartbeats tell (`reseal_secrets`, alone).
                must_exist(&location).await?;
                let lock = Store::lock(&location).await?;
                let store = Store::open_locked(&location, from, &lock)
                    .await
                    .with_context(|| format!("opening the store at {}", location.describe()))?;
                let n = store
                    .reseal_secrets(to.clone(), true)
                    .await
                    .context("re-encrypting endpoint secrets (nothing was changed)")?;
                lock.release();
                match to.key_id() {
                    Some(id) => println!("{n} endpoints re-encrypted under key {id}"),
                    None => println!("{n} endpoints' secrets are now stored in clear"),
                }
                Ok(())
            }
            Command::Migrate { storage } => {
                let location = storage.location()?;
                let schema = open_store(&storage).await?.schema_versions();
                if schema.before == schema.after {
                    println!(
                        "the schema at {} is up to date (version {})",
                        location.describe(),
                        schema.after
                    );
                } else {
                    println!(
                        "migrated the schema at {} from version {} to {}",
                        location.describe(),
                        schema.before,
                        schema.after
                    );
                }
                Ok(())
            }
            Command::Account(AccountCommand::Create {
                name,
                plan,
                storage,
            }) => {
                let store = open_store(&storage).await?;
                let (account, key) = hookline::accounts::create(&store, &name, plan).await?;
                println!(
                    "created account {} ({}, plan {})",
                    account.name,
                    account.id,
                    plan.as_str()
                );
                println!("{key}");
                Ok(())
            }
            Command::Account(AccountCommand::Key { name, storage }) => {
                let store = open_existing_store(&storage).await?;
                match hookline::accounts::issue_key(&store, &name).await? {
                    Some((account, key)) => {
                        println!("new key for account {} ({})", account.name, account.id);
                        println!("{key}");
                        Ok(())
                    }
                    None => bail!("no account named {name:?}"),
                }
            }
            Command::Account(AccountCommand::Keys { name, storage }) => {
                let store = open_existing_store(&storage).await?;
                let Some(account) = store.account_by_name(name.trim().to_owned()).await? else {
                    bail!("no account named {name:?}");
                };
                for k in store.all_api_keys(account.id).await? {
                    let state = match k.revoked_at {
                        Some(t) => format!("revoked {t}"),
                        None => "live".to_owned(),
                    };
                    println!("{}  {}…  created {}  {state}", k.id, k.prefix, k.created_at);
                }
                Ok(())
            }
            Command::Account(AccountCommand::Revoke {
                name,
                key,
                allow_last,
                storage,
            }) => {
                let store = open_existing_store(&storage).await?;
                let Some(account) = store.account_by_name(name.trim().to_owned()).await? else {
                    bail!("no account named {name:?}");
                };
                let keys = store.all_api_keys(account.id.clone()).await?;
                let key = key.trim();
                let Some(one) = key_to_revoke(&store, &account, &keys, key).await? else {
                    bail!(
                        "account {name:?} has no key {}: give a key's id, its first \
                         characters as `hookline account keys` shows them, or the whole key; \
                         nothing was changed",
                        shown_key(key)
                    );
                };
                if let Some(at) = &one.revoked_at {
                    println!(
                        "{} ({}…) was revoked already, at {at}; nothing was changed",
                        one.id, one.prefix
                    );
                    return Ok(());
                }
                let revoked = store
                    .revoke_api_key(account.id, one.id.clone(), !allow_last)
                    .await
                    .map_err(|e| match e {
                        hookline::store::StoreError::Conflict(_) => anyhow::anyhow!(
                            "{} ({}…) is the last live key of {name:?}: without it the account \
                             cannot call the API. Issue another first (`hookline account key`), \
                             or pass --allow-last to revoke it anyway; nothing was changed",
                            one.id,
                            one.prefix
                        ),
                        e => anyhow::Error::new(e).context("revoking the key"),
                    })?
                    .context("the key vanished while being revoked")?;
                println!(
                    "revoked {} ({}…); running servers stop taking it within 5 s",
                    revoked.id, revoked.prefix
                );
                Ok(())
            }
        }
    })
}

/// Which of `keys` (an account's) `given` names: its id (`key_…`), its shown first
/// characters exactly (as `account keys` lists them, with or without the trailing `…`), or
/// the whole key, found by its hash (live or revoked). Several keys sharing the first
/// characters must be named by id or whole. `None`: no key of the account.
async fn key_to_revoke<'k>(
    store: &Store,
    account: &hookline::model::Account,
    keys: &'k [hookline::model::ApiKey],
    given: &str,
) -> anyhow::Result<Option<&'k hookline::model::ApiKey>> {
    if let Some(k) = keys.iter().find(|k| k.id == given) {
        return Ok(Some(k));
    }
    let shown = given.trim_end_matches('…').trim_end_matches("...");
    let by_prefix: Vec<_> = keys.iter().filter(|k| k.prefix == shown).collect();
    match by_prefix.as_slice() {
        [] => {}
        [one] => return Ok(Some(one)),
        _ => bail!(
            "{} starts several keys of {:?}; give the key's id",
            shown_key(given),
            account.name
        ),
    }
    // Longer than what is shown of a key: the whole key, or nothing.
    if !keys.iter().any(|k| given.len() > k.prefix.len()) {
        return Ok(None);
    }
    let found = store
        .api_key_by_hash(account.id.clone(), hookline::accounts::hash_api_key(given))
        .await
        .context("looking up the key")?;
    Ok(found.and_then(|f| keys.iter().find(|k| k.id == f.id)))
}

/// What the CLI may print of something given as a key: its first characters only (a whole
/// key, or a near miss, does not belong in a terminal's scrollback or a CI log).
fn shown_key(given: &str) -> String {
    let head: String = given.chars().take(10).collect();
    if head.len() < given.len() {
        format!("{head:?}…")
    } else {
        format!("{head:?}")
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let probe_max = args.breaker_probe_max;
    if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&probe_max) {
        bail!(
            "--breaker-probe-max must be from 1s to 1h (probes start 1 s apart), not {} ms",
            probe_max.as_millis()
        );
    }
    let max_per_endpoint = args
        .max_per_endpoint
        .unwrap_or((args.max_in_memory / 2).clamp(1, 25_000));
    if args.max_in_memory == 0 || max_per_endpoint == 0 {
        bail!("--max-in-memory and --max-per-endpoint must be at least 1");
    }
    if max_per_endpoint > args.max_in_memory {
        bail!(
            "--max-per-endpoint ({max_per_endpoint}) must not exceed --max-in-memory ({})",
            args.max_in_memory
        );
    }
    let mut config = Config::at(args.storage.location()?);
    if let Some(schedule) = args.retry_schedule {
        config.dispatch.retry = schedule;
    }
    config.dispatch.timeout = args.timeout;
    config.dispatch.connect_timeout = args.connect_timeout;
    config.dispatch.lease = args.lease;
    config.idempotency_window = args.idempotency_window;
    let base = Limits::default();
    config.limits = Limits {
        free: base
            .free
            .with(&args.plan_free)
            .map_err(|e| anyhow::anyhow!("--plan-free: {e}"))?,
        pro: base
            .pro
            .with(&args.plan_pro)
            .map_err(|e| anyhow::anyhow!("--plan-pro: {e}"))?,
        business: base
            .business
            .with(&args.plan_business)
            .map_err(|e| anyhow::anyhow!("--plan-business: {e}"))?,
    };
    // Set but empty means off, as unset does; a short token is refused.
    if let Some(token) = args.admin_token.as_deref().map(str::trim)
        && !token.is_empty()
        && token.chars().count() < 16
    {
        bail!("HOOKLINE_ADMIN_TOKEN must be at least 16 characters (use a long random value)");
    }
    config.admin_token = hookline::api::admin::AdminToken::new(args.admin_token.as_deref());
    config.sealer = sealer(args.encryption_key.as_deref()).context("HOOKLINE_ENCRYPTION_KEY")?;
    config.secret_overlap = args.secret_overlap;
    config.dispatch.concurrency_per_endpoint = args.endpoint_concurrency.max(1);
    config.dispatch.breaker_probe_max = args.breaker_probe_max;
    config.dispatch.max_in_memory = args.max_in_memory;
    config.dispatch.max_per_endpoint = max_per_endpoint;
    config.url_rules.allow_insecure_urls = args.allow_insecure_urls;
    config.url_rules.allow_private_targets = args.allow_private_targets;
    config.max_body_bytes = args.max_body_bytes;
    for (name, value) in [
        ("--header-read-timeout", args.header_read_timeout),
        ("--body-read-timeout", args.body_read_timeout),
        ("--write-timeout", args.write_timeout),
    ] {
        if value.is_zero() {
            bail!("{name} must be more than zero");
        }
    }
    config.header_read_timeout = args.header_read_timeout;
    config.body_read_timeout = args.body_read_timeout;
    config.write_timeout = args.write_timeout;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        trigger.cancel();
        // A second signal does not cut the shutdown short (what it waits for is bounded);
        // it is answered, so that nobody takes the silence for a hang.
        loop {
            wait_for_signal().await;
            tracing::warn!(
                "already shutting down: waiting for the requests in progress (at most \
                 --write-timeout), then for the attempts in flight (a grace of 5 s on SQLite, \
                 the attempt timeout on PostgreSQL); SIGKILL stops at once and loses nothing \
                 acknowledged"
            );
        }
    });
    server::run(config, listener, shutdown).await
}

/// Fewer open files than this is worth a warning at start.
const FEW_OPEN_FILES: u64 = 8_192;

/// Raises this process's soft limit of open files to its hard limit, as far as it may go.
///
/// Every connection in (the API) and out (up to `--endpoint-concurrency` per endpoint, and
/// idle ones kept for reuse) and every database file holds a descriptor. The soft limit
/// services usually start with is 1,024, so 32 endpoints with all their lanes busy (a few
/// hanging receivers) used them all: the listener could then accept no connection, the
/// API answered nobody, and SQLite could open no reader. The hard limit is what the
/// administrator allows (`LimitNOFILE=`, `ulimit -Hn`); the soft one only what a process
/// starts with.
#[cfg(unix)]
fn raise_open_files_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    // An unlimited hard limit is not one the kernel takes for open files: keep the soft one.
    if let (Some(current), Some(maximum)) = (limit.current, limit.maximum)
        && current < maximum
    {
        let raised = Rlimit {
            current: Some(maximum),
            maximum: Some(maximum),
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => tracing::info!(from = current, to = maximum, "raised the open files limit"),
            Err(e) => tracing::warn!(
                error = %e,
                from = current,
                to = maximum,
                "could not raise the open files limit"
            ),
        }
    }
    if let Some(now) = getrlimit(Resource::Nofile).current
        && now < FEW_OPEN_FILES
    {
        tracing::warn!(
            limit = now,
            "few open files allowed: each connection in or out takes one, up to \
             --endpoint-concurrency per endpoint; raise the hard limit (LimitNOFILE=, ulimit -Hn)"
        );
    }
}

#[cfg(not(unix))]
fn raise_open_files_limit() {}

/// Turns transparent huge pages off for this process, unless `MIMALLOC_ALLOW_THP` sets
/// the allocator's own choice (read before `main`, so it is that setting that decides).
///
/// mimalloc asks for huge pages for its memory where the system grants them on request
/// (`madvise`, a common default). A 2 MiB page stays resident while any part of it is in
/// use, and the kernel folds ranges freed back into huge pages: after a burst, a server
/// holding many connections kept about 110 MB more resident than it used, for good (600
/// endpoints after a restart: 323 MB idle against 216 MB without huge pages;
/// BENCHMARKS.md has the measurements, and what it costs the hot path).
#[cfg(target_os = "linux")]
fn no_huge_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return;
    }
    // SAFETY: `prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0)` takes integers only and reads or
    // writes no memory of this process; a kernel without it answers an error.
    let done = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if done != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "could not turn transparent huge pages off: memory freed after a burst may stay resident"
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn no_huge_pages() {}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
