//! Revocation across a fleet. Key files stay the source of truth, but each instance sees another
//! instance's edit only when its own files show it (a shared volume's sync, a GitOps rollout).
//! So the admin API's pause, delete and rotation without grace also append an event to a Redis
//! stream, which every instance polls; an instance refuses the key from the event's arrival
//! until its own policy shows the change. Events are kept for [`KEEP`], so an instance that was
//! disconnected reads what it missed when it reconnects, and a resume clears an earlier pause.

use super::{Shared, BACKGROUND_TIMEOUT};
use crate::domain::KeyStatus;
use crate::keys::secret::KeyDigest;
use crate::policy::Key;
use redis::streams::StreamReadReply;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long events stay in the stream, and the longest an instance refuses a key on an event.
pub const KEEP: Duration = Duration::from_secs(600);
/// How often every instance reads the stream.
const POLL: Duration = Duration::from_millis(200);

pub fn stream_key(prefix: &str) -> String {
    format!("{prefix}:revocations")
}

/// What an instance did to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pause,
    Resume,
    Delete,
    /// Rotation without grace: the old secret stops at once.
    Rotate,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Delete => "delete",
            Action::Rotate => "rotate",
        }
    }

    fn parse(text: &str) -> Option<Action> {
        Some(match text {
            "pause" => Action::Pause,
            "resume" => Action::Resume,
            "delete" => Action::Delete,
            "rotate" => Action::Rotate,
            _ => return None,
        })
    }
}

/// One event: `digest` is the retired secret's digest, for a rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub action: Action,
    pub key: String,
    pub digest: Option<KeyDigest>,
}

impl Event {
    pub(super) fn fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            ("action", self.action.as_str().to_owned()),
            ("key", self.key.clone()),
        ];
        if let Some(d) = &self.digest {
            fields.push(("digest", d.to_string()));
        }
        fields
    }
}

/// How an instance refuses a key that another instance revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    Paused,
    Invalid,
}

#[derive(Debug)]
struct Entry {
    action: Action,
    key: Box<str>,
    digest: Option<KeyDigest>,
    until_ms: u64,
}

/// The revocations in force on this instance.
#[derive(Debug, Default)]
pub struct Revocations {
    /// Whether any entry exists: requests check one flag, not a lock, in the common case.
    any: AtomicBool,
    entries: Mutex<Vec<Entry>>,
}

impl Revocations {
    /// How to refuse `key` (as this instance's policy has it), if another instance revoked it
    /// and the policy does not show that yet. An entry the policy shows is dropped.
    pub fn check(&self, key: &Key) -> Option<Revoked> {
        if !self.any.load(Ordering::Relaxed) {
            return None;
        }
        let now_ms = crate::limits::now_ms();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let mut verdict = None;
        entries.retain(|e| {
            if e.until_ms <= now_ms {
                return false;
            }
            if *e.key != *key.id {
                return true;
            }
            match e.action {
                // This instance's files show the pause: its own check refuses from now on.
                Action::Pause if key.status == KeyStatus::Paused => false,
                Action::Pause => {
                    verdict = Some(Revoked::Paused);
                    true
                }
                Action::Rotate if e.digest != Some(key.digest) => false,
                Action::Rotate | Action::Delete => {
                    verdict = Some(Revoked::Invalid);
                    true
                }
                Action::Resume => false,
            }
        });
        self.any.store(!entries.is_empty(), Ordering::Relaxed);
        verdict
    }

    fn apply(&self, event: Event, at_ms: u64) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if event.action == Action::Resume {
            entries.retain(|e| !(e.action == Action::Pause && *e.key == *event.key));
        } else {
            entries.push(Entry {
                action: event.action,
                key: event.key.into(),
                digest: event.digest,
                until_ms: at_ms + KEEP.as_millis() as u64,
            });
        }
        self.any.store(!entries.is_empty(), Ordering::Relaxed);
    }
}

/// Reads the stream from [`KEEP`] ago, then every new event, for as long as the gateway runs.
pub(super) async fn follow(shared: Arc<Shared>, revocations: Arc<Revocations>) {
    let stream = stream_key(&shared.settings.prefix);
    let start = crate::limits::now_ms().saturating_sub(KEEP.as_millis() as u64);
    let mut last = format!("{start}-0");
    loop {
        tokio::time::sleep(POLL).await;
        let Ok(mut conn) = shared.conn() else {
            continue;
        };
        let mut read = redis::cmd("XREAD");
        read.arg("COUNT")
            .arg(1000)
            .arg("STREAMS")
            .arg(&stream)
            .arg(&last);
        let read = read.query_async::<Option<StreamReadReply>>(&mut conn);
        let reply = match tokio::time::timeout(BACKGROUND_TIMEOUT, read).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => {
                shared.record("follow", "error");
                tracing::debug!(error = %e, "cannot read revocations");
                continue;
            }
            Err(_) => {
                shared.record("follow", "timeout");
                continue;
            }
        };
        for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
            // Stream ids start with the millisecond the event was added.
            let at_ms = entry
                .id
                .split('-')
                .next()
                .and_then(|ms| ms.parse().ok())
                .unwrap_or_else(crate::limits::now_ms);
            let action = entry.get::<String>("action");
            let key = entry.get::<String>("key");
            let digest = entry
                .get::<String>("digest")
                .and_then(|d| KeyDigest::parse(&d));
            if let (Some(action), Some(key)) = (action.as_deref().and_then(Action::parse), key) {
                tracing::info!(key = %key, action = action.as_str(), "revocation from the fleet");
                revocations.apply(
                    Event {
                        action,
                        key,
                        digest,
                    },
                    at_ms,
                );
            }
            last = entry.id;
        }
    }
}
