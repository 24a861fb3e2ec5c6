//! SIGINT and SIGTERM during a deploy: noted once, for the deploy to stop
//! at the next safe point and undo what it did.

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// Why a deploy stops early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupt {
    /// SIGINT (Ctrl-C): exit code 130.
    Interrupt,
    /// SIGTERM: exit code 143.
    Terminate,
}

impl std::fmt::Display for Interrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Interrupt::Interrupt => "interrupted (SIGINT)",
            Interrupt::Terminate => "terminated (SIGTERM)",
        })
    }
}

/// Sets `interrupt` at the first SIGINT or SIGTERM.
pub fn listen_for_signals(
    interrupt: watch::Sender<Option<Interrupt>>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut interrupts = signal(SignalKind::interrupt())?;
    let mut terminates = signal(SignalKind::terminate())?;
    Ok(tokio::spawn(async move {
        let why = tokio::select! {
            _ = interrupts.recv() => Interrupt::Interrupt,
            _ = terminates.recv() => Interrupt::Terminate,
        };
        interrupt.send_replace(Some(why));
        // Later signals are ignored while the undo runs: it is bounded.
        loop {
            tokio::select! {
                _ = interrupts.recv() => {}
                _ = terminates.recv() => {}
            }
        }
    }))
}
