//! The rhinobox daemon binary: parse the configuration, run the server, map errors to
//! exit codes (2 for bad configuration or a refused start).

use clap::Parser;
use rhinobox::config::{Args, Config};

/// Fixes glibc's mmap threshold: by default it rises to the size of the largest block ever
/// freed (the 8 MiB journal replay buffer), after which big transient buffers live in the
/// arenas and keep the resident size high long after use.
fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator parameters; called before any other thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
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
            let text = e.to_string();
            let first = text
                .lines()
                .next()
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ");
            eprintln!("rhinobox: error: {first}");
            std::process::exit(2);
        }
    };
    let config = match Config::from_args(args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("rhinobox: error: {e}");
            std::process::exit(2);
        }
    };
    match rhinobox::server::run(config) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("rhinobox: error: {}", e.0);
            std::process::exit(2);
        }
    }
}
