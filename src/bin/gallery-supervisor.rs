//! `gallery-supervisor`: runs the whole stack (`gallery-supervisor --api-workers 3`).

use clap::Parser;
use gallery::cli::SupervisorArgs;

fn main() -> std::process::ExitCode {
    let args = SupervisorArgs::parse();
    gallery::exit_with(gallery::supervisor::main(args))
}
