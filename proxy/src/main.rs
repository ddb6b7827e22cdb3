//! `courier`: start-up and exit codes. Everything else is in the library.

use std::process::ExitCode;

use clap::Parser;
use courier::logging::{LogFormat, LogSetup};
use courier::options::Options;

fn main() -> ExitCode {
    // As Envoy: a bad command line exits 1 (clap's default would be 2); --help and
    // --version exit 0.
    let options = match Options::try_parse() {
        Ok(o) => o,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let filter = match options.tracing_filter() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let format = match options.log_format.as_deref() {
        Some(pattern) => match LogFormat::parse(pattern, options.log_format_escaped) {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        },
        None => None,
    };
    let setup = LogSetup {
        filter,
        path: options.log_path.as_deref(),
        format,
    };
    if let Err(e) = courier::logging::init(setup) {
        eprintln!("error: {e}");
        return ExitCode::from(1);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the main thread's runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let local = tokio::task::LocalSet::new();
    match local.block_on(&runtime, courier::server::run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
