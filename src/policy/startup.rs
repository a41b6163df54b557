//! The settings of a policy that only take effect when the gateway starts: listeners, the data
//! plane's threads, shutdown timing, the brute-force guard and the accounting sinks. The server is
//! built from them once; a reload carries them in its snapshot, but the running server keeps what
//! it was built with. They are kept together so that a reload that changes one can say which
//! (see [`StartupSettings::changed_from`]).
//!
//! Each field is named as the policy file names it, so a changed setting is reported by its path
//! in the YAML (`server.threads`) without a list of names to keep in step with the fields.

use crate::accounting::audit::AuditTarget;
use crate::limits::fleet::FleetSettings;
use serde::{Serialize, Serializer};
use serde_json::Value;
use std::fmt::Debug;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Settings read once, when the server is built.
#[derive(Debug, Clone, Serialize)]
pub struct StartupSettings {
    /// The data plane's listener.
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    pub mock_provider: Option<MockProviderSettings>,
    pub server: ServerSettings,
    /// Failed authentications allowed per client IP and window.
    pub auth_guard: (u32, Duration),
    /// Where the usage database lives; `None` keeps usage in memory only.
    #[serde(serialize_with = "as_debug")]
    pub state_dir: Option<PathBuf>,
    #[serde(serialize_with = "as_debug")]
    pub audit_log: Option<AuditTarget>,
    /// Where limit state lives; `None` is this process's memory.
    #[serde(serialize_with = "as_debug")]
    pub state: Option<FleetSettings>,
}

/// The policy's `server` section: how the Pingora server runs and stops.
#[derive(Debug, Clone, Serialize)]
pub struct ServerSettings {
    pub threads: Option<usize>,
    pub work_stealing: Option<bool>,
    #[serde(serialize_with = "as_debug")]
    pub grace_period: Option<Duration>,
    #[serde(serialize_with = "as_debug")]
    pub drain_delay: Option<Duration>,
    #[serde(serialize_with = "as_debug")]
    pub keepalive_timeout: Option<Duration>,
    #[serde(serialize_with = "as_debug")]
    pub header_timeout: Option<Duration>,
    pub max_connections: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MockProviderSettings {
    pub listen: SocketAddr,
    pub api_key: Option<String>,
    #[serde(serialize_with = "as_debug")]
    pub stream_delay: Duration,
}

impl StartupSettings {
    /// The YAML path of every setting that differs from `before`, e.g. `listen`,
    /// `server.threads`, in name order; a section added or removed as a whole is named once
    /// (`mock_provider`).
    pub fn changed_from(&self, before: &StartupSettings) -> Vec<String> {
        let mut changed = Vec::new();
        collect_changes("", &before.to_value(), &self.to_value(), &mut changed);
        // JSON objects keep their keys sorted or in field order, depending on serde_json's
        // features in the whole build.
        changed.sort_unstable();
        changed
    }

    fn to_value(&self) -> Value {
        serde_json::to_value(self)
            .expect("every field serializes: paths and other fallible types go through as_debug")
    }
}

fn collect_changes(path: &str, before: &Value, after: &Value, changed: &mut Vec<String>) {
    match (before, after) {
        (Value::Object(before), Value::Object(after)) => {
            for (name, was) in before {
                let at = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}.{name}")
                };
                collect_changes(&at, was, &after[name], changed);
            }
        }
        _ if before != after => changed.push(path.to_owned()),
        _ => {}
    }
}

/// Serializes a value as its `Debug` text: enough to compare two of them, and it never fails
/// (a path that is not UTF-8 would fail as a plain string), nor does it split a `Duration` into
/// fields that would be reported as settings of their own.
fn as_debug<T: Debug, S: Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&format_args!("{value:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> StartupSettings {
        StartupSettings {
            listen: "127.0.0.1:8080".parse().unwrap(),
            admin_listen: None,
            mock_provider: None,
            server: ServerSettings {
                threads: Some(2),
                work_stealing: None,
                grace_period: Some(Duration::from_secs(30)),
                drain_delay: None,
                keepalive_timeout: None,
                header_timeout: None,
                max_connections: None,
            },
            auth_guard: (20, Duration::from_secs(60)),
            state_dir: Some(PathBuf::from("state")),
            state: None,
            audit_log: None,
        }
    }

    #[test]
    fn every_changed_setting_is_named_by_its_yaml_path() {
        let before = settings();
        assert!(before.changed_from(&before).is_empty());

        let mut after = settings();
        after.server.grace_period = Some(Duration::from_millis(30_001));
        after.auth_guard.1 = Duration::from_secs(61);
        after.audit_log = Some(AuditTarget::Stdout);
        assert_eq!(
            after.changed_from(&before),
            ["audit_log", "auth_guard", "server.grace_period"]
        );

        let mock = MockProviderSettings {
            listen: "127.0.0.1:9000".parse().unwrap(),
            api_key: None,
            stream_delay: Duration::from_millis(20),
        };
        let mut with_mock = settings();
        with_mock.mock_provider = Some(mock.clone());
        assert_eq!(with_mock.changed_from(&before), ["mock_provider"]);
        let mut other_mock = with_mock.clone();
        other_mock.mock_provider = Some(MockProviderSettings {
            stream_delay: Duration::from_millis(5),
            ..mock
        });
        assert_eq!(
            other_mock.changed_from(&with_mock),
            ["mock_provider.stream_delay"]
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_state_dir_that_is_not_utf8_is_compared_too() {
        use std::os::unix::ffi::OsStrExt;
        let before = settings();
        let mut after = settings();
        after.state_dir = Some(PathBuf::from(std::ffi::OsStr::from_bytes(b"st\xffte")));
        assert_eq!(after.changed_from(&before), ["state_dir"]);
    }
}
