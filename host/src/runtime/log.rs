//! The log of one invocation: lines from the `log` import and from the guest's
//! stdout and stderr, capped in lines and bytes.
//!
//! Owns: the caps and line splitting. Must not: block or fail a guest's write:
//! output past the cap is counted and dropped, never an error.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Lines kept per invocation.
pub const MAX_LOG_LINES: usize = 100;
/// Bytes of log text kept per invocation.
pub const MAX_LOG_BYTES: usize = 16 * 1024;

pub const STDOUT: usize = 0;
pub const STDERR: usize = 1;

pub struct LogBuffer {
    lines: Vec<String>,
    bytes: usize,
    dropped: u64,
    max_lines: usize,
    max_bytes: usize,
    /// Unfinished lines of stdout and stderr.
    partial: [Vec<u8>; 2],
}

impl LogBuffer {
    pub fn new(max_lines: usize, max_bytes: usize) -> LogBuffer {
        LogBuffer { lines: Vec::new(), bytes: 0, dropped: 0, max_lines, max_bytes, partial: [Vec::new(), Vec::new()] }
    }

    /// Keeps `level message` if it fits; a line cut at the byte cap ends with `…`.
    pub fn push(&mut self, level: &str, message: &str) {
        if self.lines.len() >= self.max_lines || self.bytes >= self.max_bytes {
            self.dropped += 1;
            return;
        }
        let mut line = format!("{level} {message}");
        let room = self.max_bytes - self.bytes;
        if line.len() > room {
            let mut cut = room;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
            line.push('…');
        }
        self.bytes += line.len();
        self.lines.push(line);
    }

    /// Output written to stdout or stderr: complete lines are kept as `info` or `warn`.
    pub fn output(&mut self, stream: usize, mut bytes: &[u8]) {
        while let Some(end) = bytes.iter().position(|&b| b == b'\n') {
            let mut line = std::mem::take(&mut self.partial[stream]);
            line.extend_from_slice(&bytes[..end]);
            self.output_line(stream, &line);
            bytes = &bytes[end + 1..];
        }
        // An endless line is cut at the byte cap; the rest of it is dropped.
        let room = self.max_bytes.saturating_sub(self.partial[stream].len());
        self.partial[stream].extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn output_line(&mut self, stream: usize, line: &[u8]) {
        let level = if stream == STDOUT { "info" } else { "warn" };
        self.push(level, String::from_utf8_lossy(line).trim_end_matches('\r'));
    }

    /// The kept lines, with unfinished output and a count of what was dropped.
    pub fn finish(&mut self) -> Vec<String> {
        for stream in [STDOUT, STDERR] {
            let rest = std::mem::take(&mut self.partial[stream]);
            if !rest.is_empty() {
                self.output_line(stream, &rest);
            }
        }
        let mut lines = std::mem::take(&mut self.lines);
        if self.dropped > 0 {
            lines.push(format!(
                "warn … {} more log lines dropped (limit: {} lines, {} bytes)",
                self.dropped, self.max_lines, self.max_bytes
            ));
        }
        lines
    }
}

/// A guest's stdout or stderr, written into its invocation's log.
#[derive(Clone)]
pub struct LogStream {
    log: Arc<Mutex<LogBuffer>>,
    stream: usize,
}

impl LogStream {
    pub fn new(log: Arc<Mutex<LogBuffer>>, stream: usize) -> LogStream {
        LogStream { log, stream }
    }

    fn write_bytes(&self, bytes: &[u8]) {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).output(self.stream, bytes);
    }
}

/// Writes accepted at a time; any amount is accepted (past the cap it is dropped).
const WRITE_BUDGET: usize = 64 * 1024;

impl OutputStream for LogStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_bytes(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_BUDGET)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogStream {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for LogStream {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_split_into_lines_and_capped() {
        let mut log = LogBuffer::new(3, 1000);
        log.output(STDOUT, b"hello\nwor");
        log.output(STDOUT, b"ld\n");
        log.push("error", "bad");
        log.output(STDERR, b"a\nb\nc\n");
        let lines = log.finish();
        assert_eq!(
            lines,
            vec![
                "info hello",
                "info world",
                "error bad",
                "warn … 3 more log lines dropped (limit: 3 lines, 1000 bytes)"
            ]
        );
    }

    #[test]
    fn bytes_are_capped_on_a_character_boundary() {
        let mut log = LogBuffer::new(100, 10);
        log.push("info", "ééééééééé");
        log.push("info", "more");
        let lines = log.finish();
        assert!(lines[0].starts_with("info é") && lines[0].ends_with('…'), "{lines:?}");
        assert!(lines[0].len() <= 10 + '…'.len_utf8());
        assert_eq!(lines.len(), 2);
    }
}
