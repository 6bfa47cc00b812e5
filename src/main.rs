use clap::Parser;

/// Task polls between two looks for I/O by a busy runtime worker (tokio's default is 61). Under load
/// every database answer waits for that look: at 61 it came ~1 ms late on two cores, and a group
/// commit holds its account's row lock across several round trips, so the lateness capped creates.
const EVENT_INTERVAL: u32 = 8;

fn main() -> std::process::ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().event_interval(EVENT_INTERVAL).build();
    match runtime {
        Ok(runtime) => runtime.block_on(aio_gateway::cli::run(aio_gateway::cli::Cli::parse())),
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
