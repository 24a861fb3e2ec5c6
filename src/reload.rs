//! What triggers a reload besides an admin call: an edit of the config
//! file, seen by a watch, and `SIGHUP`. The server starts both with its
//! other background tasks.
//!
//! The watch is on the config file's *directory*, not the file: an editor
//! or a deploy tool that replaces the file by rename, and a Kubernetes
//! ConfigMap update (which re-points the `..data` symlink beside the file),
//! both leave a watch on the old file looking at nothing. When the config
//! path is a symlink into another directory, that directory is watched too.
//!
//! Events come in bursts (write, chmod, rename), so they are debounced;
//! then digests of the file (and of the maintenance page) are compared with
//! those of the config that is serving, so that
//! events for other files in the directory (the state file, the admin
//! socket) don't cause reloads. The reload itself, its validation and its
//! error reporting are [`Control::reload`]'s.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::config::digest;
use crate::config::tls::pair_digest;
use crate::control::{Control, Via};
use crate::shutdown::StopOnDrop;

/// How long the directory must be quiet before the file is looked at.
const DEBOUNCE: Duration = Duration::from_millis(150);

/// The running watch; dropping it stops it.
pub type ConfigWatcher = StopOnDrop;

/// Starts watching the config file of `control`'s state.
pub fn watch(control: Arc<Control>) -> notify::Result<ConfigWatcher> {
    let path = control.state().load().config.path.clone();
    let (events, mut rx) = mpsc::channel::<()>(1);
    // One look right away: the file may have changed between loading it
    // and setting up the watch.
    events.try_send(()).expect("a new channel has room");
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        match event {
            // A full channel already holds a wake-up: nothing is lost.
            Ok(event) if may_change(&event.kind) => {
                let _ = events.try_send(());
            }
            Ok(_) => {}
            Err(error) => warn!(%error, "config watch error"),
        }
    })?;
    let mut watched = Vec::new();
    for dir in watched_dirs(&control) {
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        watched.push(dir);
    }
    let task = StopOnDrop::spawn(async move {
        // What the last failed reload read: not retried until it changes.
        let mut refused = None;
        while rx.recv().await.is_some() {
            // Wait for the burst to end; the channel holds at most one
            // wake-up, so this loop ends once the directory is quiet.
            while tokio::time::timeout(DEBOUNCE, rx.recv())
                .await
                .is_ok_and(|e| e.is_some())
            {}
            let on_disk = on_disk(&control).await;
            if on_disk.is_none() || on_disk == refused {
                continue;
            }
            // The serving config's own file needs no reload, unless a
            // failed reload is still reported: back to a good file clears it.
            let (serving, failed) = applied(&control);
            if on_disk == serving && !failed {
                continue;
            }
            debug!(config = %path.display(), "config file changed");
            // Errors are logged and recorded by the reload itself.
            refused = match control.reload(Via::Watcher).await {
                Ok(_) => None,
                Err(_) => on_disk,
            };
            // A symlink may now point into a directory not yet watched,
            // and a reload may have named new certificate files.
            for dir in watched_dirs(&control) {
                if !watched.contains(&dir) {
                    match watcher.watch(&dir, RecursiveMode::NonRecursive) {
                        Ok(()) => watched.push(dir),
                        Err(error) => debug!(%error, dir = %dir.display(), "cannot watch"),
                    }
                }
            }
        }
    });
    Ok(task)
}

/// Reloads the config on every `SIGHUP`, the traditional "re-read your
/// config" signal of daemons, until dropped; `None` (logged) if the
/// signal cannot be listened for.
pub fn on_hangup(control: Arc<Control>) -> Option<StopOnDrop> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(hangup) => hangup,
        Err(error) => {
            warn!(%error, "cannot listen for SIGHUP; reload through the admin API instead");
            return None;
        }
    };
    Some(StopOnDrop::spawn(async move {
        while hangup.recv().await.is_some() {
            info!("SIGHUP: reloading the config");
            // The outcome is logged and recorded by the reload.
            let _ = control.reload(Via::Signal).await;
        }
    }))
}

/// Whether a file event can mean new contents. Opening or reading a file
/// cannot, and must not count: the watch's own look at the config opens
/// it, and would set off the next look, and so on every debounce period.
/// A file closed after writing does count (its writes are done).
fn may_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(access) => *access == AccessKind::Close(AccessMode::Write),
        _ => true,
    }
}

/// The directories of the config file and of every certificate and key.
fn watched_dirs(control: &Control) -> Vec<PathBuf> {
    let snapshot = control.state().load();
    let config = &snapshot.config;
    let mut dirs = dirs_of(&config.path);
    for (_, cert) in config.certificates() {
        for file in [&cert.cert, &cert.key] {
            for dir in dirs_of(file) {
                if !dirs.contains(&dir) {
                    dirs.push(dir);
                }
            }
        }
    }
    dirs
}

/// The directories whose changes can change what `path` reads as: its
/// own, and that of the file it resolves to.
fn dirs_of(path: &Path) -> Vec<PathBuf> {
    let parent = |p: &Path| match p.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut dirs = vec![parent(path)];
    if let Ok(real) = std::fs::canonicalize(path) {
        let real_dir = parent(&real);
        let same = std::fs::canonicalize(&dirs[0]).is_ok_and(|d| d == real_dir);
        if !same {
            dirs.push(real_dir);
        }
    }
    dirs
}

/// The digests of the config file and the maintenance page on disk, or
/// `None` while the config file can't be read (a rename in progress, a
/// broken link: the next event looks again).
async fn on_disk(control: &Control) -> Option<Fingerprint> {
    let snapshot = control.state().load_full();
    let config = &snapshot.config;
    let read = |path: &std::path::Path| crate::config::read::regular_file(path);
    let text = read(&config.path).ok()?;
    let page = match &config.maintenance.html_page {
        Some(page) => read(&page.path).ok().map(|b| digest(&b)),
        None => None,
    };
    // Certificates and keys count as part of the config: renewing them
    // reloads it (and a broken pair is refused like any invalid config).
    let mut pairs = Vec::new();
    for (_, cert) in config.certificates() {
        let cert_pem = read(&cert.cert).unwrap_or_default();
        let key_pem = read(&cert.key).unwrap_or_default();
        pairs.extend(pair_digest(&cert_pem, &key_pem).to_le_bytes());
    }
    Some((digest(&text), page, digest(&pairs)))
}

/// The same digests for the config that is serving, and whether the last
/// reload failed.
fn applied(control: &Control) -> (Option<Fingerprint>, bool) {
    let snapshot = control.state().load();
    let config = &snapshot.config;
    let page = config
        .maintenance
        .html_page
        .as_ref()
        .map(|p| digest(&p.body));
    let failed = snapshot.config_info.last_reload_error.is_some();
    (Some((config.digest, page, config.files_digest())), failed)
}

/// Digests of the config text, the maintenance page, and the certificate
/// and key files.
type Fingerprint = (u64, Option<u64>, u64);

#[cfg(test)]
mod tests {
    use notify::event::{CreateKind, DataChange, ModifyKind, RemoveKind, RenameMode};

    use super::*;

    #[test]
    fn reads_do_not_wake_the_watch_but_writes_renames_and_removals_do() {
        for read in [
            AccessKind::Open(AccessMode::Read),
            AccessKind::Open(AccessMode::Any),
            AccessKind::Close(AccessMode::Read),
            AccessKind::Read,
            AccessKind::Any,
        ] {
            assert!(!may_change(&EventKind::Access(read)), "{read:?}");
        }
        for change in [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Create(CreateKind::File),
            EventKind::Remove(RemoveKind::File),
            EventKind::Any,
        ] {
            assert!(may_change(&change), "{change:?}");
        }
    }
}
