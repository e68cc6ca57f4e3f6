//! `static-server`: serves the gallery page (`static-server --assets assets --port 8082`).

use gallery::cli::{Invocation, StaticServerArgs};

fn main() -> std::process::ExitCode {
    let cli = Invocation::<StaticServerArgs>::parse();
    gallery::http::init_logging(cli.log_level);
    if cli.args.quiet_requests {
        gallery::http::log_requests_at_debug();
    }
    let assets = &cli.args.path;
    if !assets.is_dir() {
        let error = anyhow::anyhow!("assets directory {} does not exist", assets.display());
        return gallery::exit_with(Err(error.context("--assets")));
    }
    let result = gallery::static_files::run(cli.args.clone());
    gallery::exit_with(result.map_err(|e| cli.name_the_flag(e)))
}
