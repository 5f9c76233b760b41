//! The web front door in a real browser: headless Chromium driven through chromedriver
//! (Debian's `chromium` and `chromium-driver`; `.ci/run` installs them). Without them the tests
//! say so and return, except under `CI=true`, where that fails (a skip there would hide that
//! the browser was never tested).

// Tests may unwrap, expect and panic: a failed assumption is a failed test (Cargo.toml's
// [lints] deny them in the library and the binaries).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/webdriver.rs"]
mod webdriver;

use std::time::Duration;

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
    let Some(mut driver) = driver() else { return };
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
