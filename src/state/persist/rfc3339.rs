//! Times as the state file, the admin API and the audit log write them:
//! RFC 3339, read with offsets, written in UTC.

use std::time::{Duration, SystemTime};

/// The time RFC 3339 `text` names: in UTC (`Z`, either case) or with a
/// numeric offset (`+05:30`, `-04:00`), as `date --iso-8601=seconds`
/// writes it; `T` or a space between date and time; fractions of a second
/// kept.
pub fn parse_rfc3339(text: &str) -> Result<SystemTime, String> {
    let text = text.trim().to_ascii_uppercase();
    let bytes = text.as_bytes();
    let offset = match bytes.len().checked_sub(6).map(|at| (at, &bytes[at..])) {
        Some((at, [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2]))
            if at > 10 && [h1, h2, m1, m2].iter().all(|d| d.is_ascii_digit()) =>
        {
            let number = |a: u8, b: u8| u64::from(a - b'0') * 10 + u64::from(b - b'0');
            let seconds = number(*h1, *h2) * 3600 + number(*m1, *m2) * 60;
            Some((at, *sign == b'+', Duration::from_secs(seconds)))
        }
        _ => None,
    };
    match offset {
        None => humantime::parse_rfc3339_weak(&text).map_err(|e| e.to_string()),
        Some((at, ahead, offset)) => {
            let local = humantime::parse_rfc3339_weak(&text[..at]).map_err(|e| e.to_string())?;
            // 10:00+05:30 is 04:30 UTC.
            let utc = if ahead {
                local.checked_sub(offset)
            } else {
                local.checked_add(offset)
            };
            utc.ok_or_else(|| "the time is out of range".to_owned())
        }
    }
}

/// `time` as RFC 3339 in UTC, whole seconds.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}
