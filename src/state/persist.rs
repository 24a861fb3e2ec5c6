//! The state file: the decisions as JSON, written so that a crash at any
//! moment leaves either the old file or the new one, never a torn one.
//!
//! ```json
//! {"version": 1, "live_pool": "green", "previous_pool": "blue",
//!  "maintenance": {"enabled": true, "message": "Back at 10:00", "retry_after_s": null,
//!                  "since": "2026-11-22T10:00:00Z"},
//!  "generation": 4}
//! ```
//!
//! A `null` message or `retry_after_s` means "the config's", so an edit of
//! `maintenance.message` reaches a gate that was turned on without one.
//!
//! A missing file means "first start". A file that exists but cannot be read
//! or understood is an error the caller must stop on: falling back to
//! `initial_pool` could send users to an unmigrated pool.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Decisions, MaintenanceMode, MaintenanceState, PendingWatch, Window};

/// The newest format this build reads. It writes version 3 only while the
/// gate is read-only or has an end (`maintenance.mode`, `.until`) or
/// windows are planned (`windows`), version 2 only while a watch after a
/// switch runs (the `watch` field), and version 1 otherwise, so
/// that an older build refuses a file it would misread, with a clear
/// error, and reads every other.
pub const STATE_FILE_VERSION: u32 = 3;

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// The file exists but could not be read.
    #[error("cannot read state file {}: {source}", path.display())]
    Read {
        /// The state file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not the JSON this build writes.
    #[error("state file {} is corrupt: {reason}", path.display())]
    Corrupt {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The file was written by a newer build.
    #[error("state file {} has version {found}; this build reads up to {STATE_FILE_VERSION}", path.display())]
    Version {
        /// The state file.
        path: PathBuf,
        /// The version it records.
        found: u32,
    },
    /// The path is a symbolic link to nothing: most likely a volume that
    /// is not mounted. Not a first start.
    #[error("state file {} is a symbolic link to {}, which does not exist (is its volume mounted?)", path.display(), target.display())]
    Dangling {
        /// The state file.
        path: PathBuf,
        /// Where the link points.
        target: PathBuf,
    },
    /// The path is a directory, a FIFO, a device or a socket.
    #[error("state file {} is not a regular file", path.display())]
    NotAFile {
        /// The state file.
        path: PathBuf,
    },
    /// The directory the file belongs in is missing: a first start needs
    /// it to exist, so an unmounted volume is not taken for a new one.
    #[error("the directory {} of state file {} does not exist; create it (or mount its volume)", dir.display(), path.display())]
    NoDirectory {
        /// The state file.
        path: PathBuf,
        /// Its directory.
        dir: PathBuf,
    },
    /// Another process holds the state file.
    #[error("state file {} is in use by another switchyard process (it holds {}); two processes on one state file would lose each other's decisions", path.display(), lock.display())]
    Locked {
        /// The state file.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// Writing, syncing or renaming failed; the old file is untouched
    /// unless only the last step failed (see [`PersistError::replaced_the_file`]).
    #[error("cannot write state file {}: {step}: {source}", path.display())]
    Write {
        /// The state file.
        path: PathBuf,
        /// Which step failed.
        step: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl PersistError {
    /// Whether the failed write had already put its new contents in place
    /// (only the directory's fsync failed after the rename): the file then
    /// holds the new decisions, though a crash might still lose them.
    pub fn replaced_the_file(&self) -> bool {
        matches!(self, PersistError::Write { step, .. } if *step == FSYNC_DIRECTORY)
    }
}

/// The last step of [`save`], after the new file is in place.
const FSYNC_DIRECTORY: &str = "fsync directory";

/// The file's shape; field names are the status document's.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    live_pool: String,
    previous_pool: Option<String>,
    maintenance: MaintenanceFile,
    generation: u64,
    /// Only while a watch after a switch runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    watch: Option<WatchFile>,
    /// Only while windows are planned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    windows: Vec<WindowFile>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowFile {
    id: String,
    starts_at: String,
    ends_at: String,
    message: Option<String>,
    mode: String,
    started: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WatchFile {
    pool: String,
    until: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MaintenanceFile {
    enabled: bool,
    message: Option<String>,
    retry_after_s: Option<u64>,
    since: Option<String>,
    /// `read_only`; absent for `full` (and in files before version 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mode: Option<String>,
    /// When the gate turns itself off (RFC 3339); absent without an end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    until: Option<String>,
}

/// Only the version, read first so a newer file gets a clear error rather
/// than a complaint about fields this build does not know.
#[derive(Debug, Deserialize)]
struct VersionOnly {
    version: u32,
}

/// Reads the decisions from `path`; `Ok(None)` on a first start: nothing
/// at all at `path`, in a directory that exists. Anything else that is not
/// a readable state file (a dangling link, a FIFO, a missing directory) is
/// an error, never a first start.
pub fn load(path: &Path) -> Result<Option<(Decisions, Option<PendingWatch>)>, PersistError> {
    let read_error = |source| PersistError::Read {
        path: path.to_owned(),
        source,
    };
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = directory(path);
            return match fs::metadata(dir) {
                Ok(meta) if meta.is_dir() => Ok(None),
                _ => Err(PersistError::NoDirectory {
                    path: path.to_owned(),
                    dir: dir.to_owned(),
                }),
            };
        }
        Err(source) => return Err(read_error(source)),
        Ok(_) => {}
    }
    // Whatever a link points to must be there: a link to nothing is an
    // unmounted volume, not a first start.
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(PersistError::Dangling {
                path: path.to_owned(),
                target: fs::read_link(path).unwrap_or_default(),
            })
        }
        Err(source) => return Err(read_error(source)),
    };
    // A FIFO would block startup forever.
    if !meta.is_file() {
        return Err(PersistError::NotAFile {
            path: path.to_owned(),
        });
    }
    let text = fs::read_to_string(path).map_err(read_error)?;
    match decode(&text) {
        Ok(decoded) => Ok(Some(decoded)),
        Err(DecodeError::Version(found)) => Err(PersistError::Version {
            path: path.to_owned(),
            found,
        }),
        Err(DecodeError::Corrupt(reason)) => Err(PersistError::Corrupt {
            path: path.to_owned(),
            reason,
        }),
    }
}

/// Why a text is not decisions in the state file's format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// It is not the format, or says something impossible.
    Corrupt(String),
    /// It is from a newer switchyard.
    Version(u32),
}

/// The decisions, and the watch it records, in `text`: the state file's
/// format, which the cluster's copy of the decisions shares.
pub fn decode(text: &str) -> Result<(Decisions, Option<PendingWatch>), DecodeError> {
    let corrupt = DecodeError::Corrupt;
    let version: VersionOnly = serde_json::from_str(text).map_err(|e| corrupt(e.to_string()))?;
    if version.version > STATE_FILE_VERSION || version.version == 0 {
        return Err(DecodeError::Version(version.version));
    }
    let file: StateFile = serde_json::from_str(text).map_err(|e| corrupt(e.to_string()))?;
    let since = match &file.maintenance.since {
        None => None,
        Some(text) => Some(
            humantime::parse_rfc3339(text)
                .map_err(|e| corrupt(format!("maintenance.since `{text}`: {e}")))?,
        ),
    };
    if file.live_pool.is_empty() {
        return Err(corrupt("live_pool is empty".to_owned()));
    }
    let watch = match file.watch {
        None => None,
        Some(watch) => Some(PendingWatch {
            until: humantime::parse_rfc3339(&watch.until)
                .map_err(|e| corrupt(format!("watch.until `{}`: {e}", watch.until)))?,
            pool: watch.pool,
        }),
    };
    let windows = file
        .windows
        .into_iter()
        .map(|w| {
            let time = |field: &str, text: &str| {
                humantime::parse_rfc3339(text)
                    .map_err(|e| corrupt(format!("windows.{field} `{text}`: {e}")))
            };
            Ok(Window {
                starts_at: time("starts_at", &w.starts_at)?,
                ends_at: time("ends_at", &w.ends_at)?,
                mode: MaintenanceMode::parse(&w.mode).ok_or_else(|| {
                    corrupt(format!(
                        "windows.mode `{}` is not full or read_only",
                        w.mode
                    ))
                })?,
                id: w.id,
                message: w.message,
                started: w.started,
            })
        })
        .collect::<Result<Vec<_>, DecodeError>>()?;
    let decisions = Decisions {
        live_pool: file.live_pool,
        previous_pool: file.previous_pool,
        maintenance: MaintenanceState {
            enabled: file.maintenance.enabled,
            message: file.maintenance.message,
            retry_after: file.maintenance.retry_after_s.map(Duration::from_secs),
            since,
            mode: match &file.maintenance.mode {
                None => MaintenanceMode::Full,
                Some(text) => MaintenanceMode::parse(text).ok_or_else(|| {
                    corrupt(format!(
                        "maintenance.mode `{text}` is not full or read_only"
                    ))
                })?,
            },
            until: match &file.maintenance.until {
                None => None,
                Some(text) => Some(
                    humantime::parse_rfc3339(text)
                        .map_err(|e| corrupt(format!("maintenance.until `{text}`: {e}")))?,
                ),
            },
        },
        windows,
        generation: file.generation,
    };
    Ok((decisions, watch))
}

/// Writes `decisions` to `path` atomically and durably: a temp file in the
/// same directory, fsync, rename over `path`, fsync of the directory. On
/// error the old file is left as it was, except when only the directory's
/// fsync failed ([`PersistError::replaced_the_file`]).
///
/// Blocking: call it from `spawn_blocking`.
/// `watch` is the watch after a switch that is running, if any.
pub fn save(
    path: &Path,
    decisions: &Decisions,
    watch: Option<&PendingWatch>,
) -> Result<(), PersistError> {
    save_syncing(path, decisions, watch, &sync_directory)
}

/// How [`replace`] left the state file when it did not fail.
#[derive(Debug)]
pub enum Replaced {
    /// It holds the new decisions, durably.
    Durably,
    /// It holds the new decisions, but the directory's fsync failed and
    /// so did putting the old ones back: a crash may still undo them.
    Unconfirmed {
        /// Why the new decisions' durability is not confirmed.
        error: PersistError,
        /// Why the old ones could not be put back.
        restore: PersistError,
    },
}

/// Writes `new` over the file that holds `old`, as [`save`] does, so that
/// on `Err` the file holds `old` again: when only the directory's fsync
/// failed, after the rename, `old` is written back. Each is a set of
/// decisions with the watch the file records beside them.
///
/// Blocking: call it from `spawn_blocking`.
pub fn replace(
    path: &Path,
    new: (&Decisions, Option<&PendingWatch>),
    old: (&Decisions, Option<&PendingWatch>),
) -> Result<Replaced, PersistError> {
    replace_syncing(path, new, old, &sync_directory)
}

/// [`replace`], syncing the directory with `sync_dir`.
fn replace_syncing(
    path: &Path,
    new: (&Decisions, Option<&PendingWatch>),
    old: (&Decisions, Option<&PendingWatch>),
    sync_dir: &dyn Fn(&Path) -> std::io::Result<()>,
) -> Result<Replaced, PersistError> {
    let error = match save_syncing(path, new.0, new.1, sync_dir) {
        Ok(()) => return Ok(Replaced::Durably),
        Err(error) if !error.replaced_the_file() => return Err(error),
        Err(error) => error,
    };
    match save_syncing(path, old.0, old.1, sync_dir) {
        // Back as it was, if no more durable than before.
        Ok(()) => Err(error),
        Err(restore) if restore.replaced_the_file() => Err(error),
        Err(restore) => Ok(Replaced::Unconfirmed { error, restore }),
    }
}

fn sync_directory(dir: &Path) -> std::io::Result<()> {
    File::open(dir).and_then(|d| d.sync_all())
}

/// `decisions`, and the watch running beside them, in the state file's
/// format (pretty JSON, a final newline).
pub fn encode(decisions: &Decisions, watch: Option<&PendingWatch>) -> Vec<u8> {
    let mode = decisions.maintenance.mode;
    // The lowest version that holds it all, so an older build reads every
    // file it can.
    let version = if mode != MaintenanceMode::Full
        || decisions.maintenance.until.is_some()
        || !decisions.windows.is_empty()
    {
        3
    } else if watch.is_some() {
        2
    } else {
        1
    };
    let file = StateFile {
        version,
        live_pool: decisions.live_pool.clone(),
        previous_pool: decisions.previous_pool.clone(),
        maintenance: MaintenanceFile {
            enabled: decisions.maintenance.enabled,
            message: decisions.maintenance.message.clone(),
            retry_after_s: decisions.maintenance.retry_after.map(|d| d.as_secs()),
            since: decisions.maintenance.since.map(rfc3339),
            mode: (mode != MaintenanceMode::Full).then(|| mode.as_str().to_owned()),
            until: decisions.maintenance.until.map(rfc3339),
        },
        generation: decisions.generation,
        watch: watch.map(|watch| WatchFile {
            pool: watch.pool.clone(),
            until: rfc3339(watch.until),
        }),
        windows: decisions
            .windows
            .iter()
            .map(|w| WindowFile {
                id: w.id.clone(),
                starts_at: rfc3339(w.starts_at),
                ends_at: rfc3339(w.ends_at),
                message: w.message.clone(),
                mode: w.mode.as_str().to_owned(),
                started: w.started,
            })
            .collect(),
    };
    let mut text = serde_json::to_vec_pretty(&file).expect("the state file serializes");
    text.push(b'\n');
    text
}

/// [`save`], syncing the directory with `sync_dir`.
fn save_syncing(
    path: &Path,
    decisions: &Decisions,
    watch: Option<&PendingWatch>,
    sync_dir: &dyn Fn(&Path) -> std::io::Result<()>,
) -> Result<(), PersistError> {
    let text = encode(decisions, watch);
    let fail = |step: &'static str| {
        move |source| PersistError::Write {
            path: path.to_owned(),
            step,
            source,
        }
    };
    let dir = directory(path);
    // The temp file is created anew: never opened through a planted link.
    replace_by_rename(path, "tmp", |temp| {
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(temp)
            .map_err(|e| ("create temp file", e))?;
        out.write_all(&text).map_err(|e| ("write temp file", e))?;
        out.sync_all().map_err(|e| ("fsync temp file", e))
    })
    .map_err(|(step, source)| fail(step)(source))?;
    sync_dir(dir).map_err(fail(FSYNC_DIRECTORY))
}

/// Makes `path` what `create` makes, in one rename: `create` makes it at
/// `.NAME.SUFFIX` beside `path` (anything left there first is removed),
/// and it is renamed over `path`, so that `path` is never seen half made.
/// On error the temporary is removed and `path` is as it was; the error
/// names the step that failed.
pub fn replace_by_rename<T>(
    path: &Path,
    suffix: &str,
    create: impl FnOnce(&Path) -> Result<T, (&'static str, std::io::Error)>,
) -> Result<T, (&'static str, std::io::Error)> {
    let temp = beside(path, suffix);
    let result = (|| {
        match fs::remove_file(&temp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(("remove old temp file", e))
            }
            _ => {}
        }
        let made = create(&temp)?;
        fs::rename(&temp, path).map_err(|e| ("rename temp file", e))?;
        Ok(made)
    })();
    if result.is_err() {
        // Best effort: a leftover temp file is harmless but untidy.
        let _ = fs::remove_file(&temp);
    }
    result
}

/// The hidden file `.NAME.SUFFIX` beside `path` (`NAME` its file name):
/// where the state file's temporary copy, its lock and the deploy lock
/// are kept.
pub fn beside(path: &Path, suffix: &str) -> PathBuf {
    directory(path).join(format!(".{}.{suffix}", file_name(path)))
}

/// The state file's directory.
fn directory(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

fn file_name(path: &Path) -> std::borrow::Cow<'_, str> {
    path.file_name()
        .unwrap_or(path.as_os_str())
        .to_string_lossy()
}

/// Holds the state file for this process until dropped; see [`lock`].
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

/// Takes the state file for this process, through an advisory lock on a
/// lock file beside it (`.NAME.lock`; the state file itself is replaced at
/// every write, so it cannot carry the lock). A second process pointed at
/// the same file is refused instead of silently losing the first one's
/// decisions. The lock goes with the process, however it ends.
pub fn lock(path: &Path) -> Result<StateLock, PersistError> {
    let dir = directory(path);
    if !dir.is_dir() {
        return Err(PersistError::NoDirectory {
            path: path.to_owned(),
            dir: dir.to_owned(),
        });
    }
    let lock = beside(path, "lock");
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock)
        .map_err(|source| PersistError::Write {
            path: path.to_owned(),
            step: "open lock file",
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(StateLock { _file: file }),
        Err(fs::TryLockError::WouldBlock) => Err(PersistError::Locked {
            path: path.to_owned(),
            lock,
        }),
        Err(fs::TryLockError::Error(source)) => Err(PersistError::Write {
            path: path.to_owned(),
            step: "lock",
            source,
        }),
    }
}

mod rfc3339;
pub use rfc3339::{parse_rfc3339, rfc3339};

#[cfg(test)]
mod tests;
