//! The `chat` binary as a child process for the client tests: piped stdio collected on
//! threads, bounded waits, killed when dropped.

#![allow(dead_code)] // each client test file uses a different subset

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

/// How long any single expectation may wait before the test fails.
const WAIT: Duration = Duration::from_secs(10);

/// Bytes as text for assertions and messages.
pub fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Collects a child pipe on a thread so the test can wait for text with a deadline.
pub struct Output {
    name: &'static str,
    rx: Receiver<Vec<u8>>,
    buf: Vec<u8>,
}

impl Output {
    pub fn collect(name: &'static str, mut pipe: impl Read + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if tx.send(buf[..n].to_vec()).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Output {
            name,
            rx,
            buf: Vec::new(),
        }
    }

    pub fn text(&self) -> String {
        show(&self.buf)
    }

    /// Waits until the output contains `want`; returns the whole output so far.
    pub fn wait_for(&mut self, want: &str) -> String {
        let deadline = Instant::now() + WAIT;
        while !self.text().contains(want) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(chunk) => self.buf.extend_from_slice(&chunk),
                Err(RecvTimeoutError::Timeout) => panic!(
                    "{}: {want:?} did not appear within {WAIT:?}; got {:?}",
                    self.name,
                    self.text()
                ),
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "{}: closed before {want:?} appeared; got {:?}",
                    self.name,
                    self.text()
                ),
            }
        }
        self.text()
    }

    /// How much output has been collected so far, taking in what the reading thread holds:
    /// a later [`Output::wait_for_after`] looks only past it.
    pub fn mark(&mut self) -> usize {
        while let Ok(chunk) = self.rx.try_recv() {
            self.buf.extend_from_slice(&chunk);
        }
        self.buf.len()
    }

    /// Like [`Output::wait_for`], for `want` in the output after `mark` only: a line the
    /// child may have written before too (a link lost and back) says nothing of now.
    pub fn wait_for_after(&mut self, mark: usize, want: &str) -> String {
        let deadline = Instant::now() + WAIT;
        while !show(&self.buf[mark.min(self.buf.len())..]).contains(want) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(chunk) => self.buf.extend_from_slice(&chunk),
                Err(RecvTimeoutError::Timeout) => panic!(
                    "{}: {want:?} did not appear within {WAIT:?}; got {:?}",
                    self.name,
                    self.text()
                ),
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "{}: closed before {want:?} appeared; got {:?}",
                    self.name,
                    self.text()
                ),
            }
        }
        self.text()
    }

    /// Like [`Output::wait_for`], but the pipe closing first is an answer, not a failure:
    /// `None` then. A timeout still fails the test.
    pub fn wait_for_or_close(&mut self, want: &str) -> Option<String> {
        let deadline = Instant::now() + WAIT;
        while !self.text().contains(want) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(chunk) => self.buf.extend_from_slice(&chunk),
                Err(RecvTimeoutError::Timeout) => panic!(
                    "{}: {want:?} did not appear within {WAIT:?}; got {:?}",
                    self.name,
                    self.text()
                ),
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
        Some(self.text())
    }

    /// Reads until the child closes the pipe (it has exited); returns the whole output.
    pub fn wait_closed(&mut self) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(chunk) => self.buf.extend_from_slice(&chunk),
                Err(RecvTimeoutError::Disconnected) => return self.text(),
                Err(RecvTimeoutError::Timeout) => panic!(
                    "{}: still open after {WAIT:?}; got {:?}",
                    self.name,
                    self.text()
                ),
            }
        }
    }
}

/// A running `chat` process with piped stdio; killed when dropped.
pub struct Client {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub stdout: Output,
    pub stderr: Output,
}

impl Client {
    pub fn spawn(args: &[&str]) -> Self {
        Client::spawn_with_env(args, &[])
    }

    /// Like [`Client::spawn`], with environment variables set (`Some`) or removed (`None`).
    pub fn spawn_with_env(args: &[&str], env: &[(&str, Option<&std::ffi::OsStr>)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_chat"));
        for (name, value) in env {
            match value {
                Some(value) => command.env(name, value),
                None => command.env_remove(name),
            };
        }
        let mut child = command
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the chat binary");
        let stdout = Output::collect("stdout", child.stdout.take().expect("piped stdout"));
        let stderr = Output::collect("stderr", child.stderr.take().expect("piped stderr"));
        Client {
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
        }
    }

    pub fn type_text(&mut self, text: &[u8]) {
        self.stdin
            .as_mut()
            .expect("stdin still open")
            .write_all(text)
            .expect("write to the client's stdin");
    }

    pub fn close_stdin(&mut self) {
        drop(self.stdin.take());
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// std has no wait with a timeout; polling `try_wait` is the portable bounded wait.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.child.try_wait().expect("try_wait") {
                Some(status) => return status,
                None if Instant::now() >= deadline => panic!(
                    "the client did not exit within {WAIT:?}; stderr: {:?}",
                    self.stderr.text()
                ),
                None => thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Accepts on `listener` with a bound: std has no accept timeout, so a helper thread accepts
/// and the wait is on its channel; on timeout it stays blocked until the test process ends.
pub fn accept_within(listener: &std::net::TcpListener, what: &str) -> std::net::TcpStream {
    let listener = listener.try_clone().expect("clone the listener");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(listener.accept());
    });
    match rx.recv_timeout(WAIT) {
        Ok(Ok((stream, _))) => stream,
        Ok(Err(e)) => panic!("{what}: accept failed: {e}"),
        Err(_) => panic!("{what}: the client did not connect within {WAIT:?}"),
    }
}
