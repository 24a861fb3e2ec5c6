//! SIGINT, SIGTERM and SIGHUP during a deploy: noted once, for the deploy
//! to stop at the next safe point and undo what it did (a closed terminal
//! sends SIGHUP, and must not leave the gate on).

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// Why a deploy stops early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGINT (Ctrl-C): exit code 130.
    Interrupt,
    /// SIGTERM: exit code 143.
    Terminate,
    /// SIGHUP (the terminal went away): exit code 129.
    Hangup,
}

impl StopSignal {
    /// The exit code: 128 and the signal's number, as shells report it.
    pub fn exit_code(self) -> u8 {
        match self {
            StopSignal::Interrupt => 130,
            StopSignal::Terminate => 143,
            StopSignal::Hangup => 129,
        }
    }
}

impl std::fmt::Display for StopSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StopSignal::Interrupt => "interrupted (SIGINT)",
            StopSignal::Terminate => "terminated (SIGTERM)",
            StopSignal::Hangup => "hung up (SIGHUP)",
        })
    }
}

/// Sets `interrupt` at the first SIGINT, SIGTERM or SIGHUP.
pub fn listen_for_signals(
    interrupt: watch::Sender<Option<StopSignal>>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut interrupts = signal(SignalKind::interrupt())?;
    let mut terminates = signal(SignalKind::terminate())?;
    let mut hangups = signal(SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        let why = tokio::select! {
            _ = interrupts.recv() => StopSignal::Interrupt,
            _ = terminates.recv() => StopSignal::Terminate,
            _ = hangups.recv() => StopSignal::Hangup,
        };
        interrupt.send_replace(Some(why));
        // Later signals are ignored while the undo runs: it is bounded.
        loop {
            tokio::select! {
                _ = interrupts.recv() => {}
                _ = terminates.recv() => {}
                _ = hangups.recv() => {}
            }
        }
    }))
}
