//! Configuration: bad settings stop the daemon at start (exit 2, `rhinobox: error:`
//! naming the setting), flags win over env vars, and the API token guards endpoints.

mod common;

use std::time::Duration;

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

/// The CPU cores the daemon counts: those this process may run on.
fn daemon_cores() -> usize {
    core_affinity::get_core_ids()
        .map_or(1, |ids| ids.len())
        .max(1)
}

/// Runs the daemon with `args` (plus a loopback address and a fresh data dir unless given)
/// and returns its exit status as text (`exit status: 2`, or that it kept running and was
/// killed) and its stderr lines.
fn run_with(args: &[&str], env: &[(&str, &str)]) -> (String, Vec<String>) {
    let temp = tempfile::tempdir().unwrap();
    let data_dir = temp.path().join("data");
    let mut full: Vec<&str> = Vec::new();
    if !args.contains(&"--data-dir") {
        full.extend(["--data-dir", data_dir.to_str().unwrap()]);
    }
    if !args.contains(&"--addr") {
        full.extend(["--addr", "127.0.0.1:0"]);
    }
    full.extend(args);
    let (status, lines) = run_until_exit_or_kill(&full, env, Duration::from_secs(10));
    let status = match status {
        Some(status) => status.to_string(),
        None => "none (still running after 10 s, killed)".to_string(),
    };
    let stderr = lines
        .iter()
        .filter_map(|line| line.strip_prefix("stderr: ").map(str::to_string))
        .collect();
    (status, stderr)
}

/// One row of the table below: flags, env vars, the (env var, flag) that must be named,
/// and words of the fix the message must give.
type Case<'a> = (
    Vec<&'a str>,
    Vec<(&'a str, &'a str)>,
    (&'a str, &'a str),
    &'a str,
);

/// Every bad value of every setting stops the daemon with exit 2 and exactly one stderr
/// line, `rhinobox: error: ...`, that names the setting by env var and flag and says what
/// to give instead; regression test for `--max-upload-mb -1` (a clap error about an
/// unexpected argument), `--max-connections 0` (named two settings), a regular file as
/// data dir (`File exists`), `--max-upload-mb 99999999999999999999` (no range) and
/// `--workers 1000` on 2 cores (accepted; here 4 per core plus one). How: one run per row of the table below, each on a fresh
/// data dir; a row lists the env var and flag that must be named, and words of the fix.
#[test]
fn every_bad_value_is_refused_in_one_line() {
    let temp = tempfile::tempdir().unwrap();
    let regular_file = temp.path().join("a-file");
    std::fs::write(&regular_file, b"not a directory").unwrap();
    let regular_file = regular_file.to_str().unwrap();
    let empty_file = temp.path().join("empty-token");
    std::fs::write(&empty_file, b"").unwrap();
    let empty_file = empty_file.to_str().unwrap();
    let token_file = temp.path().join("token");
    std::fs::write(&token_file, b"s3cret\n").unwrap();
    let token_file = token_file.to_str().unwrap();
    let missing_file = temp.path().join("missing");
    let missing_file = missing_file.to_str().unwrap();
    let cores = daemon_cores();
    let too_many_workers = (cores * 4 + 1).to_string();
    let upload = ("RHINOBOX_MAX_UPLOAD_MB", "--max-upload-mb");
    let queue = ("RHINOBOX_QUEUE_CAPACITY", "--queue-capacity");
    let shutdown = ("RHINOBOX_SHUTDOWN_TIMEOUT_S", "--shutdown-timeout-s");
    let connections = ("RHINOBOX_MAX_CONNECTIONS", "--max-connections");
    let parts = ("RHINOBOX_MAX_PARTS", "--max-parts");
    let direct = ("RHINOBOX_DIRECT_IO_MIN_KB", "--direct-io-min-kb");
    let workers = ("RHINOBOX_WORKERS", "--workers");
    let addr = ("RHINOBOX_ADDR", "--addr");
    let data = ("RHINOBOX_DATA_DIR", "--data-dir");
    let token = ("RHINOBOX_API_TOKEN", "--api-token");
    let token_from = ("RHINOBOX_API_TOKEN_FILE", "--api-token-file");
    let durability = ("RHINOBOX_DURABILITY", "--durability");
    let engine = ("RHINOBOX_IO_ENGINE", "--io-engine");
    let s3_addr = ("RHINOBOX_S3_ADDR", "--s3-addr");
    let s3_access = ("RHINOBOX_S3_ACCESS_KEY", "--s3-access-key");
    let s3_secret = ("RHINOBOX_S3_SECRET_KEY", "--s3-secret-key");
    let s3_region = ("RHINOBOX_S3_REGION", "--s3-region");
    fn with_keys<'a>(more: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["--s3-access-key", "AK", "--s3-secret-key", "SK"];
        args.extend_from_slice(more);
        args
    }
    let cases: Vec<Case> = vec![
        (
            with_keys(&["--s3-addr", "nonsense"]),
            vec![],
            s3_addr,
            "expected :PORT",
        ),
        (
            vec!["--s3-addr", "127.0.0.1:0", "--s3-secret-key", "SK"],
            vec![],
            s3_access,
            "required with RHINOBOX_S3_ADDR",
        ),
        (
            vec!["--s3-addr", "127.0.0.1:0", "--s3-access-key", "AK"],
            vec![],
            s3_secret,
            "required with RHINOBOX_S3_ADDR",
        ),
        (
            with_keys(&["--s3-addr", "127.0.0.1:0", "--s3-region", "us east"]),
            vec![],
            s3_region,
            "not a region name",
        ),
        (
            with_keys(&[
                "--s3-addr",
                "127.0.0.1:0",
                "--s3-secret-key-file",
                missing_file,
            ]),
            vec![],
            s3_secret,
            "set only one",
        ),
        (
            vec!["--max-upload-mb", "-1"],
            vec![],
            upload,
            "from 1 to 1048576",
        ),
        (
            vec!["--max-upload-mb", "0"],
            vec![],
            upload,
            "from 1 to 1048576",
        ),
        (
            vec!["--max-upload-mb", "99999999999999999999"],
            vec![],
            upload,
            "from 1 to",
        ),
        (
            vec!["--max-upload-mb", "1048577"],
            vec![],
            upload,
            "from 1 to",
        ),
        (
            vec!["--max-upload-mb", "1.5"],
            vec![],
            upload,
            "whole number",
        ),
        (vec!["--max-upload-mb", ""], vec![], upload, "whole number"),
        (
            vec![],
            vec![("RHINOBOX_MAX_UPLOAD_MB", "-1")],
            upload,
            "from 1 to",
        ),
        (vec!["--queue-capacity", "0"], vec![], queue, "from 1 to"),
        (vec!["--queue-capacity", "-5"], vec![], queue, "from 1 to"),
        (
            vec!["--queue-capacity", "18446744073709551615"],
            vec![],
            queue,
            "from 1 to",
        ),
        (
            vec!["--shutdown-timeout-s", "-1"],
            vec![],
            shutdown,
            "from 0 to 86400",
        ),
        (
            vec!["--shutdown-timeout-s", "18446744073709551615"],
            vec![],
            shutdown,
            "from 0",
        ),
        (
            vec!["--max-connections", "0"],
            vec![],
            connections,
            "from 1 to",
        ),
        (
            vec!["--max-connections", "-1"],
            vec![],
            connections,
            "from 1 to",
        ),
        (
            vec!["--max-connections", "99999999999"],
            vec![],
            connections,
            "from 1 to",
        ),
        (vec!["--max-parts", "0"], vec![], parts, "from 1 to"),
        (vec!["--max-parts", "lots"], vec![], parts, "from 1 to"),
        (
            vec!["--direct-io-min-kb", "-1"],
            vec![],
            direct,
            "from 0 to",
        ),
        (
            vec!["--direct-io-min-kb", "1MiB"],
            vec![],
            direct,
            "from 0 to",
        ),
        (
            vec!["--workers", "-1"],
            vec![],
            workers,
            "0 = one per CPU core",
        ),
        (vec!["--workers", ""], vec![], workers, "whole number"),
        (
            vec!["--workers", &too_many_workers],
            vec![],
            workers,
            "per CPU core",
        ),
        (vec!["--addr", ""], vec![], addr, ":PORT"),
        (vec!["--addr", ":"], vec![], addr, ":PORT"),
        (vec!["--addr", ":65536"], vec![], addr, "from 0 to 65535"),
        (
            vec!["--data-dir", regular_file],
            vec![],
            data,
            "not a directory",
        ),
        (
            vec!["--data-dir", ""],
            vec![],
            data,
            "give the storage root",
        ),
        (vec!["--durability", ""], vec![], durability, "none, batch"),
        (
            vec!["--io-engine", "fast"],
            vec![],
            engine,
            "auto, uring, threads",
        ),
        (vec!["--api-token", ""], vec![], token, "empty"),
        (
            vec!["--api-token", "two words"],
            vec![],
            token,
            "visible ASCII",
        ),
        (
            vec!["--api-token-file", empty_file],
            vec![],
            token_from,
            "empty",
        ),
        (
            vec!["--api-token-file", missing_file],
            vec![],
            token_from,
            "cannot read",
        ),
        (
            vec!["--api-token-file", temp.path().to_str().unwrap()],
            vec![],
            token_from,
            "read",
        ),
        (
            vec!["--api-token", "x", "--api-token-file", token_file],
            vec![],
            token_from,
            "only one",
        ),
        (
            vec![],
            vec![("RHINOBOX_API_TOKEN_FILE", missing_file)],
            token_from,
            "cannot read",
        ),
    ];
    let mut failures = Vec::new();
    for (args, env, (env_name, flag), fix) in &cases {
        let (status, stderr) = run_with(args, env);
        let ok = status == "exit status: 2"
            && stderr.len() == 1
            && stderr[0].starts_with("rhinobox: error: ")
            && stderr[0].contains(env_name)
            && stderr[0].contains(flag)
            && stderr[0].contains(fix);
        if !ok {
            failures.push(format!(
                "{args:?} {env:?}: exit {status}, stderr {stderr:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases not refused in one line naming the setting and the fix:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// `--max-connections 0` and `--max-parts 0` each name only their own setting (the
/// message once named both).
#[test]
fn zero_limits_name_only_their_own_setting() {
    let (_, stderr) = run_with(&["--max-connections", "0"], &[]);
    assert!(!stderr.join("\n").contains("MAX_PARTS"), "{stderr:?}");
    let (_, stderr) = run_with(&["--max-parts", "0"], &[]);
    assert!(!stderr.join("\n").contains("MAX_CONNECTIONS"), "{stderr:?}");
}

/// A mistyped flag is one line too, with the fix: the flag meant (clap's tip).
#[test]
fn unknown_flag_is_one_line_with_a_tip() {
    let (status, stderr) = run_with(&["--max-upload", "5"], &[]);
    assert_eq!(status, "exit status: 2", "{stderr:?}");
    assert_eq!(stderr.len(), 1, "{stderr:?}");
    assert!(
        stderr[0].starts_with("rhinobox: error: unexpected argument '--max-upload'")
            && stderr[0].contains("'--max-upload-mb'"),
        "{stderr:?}"
    );
}

/// More workers than CPU cores start, with one warning line that says why it is a bad
/// idea; up to the number of cores there is no warning.
#[test]
fn more_workers_than_cores_warn_once() {
    let cores = daemon_cores();
    let over = (cores + 1).to_string();
    let daemon = Daemon::builder().args(&["--workers", &over]).start();
    assert_eq!(
        daemon.get("/stats").json()["cores"],
        cores as u64 + 1,
        "workers not honoured"
    );
    let warnings: Vec<String> = daemon
        .stderr_lines()
        .into_iter()
        .filter(|line| line.contains("RHINOBOX_WORKERS/--workers"))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("rhinobox: warning: ") && warnings[0].contains("CPU cores"),
        "{warnings:?}"
    );
    let daemon = Daemon::builder()
        .args(&["--workers", &cores.to_string()])
        .start();
    let log = daemon.log_text();
    assert!(!log.contains("RHINOBOX_WORKERS"), "{log}");
}

/// `--api-token-file` and `RHINOBOX_API_TOKEN_FILE`: the file's content without its
/// trailing newline is the token (requests with it pass, others get 401), and the token
/// is neither on the command line nor in the daemon's output.
#[test]
fn api_token_from_a_file() {
    const TOKEN: &str = "file-token-7c1e";
    let temp = tempfile::tempdir().unwrap();
    let path = temp.path().join("token");
    std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
    let path = path.to_str().unwrap();
    for by_env in [false, true] {
        let builder = Daemon::builder();
        let daemon = if by_env {
            builder.env("RHINOBOX_API_TOKEN_FILE", path).start()
        } else {
            builder.args(&["--api-token-file", path]).start()
        };
        assert_json_error(&daemon.get("/statistics"), 401, None);
        let bearer = format!("Bearer {TOKEN}");
        let with_token = daemon.request("GET", "/statistics", &[("Authorization", &bearer)], b"");
        assert_eq!(with_token.status, 200, "{}", with_token.text());
        let prefix = format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]);
        let wrong = daemon.request("GET", "/statistics", &[("Authorization", &prefix)], b"");
        assert_eq!(wrong.status, 401);
        assert!(
            !daemon.log_text().contains(TOKEN),
            "the token leaked into the log"
        );
    }
}
