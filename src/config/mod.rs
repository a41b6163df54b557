//! Reading and validating the policy files: the main YAML config and the key files of `keys_dir`.
//!
//! [`load`] reads everything, reports every problem it finds (file, field path, reason) rather than
//! stopping at the first, and on success returns a compiled [`Policy`]. `keygate check`, startup and
//! every reload go through this one function, so what `check` accepts is exactly what `serve` runs.

pub mod schema;

mod compile;
mod env;
mod flat;
pub(crate) mod stamp;

use crate::policy::Policy;
use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

pub use compile::keys::{valid_key_id, KEY_ID_RULE};

/// One thing wrong with the policy files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    /// Dotted path of the offending field (`providers.openai.endpoints[0].url`), or empty.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}: {}: {}",
                self.file.display(),
                self.field,
                self.message
            )
        }
    }
}

/// Every problem found in one attempt to load the policy.
#[derive(Debug, Clone, thiserror::Error)]
pub struct PolicyErrors(pub Vec<Problem>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// How much of the outside world loading may touch.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Resolve endpoint host names now (serving), or leave them for later (`check` in a CI job
    /// that may have no DNS).
    pub resolve_dns: bool,
}

/// Reads, validates and compiles the policy rooted at `config_path`.
pub fn load(config_path: &Path, options: LoadOptions) -> Result<Policy, PolicyErrors> {
    compile::load(config_path, options, None, None, None)
}

/// [`load`] for a reload while `previous` serves: when the main file is unchanged, each key
/// whose own file is unchanged is taken from `previous` rather than parsed and compiled again.
/// The result is the policy [`load`] would give, at a fraction of the work when few files
/// changed, and sharing the unchanged keys keeps two policies from doubling memory at a swap.
pub fn load_reusing(
    config_path: &Path,
    options: LoadOptions,
    previous: &Policy,
) -> Result<Policy, PolicyErrors> {
    compile::load(config_path, options, Some(previous), None, None)
}

/// [`load_reusing`], told which key files may have changed since `previous` read them (names in
/// the keys directory, as the file watcher reports them): every other key file is taken as it
/// was, without a `stat`. A reload of 100,000 keys then costs the listing and the cross-file
/// checks, not 100,000 system calls.
pub fn load_reusing_all_but(
    config_path: &Path,
    options: LoadOptions,
    previous: &Policy,
    changed_key_files: &HashSet<Vec<u8>>,
) -> Result<Policy, PolicyErrors> {
    compile::load(
        config_path,
        options,
        Some(previous),
        Some(changed_key_files),
        None,
    )
}

/// One key file's text standing in for the file of that name in the keys directory.
#[derive(Debug, Clone, Copy)]
pub struct KeyFileOverlay<'a> {
    pub file_name: &'a std::ffi::OsStr,
    pub text: &'a str,
}

/// The policy as it would be with `overlay` written: a lifecycle change is checked by this
/// before anything is written, so a change the policy rejects leaves the files untouched.
/// `previous`, when given, is reused as [`load_reusing`] does, except for the overlaid file.
pub fn load_with_key_file(
    config_path: &Path,
    options: LoadOptions,
    previous: Option<&Policy>,
    overlay: KeyFileOverlay<'_>,
) -> Result<Policy, PolicyErrors> {
    compile::load(config_path, options, previous, None, Some(&overlay))
}

/// Where the key files of the policy at `config_path` live, read from the config alone, so key
/// commands can find the directory even while some other part of the policy is broken.
pub fn keys_dir_of(config_path: &Path) -> Result<PathBuf, PolicyErrors> {
    compile::keys_dir_of(config_path)
}
