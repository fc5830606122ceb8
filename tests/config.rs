//! Configuration: bad settings stop the daemon at start (exit 2, `rhinobox: error:`
//! naming the setting), flags win over env vars, and the API token guards endpoints.

mod common;

use common::*;
use rhinobox::client::MediaKind;

/// Runs the daemon with `extra` flags on a fresh data dir and asserts exit code 2 with a
/// stderr line starting `rhinobox: error:` that mentions `setting`.
fn assert_refused(extra: &[&str], env: &[(&str, &str)], setting: &str) {
    let temp = tempfile::tempdir().unwrap();
    let data_dir = temp.path().join("data");
    let data_dir = data_dir.to_str().unwrap();
    let mut args = vec!["--data-dir", data_dir];
    if !extra.contains(&"--addr") {
        args.extend(["--addr", "127.0.0.1:0"]);
    }
    args.extend(extra);
    let (status, lines) = run_until_exit(&args, env);
    let log = lines.join("\n");
    assert_eq!(
        status.code(),
        Some(2),
        "{extra:?} {env:?}: exit {status}; log:\n{log}"
    );
    let error = lines
        .iter()
        .find(|line| line.starts_with("stderr: rhinobox: error:"))
        .unwrap_or_else(|| panic!("{extra:?}: no `rhinobox: error:` line; log:\n{log}"));
    // `io engine`, `--io-engine` and `RHINOBOX_IO_ENGINE` all name the setting.
    let normalized = error.to_lowercase().replace(['_', ' '], "-");
    assert!(
        normalized.contains(setting),
        "{error:?} does not name {setting:?}"
    );
}

/// `--durability maybe` → exit 2 naming durability.
#[test]
fn bad_durability_is_refused() {
    assert_refused(&["--durability", "maybe"], &[], "durability");
}

/// `--io-engine x` → exit 2 naming the io engine.
#[test]
fn bad_io_engine_is_refused() {
    assert_refused(&["--io-engine", "x"], &[], "io-engine");
}

/// `--addr nonsense` → exit 2 naming the address.
#[test]
fn bad_addr_is_refused() {
    assert_refused(&["--addr", "nonsense"], &[], "addr");
}

/// `--workers abc` → exit 2 naming workers.
#[test]
fn bad_workers_is_refused() {
    assert_refused(&["--workers", "abc"], &[], "workers");
}

/// A bad value from the environment (`RHINOBOX_DURABILITY=maybe`) is refused too.
#[test]
fn bad_env_value_is_refused() {
    assert_refused(&[], &[("RHINOBOX_DURABILITY", "maybe")], "durability");
}

/// A data dir that cannot be created (its parent is a regular file, which stops root as
/// well as users) → exit 2 naming the data dir.
#[test]
fn unwritable_data_dir_is_refused() {
    let temp = tempfile::tempdir().unwrap();
    let blocker = temp.path().join("file");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let data_dir = blocker.join("data");
    let data_dir = data_dir.to_str().unwrap();
    let (status, lines) = run_until_exit(&["--addr", "127.0.0.1:0", "--data-dir", data_dir], &[]);
    assert_eq!(status.code(), Some(2), "log:\n{}", lines.join("\n"));
    let error = lines
        .iter()
        .find(|l| l.starts_with("stderr: rhinobox: error:"));
    let error = error.unwrap_or_else(|| panic!("no error line: {lines:?}"));
    assert!(
        error.contains("data"),
        "{error:?} does not name the data dir"
    );
}

/// The flag wins over the environment: `RHINOBOX_DURABILITY=maybe` with
/// `--durability none` starts and reports durability `none` in /stats.
#[test]
fn flag_wins_over_env() {
    let daemon = Daemon::builder()
        .args(&["--durability", "none"])
        .env("RHINOBOX_DURABILITY", "maybe")
        .start();
    let stats = daemon.get("/stats").json();
    assert_eq!(stats["durability"], "none", "{stats}");
}

/// `--io-engine threads` is honoured and reported by /stats, and uploads work on it.
#[test]
fn threads_engine_is_reported_and_works() {
    let daemon = Daemon::builder().args(&["--io-engine", "threads"]).start();
    assert_eq!(daemon.get("/stats").json()["io_engine"], "threads");
    let files = mixed_files(20, 50);
    for (entry, file) in daemon.upload_ok(&files).iter().zip(&files) {
        assert_entry_matches(&daemon, entry, file);
    }
}

/// With `--api-token T`: an upload without a token or with a wrong one is 401 JSON, with
/// `Authorization: Bearer T` it is stored, and /healthz needs no token.
#[test]
fn api_token_guards_endpoints() {
    let daemon = Daemon::builder().args(&["--api-token", "s3cret"]).start();
    let file = TestFile::new(MediaKind::Jpeg, 1000, 1);
    let (content_type, body) = form_of(std::slice::from_ref(&file)).finish();
    let post = |auth: Option<&str>| {
        let mut headers = vec![("Content-Type", content_type.as_str())];
        headers.extend(auth.map(|value| ("Authorization", value)));
        daemon.request("POST", "/ingest/media", &headers, &body)
    };
    assert_json_error(&post(None), 401, None);
    assert_json_error(&post(Some("Bearer wrong")), 401, None);
    assert_eq!(stored_files(&daemon.data_dir).len(), 0);
    let entries = stored_entries(&post(Some("Bearer s3cret")), 1);
    assert_entry_matches(&daemon, &entries[0], &file);
    assert_eq!(daemon.get("/healthz").status, 200);
    assert_json_error(&daemon.get("/statistics"), 401, None);
}
