//! `chatq-bench`: parses the command line, runs one scenario, prints its JSON result on stdout.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = chatq_bench::Cli::parse();
    let report = chatq_bench::run(cli).await?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
