//! Key lifecycle operations shared by the CLI and (later) the admin API. Each edits only the key's
//! own file, atomically, and refuses to leave behind a policy that no longer validates.

use super::secret;
use super::store::{self, StoreError};
use crate::config::schema::{KeyFile, KeyStatus, Operation};
use crate::config::{self, LoadOptions, PolicyErrors, KEY_ID_RULE};
use chrono::{DateTime, SubsecRound, Utc};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("`{0}` is not a valid key id ({KEY_ID_RULE})")]
    InvalidId(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the policy is invalid:\n{0}")]
    Policy(PolicyErrors),
    #[error("the key would make the policy invalid:\n{0}")]
    Rejected(PolicyErrors),
    #[error("the OS random source failed: {0}")]
    Random(String),
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
}

/// A key just created. The secret exists only here: print it once, then drop it.
#[derive(Debug)]
pub struct CreatedKey {
    pub id: String,
    pub secret: secret::NewSecret,
    pub file: PathBuf,
}

/// Creates key `id` in the keys directory of the policy at `config_path`.
pub fn create(
    config_path: &Path,
    id: &str,
    settings: NewKey,
) -> Result<CreatedKey, LifecycleError> {
    if !crate::config::valid_key_id(id) {
        return Err(LifecycleError::InvalidId(id.to_owned()));
    }
    // The current policy must be valid, or we could not tell whether the new key is.
    config::load(config_path, LoadOptions::default()).map_err(LifecycleError::Policy)?;
    let keys_dir = config::keys_dir_of(config_path).map_err(LifecycleError::Policy)?;
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
        created_at: Some(Utc::now().trunc_subsecs(0)),
    };
    let path = store::key_path(&keys_dir, id);
    store::write_atomic(&path, &store::render(&file)?, true)?;
    if let Err(problems) = config::load(config_path, LoadOptions::default()) {
        let _ = std::fs::remove_file(&path);
        return Err(LifecycleError::Rejected(problems));
    }
    Ok(CreatedKey {
        id: id.to_owned(),
        secret: new_secret,
        file: path,
    })
}
