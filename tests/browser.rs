//! The web page and a plain HTML form, in a real browser: headless Chromium driven by
//! playwright-core (tests/browser/*.mjs) against the real daemon. The browser does what a
//! user does (pick files, type, press keys, confirm dialogs, download); this file then
//! checks the store over the HTTP API: what the page uploaded is stored with the right
//! bytes, what it downloaded has the stored bytes, what it deleted is gone.
//!
//! Its own harness (`harness = false` in Cargo.toml) so that a skip shows in the output of
//! a plain `cargo test`: without Chromium, node or playwright-core the suite prints
//! `SKIPPED` with the reason; under `CI` that is a failure instead.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::*;
use rhinobox::client::{MediaKind, blake3_hex};
use serde_json::Value;

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("browser")
}

/// Why the browser cannot run here, or `None` when it can.
fn missing_tool() -> Option<String> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let probes: [(&str, Command); 3] = [
        ("chromium (apt-get install chromium)", {
            let mut c = Command::new(&chromium);
            c.arg("--version");
            c
        }),
        ("node (apt-get install nodejs npm)", {
            let mut c = Command::new("node");
            c.arg("--version");
            c
        }),
        ("playwright-core (cd tests/browser && npm ci)", {
            let mut c = Command::new("node");
            c.current_dir(browser_dir()).args([
                "-e",
                "import('playwright-core').then(() => process.exit(0))",
            ]);
            c
        }),
    ];
    for (tool, mut probe) in probes {
        let works = probe
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !works {
            return Some(tool.to_string());
        }
    }
    None
}

/// Runs `node <script> args...` in tests/browser and parses the JSON it prints.
fn node(script: &str, args: &[&str]) -> Value {
    let mut command = Command::new("node");
    command.current_dir(browser_dir()).arg(script).args(args);
    if let Ok(dir) = std::env::var("RHINOBOX_SCREENSHOTS") {
        command.env("SCREENSHOTS", dir);
    }
    let output = command.output().expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "node {script} {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// Every request the browser made went to the daemon (or a `blob:` URL it created), and
/// the page logged no error.
fn assert_stayed_on_host(reply: &Value, base: &str) {
    for url in reply["requests"].as_array().expect("requests") {
        let url = url.as_str().unwrap();
        assert!(
            url.starts_with(base) || url.starts_with("blob:"),
            "the page requested {url}, which is not this daemon"
        );
    }
    let errors = reply["console_errors"].as_array().expect("console_errors");
    // A 401 probe before the token is typed is logged by Chromium as a failed resource.
    let unexpected: Vec<_> = errors
        .iter()
        .filter(|e| !e.as_str().unwrap_or("").contains("401"))
        .collect();
    assert!(unexpected.is_empty(), "page errors: {unexpected:?}");
}

/// A real, decodable PNG (RGB, 8 bits, stored deflate blocks): a colour gradient, so the
/// record's preview has something a browser can draw.
fn png_image(width: u32, height: u32, seed: u8) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &byte in bytes {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = crc32(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }
    let mut raw = Vec::new();
    for y in 0..height {
        raw.push(0); // filter: none
        for x in 0..width {
            let r = (x * 255 / width.max(1)) as u8;
            let g = (y * 255 / height.max(1)) as u8;
            raw.extend_from_slice(&[r, g, seed]);
        }
    }
    // zlib stream of stored blocks (at most 65,535 bytes each) and its Adler-32.
    let mut zlib = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = raw.chunks(65_535).collect();
    for (i, block) in blocks.iter().enumerate() {
        zlib.push(u8::from(i + 1 == blocks.len()));
        let len = block.len() as u16;
        zlib.extend_from_slice(&len.to_le_bytes());
        zlib.extend_from_slice(&(!len).to_le_bytes());
        zlib.extend_from_slice(block);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in &raw {
        a = (a + u32::from(byte)) % 65_521;
        b = (b + a) % 65_521;
    }
    zlib.extend_from_slice(&((b << 16) | a).to_be_bytes());
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut header = Vec::new();
    header.extend_from_slice(&width.to_be_bytes());
    header.extend_from_slice(&height.to_be_bytes());
    header.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut png, b"IHDR", &header);
    chunk(&mut png, b"IDAT", &zlib);
    chunk(&mut png, b"IEND", &[]);
    png
}

fn write_files(dir: &Path, files: &[TestFile]) -> Vec<String> {
    files
        .iter()
        .map(|file| {
            let path = dir.join(&file.name);
            std::fs::write(&path, &file.bytes).unwrap();
            path.to_str().unwrap().to_string()
        })
        .collect()
}

fn api_hashes_newest_first(daemon: &Daemon, query: &str) -> Vec<String> {
    let reply = daemon.get(&format!("/files?{query}")).json();
    reply["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["hash"].as_str().unwrap().to_string())
        .collect()
}

fn hashes(rows: &Value) -> Vec<String> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|row| row["hash"].as_str().unwrap().to_string())
        .collect()
}

/// Files picked in the page's file input (one with a UTF-8 name, one picked twice under
/// another name): each row ends `stored`, the repeated content `duplicate`; the store
/// holds every file with the bytes picked, under the name as picked; the page's listing
/// then shows the store's newest-first order.
fn page_upload_stores_files() {
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let jpeg = TestFile::named("été à la plage.jpg", MediaKind::Jpeg, 40_000, 1);
    let png = TestFile::named("diagram.png", MediaKind::Png, 9_000, 2);
    let video = TestFile::named("clip.mp4", MediaKind::Mp4, 300_000, 3);
    let mut again = jpeg.clone();
    again.name = "copy of beach.jpg".into();
    let files = [jpeg.clone(), png.clone(), video.clone()];
    let mut paths = write_files(dir.path(), &files);
    let copy_dir = dir.path().join("copy");
    std::fs::create_dir(&copy_dir).unwrap();
    paths.extend(write_files(&copy_dir, std::slice::from_ref(&again)));
    let base = format!("http://{}", daemon.addr);
    let mut args = vec![base.as_str()];
    args.extend(paths.iter().map(String::as_str));
    let reply = node("page.mjs", &[&["upload"], args.as_slice()].concat());
    assert_stayed_on_host(&reply, &base);

    let rows = reply["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "{reply}");
    // Rows are prepended as files are picked: the newest pick is on top.
    let by_name = |name: &str| {
        rows.iter()
            .find(|row| row["name"] == name)
            .unwrap_or_else(|| panic!("no row for {name}: {reply}"))
    };
    for file in &files {
        let row = by_name(&file.name);
        assert_eq!(row["hash"], file.hash().as_str(), "{row}");
        let response = daemon.get(&format!("/files/download?hash={}", file.hash()));
        assert_eq!(response.status, 200);
        assert_eq!(blake3_hex(&response.body), file.hash(), "{}", file.name);
        let record = daemon
            .get(&format!("/files/metadata?hash={}", file.hash()))
            .json();
        assert_eq!(record["original_name"], file.name.as_str());
    }
    let duplicate = by_name("copy of beach.jpg");
    assert_eq!(duplicate["hash"], jpeg.hash().as_str());
    // Which of the two identical picks is stored first depends on the parallel uploads.
    let states: Vec<_> = [by_name(&jpeg.name), duplicate]
        .iter()
        .map(|row| row["state"].as_str().unwrap().to_string())
        .collect();
    assert!(
        states.contains(&"stored".to_string()) && states.contains(&"duplicate".to_string()),
        "{states:?}"
    );
    assert_eq!(
        hashes(&reply["listed"]),
        api_hashes_newest_first(&daemon, "")
    );
    assert_eq!(daemon.get("/statistics").json()["files"], 3);
}

/// A batch the daemon refuses as a whole (one file over `--max-upload-mb`: 413 for the
/// request) is sent again file by file: the small files are stored, only the large one
/// fails, with the daemon's message in its row.
fn page_upload_one_bad_file_fails_alone() {
    let daemon = Daemon::builder().args(&["--max-upload-mb", "1"]).start();
    let dir = tempfile::tempdir().unwrap();
    let files = [
        TestFile::named("small-a.jpg", MediaKind::Jpeg, 20_000, 31),
        TestFile::named("too-big.mp4", MediaKind::Mp4, 1_500_000, 32),
        TestFile::named("small-b.png", MediaKind::Png, 20_000, 33),
    ];
    let paths = write_files(dir.path(), &files);
    let base = format!("http://{}", daemon.addr);
    let mut args = vec!["upload", base.as_str()];
    args.extend(paths.iter().map(String::as_str));
    let reply = node("page.mjs", &args);
    let rows = reply["rows"].as_array().unwrap();
    let state_of = |name: &str| {
        let row = rows.iter().find(|row| row["name"] == name).unwrap();
        (
            row["state"].as_str().unwrap().to_string(),
            row["result"].to_string(),
        )
    };
    assert_eq!(state_of("small-a.jpg").0, "stored", "{reply}");
    assert_eq!(state_of("small-b.png").0, "stored", "{reply}");
    let (state, result) = state_of("too-big.mp4");
    assert_eq!(state, "failed", "{reply}");
    assert!(result.contains("exceeds the limit of 1 MiB"), "{result}");
    assert_eq!(daemon.get("/statistics").json()["files"], 2);
    assert_eq!(
        daemon
            .get(&format!("/files/download?hash={}", files[1].hash()))
            .status,
        404
    );
}

/// The page over a store filled through the API: the listing is the API's newest-first
/// order; the media-type filter shows only images; a bare category hint explains itself;
/// typing a name searches (case-insensitively); the newest match's record opens by
/// keyboard and shows its path and hash; its download has the stored bytes; Delete asks
/// first, Cancel keeps the file, Delete removes it from the store.
fn page_browse_search_download_delete() {
    let daemon = Daemon::start();
    let mut files = mixed_files(12, 500);
    files.push(TestFile::named(
        "Needle-one.jpg",
        MediaKind::Jpeg,
        20_000,
        900,
    ));
    files.push(TestFile::named("haystack.png", MediaKind::Png, 5_000, 901));
    files.push(TestFile {
        name: "needle two.png".into(),
        kind: MediaKind::Png,
        bytes: png_image(96, 64, 140),
    });
    for file in &files {
        daemon.upload_ok(std::slice::from_ref(file));
    }
    let dir = tempfile::tempdir().unwrap();
    let base = format!("http://{}", daemon.addr);
    let out = dir.path().to_str().unwrap();
    let newest_first = api_hashes_newest_first(&daemon, "");
    let images_newest_first = api_hashes_newest_first(&daemon, "media_type=images");
    let needle_two_record = daemon
        .get(&format!("/files/metadata?hash={}", files[14].hash()))
        .json();
    let reply = node("page.mjs", &["browse", &base, "NEEDL", out]);
    assert_stayed_on_host(&reply, &base);

    assert_eq!(hashes(&reply["listed"]), newest_first);
    assert_eq!(reply["summary"], "15 files");
    assert_eq!(hashes(&reply["images"]), images_newest_first);
    assert!(reply["category_hint_visible"].as_bool().unwrap(), "{reply}");
    assert!(
        reply["category_hint"]
            .as_str()
            .unwrap()
            .contains("images/jpg/vacation"),
        "{reply}"
    );

    let needle_two = &files[14];
    let needle_one = &files[12];
    assert_eq!(
        hashes(&reply["search"]),
        vec![needle_two.hash(), needle_one.hash()]
    );
    assert_eq!(reply["search_summary"], "2 matches");
    let record = &reply["record"];
    assert_eq!(record["BLAKE3"], needle_two.hash().as_str());
    assert_eq!(record["Path"], needle_two_record["path"]);
    assert_eq!(
        reply["preview_width"], 96,
        "an image record shows its preview"
    );

    let downloaded = std::fs::read(reply["download"]["path"].as_str().unwrap()).unwrap();
    assert_eq!(blake3_hex(&downloaded), needle_two.hash());
    assert_eq!(reply["download"]["suggested_name"], "needle two.png");

    assert!(
        reply["confirm_text"]
            .as_str()
            .unwrap()
            .contains("needle two.png"),
        "{reply}"
    );
    assert_eq!(reply["after_cancel"].as_array().unwrap().len(), 2);
    assert_eq!(reply["deleted"], needle_two.hash().as_str());
    let gone = daemon.get(&format!("/files/download?hash={}", needle_two.hash()));
    assert_eq!(gone.status, 404, "deleted through the page");
    assert_eq!(hashes(&reply["after_delete"]), vec![needle_one.hash()]);
    assert_eq!(reply["record_open_after_delete"], 0);
    let still = daemon.get(&format!("/files/download?hash={}", needle_one.hash()));
    assert_eq!(still.status, 200);
    assert_eq!(daemon.get("/statistics").json()["files"], 14);
    assert!(reply["stats"].as_str().unwrap().contains("14"), "{reply}");
}

/// With `--api-token`: the page itself loads without the token and asks for it; a wrong
/// token is refused with a message and shows nothing; the right one opens the page, an
/// upload through it is stored, a download through it (fetch with the header, blob: URL)
/// has the stored bytes; a reload keeps the session; "Forget token" asks again.
fn page_token_flow() {
    const TOKEN: &str = "browser-s3cret";
    let daemon = Daemon::builder().args(&["--api-token", TOKEN]).start();
    assert_eq!(daemon.get("/").status, 200, "the page needs no token");
    assert_eq!(daemon.get("/statistics").status, 401, "the API does");
    let dir = tempfile::tempdir().unwrap();
    let file = TestFile::named("guarded.jpg", MediaKind::Jpeg, 25_000, 77);
    let path = write_files(dir.path(), std::slice::from_ref(&file)).remove(0);
    let base = format!("http://{}", daemon.addr);
    let out = dir.path().to_str().unwrap();
    let reply = node("page.mjs", &["token", &base, TOKEN, &path, out]);
    assert_stayed_on_host(&reply, &base);
    assert!(reply["app_hidden"].as_bool().unwrap());
    assert!(reply["app_hidden_after_wrong"].as_bool().unwrap());
    assert!(
        reply["wrong_error"]
            .as_str()
            .unwrap()
            .contains("not accepted"),
        "{reply}"
    );
    assert!(reply["app_visible"].as_bool().unwrap());
    assert_eq!(reply["upload"]["rows"][0]["state"], "stored", "{reply}");
    let auth = format!("Bearer {TOKEN}");
    let stored = daemon.request(
        "GET",
        &format!("/files/download?hash={}", file.hash()),
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(blake3_hex(&stored.body), file.hash());
    let downloaded = std::fs::read(reply["download"]["path"].as_str().unwrap()).unwrap();
    assert_eq!(blake3_hex(&downloaded), file.hash());
    assert!(reply["after_reload_visible"].as_bool().unwrap());
    assert!(reply["after_forget_prompt"].as_bool().unwrap());
}

/// A plain HTML form (no script): `<form enctype=multipart/form-data method=post
/// action=.../ingest/media>` with `<input type=file name=file multiple>`, opened from
/// file:// and submitted with two files (one with a UTF-8 name). The JSON reply lists
/// both with their names as picked, their hashes and the comment typed into the form.
fn browser_form_upload() {
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let files = [
        TestFile::named("résumé photo.jpg", MediaKind::Jpeg, 3010, 10),
        TestFile::named("clip.mp4", MediaKind::Mp4, 3011, 11),
    ];
    let paths = write_files(dir.path(), &files);
    let page = dir.path().join("form.html");
    let html = format!(
        "<!doctype html><meta charset=utf-8><title>upload</title>\
<form id=upload enctype=multipart/form-data method=post action=\"http://{}/ingest/media\">\
<input type=file name=file multiple><input type=text name=comment value=\"from chromium\">\
</form>",
        daemon.addr
    );
    std::fs::write(&page, html).unwrap();
    let reply = node(
        "upload.mjs",
        &[page.to_str().unwrap(), paths[0].as_str(), paths[1].as_str()],
    );
    let stored = reply["stored"]
        .as_array()
        .unwrap_or_else(|| panic!("{reply}"));
    assert_eq!(stored.len(), 2, "{reply}");
    assert_eq!(stored[0]["original_name"], "résumé photo.jpg");
    assert_eq!(stored[0]["hash"], files[0].hash().as_str());
    assert_eq!(stored[1]["original_name"], "clip.mp4");
    assert_eq!(stored[1]["hash"], files[1].hash().as_str());
    assert_eq!(stored[1]["comment"], "from chromium");
}

const TESTS: [(&str, fn()); 5] = [
    ("page_upload_stores_files", page_upload_stores_files),
    (
        "page_upload_one_bad_file_fails_alone",
        page_upload_one_bad_file_fails_alone,
    ),
    (
        "page_browse_search_download_delete",
        page_browse_search_download_delete,
    ),
    ("page_token_flow", page_token_flow),
    ("browser_form_upload", browser_form_upload),
];

fn main() {
    // `cargo test -- NAME` runs the tests whose name contains NAME; `--list` lists them.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        for (name, _) in TESTS {
            println!("{name}: test");
        }
        return;
    }
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let selected: Vec<_> = TESTS
        .iter()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| name.contains(*f)))
        .collect();
    if let Some(tool) = missing_tool() {
        if std::env::var_os("CI").is_some() {
            eprintln!("browser tests: {tool} is required under CI but is not usable");
            std::process::exit(1);
        }
        println!(
            "\nbrowser tests: SKIPPED {} tests: {tool} is missing (under CI this fails)\n",
            selected.len()
        );
        return;
    }
    // No capture here: the daemons' access logs would drown the results.
    common::ECHO_DAEMON_OUTPUT.store(false, std::sync::atomic::Ordering::Relaxed);
    println!("\nrunning {} browser tests", selected.len());
    let mut failed = Vec::new();
    for (name, test) in selected.iter() {
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(test);
        let seconds = started.elapsed().as_secs_f64();
        match outcome {
            Ok(()) => println!("test {name} ... ok ({seconds:.1} s)"),
            Err(_) => {
                println!("test {name} ... FAILED ({seconds:.1} s)");
                failed.push(*name);
            }
        }
    }
    println!(
        "\nbrowser test result: {}. {} passed; {} failed\n",
        if failed.is_empty() { "ok" } else { "FAILED" },
        selected.len() - failed.len(),
        failed.len()
    );
    if !failed.is_empty() {
        std::process::exit(101);
    }
}
