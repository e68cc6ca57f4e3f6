//! `api-server`: one API worker (`api-server --port 8081`).

use clap::Parser;
use gallery::cli::ApiServerArgs;

fn main() -> std::process::ExitCode {
    let args = ApiServerArgs::parse();
    gallery::http::init_logging();
    gallery::exit_with(gallery::api::run(args))
}
