//! Launcher for the `gpuq` command line.

use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = gpuq_producer::cli::Cli::parse();
    let code = gpuq_producer::cli::run(cli).await;
    std::process::exit(code);
}
