//! The keys page in a real browser: headless Chromium driven through
//! chromedriver (WebDriver). Needs `chromium` and `chromium-driver`
//! (`/usr/bin/chromium`, `/usr/bin/chromedriver`, or `$CHROMIUM` and
//! `$CHROMEDRIVER`). Without them the test says it was skipped, except with
//! `CI=true`, where it fails. `UPDATE_SCREENSHOT=1` rewrites
//! `docs/keys-page.png` (the README's screenshot).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use apikey::{Actor, Environment, NewKey};
use common::*;
use fantoccini::{ClientBuilder, Locator};

fn tool(var: &str, default: &str) -> Option<String> {
    let path = std::env::var(var).unwrap_or_else(|_| default.to_owned());
    Path::new(&path).exists().then_some(path)
}

/// A free loopback port for chromedriver.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

struct Driver(tokio::process::Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

async fn wait_for(c: &fantoccini::Client, css: &str) -> fantoccini::elements::Element {
    c.wait()
        .at_most(Duration::from_secs(15))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css} did not appear: {e}"))
}

/// Clicks the element `at` finds.
async fn click(c: &fantoccini::Client, at: Locator<'_>) {
    c.find(at).await.unwrap().click().await.unwrap();
}

/// The key the open shown-once dialog holds; the dialog is closed after.
async fn shown_key_closed(c: &fantoccini::Client) -> String {
    let key = c
        .find(Locator::Id("new-key"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap()
        .expect("the dialog shows the key");
    click(c, Locator::Id("close-dialog")).await;
    key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keys_page_creates_shows_once_toggles_and_deletes_in_chromium() {
    let (Some(chromium), Some(chromedriver)) = (
        tool("CHROMIUM", "/usr/bin/chromium"),
        tool("CHROMEDRIVER", "/usr/bin/chromedriver"),
    ) else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but chromium or chromedriver is missing (apt-get install chromium chromium-driver)"
        );
        eprintln!("skipped: chromium or chromedriver not installed");
        return;
    };

    let s = start().await;
    // A name with markup that only a store (an import, an old API) could
    // hold: the page must show it as text.
    let hostile = r#"<img src=x onerror="document.title='pwned'">"#;
    s.manager
        .create(
            NewKey::new("sk_live_").owner("alice").name(hostile),
            &Actor::system(),
        )
        .await
        .unwrap();
    // An auto-renewing key: the page says so under its expiry.
    s.manager
        .create(
            NewKey::new("sk_live_")
                .owner("alice")
                .name("renewing")
                .expires_at("2026-09-01T00:00:00Z".parse().unwrap())
                .metadata(apikey::KeyRecord::AUTO_RENEW, "true"),
            &Actor::system(),
        )
        .await
        .unwrap();

    let port = free_port();
    let profile = std::env::temp_dir().join(format!("apikey-chromium-{port}"));
    let _driver = Driver(
        tokio::process::Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts"),
    );
    let driver_addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(driver_addr).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": chromium,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                "--window-size=1280,1000",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://{driver_addr}"))
        .await
        .expect("a WebDriver session");

    let page = format!("http://{}/keys", s.addr);
    c.goto(&page).await.unwrap();
    // The app's sign-in, reduced to its cookie.
    c.execute(
        "document.cookie = 'session=alice; path=/; SameSite=Strict'",
        vec![],
    )
    .await
    .unwrap();
    c.goto(&page).await.unwrap();

    // The hostile name is text, not an element, and ran nothing.
    wait_for(&c, "#key-rows tr td.name").await;
    let mut names = Vec::new();
    for cell in c
        .find_all(Locator::Css("#key-rows tr td.name"))
        .await
        .unwrap()
    {
        names.push(cell.text().await.unwrap());
    }
    assert!(names.iter().any(|n| n == hostile), "{names:?}");
    assert!(
        c.find_all(Locator::Css("#key-rows img"))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(c.title().await.unwrap(), "Example keys");

    // Create with the keyboard: type the name, tick a scope, press Enter.
    let name = c.find(Locator::Id("key-name")).await.unwrap();
    name.send_keys("Browser test").await.unwrap();
    click(&c, Locator::Css("#scope-list input[value='tasks:read']")).await;
    name.send_keys("\u{E007}").await.unwrap(); // Enter
    wait_for(&c, "#key-dialog[open]").await;
    let warning = c
        .find(Locator::Id("key-warning"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(warning.contains("You will not see it again"), "{warning}");
    assert!(c.find(Locator::Id("copy-btn")).await.is_ok());
    let key = shown_key_closed(&c).await;
    assert!(key.starts_with("sk_live_"), "{key}");

    // After a reload the full key is nowhere in the page.
    c.refresh().await.unwrap();
    wait_for(&c, "#key-rows tr:nth-child(2)").await;
    let source = c.source().await.unwrap();
    let dom: String = c
        .execute(
            "return document.documentElement.outerHTML + document.body.innerText",
            vec![],
        )
        .await
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        !source.contains(&key) && !dom.contains(&key),
        "the full key is still in the page"
    );
    let id = s
        .manager
        .list("alice")
        .await
        .unwrap()
        .into_iter()
        .find(|k| k.name == "Browser test")
        .unwrap()
        .id
        .to_string();
    let row = format!("#key-rows tr[data-id='{id}']");

    let guarded =
        |key: String| async move { call(s.addr, As::Key(&key), "GET", "/v1/tasks", None).await };
    assert_eq!(guarded(key.clone()).await.status, 200);

    // Edit: rename and add a permission (PATCH sends only what changed).
    wait_for(&c, &format!("{row} button.edit"))
        .await
        .click()
        .await
        .unwrap();
    wait_for(&c, "#edit-dialog[open]").await;
    let edit_name = c.find(Locator::Id("edit-name")).await.unwrap();
    edit_name.clear().await.unwrap();
    edit_name.send_keys("Browser test (renamed)").await.unwrap();
    click(
        &c,
        Locator::Css("#edit-scope-list input[value='tasks:write']"),
    )
    .await;
    click(&c, Locator::Id("edit-save")).await;
    c.wait()
        .at_most(Duration::from_secs(15))
        .for_element(Locator::XPath(&format!(
            "//tr[@data-id='{id}']/td[@class='name' and text()='Browser test (renamed)']"
        )))
        .await
        .expect("the renamed key is listed");
    let edited = s.manager.get(id.parse().unwrap()).await.unwrap();
    assert_eq!(edited.scopes, ["tasks:read", "tasks:write"]);
    assert_eq!(edited.expires_at, None, "an untouched expiry changed");

    // Toggle off: 401 DISABLED_API_KEY; on again: 200.
    wait_for(&c, &format!("{row} button.toggle"))
        .await
        .click()
        .await
        .unwrap();
    wait_for(&c, &format!("{row} td.status-disabled")).await;
    let r = guarded(key.clone()).await;
    assert_eq!((r.status, r.code()), (401, "DISABLED_API_KEY".into()));
    wait_for(&c, &format!("{row} button.toggle"))
        .await
        .click()
        .await
        .unwrap();
    wait_for(&c, &format!("{row} td.status-active")).await;
    assert_eq!(guarded(key.clone()).await.status, 200);

    // Delete after confirming: 401 REVOKED_API_KEY.
    wait_for(&c, &format!("{row} button.delete"))
        .await
        .click()
        .await
        .unwrap();
    wait_for(&c, "#confirm-dialog[open]").await;
    click(&c, Locator::Id("confirm-yes")).await;
    wait_for(&c, &format!("{row} td.status-revoked")).await;
    let r = guarded(key.clone()).await;
    assert_eq!((r.status, r.code()), (401, "REVOKED_API_KEY".into()));

    // The screenshot for the README: usage flushed, page reloaded, top.
    s.manager.flush().await.unwrap();
    c.refresh().await.unwrap();
    wait_for(&c, &format!("{row} td.status-revoked")).await;
    // Last used, with where from (issue 22): the client address and route.
    let from = wait_for(&c, &format!("{row} td.last-used small.last-use"))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(from, "127.0.0.1 \u{b7} GET /v1/tasks");
    // When and why it was revoked, under its status.
    let why = wait_for(&c, &format!("{row} td.status-revoked small.revocation"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        why.ends_with(": revoked through the management API"),
        "{why}"
    );
    let renews = wait_for(&c, "td small.renews").await.text().await.unwrap();
    assert_eq!(renews, "renews automatically");
    c.execute("window.scrollTo(0, 0)", vec![]).await.unwrap();
    let png = c.screenshot().await.unwrap();
    // The committed copy is replaced only on request (or when missing), so
    // a test run leaves the tree clean; every run writes the target dir's.
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/keys-page.png");
    if std::env::var_os("UPDATE_SCREENSHOT").is_some() || !docs.exists() {
        std::fs::create_dir_all(docs.parent().unwrap()).unwrap();
        std::fs::write(&docs, &png).unwrap();
    }
    std::fs::write(
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("keys-page.png"),
        &png,
    )
    .unwrap();

    // A revoked key can be removed for good (seed 004), after confirming.
    wait_for(&c, &format!("{row} button.remove"))
        .await
        .click()
        .await
        .unwrap();
    wait_for(&c, "#confirm-dialog[open]").await;
    click(&c, Locator::Id("confirm-yes")).await;
    c.wait()
        .at_most(Duration::from_secs(15))
        // The two keys made before the page opened are left.
        .for_element(Locator::Css("#key-rows tr:nth-child(2):last-child"))
        .await
        .unwrap();
    assert!(c.find_all(Locator::Css(&row)).await.unwrap().is_empty());
    let r = guarded(key.clone()).await;
    assert_eq!((r.status, r.code()), (401, "INVALID_API_KEY".into()));

    // A service with test keys (seed 001's sk_test_) offers the choice in
    // the form; live stays the default.
    let env = c.find(Locator::Id("key-env")).await.unwrap();
    assert_eq!(env.prop("value").await.unwrap().as_deref(), Some("live"));
    env.select_by_value("test").await.unwrap();
    let name = c.find(Locator::Id("key-name")).await.unwrap();
    name.send_keys("Sandbox").await.unwrap();
    click(&c, Locator::Css("#scope-list input[value='tasks:read']")).await;
    click(&c, Locator::Id("create-btn")).await;
    wait_for(&c, "#key-dialog[open]").await;
    let test_key = shown_key_closed(&c).await;
    assert!(test_key.starts_with("sk_test_"), "{test_key}");
    let sandbox = s
        .manager
        .list("alice")
        .await
        .unwrap()
        .into_iter()
        .find(|k| k.name == "Sandbox")
        .expect("the test key is listed");
    assert_eq!(sandbox.environment, Environment::Test);
    // The form is back to live for the next key.
    let env = c.find(Locator::Id("key-env")).await.unwrap();
    assert_eq!(env.prop("value").await.unwrap().as_deref(), Some("live"));
    s.manager
        .delete(sandbox.id, &Actor::system())
        .await
        .unwrap();

    // An account admin (seed 002) sees every user's keys: each row says
    // whose it is.
    s.manager
        .create(
            NewKey::new("sk_live_").owner("bob").name("CI"),
            &Actor::system(),
        )
        .await
        .unwrap();
    c.execute(
        "document.cookie = 'session=admin:carol; path=/; SameSite=Strict'",
        vec![],
    )
    .await
    .unwrap();
    c.goto(&page).await.unwrap();
    wait_for(&c, "#key-rows tr td.name small.owner").await;
    let mut owners = Vec::new();
    for cell in c
        .find_all(Locator::Css("#key-rows tr td.name small.owner"))
        .await
        .unwrap()
    {
        owners.push(cell.text().await.unwrap());
    }
    owners.sort();
    assert_eq!(owners, ["alice", "alice", "bob"], "one owner per row");

    // A whole account's keys outgrow one page of the listing (100): the
    // table shows every page.
    for i in 0..100 {
        let (_, old) = s
            .manager
            .create(
                NewKey::new("sk_live_")
                    .owner("bob")
                    .name(format!("old {i}")),
                &Actor::system(),
            )
            .await
            .unwrap();
        s.manager
            .revoke(old.id, "retired", &Actor::system())
            .await
            .unwrap();
    }
    c.refresh().await.unwrap();
    c.wait()
        .at_most(Duration::from_secs(15))
        .for_element(Locator::Css("#key-rows tr:nth-child(103):last-child"))
        .await
        .unwrap_or_else(|e| panic!("103 rows did not appear: {e}"));

    c.close().await.unwrap();
    let _ = std::fs::remove_dir_all(&profile);
}
