//! The data plane's client connections: the `server.keepalive_timeout`, `server.header_timeout`
//! and `server.max_connections` settings.

#[test]
fn connection_settings_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keygate.yaml");
    std::fs::write(
        &config,
        "listen: 127.0.0.1:1\nserver: {keepalive_timeout: 0s, header_timeout: soon, max_connections: 0}\n",
    )
    .unwrap();
    let errors = keygate::config::load(&config, keygate::config::LoadOptions::default())
        .expect_err("the server section is invalid");
    let fields: Vec<&str> = errors.0.iter().map(|p| p.field.as_str()).collect();
    for field in [
        "server.keepalive_timeout",
        "server.header_timeout",
        "server.max_connections",
    ] {
        assert!(fields.contains(&field), "{field} is reported: {errors}");
    }
}
