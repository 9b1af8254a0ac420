//! `bothost`: parse the command line, load the configuration, hand over.

use std::process::ExitCode;

use bothost::cli::{self, Cli, Command};
use bothost::{config::Config, startup, telemetry};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<bool> {
    // check-config reports a configuration that does not load as a check.
    if let Command::CheckConfig {
        json,
        monitoring,
        playbooks,
    } = cli.command
    {
        telemetry::init_client();
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(cli::check_config(&cli.config, json, monitoring, playbooks));
    }
    let config = Config::load(&cli.config)?;
    if let Command::Serve = cli.command {
        telemetry::init_server(&config.logging);
        startup::serve(config)?;
        return Ok(true);
    }
    telemetry::init_client();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Serve | Command::CheckConfig { .. } => unreachable!("handled above"),
            Command::Migrate { down_to } => cli::migrate(&config, down_to.as_deref())
                .await
                .map(|()| true),
            Command::User { action } => cli::user(&config, action).await.map(|()| true),
            Command::Backup { to } => cli::backup(&config, to.as_deref()).await.map(|()| true),
            Command::Restore { file, force } => {
                cli::restore(&config, &file, force).await.map(|()| true)
            }
            Command::Status { json } => cli::status(&config, json).await.map(|()| true),
            Command::Top => cli::top(&config).await.map(|()| true),
            Command::Chat { bot, text } => cli::chat(&config, bot, text).await,
            Command::Restart { bot, rolling, .. } => cli::restart(&config, bot, rolling).await,
        }
    })
}
