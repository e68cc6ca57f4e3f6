//! `static-server`: serves the gallery page (`static-server --path assets --port 8082`).

use clap::Parser;
use gallery::cli::StaticServerArgs;

fn main() -> std::process::ExitCode {
    let args = StaticServerArgs::parse();
    gallery::http::init_logging();
    gallery::exit_with(gallery::static_files::run(args))
}
