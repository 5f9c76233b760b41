//! A small synchronous W3C WebDriver client for the browser tests: it starts `chromedriver`
//! as a child process and drives headless Chromium sessions through it.
//!
//! Why hand-rolled: the WebDriver crates on crates.io (fantoccini, thirtyfour) are async and
//! bring tokio, hyper and a TLS stack into the dev-dependencies, i.e. a second runtime and
//! dozens of crates to compile in CI, for what is a dozen JSON requests over loopback HTTP/1.1.
//! This client is one request per connection on a std `TcpStream`, with serde_json for the
//! bodies and base64 for screenshots (both the server's dependencies already, for WEB).
//!
//! Everything returns `Result<_, String>` with what was asked and what chromedriver answered, so
//! a failed browser step reads as a sentence in the test's panic.

#![allow(dead_code)] // each test file uses a different subset

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

/// The key under which the W3C protocol names an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// How long one WebDriver command may take: starting a browser is the slowest, ~1-2 s here.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// How long chromedriver may take to say which port it listens on.
const DRIVER_START_TIMEOUT: Duration = Duration::from_secs(15);

/// How often a wait looks at the page again: the DOM through WebDriver, so each look is one
/// loopback request (~1 ms); 20 ms keeps a wait's overshoot small without busy-looping.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The Chromium and chromedriver binaries, where Debian's `chromium` and `chromium-driver` put
/// them (or `SWITCHBOARD_CHROMIUM` / `SWITCHBOARD_CHROMEDRIVER`); `Err` says which is missing.
pub fn find_binaries() -> Result<(PathBuf, PathBuf), String> {
    let chromium = find_binary("SWITCHBOARD_CHROMIUM", &["chromium", "chromium-browser"])
        .ok_or("no chromium (Debian: apt-get install chromium)")?;
    let driver = find_binary("SWITCHBOARD_CHROMEDRIVER", &["chromedriver"])
        .ok_or("no chromedriver (Debian: apt-get install chromium-driver)")?;
    Ok((chromium, driver))
}

fn find_binary(env_var: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env_var) {
        let path = PathBuf::from(path);
        return path.is_file().then_some(path);
    }
    let search_path = std::env::var_os("PATH")?;
    std::env::split_paths(&search_path)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// A running chromedriver, killed (and its browsers with it) when dropped.
pub struct Driver {
    child: Child,
    addr: SocketAddr,
    chromium: PathBuf,
    /// Holds the browsers' user-data-dirs and chromedriver's log; removed on drop.
    work_dir: PathBuf,
    next_profile: AtomicU32,
}

impl Driver {
    /// Start chromedriver on an ephemeral loopback port (it picks one for `--port=0` and says
    /// which on its stdout, so there is no pick-then-bind race).
    pub fn start(chromium: &Path, chromedriver: &Path) -> Result<Driver, String> {
        let work_dir = std::env::temp_dir().join(format!(
            "switchboard-webdriver-{}-{}",
            std::process::id(),
            unique()
        ));
        std::fs::create_dir_all(&work_dir)
            .map_err(|err| format!("create {}: {err}", work_dir.display()))?;
        let log_path = work_dir.join("chromedriver.log");
        // Not a process group of its own: a Ctrl-C on `cargo test` then reaches chromedriver
        // and its browsers too (no Drop runs then).
        let mut child = Command::new(chromedriver)
            // Chromium keeps its crash reports and caches under these: in the work dir, not
            // in the user's home.
            .env("XDG_CONFIG_HOME", work_dir.join("config"))
            .env("XDG_CACHE_HOME", work_dir.join("cache"))
            .arg("--port=0")
            .arg(format!("--log-path={}", log_path.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|err| format!("spawn {}: {err}", chromedriver.display()))?;
        let stdout = child.stdout.take().ok_or("chromedriver's stdout")?;
        let (port_tx, port_rx) = mpsc::channel();
        // The reader keeps draining stdout after the port line, so chromedriver never blocks on
        // a full pipe; it ends when chromedriver exits.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = line
                    .strip_prefix("ChromeDriver was started successfully on port ")
                    .and_then(|rest| rest.trim_end_matches('.').parse::<u16>().ok())
                {
                    let _ = port_tx.send(port);
                }
            }
        });
        let mut driver = Driver {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            chromium: chromium.to_path_buf(),
            work_dir,
            next_profile: AtomicU32::new(0),
        };
        let port = port_rx
            .recv_timeout(DRIVER_START_TIMEOUT)
            .map_err(|_| format!("chromedriver did not say its port: {}", driver.log_tail()))?;
        driver.addr.set_port(port);
        Ok(driver)
    }

    /// A new headless browser (its own process and profile: no shared cookies or storage),
    /// with a window of `width` x `height` CSS pixels.
    /// Sessions may start from several threads at once (a browser takes about a second to
    /// start here).
    pub fn new_session(&self, width: u32, height: u32) -> Result<Session, String> {
        self.start_session(width, height, false)
    }

    /// [`Driver::new_session`] for a browser that takes any server certificate (W3C
    /// `acceptInsecureCerts`), https and wss alike: for a test server whose certificate is made
    /// at run time. (Trusting the test CA instead would take an NSS database in the profile.)
    pub fn new_session_accepting_any_certificate(
        &self,
        width: u32,
        height: u32,
    ) -> Result<Session, String> {
        self.start_session(width, height, true)
    }

    fn start_session(
        &self,
        width: u32,
        height: u32,
        accept_insecure_certs: bool,
    ) -> Result<Session, String> {
        let profile = self.work_dir.join(format!(
            "profile-{}",
            self.next_profile.fetch_add(1, Ordering::Relaxed)
        ));
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "acceptInsecureCerts": accept_insecure_certs,
                    "goog:chromeOptions": {
                        "binary": self.chromium,
                        "args": [
                            "--headless=new",
                            "--no-sandbox",
                            "--disable-gpu",
                            "--disable-dev-shm-usage",
                            "--no-first-run",
                            "--no-default-browser-check",
                            "--disable-extensions",
                            "--disable-background-networking",
                            format!("--window-size={width},{height}"),
                            format!("--user-data-dir={}", profile.display()),
                        ],
                    },
                },
            },
        });
        let value = request(self.addr, "POST", "/session", Some(&capabilities))
            .map_err(|err| format!("{err}; chromedriver log: {}", self.log_tail()))?;
        let id = value["sessionId"]
            .as_str()
            .ok_or_else(|| format!("new session: no sessionId in {value}"))?
            .to_string();
        Ok(Session {
            driver: self.addr,
            id,
        })
    }

    /// The last lines of chromedriver's log, for an error message.
    fn log_tail(&self) -> String {
        let log =
            std::fs::read_to_string(self.work_dir.join("chromedriver.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A session closes its browser when dropped; one whose start failed half-way (its
        // answer timed out) has nobody to close it, and chromedriver's death does not end it.
        // Such a browser is found by the profile folder only this driver hands out.
        kill_processes_with_argument(&format!("--user-data-dir={}", self.work_dir.display()));
        let _ = std::fs::remove_dir_all(&self.work_dir);
    }
}

/// SIGKILL every process of ours whose command line has an argument starting with `prefix`
/// (a browser's children end with it).
fn kill_processes_with_argument(prefix: &str) {
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return;
    };
    for process in processes.flatten() {
        let Some(pid) = process
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        let Ok(command_line) = std::fs::read(process.path().join("cmdline")) else {
            continue;
        };
        if command_line
            .split(|&byte| byte == 0)
            .any(|argument| argument.starts_with(prefix.as_bytes()))
        {
            // SAFETY: kill(2) takes plain integers and touches no memory of ours. The pid was
            // just read from /proc with an argument naming this driver's own temporary folder,
            // so it is a browser this driver started (a reused pid would not carry it).
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

fn unique() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// An element reference, valid while its page lives.
#[derive(Clone, Debug)]
pub struct Element(String);

/// One browser. Dropping it closes the browser (chromedriver kills what is left on its own drop).
pub struct Session {
    driver: SocketAddr,
    id: String,
}

impl Session {
    fn command(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
        request(
            self.driver,
            method,
            &format!("/session/{}{path}", self.id),
            body,
        )
    }

    pub fn navigate(&self, url: &str) -> Result<(), String> {
        self.command("POST", "/url", Some(&json!({ "url": url })))
            .map(drop)
    }

    pub fn title(&self) -> Result<String, String> {
        string(self.command("GET", "/title", None)?)
    }

    /// The first element matching the CSS selector; `Err` when there is none.
    pub fn find(&self, css: &str) -> Result<Element, String> {
        let value = self.command(
            "POST",
            "/element",
            Some(&json!({ "using": "css selector", "value": css })),
        )?;
        element(&value).ok_or_else(|| format!("find {css:?}: not an element: {value}"))
    }

    /// Every element matching the CSS selector, in document order (maybe none).
    pub fn find_all(&self, css: &str) -> Result<Vec<Element>, String> {
        let value = self.command(
            "POST",
            "/elements",
            Some(&json!({ "using": "css selector", "value": css })),
        )?;
        value
            .as_array()
            .ok_or_else(|| format!("find all {css:?}: not a list: {value}"))?
            .iter()
            .map(|item| element(item).ok_or_else(|| format!("find all {css:?}: {item}")))
            .collect()
    }

    pub fn click(&self, element: &Element) -> Result<(), String> {
        self.command(
            "POST",
            &format!("/element/{}/click", element.0),
            Some(&json!({})),
        )
        .map(drop)
    }

    /// Type `text` into the element (appended to what it holds).
    pub fn send_keys(&self, element: &Element, text: &str) -> Result<(), String> {
        self.command(
            "POST",
            &format!("/element/{}/value", element.0),
            Some(&json!({ "text": text })),
        )
        .map(drop)
    }

    pub fn clear(&self, element: &Element) -> Result<(), String> {
        self.command(
            "POST",
            &format!("/element/{}/clear", element.0),
            Some(&json!({})),
        )
        .map(drop)
    }

    /// The element's rendered text (as a user sees it: what is hidden is left out).
    pub fn text(&self, element: &Element) -> Result<String, String> {
        string(self.command("GET", &format!("/element/{}/text", element.0), None)?)
    }

    /// The attribute's value, `None` when the element has no such attribute.
    pub fn attribute(&self, element: &Element, name: &str) -> Result<Option<String>, String> {
        let value = self.command(
            "GET",
            &format!("/element/{}/attribute/{name}", element.0),
            None,
        )?;
        match value {
            Value::Null => Ok(None),
            Value::String(text) => Ok(Some(text)),
            other => Err(format!("attribute {name}: not a string: {other}")),
        }
    }

    /// The element's DOM property (`value` of an input, for one).
    pub fn property(&self, element: &Element, name: &str) -> Result<Value, String> {
        self.command(
            "GET",
            &format!("/element/{}/property/{name}", element.0),
            None,
        )
    }

    /// Run `script` (a function body; `arguments` holds `args`) in the page, synchronously.
    pub fn execute(&self, script: &str, args: Vec<Value>) -> Result<Value, String> {
        self.command(
            "POST",
            "/execute/sync",
            Some(&json!({ "script": script, "args": args })),
        )
    }

    /// The page as a PNG image.
    pub fn screenshot_png(&self) -> Result<Vec<u8>, String> {
        let encoded = string(self.command("GET", "/screenshot", None)?)?;
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|err| format!("screenshot: not base64: {err}"))
    }

    /// Save the page as a PNG image at `path`.
    pub fn save_screenshot(&self, path: &Path) -> Result<(), String> {
        let png = self.screenshot_png()?;
        std::fs::write(path, png).map_err(|err| format!("write {}: {err}", path.display()))
    }

    /// Look at the page through `probe` until it returns `Some`, for at most `within`; the
    /// `Err` says what was awaited and what the last look saw. A probe's own `Err` (the
    /// element is not there yet, or was replaced between finding and reading it) counts as
    /// "not yet": a page that is changing is what is being waited for.
    pub fn wait_for<T>(
        &self,
        what: &str,
        within: Duration,
        mut probe: impl FnMut(&Session) -> Result<Option<T>, String>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + within;
        loop {
            let last = match probe(self) {
                Ok(Some(found)) => return Ok(found),
                Ok(None) => "not yet".to_string(),
                Err(err) => err,
            };
            if Instant::now() >= deadline {
                return Err(format!(
                    "waited {} ms for {what}; last look: {last}",
                    within.as_millis()
                ));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Wait until the first element matching `css` has text for which `accept` holds; returns
    /// that text.
    pub fn wait_text(
        &self,
        css: &str,
        within: Duration,
        accept: impl Fn(&str) -> bool,
    ) -> Result<String, String> {
        let mut seen = String::new();
        self.wait_for(&format!("the text of {css:?}"), within, |page| {
            seen = page.text(&page.find(css)?)?;
            Ok(accept(&seen).then(|| seen.clone()))
        })
        .map_err(|err| format!("{err} (text was {seen:?})"))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = request(
            self.driver,
            "DELETE",
            &format!("/session/{}", self.id),
            None,
        );
    }
}

fn element(value: &Value) -> Option<Element> {
    value[ELEMENT_KEY]
        .as_str()
        .map(|id| Element(id.to_string()))
}

fn string(value: Value) -> Result<String, String> {
    match value {
        Value::String(text) => Ok(text),
        other => Err(format!("expected a string, got {other}")),
    }
}

/// One WebDriver command: an HTTP/1.1 request on its own connection; returns the answer's
/// `value`, or `Err` with the W3C error and message (or what went wrong on the way).
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, String> {
    let what = format!("{method} {path}");
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut stream = TcpStream::connect(addr)
        .map_err(|err| format!("{what}: connect to chromedriver: {err}"))?;
    stream
        .set_read_timeout(Some(COMMAND_TIMEOUT))
        .map_err(|err| format!("{what}: {err}"))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body.as_bytes()))
        .map_err(|err| format!("{what}: send: {err}"))?;
    // chromedriver keeps the connection open whatever the request says, so the answer ends
    // where its framing says, not at EOF.
    let mut answer = Vec::new();
    let mut chunk = [0u8; 16384];
    let (status, answer_body) = loop {
        match parse_response(&answer) {
            Parsed::Complete(status, body) => break (status, body),
            Parsed::Invalid => {
                return Err(format!(
                    "{what}: not an HTTP answer: {:?}",
                    String::from_utf8_lossy(&answer)
                ))
            }
            Parsed::Partial => {}
        }
        let n = stream
            .read(&mut chunk)
            .map_err(|err| format!("{what}: read the answer: {err}"))?;
        if n == 0 {
            return Err(format!(
                "{what}: chromedriver closed mid-answer: {:?}",
                String::from_utf8_lossy(&answer)
            ));
        }
        answer.extend_from_slice(&chunk[..n]);
    };
    let json: Value = serde_json::from_slice(&answer_body).map_err(|err| {
        format!(
            "{what}: answer {status} is not JSON ({err}): {:?}",
            String::from_utf8_lossy(&answer_body)
        )
    })?;
    let value = json.get("value").cloned().unwrap_or(Value::Null);
    if status != 200 {
        let error = value["error"].as_str().unwrap_or("unknown error");
        let message = value["message"].as_str().unwrap_or_default();
        let message = message.lines().next().unwrap_or_default();
        return Err(format!("{what}: {status} {error}: {message}"));
    }
    Ok(value)
}

#[derive(Debug, PartialEq)]
enum Parsed {
    Complete(u16, Vec<u8>),
    Partial,
    Invalid,
}

/// The status code and body of an HTTP/1.1 response, once all of it is in `answer`: framed by
/// Content-Length or chunked (a response with neither cannot end before EOF, and chromedriver
/// never sends one).
fn parse_response(answer: &[u8]) -> Parsed {
    let Some(head_end) = answer.windows(4).position(|window| window == b"\r\n\r\n") else {
        return Parsed::Partial;
    };
    let Ok(head) = std::str::from_utf8(&answer[..head_end]) else {
        return Parsed::Invalid;
    };
    let rest = &answer[head_end + 4..];
    let mut lines = head.split("\r\n");
    let Some(status) = lines
        .next()
        .and_then(|status_line| status_line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
    else {
        return Parsed::Invalid;
    };
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let (name, value) = line.split_once(':').unwrap_or_default();
        if name.eq_ignore_ascii_case("content-length") {
            match value.trim().parse::<usize>() {
                Ok(length) => content_length = Some(length),
                Err(_) => return Parsed::Invalid,
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.trim().eq_ignore_ascii_case("chunked");
        }
    }
    if chunked {
        return parse_chunked(status, rest);
    }
    let Some(length) = content_length else {
        return Parsed::Invalid;
    };
    match rest.get(..length) {
        Some(body) => Parsed::Complete(status, body.to_vec()),
        None => Parsed::Partial,
    }
}

fn parse_chunked(status: u16, mut rest: &[u8]) -> Parsed {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = rest.windows(2).position(|window| window == b"\r\n") else {
            return Parsed::Partial;
        };
        let size = std::str::from_utf8(&rest[..line_end])
            .ok()
            .and_then(|line| line.split(';').next())
            .and_then(|size| usize::from_str_radix(size.trim(), 16).ok());
        let Some(size) = size else {
            return Parsed::Invalid;
        };
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Parsed::Complete(status, body);
        }
        let (Some(data), Some(after)) = (rest.get(..size), rest.get(size + 2..)) else {
            return Parsed::Partial;
        };
        body.extend_from_slice(data);
        rest = after;
    }
}

#[test]
fn chunked_and_plain_answers_parse_once_complete() {
    let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
    assert_eq!(parse_response(plain), Parsed::Complete(200, b"{}".to_vec()));
    assert_eq!(parse_response(&plain[..plain.len() - 1]), Parsed::Partial);
    let chunked = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n\
        3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n";
    assert_eq!(
        parse_response(chunked),
        Parsed::Complete(404, b"{\"a\":1}".to_vec())
    );
    assert_eq!(
        parse_response(&chunked[..chunked.len() - 5]),
        Parsed::Partial
    );
    assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\n"), Parsed::Partial);
    assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\n\r\n"), Parsed::Invalid);
    assert_eq!(parse_response(b"nonsense\r\n\r\n"), Parsed::Invalid);
}
