//! The files switchyard writes, kept apart from each other and from the
//! files it reads: a state file written over the admin socket takes the
//! admin API away, an access log appended to the config file turns every
//! request into a refused reload.

use std::path::{Component, Path, PathBuf};

use super::*;

impl Validator<'_> {
    /// Records a problem for each file written that is also another one
    /// the config names.
    pub(super) fn files_apart(&mut self, config: &Config) {
        let mut written: Vec<(&str, &Path)> = vec![
            ("admin.socket", &config.admin.socket),
            ("state.file", &config.state.file),
        ];
        if let AccessLog::File(path) = &config.log.access {
            written.push(("log.access", path));
        }
        let mut read: Vec<(&str, &Path)> = vec![("the config file", &config.path)];
        if let Some(page) = &config.maintenance.html_page {
            read.push(("maintenance.html_page", &page.path));
        }
        for (i, (key, path)) in written.iter().enumerate() {
            let others = written[i + 1..].iter().chain(&read);
            if let Some((other, _)) = others.into_iter().find(|(_, o)| same_file(path, o)) {
                self.problem(
                    None,
                    format!(
                        "{key} and {other} are the same file ({}); switchyard writes {key}, so each needs its own",
                        path.display()
                    ),
                );
            }
        }
    }

    /// With `on_disk`, records a problem if the access log at `path` is
    /// there already as something other than a file or a device: a FIFO
    /// would hold the start until a reader came, a socket cannot be opened.
    pub(super) fn access_log_can_be_opened(&mut self, path: &Path, span: Range<usize>) {
        use std::os::unix::fs::FileTypeExt;
        let Ok(kind) = std::fs::metadata(path).map(|m| m.file_type()) else {
            return;
        };
        if self.on_disk && (kind.is_fifo() || kind.is_socket()) {
            self.problem(
                Some(span),
                format!(
                    "log.access: {} is a FIFO or a socket; name a regular file, or use \"stderr\"",
                    path.display()
                ),
            );
        }
    }
}

/// Whether `a` and `b` name one file: the same file on disk when both are
/// there, else the same path once `.` and `..` are resolved.
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => lexical(a) == lexical(b),
    }
}

/// `path` with `.` and `..` resolved by its text alone.
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}
