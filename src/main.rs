//! The `sluice` binary: all of the command line lives in `sluice::cli`.

fn main() {
    std::process::exit(sluice::cli::main_with_args(std::env::args_os()));
}
