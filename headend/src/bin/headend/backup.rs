//! `headend backup FILE` and `headend restore FILE`.
//!
//! A backup is asked of the running daemon through the admin API (the
//! daemon holds the database exclusively and writes the copy itself); with
//! no daemon running, this command opens the database and makes the copy
//! with the same code. A restore needs the daemon stopped, which the
//! database's lock tells.

use crate::args::Command;
use api::{path, BackupRequest, BackupTaken};
use headend::backup::{self, BackupError};
use headend::client::{config_path, Client, ClientError};
use headend::config::Config;
use headend::daemon::now_ms;
use headend::state::rfc3339;
use headend::store::StoreError;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// A refusal: its one-line message and the exit status.
type Failure = (String, u8);

fn client_failure(e: ClientError) -> Failure {
    let code = e.exit_code();
    (e.to_string(), code)
}

fn backup_failure(e: BackupError) -> Failure {
    let code = e.exit_code();
    (e.to_string(), code)
}

/// Runs `backup` or `restore`.
pub(crate) fn run(config: Option<PathBuf>, as_json: bool, cmd: Command) -> ExitCode {
    let (name, done) = match cmd {
        Command::Backup { file, force } => ("backup", take(config, &file, force, as_json)),
        Command::Restore { file } => ("restore", restore(config, &file)),
        _ => unreachable!("only backup and restore come here"),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err((message, code)) => {
            eprintln!("headend {name}: {message}");
            ExitCode::from(code)
        }
    }
}

fn absolute(file: &Path) -> Result<PathBuf, Failure> {
    std::path::absolute(file).map_err(|e| {
        (
            format!("{}: {e}; give an absolute path", file.display()),
            cli::exit::USAGE,
        )
    })
}

fn take(config: Option<PathBuf>, file: &Path, force: bool, as_json: bool) -> Result<(), Failure> {
    let config = config_path(config.as_deref()).map_err(client_failure)?;
    let file = absolute(file)?;
    let client = Client::from_config(&config).map_err(client_failure)?;
    let req = BackupRequest {
        path: file.display().to_string(),
        force,
    };
    eprintln!(
        "asking the headend at {} for a backup into {}",
        client.base(),
        file.display()
    );
    let taken = match client.post(path::BACKUP, &req) {
        Ok(v) => {
            let t: BackupTaken = serde_json::from_value(v).map_err(|e| {
                (
                    format!("the headend's answer is not what this CLI reads ({e}); use the CLI of the daemon's version"),
                    cli::exit::SOFTWARE,
                )
            })?;
            eprintln!("the running headend wrote it");
            t
        }
        // The daemon checks the file: it exists, or cannot be made there.
        Err(ClientError::Api { status, message }) if status == 409 || status == 400 => {
            return Err((message, cli::exit::CANT_CREATE))
        }
        Err(ClientError::NotRunning(url)) => {
            let loaded = Config::load(&config).map_err(|e| (e.to_string(), cli::exit::USAGE))?;
            let db = loaded.database();
            eprintln!(
                "the headend is not running; copying {} itself",
                db.display()
            );
            let t = backup::backup_database(&db, &file, force, now_ms()).map_err(|e| match e {
                BackupError::Store(StoreError::Locked) => (
                    format!(
                        "{} is locked by a headend whose admin API does not answer at {url}: \
                         check that it runs with this config, or stop it and run `headend backup` again",
                        db.display()
                    ),
                    cli::exit::TEMP_FAIL,
                ),
                other => backup_failure(other),
            })?;
            BackupTaken {
                path: t.path.display().to_string(),
                bytes: t.bytes,
                taken: rfc3339(t.taken_ms / 1000),
                taken_unix_ms: t.taken_ms,
            }
        }
        Err(e) => return Err(client_failure(e)),
    };
    if as_json {
        cli::outln!(
            "{}",
            serde_json::to_string_pretty(&taken).unwrap_or_default()
        );
    } else {
        cli::outln!(
            "backup written to {} ({} bytes, taken at {}); keep it apart from master.key",
            taken.path,
            taken.bytes,
            taken.taken
        );
    }
    Ok(())
}

fn restore(config: Option<PathBuf>, file: &Path) -> Result<(), Failure> {
    let config = config_path(config.as_deref()).map_err(client_failure)?;
    let loaded = Config::load(&config).map_err(|e| (e.to_string(), cli::exit::USAGE))?;
    let db = loaded.database();
    let file = absolute(file)?;
    eprintln!(
        "checking {} and putting it in place of {}",
        file.display(),
        db.display()
    );
    let r = backup::restore(&db, &file, now_ms()).map_err(backup_failure)?;
    if let Some(old) = &r.replaced {
        cli::outln!("the replaced database is kept as {}", old.display());
    }
    let period_s = loaded.config.crypto_period_ms as f64 / 1000.0;
    cli::outln!(
        "restored {} from a backup taken at {} (schema version {}). Start the daemon: it seals no ECM \
         that an earlier run may have sealed (its channels are withheld for up to two crypto periods, \
         {:.0} s), and renews every product key so that entitlements the backup lacks end",
        r.database.display(),
        rfc3339(r.taken_ms / 1000),
        r.schema_version,
        2.0 * period_s
    );
    Ok(())
}
