//! `gallery-client`: lists and adds images through whichever front door
//! answers (`gallery-client --endpoint http://A:8080 --endpoint http://B:8080 list`).

use clap::Parser;
use gallery::client::ClientArgs;

fn main() -> std::process::ExitCode {
    gallery::exit_with(gallery::client::run(ClientArgs::parse()))
}
