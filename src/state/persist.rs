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
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::{Decisions, MaintenanceState};

/// The format this build writes, and the newest it reads.
pub const STATE_FILE_VERSION: u32 = 1;

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
    /// Writing, syncing or renaming failed; the old file is untouched.
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

/// The file's shape; field names are the status document's.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    live_pool: String,
    previous_pool: Option<String>,
    maintenance: MaintenanceFile,
    generation: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MaintenanceFile {
    enabled: bool,
    message: Option<String>,
    retry_after_s: Option<u64>,
    since: Option<String>,
}

/// Only the version, read first so a newer file gets a clear error rather
/// than a complaint about fields this build does not know.
#[derive(Debug, Deserialize)]
struct VersionOnly {
    version: u32,
}

/// Reads the decisions from `path`; `Ok(None)` if the file does not exist.
pub fn load(path: &Path) -> Result<Option<Decisions>, PersistError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(PersistError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    let corrupt = |reason: String| PersistError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let version: VersionOnly = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
    if version.version > STATE_FILE_VERSION || version.version == 0 {
        return Err(PersistError::Version {
            path: path.to_owned(),
            found: version.version,
        });
    }
    let file: StateFile = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
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
    Ok(Some(Decisions {
        live_pool: file.live_pool,
        previous_pool: file.previous_pool,
        maintenance: MaintenanceState {
            enabled: file.maintenance.enabled,
            message: file.maintenance.message,
            retry_after: file.maintenance.retry_after_s.map(Duration::from_secs),
            since,
        },
        generation: file.generation,
    }))
}

/// Writes `decisions` to `path` atomically and durably: a temp file in the
/// same directory, fsync, rename over `path`, fsync of the directory. On
/// error the old file is left as it was.
///
/// Blocking: call it from `spawn_blocking`.
pub fn save(path: &Path, decisions: &Decisions) -> Result<(), PersistError> {
    let file = StateFile {
        version: STATE_FILE_VERSION,
        live_pool: decisions.live_pool.clone(),
        previous_pool: decisions.previous_pool.clone(),
        maintenance: MaintenanceFile {
            enabled: decisions.maintenance.enabled,
            message: decisions.maintenance.message.clone(),
            retry_after_s: decisions.maintenance.retry_after.map(|d| d.as_secs()),
            since: decisions.maintenance.since.map(rfc3339),
        },
        generation: decisions.generation,
    };
    let mut text = serde_json::to_vec_pretty(&file).expect("the state file serializes");
    text.push(b'\n');
    let fail = |step: &'static str| {
        move |source| PersistError::Write {
            path: path.to_owned(),
            step,
            source,
        }
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .unwrap_or(path.as_os_str())
        .to_string_lossy();
    let temp = dir.join(format!(".{name}.tmp"));
    let result = (|| {
        let mut out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)
            .map_err(fail("create temp file"))?;
        out.write_all(&text).map_err(fail("write temp file"))?;
        out.sync_all().map_err(fail("fsync temp file"))?;
        fs::rename(&temp, path).map_err(fail("rename temp file"))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(fail("fsync directory"))
    })();
    if result.is_err() {
        // Best effort: a leftover temp file is harmless but untidy.
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Creates the state file's directory if it is missing, so that the first
/// change can be written.
pub fn prepare_dir(path: &Path) -> Result<(), PersistError> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => {
            fs::create_dir_all(dir).map_err(|source| PersistError::Write {
                path: path.to_owned(),
                step: "create directory",
                source,
            })
        }
        _ => Ok(()),
    }
}

/// `time` as RFC 3339 in UTC, whole seconds.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of its own for one test, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir = std::env::temp_dir()
                .join(format!("switchyard-persist-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn decisions() -> Decisions {
        Decisions {
            live_pool: "green".to_owned(),
            previous_pool: Some("blue".to_owned()),
            maintenance: MaintenanceState {
                enabled: true,
                message: Some("back soon".to_owned()),
                retry_after: Some(Duration::from_secs(600)),
                since: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)),
            },
            generation: 7,
        }
    }

    #[test]
    fn decisions_survive_a_round_trip() {
        let dir = Scratch::new("round-trip");
        let path = dir.0.join("state.json");
        assert!(load(&path).unwrap().is_none());
        save(&path, &decisions()).unwrap();
        assert_eq!(load(&path).unwrap(), Some(decisions()));
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"version\": 1"), "{text}");
        assert!(text.contains("\"retry_after_s\": 600"), "{text}");
    }

    #[test]
    fn a_corrupt_or_newer_file_is_an_error_naming_it() {
        let dir = Scratch::new("corrupt");
        let path = dir.0.join("state.json");
        fs::write(&path, "{\"version\": 1, \"live_pool\": ").unwrap();
        let error = load(&path).unwrap_err().to_string();
        assert!(error.contains("state.json is corrupt"), "{error}");
        fs::write(&path, "{\"version\": 9}").unwrap();
        let error = load(&path).unwrap_err().to_string();
        assert!(error.contains("has version 9"), "{error}");
    }
}
