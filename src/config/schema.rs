//! The on-disk shape of the policy: the main YAML file and the key files in `keys_dir`, exactly as
//! users write them. Unknown fields are errors so that a typo never silently disables a rule.
//! Nothing here is validated beyond YAML types; `compile` turns these into a [`crate::policy::Policy`].

use crate::domain::{KeyStatus, Operation, ProviderFormat};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The main configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Data-plane listener, `host:port`.
    pub listen: String,
    /// Metrics, health and admin listener.
    #[serde(default)]
    pub admin_listen: Option<String>,
    /// Directory of key files, relative to the config file.
    #[serde(default = "default_keys_dir")]
    pub keys_dir: String,
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// CIDRs whose `X-Forwarded-For` is believed.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Where key lifecycle events are appended as JSON lines, relative to this file.
    #[serde(default = "default_management_audit_file")]
    pub management_audit_file: String,
    #[serde(default)]
    pub auth_guard: AuthGuardFile,
    /// The admin listener's own settings.
    #[serde(default)]
    pub admin: AdminFile,
    /// Directory for persisted state (the usage database), relative to this file. Without it,
    /// usage and spend are kept in memory only and start from zero on every restart.
    #[serde(default)]
    pub state_dir: Option<String>,
    /// Where limit state lives: this process (`memory`), or Redis shared by a fleet.
    #[serde(default)]
    pub state: Option<StateFile>,
    /// Where one JSON line per request is written: a path relative to this file, or `-` for stdout.
    #[serde(default)]
    pub audit_log: Option<String>,
    #[serde(default)]
    pub mock_provider: Option<MockProviderFile>,
    #[serde(default)]
    pub server: ServerFile,
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderFile>,
    #[serde(default)]
    pub models: BTreeMap<String, ModelFile>,
    #[serde(default)]
    pub workloads: BTreeMap<String, WorkloadFile>,
    /// Named guardrails that workloads and keys apply by name.
    #[serde(default)]
    pub guardrails: BTreeMap<String, GuardrailFile>,
    /// Guardrails applied to every workload; a key may switch one off with `guardrails_off`.
    #[serde(default)]
    pub guardrail_defaults: Vec<String>,
}

fn default_keys_dir() -> String {
    "keys.d".to_owned()
}

fn default_management_audit_file() -> String {
    "management-audit.jsonl".to_owned()
}

fn default_max_body_bytes() -> u64 {
    16 * 1024 * 1024
}

/// The `state` section: the backend of limit state and what to do when it fails.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateFile {
    #[serde(default)]
    pub backend: StateBackendFile,
    #[serde(default)]
    pub redis: Option<RedisFile>,
    #[serde(default)]
    pub on_error: OnErrorFile,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateBackendFile {
    #[default]
    Memory,
    Redis,
}

/// What admission does while Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnErrorFile {
    #[default]
    FailOpen,
    FailClosed,
    Local,
}

/// `state.redis`: one of `url`, `cluster` or `sentinel`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisFile {
    /// `redis://` or, for TLS, `rediss://`.
    #[serde(default)]
    pub url: Option<String>,
    /// Node URLs of a Redis Cluster.
    #[serde(default)]
    pub cluster: Option<Vec<String>>,
    #[serde(default)]
    pub sentinel: Option<SentinelFile>,
    /// Prepended to every Redis key, so that several gateways' fleets can share one Redis.
    #[serde(default)]
    pub prefix: Option<String>,
    /// The longest a request waits for Redis, e.g. `50ms`.
    #[serde(default)]
    pub timeout: Option<String>,
    /// How long a concurrency slot or budget reservation outlives an instance that stopped
    /// renewing it (one that crashed), e.g. `30s`.
    #[serde(default)]
    pub lease_ttl: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SentinelFile {
    /// The monitored master's name.
    pub master: String,
    /// Sentinel URLs.
    pub nodes: Vec<String>,
}

/// Process-level settings of the Pingora server.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    /// Worker threads of the data plane (default: the number of CPUs).
    #[serde(default)]
    pub threads: Option<usize>,
    /// Whether the data plane's threads steal each other's tasks (default: only when there is
    /// more than one thread). See docs/performance.md, Tuning.
    #[serde(default)]
    pub work_stealing: Option<bool>,
    /// How long in-flight requests may take to finish on SIGTERM, e.g. `30s`.
    #[serde(default)]
    pub grace_period: Option<String>,
    /// How long `/readyz` answers 503 on SIGTERM before keygate stops accepting (default `5s`),
    /// so load balancers move traffic away first.
    #[serde(default)]
    pub drain_delay: Option<String>,
    /// How long a request body may take to arrive whole (default `30s`).
    #[serde(default)]
    pub body_timeout: Option<String>,
    /// How long an idle keep-alive connection is kept for the client's next request (default
    /// `60s`).
    #[serde(default)]
    pub keepalive_timeout: Option<String>,
    /// How long a request head may take to arrive whole, counted from the connection's
    /// acceptance or, on a kept-alive connection, from the next request's first byte (default
    /// `10s`).
    #[serde(default)]
    pub header_timeout: Option<String>,
    /// Open client connections on the data plane past which new ones are refused (default: half
    /// the process's open-file limit, at most 10,000).
    #[serde(default)]
    pub max_connections: Option<usize>,
}

/// The optional embedded OpenAI- and Anthropic-compatible upstream, for trying keygate without a
/// provider account.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MockProviderFile {
    pub listen: String,
    /// When set, the mock requires this credential, proving that keygate swapped it in.
    #[serde(default)]
    pub api_key: Option<String>,
    /// Pause between streamed events, e.g. `20ms`.
    #[serde(default)]
    pub stream_delay: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderFile {
    pub format: ProviderFormat,
    /// The real provider credential; `${VAR}` is read from the environment when the policy loads.
    #[serde(default)]
    pub api_key: Option<String>,
    /// `format: anthropic` only: the `anthropic-version` sent when the client sends none.
    #[serde(default)]
    pub anthropic_version: Option<String>,
    /// Account-steering client headers (e.g. `OpenAI-Organization`) forwarded to this provider;
    /// the others are withheld.
    #[serde(default)]
    pub forward_headers: Vec<String>,
    pub endpoints: Vec<EndpointFile>,
    /// Extra PEM CA bundle trusted for this provider's endpoints, relative to the config file.
    #[serde(default)]
    pub ca_file: Option<String>,
    #[serde(default)]
    pub timeouts: TimeoutsFile,
    /// Idle upstream connections kept for reuse.
    #[serde(default)]
    pub pool: PoolFile,
    /// How requests are spread over the endpoints.
    #[serde(default)]
    pub balance: BalanceFile,
    /// Active health checks of every endpoint, off the request path.
    #[serde(default)]
    pub health_check: Option<HealthCheckFile>,
    /// Further endpoints tried after a connect failure or a reset before any response byte.
    #[serde(default)]
    pub retries: Option<i64>,
}

/// Endpoint selection: smooth weighted round robin, fewest in-flight requests (per weight), or the
/// lower latency-times-load of two random endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BalanceFile {
    #[default]
    RoundRobin,
    LeastRequests,
    P2cLatency,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckFile {
    /// Path requested with GET on each endpoint; a 200 is healthy.
    pub path: String,
    /// Pause between two checks of one endpoint, e.g. `5s`.
    #[serde(default)]
    pub interval: Option<String>,
    /// Consecutive failed checks that take an endpoint out.
    #[serde(default)]
    pub unhealthy_after: Option<i64>,
    /// Consecutive successful checks that bring it back.
    #[serde(default)]
    pub healthy_after: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointFile {
    pub url: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// The keep-alive pool of a provider's connections.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolFile {
    /// Idle connections kept for reuse; unset, as many as `server.max_connections`.
    #[serde(default)]
    pub max_idle: Option<i64>,
    /// How long an idle connection is kept before keygate closes it, e.g. `90s`.
    #[serde(default)]
    pub idle_timeout: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsFile {
    /// TCP + TLS connect, e.g. `2s`.
    #[serde(default)]
    pub connect: Option<String>,
    /// Longest wait for the response header after the request was sent, e.g. `60s`.
    #[serde(default)]
    pub first_byte: Option<String>,
    /// Longest silence of the upstream once the response header arrived, e.g. `60s`; also the
    /// default of `first_byte`.
    #[serde(default)]
    pub idle: Option<String>,
    /// Longest time for the whole upstream exchange of one model, retries included, e.g. `600s`.
    #[serde(default)]
    pub total: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    pub provider: String,
    /// The model name sent upstream, when it differs from the name clients use.
    #[serde(default)]
    pub upstream_model: Option<String>,
    #[serde(default)]
    pub price: Option<PriceFile>,
    /// The most output tokens one request can produce; reserved against budgets when the
    /// request sets no `max_tokens` of its own.
    #[serde(default)]
    pub max_output_tokens: Option<i64>,
    /// Models tried in order when this one answers 429 or 5xx, times out, or cannot be reached.
    #[serde(default)]
    pub fallbacks: Vec<String>,
    /// Azure OpenAI: the deployment that serves this model (default: the upstream model name).
    #[serde(default)]
    pub deployment: Option<String>,
    /// Azure OpenAI: the `api-version` of the deployments API, or `v1` for the v1 API
    /// (`/openai/v1/...`, no `api-version`).
    #[serde(default)]
    pub api_version: Option<String>,
}

/// USD per million tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceFile {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
    #[serde(default)]
    pub cached_input_per_mtok: Option<f64>,
    /// Prompt tokens written to a provider's cache (Anthropic's `cache_creation_input_tokens`).
    #[serde(default)]
    pub cache_write_per_mtok: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadFile {
    #[serde(default)]
    pub description: Option<String>,
    pub models: Vec<String>,
    /// Defaults to every operation.
    #[serde(default)]
    pub operations: Option<Vec<Operation>>,
    #[serde(default)]
    pub rate_limits: Vec<RateLimitFile>,
    #[serde(default)]
    pub max_concurrent: Option<i64>,
    #[serde(default)]
    pub allowed_ips: Option<Vec<String>>,
    #[serde(default)]
    pub budget: Option<BudgetFile>,
    /// Guardrails applied to this workload's keys, on top of `guardrail_defaults`.
    #[serde(default)]
    pub guardrails: Vec<String>,
}

/// One named guardrail: exactly one detector, an action and the sides it applies to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardrailFile {
    #[serde(default)]
    pub keywords: Option<Vec<String>>,
    /// How `keywords` match: `word` (whole words, the default) or `substring`.
    #[serde(default, rename = "match")]
    pub match_: Option<KeywordMatchFile>,
    #[serde(default)]
    pub regex: Option<Vec<String>>,
    #[serde(default)]
    pub pii: Option<Vec<String>>,
    /// `all`, or a list of secret kinds.
    #[serde(default)]
    pub secrets: Option<SecretsFile>,
    #[serde(default)]
    pub prompt_injection: Option<PromptInjectionFile>,
    #[serde(default)]
    pub moderation: Option<ModerationFile>,
    pub action: GuardrailActionFile,
    /// `[request]` (the default), `[response]` or `[request, response]`.
    #[serde(default)]
    pub apply_to: Option<Vec<GuardrailSideFile>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeywordMatchFile {
    Word,
    Substring,
}

/// `secrets: all` or `secrets: [aws_access_key, github, ...]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SecretsFile {
    All(String),
    Kinds(Vec<String>),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptInjectionFile {
    /// `low`, `medium` (the default) or `high`.
    #[serde(default)]
    pub threshold: Option<String>,
}

/// An outside moderation service: an OpenAI-compatible `/v1/moderations` endpoint, or a
/// webhook answering `{"allow": bool}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModerationFile {
    pub url: String,
    /// `openai` (the default) or `webhook`.
    #[serde(default)]
    pub format: Option<ModerationFormatFile>,
    /// Sent as `Authorization: Bearer …`; `${VAR}` is read from the environment.
    #[serde(default)]
    pub api_key: Option<String>,
    /// The longest wait for the service's answer (default `1s`).
    #[serde(default)]
    pub timeout: Option<String>,
    /// What a request gets when the service fails or times out: `allow` or `block` (the default).
    #[serde(default)]
    pub on_error: Option<ModerationOnErrorFile>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModerationFormatFile {
    Openai,
    Webhook,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModerationOnErrorFile {
    Allow,
    Block,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuardrailActionFile {
    Block,
    Redact,
    Log,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuardrailSideFile {
    Request,
    Response,
}

/// Spending caps in USD per UTC calendar day and month.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_usd: Option<f64>,
    #[serde(default)]
    pub mode: BudgetModeFile,
    /// Fractions of a cap (0 < f ≤ 1) at which an alert is logged once per period.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alert_at: Vec<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetModeFile {
    /// Refuse requests that would pass a cap.
    #[default]
    Enforce,
    /// Count and alert, never refuse.
    Track,
}

/// One sliding-window limit: `requests` or `tokens` per window `per` (1s to 30d).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<i64>,
    pub per: String,
}

/// The `admin` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    /// How long a console login lasts, e.g. `8h`.
    #[serde(default)]
    pub session_ttl: Option<String>,
}

/// Limits failed authentications per client IP, before any key lookup.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthGuardFile {
    pub max_failures: i64,
    pub per: String,
}

impl Default for AuthGuardFile {
    fn default() -> Self {
        AuthGuardFile {
            max_failures: 20,
            per: "1m".to_owned(),
        }
    }
}

/// One virtual key. In a single-key file the id is the file stem; in a list file each entry names its id.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `sha256:<64 hex>` of the secret.
    pub hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    pub workload: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Narrows the workload's models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    /// Narrows the workload's operations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operations: Option<Vec<Operation>>,
    #[serde(default)]
    pub status: KeyStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimitFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_ips: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetFile>,
    /// Guardrails this key applies on top of its workload's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guardrails: Vec<String>,
    /// Guardrails of its workload (or the defaults) this key does not apply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guardrails_off: Vec<String>,
    /// Secrets replaced by a rotation that keep working until their grace period ends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_hashes: Vec<PreviousHash>,
}

/// A rotated-out secret's digest and the moment it stops working.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PreviousHash {
    pub hash: String,
    pub valid_until: DateTime<Utc>,
}
