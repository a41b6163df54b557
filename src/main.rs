//! The `keygate` command: serve the gateway, check a policy, manage keys, report usage.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use keygate::config::{self, LoadOptions};
use keygate::domain::KeyStatus;
use keygate::domain::Operation;
use keygate::keys::lifecycle::{Actor, Applied, AuditError, KeyFiles, NewKey};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::{EnvFilter, FilterExt, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// mimalloc: the request path's short-lived allocations cost less than with glibc's malloc, and
/// freed memory is returned to the OS more readily after a policy swap.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "keygate",
    version,
    about = "An LLM gateway with virtual keys, on Pingora"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// The policy file every command works on.
#[derive(clap::Args)]
struct PolicyArg {
    /// The policy file.
    #[arg(
        long,
        short,
        env = "KEYGATE_CONFIG",
        default_value = "conf/keygate.yaml",
        global = true
    )]
    config: PathBuf,
}

// Parsed once per run: the size of the `keys update` variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        #[command(flatten)]
        policy: PolicyArg,
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
        /// Take over the listening sockets of a running keygate (zero-downtime binary upgrade).
        #[arg(long, short)]
        upgrade: bool,
        /// Pingora server settings (upgrade socket, pid file) for binary upgrades.
        #[arg(long)]
        pingora_conf: Option<PathBuf>,
    },
    /// Validate the policy file and keys directory; list every problem and exit 1 if any.
    Check {
        #[command(flatten)]
        policy: PolicyArg,
    },
    /// Manage virtual keys (each is one file in the keys directory).
    Keys {
        #[command(flatten)]
        policy: PolicyArg,
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Print requests, tokens and cost from the usage database, as a table.
    Usage {
        #[command(flatten)]
        policy: PolicyArg,
        /// Only this key.
        #[arg(long)]
        key: Option<String>,
        /// Only this workload.
        #[arg(long)]
        workload: Option<String>,
        /// First UTC day included, e.g. 2026-11-01.
        #[arg(long)]
        since: Option<chrono::NaiveDate>,
        /// Last UTC day included.
        #[arg(long)]
        until: Option<chrono::NaiveDate>,
        /// One row per day, model, key or workload (default: day).
        #[arg(long, value_enum, default_value = "day")]
        by: keygate::state::UsageGroup,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// The whole fleet's usage of this month and last, from Redis (`state: backend: redis`)
        /// instead of this instance's usage database.
        #[arg(long)]
        fleet: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum BudgetModeArg {
    Enforce,
    Track,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key; prints the secret alone on stdout, once.
    Create {
        id: String,
        #[arg(long)]
        workload: String,
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// Comma-separated models, narrowing the workload's list.
        #[arg(long, value_delimiter = ',')]
        models: Option<Vec<String>>,
        /// Comma-separated operations (chat, completions, embeddings, responses).
        #[arg(long, value_delimiter = ',')]
        operations: Option<Vec<String>>,
        /// Expiry as RFC 3339, e.g. 2027-06-30T00:00:00Z: in the future, before the year 9999.
        #[arg(long)]
        expires: Option<String>,
    },
    /// Change a key's settings; only the flags given change. Checked like a reload: a change
    /// the policy would reject writes nothing, and every problem is printed.
    Update {
        id: String,
        /// Comma-separated models, narrowing the workload's list.
        #[arg(long, value_delimiter = ',')]
        models: Option<Vec<String>>,
        /// Comma-separated operations (chat, completions, embeddings, responses).
        #[arg(long, value_delimiter = ',')]
        operations: Option<Vec<String>>,
        /// A rate limit, `requests=N/WINDOW` or `tokens=N/WINDOW` (e.g. requests=600/1m);
        /// repeat for several. Replaces the key's list.
        #[arg(long = "rate-limit", value_name = "KIND=N/WINDOW")]
        rate_limits: Vec<String>,
        /// Remove the key's own rate limits (its workload's still apply).
        #[arg(long, conflicts_with = "rate_limits")]
        no_rate_limits: bool,
        /// Requests of this key in flight at once.
        #[arg(long, value_name = "N")]
        max_concurrent: Option<i64>,
        /// Comma-separated CIDRs the key may be used from.
        #[arg(long, value_delimiter = ',', value_name = "CIDR,...")]
        allowed_ips: Option<Vec<String>>,
        /// Daily spending cap in USD.
        #[arg(long, value_name = "USD")]
        budget_daily: Option<f64>,
        /// Monthly spending cap in USD.
        #[arg(long, value_name = "USD")]
        budget_monthly: Option<f64>,
        /// Refuse requests past a cap (`enforce`) or only count and alert (`track`).
        #[arg(long, value_enum)]
        budget_mode: Option<BudgetModeArg>,
        /// Expiry as RFC 3339, e.g. 2027-06-30T00:00:00Z: in the future, before the year 9999.
        #[arg(long, conflicts_with = "no_expiry")]
        expires: Option<String>,
        /// Remove the key's expiry.
        #[arg(long)]
        no_expiry: bool,
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// Comma-separated guardrails the key applies on top of its workload's. Replaces the
        /// key's list.
        #[arg(long, value_delimiter = ',', value_name = "NAME,...")]
        guardrails: Option<Vec<String>>,
        /// Remove the key's own guardrails (its workload's and the defaults still apply).
        #[arg(long, conflicts_with = "guardrails")]
        no_guardrails: bool,
        /// Comma-separated guardrails of its workload (or the defaults) the key does not apply.
        /// Replaces the key's list.
        #[arg(long, value_delimiter = ',', value_name = "NAME,...")]
        guardrails_off: Option<Vec<String>>,
        /// Remove the key's switch-offs: every guardrail of its workload applies again.
        #[arg(long, conflicts_with = "guardrails_off")]
        no_guardrails_off: bool,
    },
    /// List keys (never their secrets).
    List,
    /// Print a key's settings (everything but the secret).
    Show { id: String },
    /// Issue a new secret with the same settings; prints it alone on stdout, once.
    Rotate {
        id: String,
        /// Keep the old secret working this long (e.g. 1h, 7d; at most 30d) for a zero-downtime
        /// switch.
        #[arg(long)]
        grace: Option<String>,
    },
    /// Refuse the key's requests until resumed.
    Pause { id: String },
    /// Accept a paused key again.
    Resume { id: String },
    /// Delete the key's file.
    Delete { id: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Serve {
            policy: PolicyArg { config },
            log_format,
            upgrade,
            pingora_conf,
        } => serve(config, log_format, upgrade, pingora_conf),
        Command::Check {
            policy: PolicyArg { config },
        } => check(config),
        Command::Usage {
            policy: PolicyArg { config },
            key,
            workload,
            since,
            until,
            by,
            json,
            fleet,
        } => {
            let policy = config::load(&config, LoadOptions { resolve_dns: false })
                .map_err(|e| anyhow::anyhow!("the policy is invalid:\n{e}"))?;
            let filter = keygate::state::UsageFilter {
                key,
                workload,
                since,
                until,
            };
            let (rows, total) = if fleet {
                let Some(settings) = &policy.startup.state else {
                    bail!(
                        "{} keeps limit state in memory (no `state: backend: redis`), so there is no fleet usage",
                        config.display()
                    );
                };
                let workloads: Vec<String> = policy.workloads.keys().cloned().collect();
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
                    .block_on(keygate::limits::fleet::usage::report_from(
                        settings,
                        &workloads,
                        &filter,
                        Some(by),
                        keygate::limits::now_ms(),
                    ))?
            } else {
                usage_from_database(&config, &policy, &filter, by)?
            };
            if json {
                println!("{}", serde_json::json!({"rows": rows, "total": total}));
            } else {
                print!(
                    "{}",
                    keygate::accounting::report::table(Some(by), &rows, &total)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys {
            policy: PolicyArg { config },
            command,
        } => match command {
            KeysCommand::Create {
                id,
                workload,
                owner,
                description,
                models,
                operations,
                expires,
            } => {
                let operations = operations
                    .map(|ops| {
                        ops.iter()
                            .map(|o| parse_operation(o))
                            .collect::<Result<Vec<_>>>()
                    })
                    .transpose()?;
                let expires_at = expires
                    .map(|e| {
                        chrono::DateTime::parse_from_rfc3339(&e)
                            .map(|t| t.with_timezone(&chrono::Utc))
                            .with_context(|| format!("--expires `{e}` is not an RFC 3339 time"))
                    })
                    .transpose()?;
                let settings = NewKey {
                    workload,
                    owner,
                    description,
                    models,
                    operations,
                    expires_at,
                    ..NewKey::default()
                };
                let Applied {
                    outcome: issued,
                    unaudited,
                } = KeyFiles::open(&config)?.create(&id, settings, &Actor::cli())?;
                eprintln!(
                    "created key `{}` ({}) in {}; the secret below is shown only once:",
                    issued.id,
                    issued.secret.hint,
                    issued.file.display()
                );
                println!("{}", issued.secret.secret);
                warn_unaudited(unaudited);
                Ok(ExitCode::SUCCESS)
            }
            KeysCommand::Show { id } => {
                let key = KeyFiles::open(&config)?.show(&id)?;
                print!("id: {id}\n{}", serde_yaml_ng::to_string(&key)?);
                Ok(ExitCode::SUCCESS)
            }
            KeysCommand::Rotate { id, grace } => {
                let grace = grace
                    .map(|g| {
                        humantime::parse_duration(&g).with_context(|| {
                            format!("--grace `{g}` is not a duration like 1h or 7d")
                        })
                    })
                    .transpose()?;
                let Applied {
                    outcome: issued,
                    unaudited,
                } = KeyFiles::open(&config)?.rotate(&id, grace, &Actor::cli())?;
                match issued.previous_valid_until {
                    Some(until) => eprintln!("rotated key `{id}`; the previous secret works until {}. New secret, shown only once:", until.to_rfc3339()),
                    None => eprintln!("rotated key `{id}`; the previous secret no longer works. New secret, shown only once:"),
                }
                println!("{}", issued.secret.secret);
                warn_unaudited(unaudited);
                Ok(ExitCode::SUCCESS)
            }
            KeysCommand::Pause { id } => {
                let applied =
                    KeyFiles::open(&config)?.set_status(&id, KeyStatus::Paused, &Actor::cli())?;
                eprintln!("paused key `{id}`");
                warn_unaudited(applied.unaudited);
                Ok(ExitCode::SUCCESS)
            }
            KeysCommand::Resume { id } => {
                let applied =
                    KeyFiles::open(&config)?.set_status(&id, KeyStatus::Active, &Actor::cli())?;
                eprintln!("resumed key `{id}`");
                warn_unaudited(applied.unaudited);
                Ok(ExitCode::SUCCESS)
            }
            KeysCommand::Delete { id } => {
                let applied = KeyFiles::open(&config)?.delete(&id, &Actor::cli())?;
                eprintln!("deleted key `{id}`");
                warn_unaudited(applied.unaudited);
                Ok(ExitCode::SUCCESS)
            }
            KeysCommand::Update {
                id,
                models,
                operations,
                rate_limits,
                no_rate_limits,
                max_concurrent,
                allowed_ips,
                budget_daily,
                budget_monthly,
                budget_mode,
                expires,
                no_expiry,
                owner,
                description,
                guardrails,
                no_guardrails,
                guardrails_off,
                no_guardrails_off,
            } => {
                let mut patch = serde_json::Map::new();
                let mut set = |field: &str, value: serde_json::Value| {
                    patch.insert(field.to_owned(), value);
                };
                if let Some(models) = models {
                    set("models", models.into());
                }
                if let Some(operations) = operations {
                    let ops = operations
                        .iter()
                        .map(|o| parse_operation(o).map(Operation::as_str))
                        .collect::<Result<Vec<_>>>()?;
                    set("operations", ops.into());
                }
                if no_rate_limits {
                    set("rate_limits", serde_json::Value::Null);
                } else if !rate_limits.is_empty() {
                    let limits = rate_limits
                        .iter()
                        .map(|l| parse_rate_limit(l))
                        .collect::<Result<Vec<_>>>()?;
                    set("rate_limits", limits.into());
                }
                if let Some(n) = max_concurrent {
                    set("max_concurrent", n.into());
                }
                if let Some(ips) = allowed_ips {
                    set("allowed_ips", ips.into());
                }
                let mut budget = serde_json::Map::new();
                if let Some(usd) = budget_daily {
                    budget.insert("daily_usd".into(), usd.into());
                }
                if let Some(usd) = budget_monthly {
                    budget.insert("monthly_usd".into(), usd.into());
                }
                if let Some(mode) = budget_mode {
                    let mode = match mode {
                        BudgetModeArg::Enforce => "enforce",
                        BudgetModeArg::Track => "track",
                    };
                    budget.insert("mode".into(), mode.into());
                }
                if !budget.is_empty() {
                    set("budget", budget.into());
                }
                if no_expiry {
                    set("expires_at", serde_json::Value::Null);
                } else if let Some(e) = expires {
                    let at = chrono::DateTime::parse_from_rfc3339(&e)
                        .with_context(|| format!("--expires `{e}` is not an RFC 3339 time"))?;
                    set(
                        "expires_at",
                        at.with_timezone(&chrono::Utc).to_rfc3339().into(),
                    );
                }
                if let Some(owner) = owner {
                    set("owner", owner.into());
                }
                if let Some(description) = description {
                    set("description", description.into());
                }
                for (field, list, clear) in [
                    ("guardrails", guardrails, no_guardrails),
                    ("guardrails_off", guardrails_off, no_guardrails_off),
                ] {
                    if clear {
                        set(field, serde_json::Value::Null);
                    } else if let Some(names) = list {
                        // `--guardrails ""` reads as one empty name: no list at all.
                        let names: Vec<String> =
                            names.into_iter().filter(|n| !n.is_empty()).collect();
                        set(
                            field,
                            if names.is_empty() {
                                serde_json::Value::Null
                            } else {
                                names.into()
                            },
                        );
                    }
                }
                if patch.is_empty() {
                    bail!("nothing to change: give at least one setting (see keygate keys update --help)");
                }
                let Applied {
                    outcome: (_, changed),
                    unaudited,
                } = KeyFiles::open(&config)?.update(&id, &patch.into(), &Actor::cli())?;
                if changed.is_empty() {
                    eprintln!("key `{id}` already has these settings; nothing written");
                } else {
                    eprintln!("updated key `{id}`: {}", changed.join(", "));
                }
                warn_unaudited(unaudited);
                Ok(ExitCode::SUCCESS)
            }
            KeysCommand::List => list_keys(config),
        },
    }
}

/// A change that stands without its audit line succeeds with a warning: failing would tell
/// scripts it did not happen, and they would drop a secret that is already the key's.
fn warn_unaudited(unaudited: Option<AuditError>) {
    if let Some(e) = unaudited {
        eprintln!("warning: {e}");
    }
}

fn parse_operation(text: &str) -> Result<Operation> {
    Operation::ALL
        .into_iter()
        .find(|op| op.as_str() == text.trim())
        .with_context(|| {
            format!(
                "unknown operation `{text}`; expected chat, completions, embeddings, responses, \
                 messages or count_tokens"
            )
        })
}

/// `requests=600/1m` or `tokens=200000/1m` as a key file's rate limit entry.
fn parse_rate_limit(text: &str) -> Result<serde_json::Value> {
    let bad = || {
        anyhow::anyhow!(
            "--rate-limit `{text}` is not KIND=N/WINDOW, e.g. requests=600/1m or tokens=200000/1m"
        )
    };
    let (kind, rest) = text.split_once('=').ok_or_else(bad)?;
    let (count, per) = rest.split_once('/').ok_or_else(bad)?;
    let kind = kind.trim();
    if kind != "requests" && kind != "tokens" {
        return Err(bad());
    }
    let count: i64 = count.trim().parse().map_err(|_| bad())?;
    Ok(serde_json::json!({ kind: count, "per": per.trim() }))
}

fn check(config: PathBuf) -> Result<ExitCode> {
    match config::load(&config, LoadOptions::default()) {
        Ok(policy) => {
            println!(
                "{}: ok ({} providers, {} models, {} workloads, {} keys; digest {})",
                config.display(),
                policy.providers.len(),
                policy.models.len(),
                policy.workloads.len(),
                policy.keys_by_id.len(),
                policy.digest
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            for p in &errors.0 {
                println!("{p}");
            }
            eprintln!("{} problem(s) found", errors.0.len());
            Ok(ExitCode::FAILURE)
        }
    }
}

fn list_keys(config: PathBuf) -> Result<ExitCode> {
    let policy = config::load(&config, LoadOptions::default())
        .map_err(|e| anyhow::anyhow!("the policy is invalid:\n{e}"))?;
    // Last uses are persisted with usage; without a usage database none is known.
    let last_used = match &policy.startup.state_dir {
        Some(dir) => match keygate::state::sqlite::UsageDb::open_read_only(dir) {
            Ok(db) => db.last_used()?,
            Err(keygate::state::sqlite::StateError::Missing(_)) => Default::default(),
            Err(e) => return Err(e.into()),
        },
        None => Default::default(),
    };
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<24} {:<12} {:<20} {:<20} {:<8} {:<20} {:<20} {:<20} EXPIRES",
        "ID", "HINT", "WORKLOAD", "OWNER", "STATUS", "CREATED", "UPDATED", "LAST USED"
    )?;
    for key in policy.keys_by_id.values() {
        let status = match key.status {
            KeyStatus::Active if key.is_expired_at(chrono::Utc::now()) => "expired",
            KeyStatus::Active => "active",
            KeyStatus::Paused => "paused",
        };
        let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
            t.map_or("-".to_owned(), |t| {
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            })
        };
        let used = last_used
            .get(&*key.id)
            .and_then(|ms| chrono::DateTime::from_timestamp_millis(*ms as i64));
        writeln!(
            out,
            "{:<24} {:<12} {:<20} {:<20} {:<8} {:<20} {:<20} {:<20} {}",
            key.id,
            key.hint.as_deref().unwrap_or("-"),
            key.workload.name,
            key.owner.as_deref().unwrap_or("-"),
            status,
            time(key.created_at),
            time(key.updated_at),
            time(used),
            time(key.expires_at)
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Transparent huge pages off for the gateway, unless `MIMALLOC_ALLOW_THP` decides: mimalloc asks
/// for them on its arenas, and each 2 MiB region touched is then resident whole: 18 MB of an idle
/// gateway's 45 MB, and 20 MB at 5,000 open streams, for no throughput gained at 32 connections
/// and a few percent of CPU per streamed event (docs/performance.md, Concurrency). Faults from
/// here on follow the flag; almost nothing is allocated before `main`.
fn keep_off_transparent_huge_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: PR_SET_THP_DISABLE takes plain integers and sets one flag of this process.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    }
}

/// mimalloc's `purge_delay` option; libmimalloc-sys names no constant for it (mimalloc.h's
/// `mi_option_e`, v2).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long freed allocator pages stay committed before they go back to the OS, unless
/// `MIMALLOC_PURGE_DELAY` decides. mimalloc's 10 ms is shorter than the pause between two bursts
/// of requests at thousands of connections: pages emptied by one burst went back to the OS and
/// the next burst faulted them in again, zeroed, at about 6% of the gateway's CPU. At 100 ms they
/// are reused instead. Pages a load left free still go back to the OS at the allocator's next
/// purge, as before (docs/performance.md, Concurrency).
const ALLOCATOR_PURGE_DELAY_MS: libc::c_long = 100;

fn delay_allocator_purge() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mi_option_set stores a number in mimalloc's option table; any thread may call it.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ALLOCATOR_PURGE_DELAY_MS) };
    }
}

fn serve(
    config: PathBuf,
    log_format: LogFormat,
    upgrade: bool,
    pingora_conf: Option<PathBuf>,
) -> Result<ExitCode> {
    keep_off_transparent_huge_pages();
    delay_allocator_purge();
    init_logging(log_format);
    let store = keygate::server::load_policy(&config)
        .map_err(|e| anyhow::anyhow!("the policy is invalid:\n{e}"))?;
    let policy = store.load_full();
    let opt = pingora::server::configuration::Opt {
        upgrade,
        conf: pingora_conf.map(|p| p.display().to_string()),
        ..Default::default()
    };
    if opt.conf.is_some() && !std::path::Path::new(opt.conf.as_deref().unwrap_or_default()).exists()
    {
        bail!("--pingora-conf file does not exist");
    }
    let (server, handles) = keygate::server::build(&store, Some(opt))?;
    tracing::info!(
        listen = %policy.startup.listen,
        mock_provider = ?policy.startup.mock_provider.as_ref().map(|m| m.listen),
        keys = policy.keys_by_id.len(),
        digest = %policy.digest,
        "keygate starting"
    );
    server.run(pingora::server::RunArgs {
        shutdown_signal: Box::new(keygate::shutdown::DrainingSignals {
            drain: handles.drain.clone(),
            drain_delay: policy
                .startup
                .server
                .drain_delay
                .unwrap_or(keygate::server::DEFAULT_DRAIN_DELAY),
        }),
    });
    handles.recorder.flush();
    std::process::exit(0)
}

/// Pingora targets that write what passes through them, held at these levels whatever
/// `KEYGATE_LOG` says, so that no level writes a secret.
const LOG_CAPS: [(&str, LevelFilter); 3] = [
    // Upstream request heads as raw bytes (the provider key), provider response heads and
    // bodies (which may echo it), request and response body bytes, at debug and trace.
    ("pingora_core::protocols", LevelFilter::INFO),
    // Client request heads (virtual keys), upstream requests and responses, and malformed
    // heads with the bytes read, at debug and trace.
    ("pingora_proxy", LevelFilter::INFO),
    // The admin listener's request heads (the admin token) and response bodies (new secrets)
    // at trace, and a malformed admin head with the bytes read at error.
    ("pingora_core::apps::http_app", LevelFilter::OFF),
];

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("KEYGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let caps = Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_targets(LOG_CAPS);
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let layer = match format {
        LogFormat::Text => layer.boxed(),
        LogFormat::Json => layer.json().boxed(),
    };
    tracing_subscriber::registry()
        .with(layer.with_filter(filter.and(caps)))
        .init();
}

/// This instance's usage, from its usage database.
fn usage_from_database(
    config: &std::path::Path,
    policy: &keygate::policy::Policy,
    filter: &keygate::state::UsageFilter,
    by: keygate::state::UsageGroup,
) -> Result<(Vec<keygate::state::ReportRow>, keygate::state::ReportRow)> {
    let Some(state_dir) = &policy.startup.state_dir else {
        bail!(
            "{} has no state_dir, so keygate persists no usage",
            config.display()
        );
    };
    Ok(keygate::accounting::report::query(
        state_dir,
        filter,
        Some(by),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_is_set_on_mimallocs_own_option() {
        // SAFETY: mi_option_get reads mimalloc's option table.
        let read = || unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        // mimalloc's documented default for purge_delay; the options beside it default to 1 and 0.
        assert_eq!(read(), 10);
        delay_allocator_purge();
        assert_eq!(read(), ALLOCATOR_PURGE_DELAY_MS);
    }
}
