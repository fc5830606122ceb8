//! The rhinobox daemon binary: parse the configuration, run the server, map errors to
//! exit codes (2 for bad configuration or a refused start).

use clap::Parser;
use rhinobox::config::{Args, Config};

fn main() {
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
