//! Reading a one-off dyno's log stream: splitting the bytes Logplex sends into lines, telling
//! the command's own output from the platform's lines, finding the exit status, and skipping
//! the lines a reopened session replays.
//!
//! Lines look like `2026-01-02T03:04:05.123456+00:00 app[run.1952]: <output>`; the platform
//! writes `heroku[run.1952]: Process exited with status 0` and
//! `heroku[run.1952]: State changed from up to complete`, in either order.

use std::collections::HashSet;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};

use crate::event::parse_timestamp;
use crate::pulse::Timestamp;

/// A partial line longer than this is passed on as it is, so one endless line cannot grow
/// the buffer without bound.
pub const MAX_LINE_BYTES: usize = 64 << 10;

/// What one line of the stream says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line<'a> {
    /// Output of the command (`app[...]`), without the timestamp and source.
    Output(&'a [u8]),
    /// `Process exited with status N`.
    Exited(i32),
    /// `State changed from X to complete` (or to `down`, when the dyno was stopped).
    Finished,
    /// Any other platform line, or a line for another dyno.
    Other,
}

/// Reads a dyno's log stream across sessions.
#[derive(Debug, Default)]
pub struct LogReader {
    pending: Vec<u8>,
    /// The newest timestamp seen, and hashes of the lines seen at exactly that time: a
    /// reopened session replays recent lines, and those are skipped.
    newest: Option<Timestamp>,
    at_newest: HashSet<u64>,
    exit_status: Option<i32>,
    finished: bool,
}

impl LogReader {
    pub fn new() -> LogReader {
        LogReader::default()
    }

    /// Feeds bytes from the stream; returns the command's output they complete (each line
    /// with its newline), in order.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(bytes);
        let mut output = Vec::new();
        let mut start = 0;
        while let Some(end) = self.pending[start..].iter().position(|b| *b == b'\n') {
            let line = self.pending[start..start + end].to_vec();
            self.take_line(&line, &mut output);
            start += end + 1;
        }
        self.pending.drain(..start);
        if self.pending.len() > MAX_LINE_BYTES {
            let line = std::mem::take(&mut self.pending);
            self.take_line(&line, &mut output);
        }
        output
    }

    /// The stream ended (or the session is being replaced): a partial line is complete.
    pub fn end_of_stream(&mut self) -> Vec<u8> {
        let line = std::mem::take(&mut self.pending);
        let mut output = Vec::new();
        if !line.is_empty() {
            self.take_line(&line, &mut output);
        }
        output
    }

    /// The exit status, once the platform has reported it.
    pub fn exit_status(&self) -> Option<i32> {
        self.exit_status
    }

    /// Whether the platform said the dyno's process is complete.
    pub fn finished(&self) -> bool {
        self.finished
    }

    fn take_line(&mut self, raw: &[u8], output: &mut Vec<u8>) {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.is_empty() || self.is_replayed(raw) {
            return;
        }
        match classify(raw) {
            Line::Output(text) => {
                output.extend_from_slice(text);
                output.push(b'\n');
            }
            Line::Exited(status) => self.exit_status = Some(status),
            Line::Finished => self.finished = true,
            Line::Other => {}
        }
    }

    /// Whether a line was already seen in an earlier session; remembers it otherwise.
    fn is_replayed(&mut self, raw: &[u8]) -> bool {
        let Some(time) = timestamp_of(raw) else {
            return false;
        };
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(raw);
        match self.newest {
            Some(newest) if time < newest => true,
            Some(newest) if time == newest => !self.at_newest.insert(hash),
            _ => {
                self.newest = Some(time);
                self.at_newest.clear();
                self.at_newest.insert(hash);
                false
            }
        }
    }
}

fn timestamp_of(raw: &[u8]) -> Option<Timestamp> {
    let end = raw.iter().position(|b| *b == b' ')?;
    let text = std::str::from_utf8(&raw[..end]).ok()?;
    parse_timestamp(text, "log line").ok()
}

/// Reads one line (without its newline). A line without the usual prefix is output as it is.
pub fn classify(raw: &[u8]) -> Line<'_> {
    let Some(space) = raw.iter().position(|b| *b == b' ') else {
        return Line::Output(raw);
    };
    let rest = &raw[space + 1..];
    let Some(colon) = find(rest, b"]: ").or_else(|| rest.ends_with(b"]:").then(|| rest.len() - 2))
    else {
        return Line::Output(raw);
    };
    let source = &rest[..colon + 1];
    let message = rest.get(colon + 3..).unwrap_or_default();
    if source.starts_with(b"app[") {
        return Line::Output(message);
    }
    if !source.starts_with(b"heroku[") {
        return Line::Other;
    }
    let message = String::from_utf8_lossy(message);
    if let Some(status) = message.strip_prefix("Process exited with status ") {
        return match status.trim().parse() {
            Ok(status) => Line::Exited(status),
            Err(_) => Line::Other,
        };
    }
    if message.starts_with("State changed from ")
        && (message.ends_with(" to complete") || message.ends_with(" to down"))
    {
        return Line::Finished;
    }
    Line::Other
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: &str = "2026-01-02T03:04:05.000001+00:00";
    const T1: &str = "2026-01-02T03:04:05.000002+00:00";

    #[test]
    fn output_and_platform_lines_are_told_apart() {
        let line = format!("{T0} app[run.1952]: hello: world");
        assert_eq!(classify(line.as_bytes()), Line::Output(b"hello: world"));
        let line = format!("{T0} heroku[run.1952]: Process exited with status 3");
        assert_eq!(classify(line.as_bytes()), Line::Exited(3));
        let line = format!("{T0} heroku[run.1952]: State changed from up to complete");
        assert_eq!(classify(line.as_bytes()), Line::Finished);
        let line = format!("{T0} heroku[run.1952]: Starting process with command `ls`");
        assert_eq!(classify(line.as_bytes()), Line::Other);
        let line = format!("{T0} app[run.1952]:");
        assert_eq!(classify(line.as_bytes()), Line::Output(b""));
        assert_eq!(
            classify(b"no prefix at all"),
            Line::Output(b"no prefix at all")
        );
    }

    #[test]
    fn lines_split_across_chunks_are_joined() {
        let mut reader = LogReader::new();
        let text = format!("{T0} app[run.1]: first\n{T1} app[run.1]: sec");
        assert_eq!(reader.feed(text.as_bytes()), b"first\n");
        assert_eq!(reader.feed(b"ond\r\n"), b"second\n");
        assert_eq!(reader.end_of_stream(), b"");
    }

    #[test]
    fn exit_status_is_found_in_either_order() {
        let mut reader = LogReader::new();
        let text = format!(
            "{T0} heroku[run.1]: State changed from up to complete\n\
             {T1} heroku[run.1]: Process exited with status 0\n"
        );
        reader.feed(text.as_bytes());
        assert_eq!(reader.exit_status(), Some(0));
        assert!(reader.finished());
    }

    #[test]
    fn a_reopened_session_does_not_repeat_lines() {
        let mut reader = LogReader::new();
        let first = format!("{T0} app[run.1]: a\n{T1} app[run.1]: b\n");
        assert_eq!(reader.feed(first.as_bytes()), b"a\nb\n");
        reader.end_of_stream();
        let replay = format!("{T0} app[run.1]: a\n{T1} app[run.1]: b\n{T1} app[run.1]: c\n");
        assert_eq!(reader.feed(replay.as_bytes()), b"c\n");
    }

    #[test]
    fn an_endless_line_is_passed_on_in_bounded_pieces() {
        let mut reader = LogReader::new();
        let out = reader.feed(&vec![b'x'; MAX_LINE_BYTES + 1]);
        assert_eq!(out.len(), MAX_LINE_BYTES + 2);
        assert!(reader.pending.is_empty());
    }
}
