//! Key files on disk: one YAML file per key in `keys_dir`, named after the key id, so adding,
//! pausing or revoking a key is a commit that touches one file. Writes are atomic (temp file,
//! fsync, rename, fsync of the directory) so a watcher or a crash never sees half a file.

use crate::config::schema::KeyFile;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key `{0}` already exists")]
    Exists(String),
    #[error("key `{0}` does not exist")]
    NotFound(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The file of key `id` in `keys_dir`.
pub fn key_path(keys_dir: &Path, id: &str) -> PathBuf {
    keys_dir.join(format!("{id}.yaml"))
}

/// Renders a key file with a header comment; the secret never appears, only its digest.
pub fn render(key: &KeyFile) -> Result<String, StoreError> {
    let body = serde_yaml_ng::to_string(key).map_err(|e| StoreError::Format {
        path: PathBuf::new(),
        message: e.to_string(),
    })?;
    Ok(format!(
        "# keygate virtual key. Only the SHA-256 of the secret is stored here.\n{body}"
    ))
}

/// Writes `contents` to `path` atomically. With `create_new`, fails if the file exists.
pub fn write_atomic(path: &Path, contents: &str, create_new: bool) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("key");
    // Hidden temp name: the policy loader skips dot-files, so a watcher never reads it.
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(contents.as_bytes()).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        drop(f);
        if create_new {
            // hard_link fails if the target exists, which makes "create" race-free between
            // concurrent writers; rename would silently replace.
            std::fs::hard_link(&tmp, path).map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    StoreError::Exists(name.trim_end_matches(".yaml").to_owned())
                } else {
                    io_err(path)(e)
                }
            })?;
            std::fs::remove_file(&tmp).map_err(io_err(&tmp))?;
        } else {
            std::fs::rename(&tmp, path).map_err(io_err(path))?;
        }
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Reads the single-key file of `id`.
pub fn read_key(keys_dir: &Path, id: &str) -> Result<KeyFile, StoreError> {
    let path = key_path(keys_dir, id);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StoreError::NotFound(id.to_owned()))
        }
        Err(e) => return Err(io_err(&path)(e)),
    };
    serde_yaml_ng::from_str(&text).map_err(|e| StoreError::Format {
        path,
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::KeyStatus;

    fn sample() -> KeyFile {
        KeyFile {
            id: None,
            hash: format!("sha256:{}", "ab".repeat(32)),
            hint: Some("kg_…abcd".into()),
            workload: "w".into(),
            owner: Some("team".into()),
            description: None,
            models: Some(vec!["m".into()]),
            operations: None,
            status: KeyStatus::Active,
            expires_at: None,
            created_at: None,
            rate_limits: Vec::new(),
            max_concurrent: None,
            allowed_ips: None,
            budget: None,
            guardrails: Vec::new(),
            guardrails_off: Vec::new(),
            previous_hashes: Vec::new(),
        }
    }

    #[test]
    fn write_read_round_trip_and_create_new_refuses_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = key_path(dir.path(), "k1");
        let text = render(&sample()).unwrap();
        write_atomic(&path, &text, true).unwrap();
        let back = read_key(dir.path(), "k1").unwrap();
        assert_eq!(back.hash, sample().hash);
        assert!(matches!(
            write_atomic(&path, &text, true),
            Err(StoreError::Exists(_))
        ));
        write_atomic(&path, &text, false).unwrap();
        // no temp files left behind
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1);
        assert!(matches!(
            read_key(dir.path(), "nope"),
            Err(StoreError::NotFound(_))
        ));
    }
}
