//! Bounds on what operators may set, in the config file and through the
//! admin API alike.

use std::time::Duration;

/// The longest `Retry-After` the gate sends: a week. Longer is surely a
/// typo (`1000000000y`), and no client waits that long anyway.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// The longest maintenance message, the gate's or a window's: a hundred
/// windows' together stay well within what one etcd request takes
/// (1.5 MiB), and a page that shows it stays small.
pub const MAX_MESSAGE_BYTES: usize = 2048;

/// The most `{{` a `maintenance.html_page` may hold: the page is rendered
/// whole at every change of the gate, each placeholder a message long.
pub const MAX_PAGE_PLACEHOLDERS: usize = 100;

/// What is wrong with `message` as a maintenance message, if anything: too
/// long, or holding control characters (a line break; an escape sequence
/// that `ctl status` would print into an operator's terminal).
pub fn message_fault(message: &str) -> Option<String> {
    if message.len() > MAX_MESSAGE_BYTES {
        return Some(format!("at most {MAX_MESSAGE_BYTES} bytes"));
    }
    message
        .chars()
        .find(|c| c.is_control())
        .map(|c| format!("no control characters ({c:?} is one); one line of text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_one_line_of_bounded_text() {
        assert_eq!(message_fault("Back by 10:30 — sorry!"), None);
        assert!(message_fault("two\nlines").is_some());
        assert!(message_fault("\u{1b}[31mred").is_some());
        assert!(message_fault("nul\u{0}").is_some());
        assert!(message_fault(&"x".repeat(MAX_MESSAGE_BYTES + 1)).is_some());
        assert_eq!(message_fault(&"x".repeat(MAX_MESSAGE_BYTES)), None);
    }
}
