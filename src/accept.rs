//! What every accept loop does when `accept` fails: one policy for the
//! public listeners and the admin listeners alike.

use std::time::Duration;

use tracing::{debug, warn};

/// How long to pause accepting when the process is out of file
/// descriptors (or memory), so that finishing connections can free some.
const BACKOFF: Duration = Duration::from_millis(100);

/// Recovers from a failed `accept` on `listener` (named in the log): out
/// of descriptors or memory, it waits `BACKOFF` rather than spin on the
/// same error; anything else (a connection reset before it was accepted)
/// is that one client's problem, and accepting goes on at once.
pub async fn recover(error: &std::io::Error, listener: &str) {
    if is_resource_exhaustion(error) {
        warn!(%error, listener, "cannot accept connections; backing off");
        tokio::time::sleep(BACKOFF).await;
    } else {
        debug!(%error, listener, "accept failed");
    }
}

fn is_resource_exhaustion(error: &std::io::Error) -> bool {
    // EMFILE, ENFILE, ENOBUFS, ENOMEM.
    matches!(error.raw_os_error(), Some(24 | 23 | 105 | 12))
}
