//! `gallery-supervisor`: runs the whole stack (`gallery-supervisor --api-workers 3`).

use gallery::cli::{Invocation, SupervisorArgs};

fn main() -> std::process::ExitCode {
    gallery::exit_with(gallery::supervisor::main(
        Invocation::<SupervisorArgs>::parse(),
    ))
}
