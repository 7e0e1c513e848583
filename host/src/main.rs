//! The `pulse-host` binary.

fn main() -> std::process::ExitCode {
    pulse_host::cli::main()
}
