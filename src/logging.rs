//! Logging to stderr and/or `logFile`, never to stdout (stdout carries the CNI result).

use std::path::Path;

use anyhow::Result;
use log::LevelFilter;

use crate::config::LogLevel;
use crate::logfile::{LogFile, LogOptions};

fn filter(level: LogLevel) -> LevelFilter {
    match level {
        LogLevel::Panic => LevelFilter::Off,
        LogLevel::Error => LevelFilter::Error,
        LogLevel::Verbose => LevelFilter::Info,
        LogLevel::Debug => LevelFilter::Debug,
    }
}

/// Installs the logger. Nothing is set up (and nothing costs) when no output is enabled.
pub fn init(
    level: LogLevel,
    to_stderr: bool,
    file: Option<&Path>,
    options: &LogOptions,
) -> Result<()> {
    let level = filter(level);
    if level == LevelFilter::Off || (!to_stderr && file.is_none()) {
        return Ok(());
    }
    let mut dispatch = fern::Dispatch::new()
        .format(|out, message, record| {
            out.finish(format_args!(
                "{} [{}] multihome: {}",
                humantime::format_rfc3339_millis(std::time::SystemTime::now()),
                record.level().as_str().to_ascii_lowercase(),
                message
            ))
        })
        .level(level);
    if to_stderr {
        dispatch = dispatch.chain(std::io::stderr());
    }
    if let Some(path) = file {
        let log: Box<dyn std::io::Write + Send> = Box::new(LogFile::open(path, options.clone())?);
        dispatch = dispatch.chain(log);
    }
    // A second init in one process (tests, a future daemon) keeps the first logger.
    let _ = dispatch.apply();
    Ok(())
}
