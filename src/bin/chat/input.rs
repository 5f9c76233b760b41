//! Line input and addresses shared by every subcommand of the client.

use std::io::{self, BufRead};

/// The line without its terminator: LF, CRLF, or any run of them.
pub(crate) fn trim_line_end(line: &[u8]) -> &[u8] {
    let end = line
        .iter()
        .rposition(|&b| b != b'\r' && b != b'\n')
        .map_or(0, |i| i + 1);
    &line[..end]
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LineRead {
    /// `line` holds one line without its LF (the last line of input may lack one).
    Line,
    /// The line was longer than the limit and has been skipped whole.
    TooLong,
    Eof,
}

/// Like `read_until(b'\n')`, but never holds more than `max` bytes of one line.
pub(crate) fn read_line_limited<R: BufRead>(
    input: &mut R,
    line: &mut Vec<u8>,
    max: usize,
) -> io::Result<LineRead> {
    line.clear();
    let mut seen_any = false;
    let mut too_long = false;
    loop {
        let buf = match input.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(match (seen_any, too_long) {
                (false, _) => LineRead::Eof,
                (true, true) => LineRead::TooLong,
                (true, false) => LineRead::Line,
            });
        }
        seen_any = true;
        let newline = buf.iter().position(|&b| b == b'\n');
        let content = &buf[..newline.unwrap_or(buf.len())];
        if !too_long {
            if line.len() + content.len() > max {
                too_long = true;
                line.clear();
            } else {
                line.extend_from_slice(content);
            }
        }
        let used = newline.map_or(buf.len(), |i| i + 1);
        input.consume(used);
        if newline.is_some() {
            return Ok(if too_long {
                LineRead::TooLong
            } else {
                LineRead::Line
            });
        }
    }
}

/// `host:port`, bracketing IPv6 literals so the port stays readable.
pub(crate) fn display_addr(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}
