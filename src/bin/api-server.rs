//! `api-server`: one API worker (`api-server --port 8081`).

use gallery::cli::{ApiServerArgs, Invocation};

fn main() -> std::process::ExitCode {
    let cli = Invocation::<ApiServerArgs>::parse();
    gallery::http::init_logging(cli.log_level);
    if cli.args.quiet_requests {
        gallery::http::log_requests_at_debug();
    }
    let result = gallery::api::run(cli.args.clone());
    gallery::exit_with(result.map_err(|e| cli.name_the_flag(e)))
}
