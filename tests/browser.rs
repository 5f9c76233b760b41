//! The web front door in a real browser: headless Chromium driven through chromedriver
//! (Debian's `chromium` and `chromium-driver`; `.ci/run` installs them). Without them the tests
//! say so and return, except under `CI=true`, where that fails (a skip there would hide that
//! the browser was never tested).

// Tests may unwrap, expect and panic: a failed assumption is a failed test (Cargo.toml's
// [lints] deny them in the library and the binaries).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/pki.rs"]
mod pki;
#[path = "common/webdriver.rs"]
mod webdriver;

use std::time::Duration;

use common::{ccm, Client, TestServer};
use pki::Pki;
use switchboard::config::Config;
use webdriver::{Driver, Session};

/// How long the page may take to show what a test waits for.
const PAGE_WAIT: Duration = Duration::from_secs(10);

/// chromedriver, or `None` (after [`common::cannot_run`]) when Chromium is not installed.
fn driver() -> Option<Driver> {
    match webdriver::find_binaries() {
        Ok((chromium, chromedriver)) => {
            Some(Driver::start(&chromium, &chromedriver).expect("start chromedriver"))
        }
        Err(missing) => {
            common::cannot_run(&format!("the browser tests need Chromium: {missing}"));
            None
        }
    }
}

/// A page with a form whose button writes, after a delay, what was typed into a list item:
/// enough to check every call the chat test makes (and that a wait waits) without the server.
const STATIC_PAGE: &str = "<!doctype html><title>static</title>\
    <input id=name><button id=go>go</button><ul id=out></ul>\
    <script>document.getElementById('go').onclick=()=>setTimeout(()=>{\
    const li=document.createElement('li');li.className='msg';li.dataset.from='me';\
    li.textContent=document.getElementById('name').value;\
    document.getElementById('out').append(li)},150)</script>";

fn data_url(html: &str) -> String {
    let mut url = String::from("data:text/html;charset=utf-8,");
    for byte in html.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            url.push(byte as char);
        } else {
            url.push_str(&format!("%{byte:02X}"));
        }
    }
    url
}

#[test]
fn the_webdriver_client_drives_a_static_page() {
    let Some(driver) = driver() else { return };
    let page: Session = driver.new_session(800, 600).expect("a browser");
    page.navigate(&data_url(STATIC_PAGE)).expect("navigate");
    assert_eq!(page.title().unwrap(), "static");

    assert!(page.find("#nothing-here").is_err());
    assert!(page.find_all("li.msg").unwrap().is_empty());

    let name = page.find("#name").unwrap();
    page.send_keys(&name, "<b>x</b> & ü").unwrap();
    assert_eq!(page.property(&name, "value").unwrap(), "<b>x</b> & ü");
    page.click(&page.find("#go").unwrap()).unwrap();

    // The item appears 150 ms after the click: the wait must wait for it.
    let item = page
        .wait_for("the list item", PAGE_WAIT, |page| {
            Ok(page.find_all("li.msg")?.into_iter().next())
        })
        .unwrap();
    assert_eq!(page.text(&item).unwrap(), "<b>x</b> & ü");
    assert_eq!(
        page.attribute(&item, "data-from").unwrap().as_deref(),
        Some("me")
    );
    assert_eq!(page.attribute(&item, "data-none").unwrap(), None);
    assert!(page.find_all("#out b").unwrap().is_empty());

    // A wait for what never comes ends at its deadline with what it was waiting for.
    let err = page
        .wait_text("#out", Duration::from_millis(100), |text| text == "never")
        .unwrap_err();
    assert!(err.contains("waited 100 ms"), "{err}");

    page.clear(&name).unwrap();
    assert_eq!(page.property(&name, "value").unwrap(), "");
    assert_eq!(
        page.execute("return arguments[0] + 1", vec![41.into()])
            .unwrap(),
        42
    );

    let png = page.screenshot_png().unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
}

// ---- the chat page against a real chatd ----

/// ROOM and CCM on ephemeral ports, the web page on `web_port` (0: an ephemeral one too).
fn start_server(web_port: u16) -> TestServer {
    TestServer::start(Config {
        ccm_port: Some(0),
        web_port: Some(web_port),
        ..Config::for_tests()
    })
}

/// One message as the page shows it: `li.msg`'s data attributes and its `.text`'s text.
#[derive(Clone, Debug, PartialEq)]
struct Shown {
    from: String,
    protocol: String,
    kind: String,
    text: String,
}

fn shown(from: &str, protocol: &str, kind: &str, text: &str) -> Shown {
    Shown {
        from: from.to_string(),
        protocol: protocol.to_string(),
        kind: kind.to_string(),
        text: text.to_string(),
    }
}

/// Every message the page shows, in order, read in one WebDriver request (a poll of a long
/// list element by element would cost five requests a message).
fn messages(page: &Session) -> Result<Vec<Shown>, String> {
    let value = page.execute(
        "return Array.from(document.querySelectorAll('#messages li.msg'), li => {\
           const text = li.querySelector('.text');\
           return [li.dataset.from, li.dataset.protocol, li.dataset.kind,\
                   text ? text.textContent : null];\
         });",
        vec![],
    )?;
    let rows = value.as_array().ok_or(format!("not a list: {value}"))?;
    rows.iter()
        .map(|row| {
            let field = |at: usize| row[at].as_str().unwrap_or("<missing>").to_string();
            Ok(Shown {
                from: field(0),
                protocol: field(1),
                kind: field(2),
                text: field(3),
            })
        })
        .collect()
}

/// Wait until the page shows `expected` (anywhere in its list).
fn wait_message(page: &Session, who: &str, expected: &Shown) {
    let mut last = Vec::new();
    page.wait_for(
        &format!("{who}'s page to show {expected:?}"),
        PAGE_WAIT,
        |page| {
            last = messages(page)?;
            Ok(last.contains(expected).then_some(()))
        },
    )
    .unwrap_or_else(|err| panic!("{err}; the page shows {last:#?}"));
}

/// The lobby's members as the page lists them: (name, protocol), sorted.
fn present(page: &Session) -> Result<Vec<(String, String)>, String> {
    let value = page.execute(
        "return Array.from(document.querySelectorAll('#present li'),\
           li => [li.dataset.name, li.dataset.protocol]);",
        vec![],
    )?;
    let mut members: Vec<(String, String)> = value
        .as_array()
        .ok_or(format!("not a list: {value}"))?
        .iter()
        .map(|row| {
            (
                row[0].as_str().unwrap_or("<missing>").to_string(),
                row[1].as_str().unwrap_or("<missing>").to_string(),
            )
        })
        .collect();
    members.sort();
    Ok(members)
}

fn wait_present(page: &Session, who: &str, expected: &[(&str, &str)]) {
    let mut expected: Vec<(String, String)> = expected
        .iter()
        .map(|(name, protocol)| (name.to_string(), protocol.to_string()))
        .collect();
    expected.sort();
    let mut last = Vec::new();
    page.wait_for(
        &format!("{who}'s page to list {expected:?}"),
        PAGE_WAIT,
        |page| {
            last = present(page)?;
            Ok((last == expected).then_some(()))
        },
    )
    .unwrap_or_else(|err| panic!("{err}; the page lists {last:?}"));
}

fn wait_status(page: &Session, who: &str, accept: impl Fn(&str) -> bool) -> String {
    page.wait_text("#status", PAGE_WAIT, accept)
        .unwrap_or_else(|err| panic!("{who}: {err}"))
}

/// Type `name` into the sign-in field and press the button.
fn try_sign_in(page: &Session, name: &str) {
    let field = page.find("#name").unwrap();
    page.clear(&field).unwrap();
    page.send_keys(&field, name).unwrap();
    page.click(&page.find("#signin").unwrap()).unwrap();
}

/// Load the page and sign in as `name`.
fn open_and_sign_in(page: &Session, url: &str, name: &str) {
    page.navigate(url).unwrap();
    try_sign_in(page, name);
    let connected = format!("connected as {name}");
    wait_status(page, name, |status| status == connected);
}

/// Send `text` to `to` (empty: the lobby) from the page's form.
fn send(page: &Session, to: &str, text: &str) {
    let to_field = page.find("#to").unwrap();
    page.clear(&to_field).unwrap();
    if !to.is_empty() {
        page.send_keys(&to_field, to).unwrap();
    }
    let text_field = page.find("#text").unwrap();
    page.clear(&text_field).unwrap();
    page.send_keys(&text_field, text).unwrap();
    page.click(&page.find("#send").unwrap()).unwrap();
}

/// Two pages (two browsers), a ROOM client and a CCM client in one lobby: every lobby message
/// reaches the three others with its sender and protocol, direct messages cross between a page
/// and the CCM user both ways, a taken name is refused on the page, markup is shown as text,
/// and the pages come back by themselves after the server restarts on the same port. One test,
/// so the browsers start once (most of its time).
#[test]
fn two_pages_a_room_and_a_ccm_user_talk_and_the_pages_survive_a_restart() {
    let Some(driver) = driver() else { return };
    let server = start_server(0);
    let web = server.web.expect("WEB enabled");
    let url = format!("http://{web}/");

    let (ana, ben) = std::thread::scope(|scope| {
        let ben = scope.spawn(|| driver.new_session(900, 640).expect("a browser for ben"));
        let ana = driver.new_session(900, 640).expect("a browser for ana");
        (ana, ben.join().expect("ben's browser started"))
    });
    open_and_sign_in(&ana, &url, "ana");

    let mut rui = Client::join(server.room, "rui");
    let (mut cid, cid_token) = ccm::identify(server.ccm.expect("CCM enabled"), "cid");
    rui.expect(b"b'cid' esta conectado ao chat");

    // A name held in another protocol is refused on the page, which stays open for another try.
    ben.navigate(&url).unwrap();
    try_sign_in(&ben, "cid");
    wait_status(&ben, "ben", |status| status.contains("name-taken"));
    try_sign_in(&ben, "ben");
    wait_status(&ben, "ben", |status| status == "connected as ben");
    rui.expect(b"b'ben' esta conectado ao chat");

    let everyone = [
        ("ana", "web"),
        ("ben", "web"),
        ("rui", "room"),
        ("cid", "ccm"),
    ];
    wait_present(&ana, "ana", &everyone);
    wait_present(&ben, "ben", &everyone);

    // Lobby messages from each of the four reach the three others (and a page its own echo).
    send(&ana, "", "hello from ana");
    for (page, who) in [(&ana, "ana"), (&ben, "ben")] {
        wait_message(page, who, &shown("ana", "web", "lobby", "hello from ana"));
    }
    rui.expect(b"ana: hello from ana");
    cid.expect(&ccm::delivered("ana", "*", "hello from ana"));

    send(&ben, "", "ben here");
    for (page, who) in [(&ana, "ana"), (&ben, "ben")] {
        wait_message(page, who, &shown("ben", "web", "lobby", "ben here"));
    }
    rui.expect(b"ben: ben here");
    cid.expect(&ccm::delivered("ben", "*", "ben here"));

    rui.send(b"rui: ola da sala\n");
    rui.expect(b"rui: ola da sala\n");
    for (page, who) in [(&ana, "ana"), (&ben, "ben")] {
        wait_message(page, who, &shown("rui", "room", "lobby", "ola da sala"));
    }
    cid.expect(&ccm::delivered("rui", "*", "ola da sala"));

    cid.send(&ccm::text(&cid_token, "*", "oi do ccm"));
    rui.expect(b"cid: oi do ccm");
    for (page, who) in [(&ana, "ana"), (&ben, "ben")] {
        wait_message(page, who, &shown("cid", "ccm", "lobby", "oi do ccm"));
    }

    // Direct messages between a page and the CCM user, both ways; ben sees neither.
    send(&ana, "cid", "psst cid");
    cid.expect(&ccm::delivered("ana", "cid", "psst cid"));
    cid.send(&ccm::text(&cid_token, "ana", "psst ana"));
    wait_message(&ana, "ana", &shown("cid", "ccm", "direct", "psst ana"));

    // Markup in a message is text: the tags appear literally and no element is made of them.
    let markup = "<b>x</b> & <img src=x onerror=\"document.title='owned'\">";
    send(&ben, "", markup);
    for (page, who) in [(&ana, "ana"), (&ben, "ben")] {
        wait_message(page, who, &shown("ben", "web", "lobby", markup));
        assert!(
            page.find_all("#messages b, #messages img")
                .unwrap()
                .is_empty(),
            "{who}"
        );
        // As the user sees it (WebDriver's rendered text, not the DOM's textContent): the last
        // few messages, in case a notice came after it.
        let rendered = page.find_all("#messages li.msg .text").unwrap();
        let seen: Vec<String> = rendered
            .iter()
            .rev()
            .take(3)
            .map(|text| page.text(text).unwrap())
            .collect();
        assert!(
            seen.iter().any(|text| text == markup),
            "{who}: rendered {seen:?}"
        );
        assert_ne!(page.title().unwrap(), "owned", "{who}: a script ran");
    }
    rui.expect(format!("ben: {markup}").as_bytes());
    cid.expect(&ccm::delivered("ben", "*", markup));

    // cid's direct message went to ana only: had it gone to ben too, it would have reached him
    // before the markup message he shows by now.
    let bens = messages(&ben).unwrap();
    assert!(
        !bens.iter().any(|shown| shown.kind == "direct"),
        "ben saw a direct message: {bens:#?}"
    );

    if let Some(path) = std::env::var_os("SWITCHBOARD_SCREENSHOT") {
        ana.save_screenshot(std::path::Path::new(&path)).unwrap();
    }

    // The server restarts on the same port: the pages notice, reconnect by themselves and sign
    // in again as before; the new server's lobby has them.
    drop(rui);
    drop(cid);
    server.stop();
    for (page, who) in [(&ana, "ana"), (&ben, "ben")] {
        wait_status(page, who, |status| status.contains("reconnecting"));
    }
    // The same web port (the page reconnects to where it was loaded from); ROOM's and CCM's
    // are new ones.
    let server = start_server(web.port());
    for (page, who) in [(&ana, "ana"), (&ben, "ben")] {
        let connected = format!("connected as {who}");
        wait_status(page, who, |status| status == connected);
    }
    let mut rui = Client::join(server.room, "rui");
    wait_present(
        &ana,
        "ana",
        &[("ana", "web"), ("ben", "web"), ("rui", "room")],
    );
    send(&ana, "", "back again");
    rui.expect(b"ana: back again");
    wait_message(&ben, "ben", &shown("ana", "web", "lobby", "back again"));
}

/// The page over https and its WebSocket over wss (app.js picks the scheme from the page's), on
/// a server with WEB over TLS only, its certificate made at run time (the browser takes it as
/// W3C `acceptInsecureCerts`): the page signs in, and lines cross both ways with a plaintext
/// ROOM client. This holds the page's promise to work over https under its CSP, whose
/// `connect-src 'self'` must let the page reach wss on its own host and port. Were the page to
/// open ws:// from https, the browser would refuse it (mixed content), and nothing listens in
/// plaintext here anyway.
#[test]
fn a_page_over_https_talks_over_wss_with_a_room_client() {
    let Some(driver) = driver() else { return };
    let pki = Pki::new("browser");
    let server = TestServer::start(Config {
        web_tls_port: Some(0),
        tls_cert_path: Some(pki.cert_path()),
        tls_key_path: Some(pki.key_path()),
        ..Config::for_tests()
    });
    assert_eq!(
        server.web, None,
        "WEB in plaintext too: the test would not prove wss"
    );
    let web_tls = server.web_tls.expect("WEB over TLS enabled");
    let url = format!("https://127.0.0.1:{}/", web_tls.port());

    let tess = driver
        .new_session_accepting_any_certificate(900, 640)
        .expect("a browser for tess");
    open_and_sign_in(&tess, &url, "tess");
    assert_eq!(
        tess.execute("return location.protocol", vec![]).unwrap(),
        "https:"
    );

    let mut rui = Client::join(server.room, "rui");
    wait_present(&tess, "tess", &[("tess", "web"), ("rui", "room")]);

    send(&tess, "", "hello over wss");
    wait_message(
        &tess,
        "tess",
        &shown("tess", "web", "lobby", "hello over wss"),
    );
    rui.expect(b"tess: hello over wss");

    rui.send(b"rui: ola pela sala\n");
    rui.expect(b"rui: ola pela sala\n");
    wait_message(
        &tess,
        "tess",
        &shown("rui", "room", "lobby", "ola pela sala"),
    );
}
