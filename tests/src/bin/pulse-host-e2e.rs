//! `pulse-host` built inside the test package, so tests and benchmarks that need the server in
//! a process of its own (to kill it, or to measure its memory) can find it through
//! `CARGO_BIN_EXE_pulse-host-e2e`. With the `native-handler` feature it also takes
//! `serve --native-handler`.

fn main() -> std::process::ExitCode {
    pulse_host::cli::main()
}
