//! Key lifecycle operations shared by the CLI and the admin API: create, show, update, rotate,
//! pause, resume, delete. Each edits only the key's own file, atomically and under a lock on the keys
//! directory (so concurrent writers never interleave a read-modify-write), refuses to leave behind
//! a policy that no longer validates, and appends one line to the management audit log.
//!
//! The audit log is opened before the key file is touched, so a log that cannot be opened refuses
//! the change while nothing is written. The line itself can only be appended after the change: if
//! that append fails, the change stands and the failure is returned beside it ([`Applied`]),
//! because undoing it is not always possible and a caller must still get the secret it issued.

use super::secret;
use super::store::{self, StoreError};
use crate::config::schema::{BudgetFile, KeyFile, PreviousHash, RateLimitFile};
use crate::config::{self, KeyFileOverlay, LoadOptions, PolicyErrors, Problem, KEY_ID_RULE};
use crate::domain::{KeyStatus, Operation};
use crate::policy::Policy;
use chrono::{DateTime, Datelike, SubsecRound, Utc};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The longest grace period of a rotation, in days. The overlap exists for a switch without
/// downtime; a longer one would keep a secret that is being retired working for no purpose.
pub const MAX_GRACE_DAYS: u64 = 30;
const MAX_GRACE: Duration = Duration::from_secs(MAX_GRACE_DAYS * 24 * 60 * 60);

/// Expiries in this year or later are refused: they stand for "never" (omit the expiry instead),
/// and RFC 3339, which key files and the CLI use, has no years past it.
const EXPIRY_YEAR_LIMIT: i32 = 9999;

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("`{0}` is not a valid key id ({KEY_ID_RULE})")]
    InvalidId(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the policy is invalid:\n{0}")]
    Policy(PolicyErrors),
    #[error("the change would make the policy invalid:\n{0}")]
    Rejected(PolicyErrors),
    #[error("key `{0}` is defined in the list file {1}; edit that file instead")]
    InListFile(String, PathBuf),
    #[error("the OS random source failed: {0}")]
    Random(String),
    #[error("cannot lock the keys directory: {0}")]
    Lock(std::io::Error),
    #[error("a grace period is at most {MAX_GRACE_DAYS} days, not {}", humantime::format_duration(*.0))]
    GraceTooLong(Duration),
    #[error("a key's expiry must be in the future, not {}", .0.to_rfc3339())]
    ExpiryPast(DateTime<Utc>),
    #[error("a key's expiry must be before the year {EXPIRY_YEAR_LIMIT}, not {}; omit it for a key that does not expire", .0.to_rfc3339())]
    ExpiryTooFar(DateTime<Utc>),
    #[error("cannot open the management audit log {}, so nothing was changed: {io}", path.display())]
    AuditUnavailable { path: PathBuf, io: std::io::Error },
    #[error("a key update is a JSON object of key-file fields, not {0}")]
    UpdateNotAnObject(&'static str),
    #[error("{} cannot be changed by an update (it changes {}); use rotate, pause or resume for the secret and the status", fields_list(.0), fields_list(&EDITABLE_FIELDS))]
    NotEditable(Vec<String>),
}

/// The fields of a key file an update changes: everything but its secret, status and workload.
pub const EDITABLE_FIELDS: [&str; 11] = [
    "models",
    "operations",
    "rate_limits",
    "max_concurrent",
    "allowed_ips",
    "budget",
    "expires_at",
    "owner",
    "description",
    "guardrails",
    "guardrails_off",
];

fn fields_list<S: AsRef<str>>(fields: &[S]) -> String {
    fields
        .iter()
        .map(|f| format!("`{}`", f.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A change made whose management audit line could not be written.
#[derive(Debug, thiserror::Error)]
#[error("the change was made, but its line could not be written to the management audit log {}: {io}", path.display())]
pub struct AuditError {
    pub path: PathBuf,
    pub io: std::io::Error,
}

/// A change that took effect, and the audit line it could not write, if any.
#[derive(Debug)]
pub struct Applied<T> {
    pub outcome: T,
    pub unaudited: Option<AuditError>,
}

/// Who performed a lifecycle action, for the management audit log.
#[derive(Debug, Clone)]
pub struct Actor(pub String);

impl Actor {
    /// The user running the CLI.
    pub fn cli() -> Actor {
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| "unknown".to_owned());
        Actor(format!("cli:{user}"))
    }
}

/// Settings of a new key.
#[derive(Debug, Clone, Default)]
pub struct NewKey {
    pub workload: String,
    pub owner: Option<String>,
    pub description: Option<String>,
    pub models: Option<Vec<String>>,
    pub operations: Option<Vec<Operation>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub rate_limits: Vec<RateLimitFile>,
    pub max_concurrent: Option<i64>,
    pub allowed_ips: Option<Vec<String>>,
    pub budget: Option<BudgetFile>,
    /// Guardrails added to the workload's, and those of the workload's switched off.
    pub guardrails: Vec<String>,
    pub guardrails_off: Vec<String>,
}

/// A key just created or rotated. The secret exists only here: show it once, then drop it.
#[derive(Debug)]
pub struct IssuedKey {
    pub id: String,
    pub secret: secret::NewSecret,
    pub file: PathBuf,
    /// For rotations with a grace period: when the previous secret stops working.
    pub previous_valid_until: Option<DateTime<Utc>>,
}

/// The policy files one lifecycle call works on.
pub struct KeyFiles {
    config_path: PathBuf,
    keys_dir: PathBuf,
    audit_file: PathBuf,
    /// The policy a running gateway serves, whose unchanged keys each check reuses.
    serving: Option<Arc<Policy>>,
}

#[derive(Serialize)]
struct AuditLine<'a> {
    ts: String,
    action: &'a str,
    key_id: &'a str,
    actor: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

impl KeyFiles {
    /// Opens the policy at `config_path`, which must currently be valid: otherwise no change
    /// could be checked for validity.
    pub fn open(config_path: &Path) -> Result<KeyFiles, LifecycleError> {
        Self::opened(config_path.to_path_buf(), None)
    }

    /// [`Self::open`] inside a running gateway: every check reuses the keys of `serving` whose
    /// files are unchanged (`config::load_reusing`), so an admin call that changes one key of a
    /// large policy is checked in a fraction of a full load.
    pub fn open_beside(serving: Arc<Policy>) -> Result<KeyFiles, LifecycleError> {
        Self::opened(serving.config_path.clone(), Some(serving))
    }

    fn opened(
        config_path: PathBuf,
        serving: Option<Arc<Policy>>,
    ) -> Result<KeyFiles, LifecycleError> {
        let mut files = KeyFiles {
            config_path,
            keys_dir: PathBuf::new(),
            audit_file: PathBuf::new(),
            serving,
        };
        let policy = files.load().map_err(LifecycleError::Policy)?;
        files.keys_dir = policy.keys_dir.clone();
        files.audit_file = policy.management_audit_file.clone();
        Ok(files)
    }

    /// The policy as the files say now.
    fn load(&self) -> Result<Policy, PolicyErrors> {
        match &self.serving {
            Some(serving) => {
                config::load_reusing(&self.config_path, LoadOptions::default(), serving)
            }
            None => config::load(&self.config_path, LoadOptions::default()),
        }
    }

    pub fn keys_dir(&self) -> &Path {
        &self.keys_dir
    }

    /// Creates key `id`.
    pub fn create(
        &self,
        id: &str,
        settings: NewKey,
        actor: &Actor,
    ) -> Result<Applied<IssuedKey>, LifecycleError> {
        check_id(id)?;
        if let Some(at) = settings.expires_at {
            check_expiry(at, Utc::now())?;
        }
        let _lock = self.lock()?;
        let audit = self.open_audit()?;
        let new_secret = secret::generate().map_err(|e| LifecycleError::Random(e.to_string()))?;
        let file = KeyFile {
            id: None,
            hash: new_secret.digest.to_string(),
            hint: Some(new_secret.hint.clone()),
            workload: settings.workload,
            owner: settings.owner,
            description: settings.description,
            models: settings.models,
            operations: settings.operations,
            status: KeyStatus::Active,
            expires_at: settings.expires_at,
            budget: settings.budget,
            created_at: Some(Utc::now().trunc_subsecs(0)),
            rate_limits: settings.rate_limits,
            max_concurrent: settings.max_concurrent,
            allowed_ips: settings.allowed_ips,
            guardrails: settings.guardrails,
            guardrails_off: settings.guardrails_off,
            previous_hashes: Vec::new(),
        };
        let path = store::key_path(&self.keys_dir, id);
        store::write_atomic(&path, &store::render(&file)?, true)?;
        if let Err(problems) = self.load() {
            let _ = std::fs::remove_file(&path);
            return Err(LifecycleError::Rejected(problems));
        }
        Ok(Applied {
            unaudited: audit.append("create", id, actor, None).err(),
            outcome: IssuedKey {
                id: id.to_owned(),
                secret: new_secret,
                file: path,
                previous_valid_until: None,
            },
        })
    }

    /// The key's file contents (which hold no secret).
    pub fn show(&self, id: &str) -> Result<KeyFile, LifecycleError> {
        check_id(id)?;
        self.read_own_file(id)
    }

    /// Changes key `id`'s settings by a JSON merge patch (RFC 7396) over its file's
    /// [`EDITABLE_FIELDS`]: a `null` removes a field, an object merges into the field's object,
    /// anything else replaces it. The changed file is checked as a reload would check it, with
    /// the rest of the policy, before it is written: a change the policy rejects writes nothing
    /// and returns every problem. A patch that changes nothing writes nothing and is not audited.
    /// The outcome is the key's file as written, and the fields whose values changed.
    pub fn update(
        &self,
        id: &str,
        patch: &serde_json::Value,
        actor: &Actor,
    ) -> Result<Applied<(KeyFile, Vec<&'static str>)>, LifecycleError> {
        check_id(id)?;
        let fields = match patch {
            serde_json::Value::Object(fields) => fields,
            other => return Err(LifecycleError::UpdateNotAnObject(json_kind(other))),
        };
        let refused: Vec<String> = fields
            .keys()
            .filter(|f| !EDITABLE_FIELDS.contains(&f.as_str()))
            .cloned()
            .collect();
        if !refused.is_empty() {
            return Err(LifecycleError::NotEditable(refused));
        }
        let _lock = self.lock()?;
        let current = self.read_own_file(id)?;
        let audit = self.open_audit()?;
        let path = store::key_path(&self.keys_dir, id);
        let problem = |field: &str, message: String| Problem {
            file: path.clone(),
            field: field.to_owned(),
            message,
        };
        let before = serde_json::to_value(&current).map_err(|e| StoreError::Format {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let mut after = before.clone();
        json_patch::merge(&mut after, patch);
        let changed: Vec<&'static str> = EDITABLE_FIELDS
            .into_iter()
            .filter(|f| before.get(f) != after.get(f))
            .collect();
        if changed.is_empty() {
            return Ok(Applied {
                outcome: (current, changed),
                unaudited: None,
            });
        }
        let key: KeyFile = serde_path_to_error::deserialize(after).map_err(|e| {
            let field = e.path().to_string();
            let field = if field == "." { String::new() } else { field };
            LifecycleError::Rejected(PolicyErrors(vec![problem(
                &field,
                e.into_inner().to_string(),
            )]))
        })?;
        let mut problems = Vec::new();
        if let Some(at) = key.expires_at.filter(|_| changed.contains(&"expires_at")) {
            if let Err(e) = check_expiry(at, Utc::now()) {
                problems.push(problem("expires_at", e.to_string()));
            }
        }
        let text = store::render(&key)?;
        let overlay = KeyFileOverlay {
            file_name: path.file_name().unwrap_or_default(),
            text: &text,
        };
        if let Err(errors) = config::load_with_key_file(
            &self.config_path,
            LoadOptions::default(),
            self.serving.as_deref(),
            overlay,
        ) {
            problems.extend(errors.0);
        }
        if !problems.is_empty() {
            return Err(LifecycleError::Rejected(PolicyErrors(problems)));
        }
        store::write_atomic(&path, &text, false)?;
        let detail = format!("changed {}", changed.join(", "));
        Ok(Applied {
            unaudited: audit.append("update", id, actor, Some(detail)).err(),
            outcome: (key, changed),
        })
    }

    /// Issues a new secret with the same settings. With a grace period (at most [`MAX_GRACE_DAYS`])
    /// the old secret keeps working until it ends; without one it stops at once.
    pub fn rotate(
        &self,
        id: &str,
        grace: Option<Duration>,
        actor: &Actor,
    ) -> Result<Applied<IssuedKey>, LifecycleError> {
        check_id(id)?;
        let grace = grace
            .filter(|g| !g.is_zero())
            .map(|g| {
                chrono::Duration::from_std(g)
                    .ok()
                    .filter(|_| g <= MAX_GRACE)
                    .ok_or(LifecycleError::GraceTooLong(g))
            })
            .transpose()?;
        let _lock = self.lock()?;
        let mut key = self.read_own_file(id)?;
        let audit = self.open_audit()?;
        let now = Utc::now().trunc_subsecs(0);
        let new_secret = secret::generate().map_err(|e| LifecycleError::Random(e.to_string()))?;
        // Secrets whose grace already ended are dropped so files do not grow forever.
        key.previous_hashes.retain(|p| p.valid_until > now);
        let previous_valid_until = grace.map(|g| {
            let until = now + g;
            key.previous_hashes.push(PreviousHash {
                hash: key.hash.clone(),
                valid_until: until,
            });
            until
        });
        key.hash = new_secret.digest.to_string();
        key.hint = Some(new_secret.hint.clone());
        let path = self.write_checked(id, &key)?;
        let detail =
            previous_valid_until.map(|u| format!("previous secret valid until {}", u.to_rfc3339()));
        Ok(Applied {
            unaudited: audit.append("rotate", id, actor, detail).err(),
            outcome: IssuedKey {
                id: id.to_owned(),
                secret: new_secret,
                file: path,
                previous_valid_until,
            },
        })
    }

    /// Pauses or resumes key `id`.
    pub fn set_status(
        &self,
        id: &str,
        status: KeyStatus,
        actor: &Actor,
    ) -> Result<Applied<KeyFile>, LifecycleError> {
        check_id(id)?;
        let _lock = self.lock()?;
        let mut key = self.read_own_file(id)?;
        let audit = self.open_audit()?;
        key.status = status;
        self.write_checked(id, &key)?;
        let action = match status {
            KeyStatus::Active => "resume",
            KeyStatus::Paused => "pause",
        };
        Ok(Applied {
            unaudited: audit.append(action, id, actor, None).err(),
            outcome: key,
        })
    }

    /// Deletes key `id`: its secret is refused as soon as the policy reloads.
    pub fn delete(&self, id: &str, actor: &Actor) -> Result<Applied<()>, LifecycleError> {
        check_id(id)?;
        let _lock = self.lock()?;
        self.read_own_file(id)?;
        let audit = self.open_audit()?;
        let path = store::key_path(&self.keys_dir, id);
        std::fs::remove_file(&path).map_err(|source| StoreError::Io { path, source })?;
        Ok(Applied {
            unaudited: audit.append("delete", id, actor, None).err(),
            outcome: (),
        })
    }

    fn read_own_file(&self, id: &str) -> Result<KeyFile, LifecycleError> {
        match store::read_key(&self.keys_dir, id) {
            Ok(key) => Ok(key),
            Err(StoreError::NotFound(_)) => {
                // A key that exists only inside a list file cannot be edited as its own file.
                let policy = self.load().map_err(LifecycleError::Policy)?;
                match policy.keys_by_id.get(id) {
                    Some(k) => Err(LifecycleError::InListFile(
                        id.to_owned(),
                        k.file.to_path_buf(),
                    )),
                    None => Err(StoreError::NotFound(id.to_owned()).into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Writes the key's file, and puts the old one back if the policy stops validating.
    fn write_checked(&self, id: &str, key: &KeyFile) -> Result<PathBuf, LifecycleError> {
        let path = store::key_path(&self.keys_dir, id);
        let before = std::fs::read_to_string(&path).map_err(|source| StoreError::Io {
            path: path.clone(),
            source,
        })?;
        store::write_atomic(&path, &store::render(key)?, false)?;
        if let Err(problems) = self.load() {
            store::write_atomic(&path, &before, false)?;
            return Err(LifecycleError::Rejected(problems));
        }
        Ok(path)
    }

    /// An exclusive lock on the keys directory, held for one read-modify-write, across processes.
    fn lock(&self) -> Result<std::fs::File, LifecycleError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.keys_dir.join(".keygate.lock"))
            .map_err(LifecycleError::Lock)?;
        file.lock().map_err(LifecycleError::Lock)?;
        Ok(file)
    }

    /// The management audit log, open for appending (created with its directory if missing).
    fn open_audit(&self) -> Result<AuditLog, LifecycleError> {
        let unavailable = |io| LifecycleError::AuditUnavailable {
            path: self.audit_file.clone(),
            io,
        };
        if let Some(dir) = self.audit_file.parent() {
            std::fs::create_dir_all(dir).map_err(unavailable)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.audit_file)
            .map_err(unavailable)?;
        Ok(AuditLog {
            file,
            path: self.audit_file.clone(),
        })
    }
}

/// The management audit log, opened before a change.
struct AuditLog {
    file: std::fs::File,
    path: PathBuf,
}

impl AuditLog {
    fn append(
        mut self,
        action: &str,
        key_id: &str,
        actor: &Actor,
        detail: Option<String>,
    ) -> Result<(), AuditError> {
        let line = AuditLine {
            ts: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            action,
            key_id,
            actor: &actor.0,
            detail,
        };
        let mut text = serde_json::to_string(&line).unwrap_or_default();
        text.push('\n');
        // One write of one line with O_APPEND: concurrent writers never interleave within a line.
        self.file
            .write_all(text.as_bytes())
            .map_err(|io| AuditError {
                path: self.path,
                io,
            })
    }
}

/// Refuses an expiry at or before `now`, or in [`EXPIRY_YEAR_LIMIT`] or later.
fn check_expiry(at: DateTime<Utc>, now: DateTime<Utc>) -> Result<(), LifecycleError> {
    if at <= now {
        Err(LifecycleError::ExpiryPast(at))
    } else if at.year() >= EXPIRY_YEAR_LIMIT {
        Err(LifecycleError::ExpiryTooFar(at))
    } else {
        Ok(())
    }
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn check_id(id: &str) -> Result<(), LifecycleError> {
    if config::valid_key_id(id) {
        Ok(())
    } else {
        Err(LifecycleError::InvalidId(id.to_owned()))
    }
}
