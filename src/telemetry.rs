//! Logging: slog-term for people, JSON lines for machines, never dropping a line under load.

use crate::config::{Config, LogFormat};
use slog::{o, Drain, Level, Logger};

/// Builds the process logger. Lines go through slog-async with `OverflowStrategy::Block`, so a
/// burst slows the logging task down instead of dropping lines. Keep the guard until the process
/// ends: dropping it flushes the last lines.
pub fn logger(config: &Config) -> (Logger, slog_async::AsyncGuard) {
    let level = parse_level(&config.log_level);
    let drain: Box<dyn Drain<Ok = (), Err = slog::Never> + Send> = match config.log_format {
        LogFormat::Term => {
            let decorator = slog_term::TermDecorator::new().stderr().build();
            Box::new(slog_term::FullFormat::new(decorator).build().fuse())
        }
        LogFormat::Json => Box::new(
            slog_json::Json::new(std::io::stdout())
                .add_default_keys()
                .build()
                .fuse(),
        ),
    };
    let (drain, guard) = slog_async::Async::new(drain)
        .chan_size(65_536)
        .overflow_strategy(slog_async::OverflowStrategy::Block)
        .build_with_guard();
    // The level filter goes in front of the channel, so a line below the level costs nothing.
    (Logger::root(drain.filter_level(level).fuse(), o!()), guard)
}

fn parse_level(name: &str) -> Level {
    match name.to_ascii_lowercase().as_str() {
        "trace" => Level::Trace,
        "debug" => Level::Debug,
        "warn" | "warning" => Level::Warning,
        "error" => Level::Error,
        "critical" => Level::Critical,
        _ => Level::Info,
    }
}
