//! The rhinobox binary: parse the configuration, run the server (or an admin command:
//! `verify`, `repair`), map errors to exit codes (2 for bad configuration or a refused
//! start).

use clap::Parser;
use rhinobox::config::{AdminCommand, Args, Config};
use rhinobox::store::audit;

/// Pins glibc's malloc thresholds. By default the mmap threshold rises to the largest
/// block ever freed (the 8 MiB journal replay buffer) and the heap is trimmed at 128 KiB,
/// so request buffers keep being returned to the kernel and faulted in again (measured:
/// 5 % of CPU in page clearing). Blocks up to 4 MiB stay in the arenas and are reused;
/// larger ones are mapped and given back on free; the heap top is trimmed past 16 MiB.
fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator parameters; called before any other thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 * 1024 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 16 * 1024 * 1024);
    }
}

/// clap's multi-line error as one line: the error, then its tip (`a similar argument
/// exists: '--max-upload-mb'`) or where to look, as the fix.
fn one_line(text: &str) -> String {
    let first = text
        .lines()
        .next()
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ");
    let tip = text
        .lines()
        .map(str::trim)
        .find_map(|line| line.strip_prefix("tip: "));
    match tip {
        Some(tip) => format!("{first}; {tip}"),
        None => format!("{first}; see `rhinobox --help`"),
    }
}

fn main() {
    tune_allocator();
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            let _ = e.print();
            std::process::exit(0);
        }
        Err(e) => {
            rhinobox::log_line!("rhinobox: error: {}", one_line(&e.to_string()));
            std::process::exit(2);
        }
    };
    if let Some(command) = &args.command {
        let data_dir = command.data_dir(&args);
        let code = match command {
            AdminCommand::Verify(_) => audit::verify(&data_dir),
            AdminCommand::Repair(_) => audit::repair(&data_dir),
        };
        std::process::exit(code);
    }
    let config = match Config::from_args(args) {
        Ok(config) => config,
        Err(e) => {
            rhinobox::log_line!("rhinobox: error: {e}");
            std::process::exit(2);
        }
    };
    for warning in &config.warnings {
        rhinobox::log_line!("rhinobox: warning: {warning}");
    }
    match rhinobox::server::run(config) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            rhinobox::log_line!("rhinobox: error: {}", e.0);
            std::process::exit(2);
        }
    }
}
