use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    aio_gateway::cli::run(aio_gateway::cli::Cli::parse()).await
}
