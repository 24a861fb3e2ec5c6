//! `[log]`: the format of every log line, and where the access log goes.

use toml::Spanned;

use super::*;

impl Validator<'_> {
    pub(super) fn log(&mut self, section: Option<&Spanned<LogSection>>) -> Log {
        let section = section.map(Spanned::get_ref);
        let format = match section.and_then(|s| s.format.as_ref()) {
            None => LogFormat::Text,
            Some(format) => match format.get_ref().as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    self.problem(
                        Some(format.span()),
                        format!("log.format: `{other}` is not a format; use \"text\" or \"json\""),
                    );
                    LogFormat::Text
                }
            },
        };
        let access = match section.and_then(|s| s.access.as_ref()) {
            None => AccessLog::Off,
            Some(access) => match access.get_ref().as_str() {
                "off" => AccessLog::Off,
                "stderr" => AccessLog::Stderr,
                _ => {
                    let path = self.path("log.access", access);
                    self.file_can_be("log.access", &path, Some(access.span()));
                    self.access_log_can_be_opened(&path, access.span());
                    AccessLog::File(path)
                }
            },
        };
        Log { format, access }
    }
}
