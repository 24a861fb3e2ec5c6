//! Reading the files a config names (and the config itself): regular files
//! only, and only up to a bound. A FIFO would block the read until a writer
//! came, and `/dev/zero` would fill memory; both are a typo away.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// The largest file read: far above any config, page, certificate chain or
/// secret.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// The bytes of the regular file at `path` (links followed), at most
/// [`MAX_FILE_BYTES`] of them.
pub fn regular_file(path: &Path) -> io::Result<Vec<u8>> {
    if !std::fs::metadata(path)?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (a directory, a FIFO or a device?)",
        ));
    }
    let mut bytes = Vec::new();
    File::open(path)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {} KiB", MAX_FILE_BYTES / 1024),
        ));
    }
    Ok(bytes)
}

/// The same, as UTF-8 text.
pub fn regular_text_file(path: &Path) -> io::Result<String> {
    String::from_utf8(regular_file(path)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bounded_regular_files_are_read() {
        let error = regular_file(Path::new("/dev/zero")).unwrap_err();
        assert!(error.to_string().contains("not a regular file"), "{error}");
        let error = regular_file(Path::new("/")).unwrap_err();
        assert!(error.to_string().contains("not a regular file"), "{error}");
        let dir = std::env::temp_dir().join(format!("switchyard-read-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big = dir.join("big");
        std::fs::write(&big, vec![b'x'; MAX_FILE_BYTES as usize + 1]).unwrap();
        let error = regular_file(&big).unwrap_err();
        assert!(
            error.to_string().contains("larger than 1024 KiB"),
            "{error}"
        );
        let small = dir.join("small");
        std::fs::write(&small, b"ok").unwrap();
        assert_eq!(regular_file(&small).unwrap(), b"ok");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
