//! Recognising an unchanged key file without reading it, from what the kernel records about the
//! file: device, inode, size, modification and change times.
//!
//! A reload of 100,000 keys otherwise reads every file to find the one that changed. The stamp is
//! trusted only for a file last changed well before it was read: file times have the granularity
//! of a kernel clock tick, so two writes within one tick can leave them equal, and the second
//! write would go unseen. The change time (ctime) cannot be set from user space, and a write by
//! rename (editors, `keygate keys`, git) gives a new inode, so a settled file whose stamp is
//! unchanged has not been written since.

use std::fs::Metadata;
use std::hash::{Hash, Hasher};
use std::time::{Duration, SystemTime};

/// How long ago a file must have been last changed for its stamp to be kept.
const SETTLED: Duration = Duration::from_secs(1);

/// A file's stamp, folded to 64 bits; [`NONE`] when it cannot be trusted.
pub type Stamp = u64;

/// No stamp: the file must be read.
pub const NONE: Stamp = 0;

/// The stamp of a file as `meta` describes it at `now`, or [`NONE`] for a file changed within
/// [`SETTLED`] of `now` (or later, under a clock that moved back), and on platforms without
/// inode numbers.
pub fn of(meta: &Metadata, now: SystemTime) -> Stamp {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let changed = std::time::UNIX_EPOCH
            + Duration::new(
                u64::try_from(meta.ctime()).unwrap_or(0),
                u32::try_from(meta.ctime_nsec()).unwrap_or(0),
            );
        if !now.duration_since(changed).is_ok_and(|age| age >= SETTLED) {
            return NONE;
        }
        match fold(meta) {
            NONE => 1,
            stamp => stamp,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (meta, now);
        NONE
    }
}

/// Device, inode, size, modification and change times folded into 64 bits, however recent.
/// SipHash with fixed keys: the same in every run, and a chance collision is negligible.
pub(crate) fn fold(meta: &Metadata) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        (
            meta.dev(),
            meta.ino(),
            meta.size(),
            meta.mtime(),
            meta.mtime_nsec(),
            meta.ctime(),
            meta.ctime_nsec(),
        )
            .hash(&mut h);
    }
    #[cfg(not(unix))]
    (meta.len(), meta.modified().ok()).hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_settled_file_has_a_stamp_that_any_write_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.yaml");
        std::fs::write(&path, "a: 1\n").unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        // Just written: not to be trusted yet.
        assert_eq!(of(&meta, SystemTime::now()), NONE);
        let later = SystemTime::now() + SETTLED * 2;
        let stamp = of(&meta, later);
        assert_ne!(stamp, NONE);
        assert_eq!(of(&std::fs::metadata(&path).unwrap(), later), stamp);
        // Same size, written in place, and rewritten by rename: both change the stamp.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&path, "a: 2\n").unwrap();
        let in_place = of(&std::fs::metadata(&path).unwrap(), later);
        assert_ne!(in_place, stamp);
        let temp = dir.path().join(".k.yaml.tmp");
        std::fs::write(&temp, "a: 2\n").unwrap();
        std::fs::rename(&temp, &path).unwrap();
        assert_ne!(of(&std::fs::metadata(&path).unwrap(), later), in_place);
    }
}
