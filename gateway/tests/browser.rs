//! The bidder page in a real browser: Debian's Chromium driven over WebDriver (ChromeDriver),
//! against a real gateway on a real 3-node cluster. Screenshots go to
//! `target/tmp/browser/` (cargo's test output directory).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{TestCluster, free_port};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;
use tokio::process::{Child, Command};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A ChromeDriver process, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start() -> Driver {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(std::path::Path::new(bin).exists(), "{bin} is missing: run scripts/setup");
        }
        let port = free_port();
        // Its own process group: the browsers it starts are killed with it, even when the
        // test fails before closing its sessions.
        let child = Command::new(CHROMEDRIVER)
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Driver { child, url }
    }

    /// A new browser (its own profile, so its own session), phone-sized.
    async fn browser(&self) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                // The flags that keep a root, offline, headless Chromium quiet and stable.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--disable-background-networking", "--disable-component-update", "--disable-sync",
                         "--disable-quic", "--no-first-run", "--window-size=412,915", "--lang=en-US"],
            }),
        );
        ClientBuilder::new(HttpConnector::new()).capabilities(caps).connect(&self.url).await.unwrap()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).status();
        }
        let _ = self.child.start_kill();
    }
}

fn shots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shot(b: &Client, name: &str) {
    let png = b.screenshot().await.unwrap();
    std::fs::write(shots().join(format!("{name}.png")), png).unwrap();
}

async fn text(b: &Client, id: &str) -> String {
    b.wait().at_most(Duration::from_secs(10)).for_element(Locator::Id(id)).await.unwrap().text().await.unwrap()
}

/// Polls element `id` until its text satisfies `ok`; returns the text and how long it took.
async fn until_text(b: &Client, id: &str, within: Duration, ok: impl Fn(&str) -> bool) -> (String, Duration) {
    let started = Instant::now();
    loop {
        let t = match b.find(Locator::Id(id)).await {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if ok(&t) {
            return (t, started.elapsed());
        }
        assert!(started.elapsed() < within, "#{id} still reads {t:?} after {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn sign_in(b: &Client, base: &str, username: &str) {
    b.goto(&format!("{base}/#/sign-in")).await.unwrap();
    let user = b.wait().at_most(Duration::from_secs(10)).for_element(Locator::Id("username")).await.unwrap();
    user.send_keys(username).await.unwrap();
    b.find(Locator::Id("password")).await.unwrap().send_keys(&format!("{username}-password")).await.unwrap();
    b.find(Locator::Id("sign-in")).await.unwrap().click().await.unwrap();
    let (who, _) = until_text(b, "signed-in-as", Duration::from_secs(10), |t| !t.is_empty()).await;
    assert_eq!(who, format!("Signed in as {username}"));
}

/// Types a maximum into the bid form and presses Enter (the form is keyboard-driven).
async fn bid(b: &Client, dollars: &str) {
    let amount = b.find(Locator::Id("amount")).await.unwrap();
    amount.clear().await.unwrap();
    amount.send_keys(&format!("{dollars}\u{E007}")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bidders_on_one_lot_in_real_browsers() {
    let c = TestCluster::start().await;
    let admin = c.admin().await;
    let (_, curator) = c.curator("carol").await;
    c.user("alice").await;
    let (_, bob_token) = c.user("bob").await;
    // Soft close of one hour: every bid pushes the end an hour out, which the countdown shows.
    let lot = c.ready_lot(&curator, None, 3600).await;
    c.live_sale(&admin, &[&lot]).await;

    let driver = Driver::start().await;
    let alice = driver.browser().await;
    let bob = driver.browser().await;
    let base = c.url.clone();

    // Both have accounts: they sign in and find the lot in the list of open lots.
    sign_in(&alice, &base, "alice").await;
    sign_in(&bob, &base, "bob").await;
    for b in [&alice, &bob] {
        b.goto(&format!("{base}/#/")).await.unwrap();
        let link = b.wait().at_most(Duration::from_secs(10)).for_element(Locator::Css("a.lot-link")).await.unwrap();
        assert_eq!(link.text().await.unwrap(), "Harbour at Dusk");
        link.click().await.unwrap();
        until_text(b, "connection", Duration::from_secs(10), |t| t == "live").await;
    }
    assert_eq!(text(&alice, "price").await, "$500.00");
    let (countdown, _) = until_text(&alice, "countdown", Duration::from_secs(5), |t| t.starts_with("00:0")).await;
    assert!(countdown.starts_with("00:09") || countdown.starts_with("00:10"), "ten minutes left: {countdown}");
    // The form proposes the next valid amount.
    let proposed = alice.find(Locator::Id("amount")).await.unwrap().prop("value").await.unwrap();
    assert_eq!(proposed.as_deref(), Some("500.00"));
    shot(&alice, "1-alice-lot").await;

    // Alice bids first: she leads at the start price; bob's page shows it within a second.
    bid(&alice, "800").await;
    // From the moment the Enter key is in (the page's request is on its way); WebDriver's own
    // round trips before it are not the page's latency.
    let sent = Instant::now();
    until_text(&bob, "bid-count", Duration::from_secs(5), |t| t == "1 bid").await;
    let elapsed = sent.elapsed();
    assert!(elapsed < Duration::from_secs(1), "the bid reached the other browser in {elapsed:?}");
    let (leader, _) = until_text(&bob, "leader", Duration::from_secs(1), |t| t.starts_with("leader u-")).await;
    assert!(leader.len() > "leader u-".len());
    until_text(&alice, "bid-message", Duration::from_secs(5), |t| t.starts_with("You are leading")).await;
    until_text(&alice, "leader", Duration::from_secs(5), |t| t == "you are leading").await;
    let (countdown, _) =
        until_text(&bob, "countdown", Duration::from_secs(2), |t| t.starts_with("00:59") || t.starts_with("01:00"))
            .await;
    assert!(!countdown.is_empty(), "the soft close moved the countdown to an hour");

    // Bob outbids: alice sees the new price within a second, and the outbid alert.
    bid(&bob, "1000").await;
    let sent = Instant::now();
    let (price, _) = until_text(&alice, "price", Duration::from_secs(5), |t| t == "$810.00").await;
    let elapsed = sent.elapsed();
    assert!(elapsed < Duration::from_secs(1), "the new price reached the other browser in {elapsed:?}");
    assert_eq!(price, "$810.00", "bob's bid beats alice's maximum by one step");
    let alert =
        alice.wait().at_most(Duration::from_secs(5)).for_element(Locator::Css("#alerts .toast.alert")).await.unwrap();
    assert!(alert.text().await.unwrap().starts_with("You have been outbid on this lot"));
    until_text(&bob, "bid-message", Duration::from_secs(5), |t| t.starts_with("You are leading")).await;
    shot(&alice, "2-alice-outbid").await;
    shot(&bob, "3-bob-leading").await;
    // Bob was not outbid: no alert on his page.
    assert!(bob.find(Locator::Css("#alerts .toast.alert")).await.is_err());

    // A refused bid shows the rule's message.
    bid(&alice, "815").await;
    let (refused, _) =
        until_text(&alice, "bid-message", Duration::from_secs(5), |t| !t.is_empty() && !t.starts_with("You")).await;
    assert!(
        refused.contains("820")
            || refused.to_lowercase().contains("increment")
            || refused.to_lowercase().contains("minimum"),
        "{refused}"
    );

    // Bob leaves the page; bids happen while he is away; his reload shows the right state.
    bob.goto("about:blank").await.unwrap();
    for (id, max) in [("away-1", 200_000), ("away-2", 300_000)] {
        let (status, body) =
            c.post(&format!("/v1/lots/{lot}/bids"), Some(&bob_token), json!({"bid_id": id, "max_amount": max})).await;
        assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    }
    bid(&alice, "2500").await;
    // Bob's maximum is higher: alice's page says so once her bid is answered.
    let answered = tokio::time::timeout(
        Duration::from_secs(10),
        until_text(&alice, "bid-message", Duration::from_secs(11), |t| t.starts_with("Another bidder")),
    )
    .await;
    if answered.is_err() {
        shot(&alice, "fail-alice-2500").await;
        panic!("alice's bid of 2500 got no answer on her page within 10 s (screenshot fail-alice-2500)");
    }
    let (_, lot_now) = c.get(&format!("/v1/lots/{lot}"), None).await;
    bob.goto(&format!("{base}/#/lots/{lot}")).await.unwrap();
    let dollars = lot_now["current_price"].as_i64().unwrap() / 100;
    // en-US formatting, thousands separated.
    let expected_price = if dollars >= 1000 {
        format!("${},{:03}.00", dollars / 1000, dollars % 1000)
    } else {
        format!("${dollars}.00")
    };
    until_text(&bob, "price", Duration::from_secs(5), |t| t == expected_price).await;
    let bid_count = lot_now["bid_count"].as_u64().unwrap();
    until_text(&bob, "bid-count", Duration::from_secs(5), |t| t == format!("{bid_count} bids")).await;
    let lines = bob.find_all(Locator::Css("#history li")).await.unwrap();
    assert_eq!(lines.len() as u64, bid_count, "the history shows every line");
    shot(&bob, "4-bob-reloaded").await;

    alice.close().await.unwrap();
    bob.close().await.unwrap();
    drop(driver);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_curator_adds_an_image_and_a_comment_another_browser_sees_them() {
    let c = TestCluster::start().await;
    let (_, curator) = c.curator("carol").await;
    c.user("dave").await;
    let lot = c.ready_lot(&curator, None, 0).await;

    // A real picture on disk for the file input.
    let picture = image::RgbImage::from_fn(640, 480, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 90]));
    let file = shots().join("upload.png");
    picture.save(&file).unwrap();

    let driver = Driver::start().await;
    let carol = driver.browser().await;
    let dave = driver.browser().await;
    let base = c.url.clone();
    sign_in(&carol, &base, "carol").await;
    sign_in(&dave, &base, "dave").await;
    for b in [&carol, &dave] {
        b.goto(&format!("{base}/#/lots/{lot}")).await.unwrap();
        until_text(b, "connection", Duration::from_secs(10), |t| t == "live").await;
    }
    // Only managers get the upload form; dave, a bidder, does not.
    assert!(dave.find(Locator::Id("image-file")).await.is_err());

    // Carol picks the file and adds it; dave's gallery shows its thumbnail, live.
    let input = carol.find(Locator::Id("image-file")).await.unwrap();
    input.send_keys(&file.to_string_lossy()).await.unwrap();
    carol.find(Locator::Id("upload-image")).await.unwrap().click().await.unwrap();
    until_text(&carol, "content-message", Duration::from_secs(10), |t| t == "Image added.").await;
    let thumb = dave
        .wait()
        .at_most(Duration::from_secs(5))
        .for_element(Locator::Css("#gallery img[data-image-id]"))
        .await
        .unwrap();
    let src = thumb.attr("src").await.unwrap().unwrap_or_default();
    assert!(src.ends_with("?size=thumb"), "{src}");
    // The browser really loaded it: its natural width is the thumbnail's, 320 px.
    let loaded = Instant::now();
    loop {
        let width = dave
            .execute("return document.querySelector('#gallery img[data-image-id]').naturalWidth", vec![])
            .await
            .unwrap();
        if width == json!(320) {
            break;
        }
        assert!(loaded.elapsed() < Duration::from_secs(5), "the thumbnail did not load: naturalWidth {width}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Dave comments; carol's page shows it live.
    let text_box = dave.find(Locator::Id("comment-text")).await.unwrap();
    text_box.send_keys("Is the frame original?").await.unwrap();
    dave.find(Locator::Id("post-comment")).await.unwrap().click().await.unwrap();
    let comment = carol
        .wait()
        .at_most(Duration::from_secs(5))
        .for_element(Locator::Css("#comments li[data-comment-id] p"))
        .await
        .unwrap();
    assert_eq!(comment.text().await.unwrap(), "Is the frame original?");
    shot(&dave, "5-dave-gallery").await;
    shot(&carol, "6-carol-comment").await;

    // A file that is not an image is refused with the server's message.
    let notes = shots().join("notes.png");
    std::fs::write(&notes, "not a picture").unwrap();
    let input = carol.find(Locator::Id("image-file")).await.unwrap();
    input.send_keys(&notes.to_string_lossy()).await.unwrap();
    carol.find(Locator::Id("upload-image")).await.unwrap().click().await.unwrap();
    until_text(&carol, "content-message", Duration::from_secs(10), |t| t.contains("not a PNG or JPEG")).await;

    carol.close().await.unwrap();
    dave.close().await.unwrap();
    drop(driver);
    c.shutdown().await;
}
