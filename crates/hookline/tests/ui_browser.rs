//! The dashboard in a real browser: Debian's chromium, driven through chromedriver, against
//! a real server. A button never acts on an object other than the one on screen (a view
//! whose load failed shows no action), recover reads its time as UTC whatever the browser's
//! zone, an event opens with its deliveries, and no view is wider than a 400 px screen.
//! Back, Forward and a reload keep to the views; a secret is shown on request and rotated
//! on a second click; header values stay off screen; events narrow by type and by a UTC
//! time to start from; a Free account is told why it has no endpoints.
//!
//! `.ci/run` installs chromium and chromedriver; without chromedriver on the `PATH` the test
//! says it was skipped and passes, as the PostgreSQL half of the suite does without its
//! database.

mod common;

use common::{Engine, Receiver, Reply, TestServer};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};

/// chromedriver in a process group of its own, which is killed whole when dropped: the
/// chromium it started goes too, also when a failed test never closed its session.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.0.wait();
    }
}

/// A headless chromium in New York's zone (so a time read as local would be off by hours),
/// through a chromedriver of its own; `None` when chromedriver is not installed.
async fn browser() -> Option<(Driver, Client)> {
    let found = Command::new("chromedriver")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        return None;
    }
    let port = common::process::free_port();
    let driver = Driver(
        Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .process_group(0)
            .env("TZ", "America/New_York")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                        "--disable-dev-shm-usage", "--window-size=1280,800"]}),
    );
    let url = format!("http://127.0.0.1:{port}");
    let client = common::eventually("chromedriver to answer", || {
        let caps = caps.clone();
        let url = url.clone();
        async move {
            // Plain HTTP to the local chromedriver: no TLS stack of its own in the tests.
            let session =
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(caps)
                    .connect(&url)
                    .await;
            // A driver that answers but cannot start the browser (none installed, another
            // version) says why; the wait then ends with it in the test's output.
            session.map_err(|e| eprintln!("chromedriver: {e}")).ok()
        }
    })
    .await;
    Some((driver, client))
}

async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, vec![]).await.unwrap()
}

/// Waits until `script` (a JavaScript expression) is true in the page.
async fn until(c: &Client, what: &str, script: &str) {
    let check = format!("return Boolean({script});");
    common::eventually(what, || async {
        (js(c, &check).await == Value::Bool(true)).then_some(())
    })
    .await;
}

/// The skip notice of a test without chromedriver.
fn skipped() {
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "ui_browser: skipped: no chromedriver (Debian's chromium-driver; .ci/run installs it)"
    );
}

/// Opens the dashboard at `path` (`/ui/` and a fragment) and signs in with `key`.
async fn sign_in(c: &Client, s: &TestServer, path: &str, key: &str) {
    c.goto(&s.url(path)).await.unwrap();
    until(
        c,
        "the key prompt",
        r##"document.querySelector("#status").textContent.includes("Enter an API key")"##,
    )
    .await;
    c.find(Locator::Css("#key"))
        .await
        .unwrap()
        .send_keys(key)
        .await
        .unwrap();
    click(c, "#login button[type=submit]").await;
}

/// The delivery view, loaded (its actions shown only once its object is in).
const DELIVERY_SHOWN: &str =
    r##"!document.querySelector("#delivery").hidden && !document.querySelector("#retry").hidden"##;
/// The endpoint view, loaded.
const ENDPOINT_SHOWN: &str = r##"!document.querySelector("#endpoint").hidden
    && !document.querySelector("#endpoint .actions").hidden"##;

/// The text of the first element `css` selects.
async fn text(c: &Client, css: &str) -> Value {
    js(
        c,
        &format!("return document.querySelector({css:?}).textContent"),
    )
    .await
}

/// Which view is on screen.
async fn on_screen(c: &Client) -> Value {
    js(
        c,
        r##"return [...document.querySelectorAll(".tab")].filter((t) => !t.hidden).map((t) => t.id).join()"##,
    )
    .await
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_acts_only_on_what_it_shows() {
    let Some((_driver, c)) = browser().await else {
        return skipped();
    };
    let rx = Receiver::start().await;
    rx.always("ok", Reply::Status(200));
    rx.always("down", Reply::Status(500));
    let s = TestServer::start(&Engine::Sqlite).await;
    let ok = s.endpoint(&rx.url("ok"), &["*"]).await;
    let down = s.endpoint(&rx.url("down"), &["click"]).await;
    let accepted = s.event("click", json!({})).await;
    let deliveries = accepted["deliveries"].as_array().unwrap();
    for d in deliveries {
        let id = d["id"].as_str().unwrap();
        let want = if d["endpoint_id"] == ok["id"] {
            "succeeded"
        } else {
            "failed"
        };
        s.wait_delivery(id, want).await;
    }

    sign_in(&c, &s, "/ui/", &s.key).await;
    until(
        &c,
        "the endpoints",
        r##"document.querySelectorAll("#endpoints tbody tr").length === 2"##,
    )
    .await;

    // An event opens with its delivery to each endpoint.
    click(&c, r##"#tabs button[data-tab="events"]"##).await;
    until(
        &c,
        "the events",
        r##"document.querySelectorAll("#events tbody tr a").length === 1"##,
    )
    .await;
    click(&c, "#events tbody tr a").await;
    until(
        &c,
        "the event's deliveries",
        r##"document.querySelectorAll("#event tbody tr").length === 2"##,
    )
    .await;
    let title = text(&c, "#event .title").await;
    assert_eq!(title, accepted["id"]);

    // A delivery, then one that cannot be loaded: nothing of the first stays on screen, and
    // no button is left to act on the second.
    let failing = deliveries
        .iter()
        .find(|d| d["endpoint_id"] == down["id"])
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    js(&c, &format!(r##"delivery("{failing}"); return null"##)).await;
    until(
        &c,
        "the delivery",
        r##"!document.querySelector("#retry").hidden"##,
    )
    .await;
    assert_eq!(
        js(
            &c,
            r##"return document.querySelectorAll("#delivery tbody tr").length"##
        )
        .await,
        json!(4),
        "the first attempt and three retries"
    );
    js(
        &c,
        r##"delivery("dlv_01ARZ3NDEKTSV4RRFFQ69G5FAV"); return null"##,
    )
    .await;
    until(
        &c,
        "the error",
        r##"document.querySelector("#status").className === "error""##,
    )
    .await;
    let left = js(
        &c,
        r##"return [document.querySelector("#retry").hidden,
                   document.querySelector("#delivery .title").textContent,
                   document.querySelector("#delivery .facts").children.length,
                   document.querySelectorAll("#delivery tbody tr").length]"##,
    )
    .await;
    assert_eq!(
        left,
        json!([true, "", 0, 0]),
        "nothing of the delivery before"
    );

    // Recover reads its field as UTC, though this browser's zone is New York's: the
    // delivery's own minute, written as the page shows it, finds it.
    let created = s.get(&format!("/v1/deliveries/{failing}")).await.1["created_at"]
        .as_str()
        .unwrap()
        .to_owned();
    let minute = &created[..16];
    js(
        &c,
        &format!(
            r##"endpoint("{}"); return null"##,
            down["id"].as_str().unwrap()
        ),
    )
    .await;
    until(
        &c,
        "the endpoint",
        r##"!document.querySelector("#endpoint .actions").hidden"##,
    )
    .await;
    js(
        &c,
        &format!(r##"document.querySelector("#recover input").value = "{minute}"; return null"##),
    )
    .await;
    click(&c, r##"#recover button[type=submit]"##).await;
    until(
        &c,
        "the recovery",
        r##"document.querySelector("#status").textContent.includes("queued again")"##,
    )
    .await;
    let said = text(&c, "#status").await;
    assert_eq!(said, "1 deliveries queued again.", "since {minute} UTC");

    // A narrow screen: the page never scrolls sideways, whatever the view, once the view
    // holds its rows.
    c.set_window_size(400, 800).await.unwrap();
    let within = "document.documentElement.scrollWidth <= document.documentElement.clientWidth";
    for (tab, rows) in [("endpoints", 2), ("events", 1), ("types", 9), ("keys", 1)] {
        click(&c, &format!(r##"#tabs button[data-tab="{tab}"]"##)).await;
        until(
            &c,
            &format!("the rows of {tab}"),
            &format!(r##"document.querySelectorAll("#{tab} tbody tr").length === {rows}"##),
        )
        .await;
        let fits = js(&c, &format!("return {within}")).await;
        assert_eq!(fits, json!(true), "{tab} is wider than the screen");
    }
    for (open, view, rows) in [
        (
            format!(r##"event("{}")"##, accepted["id"].as_str().unwrap()),
            "event",
            2,
        ),
        (
            format!(r##"endpoint("{}")"##, ok["id"].as_str().unwrap()),
            "endpoint",
            1,
        ),
        // (Its attempts went on after the recovery above.)
        (format!(r##"delivery("{failing}")"##), "delivery", 4),
    ] {
        js(&c, &format!("{open}; return null")).await;
        until(
            &c,
            &format!("the rows of {view}"),
            &format!(r##"document.querySelectorAll("#{view} tbody tr").length >= {rows}"##),
        )
        .await;
        let fits = js(&c, &format!("return {within}")).await;
        assert_eq!(fits, json!(true), "{view} is wider than the screen");
    }
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_keeps_its_place_and_shows_secrets_on_request() {
    let Some((_driver, c)) = browser().await else {
        return skipped();
    };
    let rx = Receiver::start().await;
    rx.always("ok", Reply::Status(200));
    let s = TestServer::start_with(&Engine::Sqlite, |c| {
        c.admin_token = hookline::api::admin::AdminToken::new(Some("admin-token-for-tests"));
    })
    .await;
    let (status, ep) = s
        .post(
            "/v1/endpoints",
            json!({"url": rx.url("ok"), "event_types": ["*"],
                   "headers": {"X-Tenant": "tenant-credential-value"}}),
        )
        .await;
    assert_eq!(status, 201, "{ep}");
    let ep_id = ep["id"].as_str().unwrap().to_owned();
    let accepted = s.event("click", json!({})).await;
    let ev_id = accepted["id"].as_str().unwrap().to_owned();
    let dlv = accepted["deliveries"][0]["id"].as_str().unwrap().to_owned();
    let delivered = s.wait_delivery(&dlv, "succeeded").await;

    sign_in(&c, &s, "/ui/", &s.key).await;
    until(
        &c,
        "the endpoints",
        r##"document.querySelectorAll("#endpoints tbody tr").length === 1"##,
    )
    .await;
    assert_eq!(js(&c, "return location.hash").await, "#endpoints");
    assert_eq!(
        js(
            &c,
            r##"return document.querySelector("#endpoints .plan-note").hidden"##
        )
        .await,
        json!(true),
        "a Pro account has webhooks"
    );

    // Endpoints → the endpoint → its delivery → the event; Back and Forward retrace them.
    click(&c, "#endpoints tbody tr a").await;
    until(
        &c,
        "the endpoint's deliveries",
        r##"document.querySelectorAll("#endpoint tbody tr").length === 1"##,
    )
    .await;
    let row = js(
        &c,
        r##"return [...document.querySelectorAll("#endpoint tbody td")].map((td) => td.textContent)"##,
    )
    .await;
    assert_eq!(row[0], json!(dlv));
    assert_eq!(
        row[1], delivered["created_at"],
        "the delivery's time: {row}"
    );
    let page = js(&c, "return document.body.textContent").await;
    let page = page.as_str().unwrap();
    assert!(page.contains("x-tenant (values not shown)"), "{page}");
    assert!(
        !page.contains("tenant-credential-value"),
        "a header value is on screen"
    );
    click(&c, "#endpoint tbody tr a").await;
    until(&c, "the delivery", DELIVERY_SHOWN).await;
    assert_eq!(
        js(&c, "return location.hash").await,
        format!("#delivery/{dlv}")
    );
    // The delivery's event, from its facts.
    click(&c, "#delivery .facts a").await;
    until(
        &c,
        "the event",
        r##"document.querySelectorAll("#event tbody tr").length === 1"##,
    )
    .await;
    assert_eq!(
        js(&c, "return location.hash").await,
        format!("#event/{ev_id}")
    );
    c.back().await.unwrap();
    until(&c, "the delivery again", DELIVERY_SHOWN).await;
    assert_eq!(on_screen(&c).await, "delivery");
    c.back().await.unwrap();
    until(&c, "the endpoint again", ENDPOINT_SHOWN).await;
    assert_eq!(text(&c, "#endpoint .title").await, ep["url"]);
    c.forward().await.unwrap();
    until(&c, "the delivery once more", DELIVERY_SHOWN).await;
    assert_eq!(text(&c, "#delivery .title").await, json!(dlv));
    // A reload opens the same view (the key is kept for the tab).
    c.refresh().await.unwrap();
    until(&c, "the delivery after a reload", DELIVERY_SHOWN).await;
    assert_eq!(on_screen(&c).await, "delivery");
    // A fragment that names nothing opens the endpoints.
    js(&c, r##"location.hash = "#nothing/x"; return null"##).await;
    until(
        &c,
        "the endpoints for an unknown address",
        r##"!document.querySelector("#endpoints").hidden
            && document.querySelectorAll("#endpoints tbody tr").length === 1"##,
    )
    .await;
    assert_eq!(js(&c, "return location.hash").await, "#endpoints");
    // That address was replaced, not followed by another entry: Back leaves it for the
    // view before (an entry pushed again would hold Back on the endpoints for good).
    c.back().await.unwrap();
    until(&c, "the view before the unknown address", DELIVERY_SHOWN).await;

    // The secret: shown on request, hidden again; rotated only by a second click.
    js(&c, &format!(r##"endpoint("{ep_id}"); return null"##)).await;
    until(&c, "the endpoint's actions", ENDPOINT_SHOWN).await;
    let secret = s.get(&format!("/v1/endpoints/{ep_id}/secret")).await.1["secret"].clone();
    click(&c, "#show-secret").await;
    until(
        &c,
        "the secret",
        r##"!document.querySelector("#endpoint .secret").hidden"##,
    )
    .await;
    let shown = text(&c, "#endpoint .secret").await;
    assert_eq!(
        shown,
        json!(format!("Signing secret: {}", secret.as_str().unwrap()))
    );
    click(&c, "#show-secret").await;
    assert_eq!(
        text(&c, "#endpoint .secret").await,
        json!(""),
        "hidden again"
    );
    click(&c, "#rotate").await;
    assert_eq!(text(&c, "#rotate").await, "Click again to rotate");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (_, unchanged) = s.get(&format!("/v1/endpoints/{ep_id}/secret")).await;
    assert_eq!(unchanged["secret"], secret, "one click rotates nothing");
    click(&c, "#rotate").await;
    until(
        &c,
        "the rotation",
        r##"document.querySelector("#status").textContent === "Secret rotated.""##,
    )
    .await;
    let (_, now) = s.get(&format!("/v1/endpoints/{ep_id}/secret")).await;
    assert_ne!(now["secret"], secret);
    let shown = text(&c, "#endpoint .secret").await;
    assert!(
        shown.as_str().unwrap().starts_with(&format!(
            "New signing secret: {} ",
            now["secret"].as_str().unwrap()
        )),
        "{shown}"
    );
    let (_, after) = s.get(&format!("/v1/endpoints/{ep_id}")).await;
    assert!(after["previous_secret_expires_at"].is_string(), "{after}");
    // Leaving the endpoint takes its secret off the page.
    click(&c, r##"#tabs button[data-tab="events"]"##).await;
    let page = js(&c, "return document.body.textContent").await;
    assert!(
        !page
            .as_str()
            .unwrap()
            .contains(now["secret"].as_str().unwrap()),
        "the secret stayed in the page"
    );
    js(&c, &format!(r##"endpoint("{ep_id}"); return null"##)).await;
    until(&c, "the endpoint without its secret", ENDPOINT_SHOWN).await;
    assert_eq!(
        js(
            &c,
            r##"return document.querySelector("#endpoint .secret").hidden"##
        )
        .await,
        json!(true)
    );

    // Events, narrowed by type and by a time to start from.
    let opened = s.event("open", json!({})).await;
    click(&c, r##"#tabs button[data-tab="events"]"##).await;
    until(
        &c,
        "both events, and the type filter's choices",
        r##"document.querySelectorAll("#events tbody tr").length === 2
            && document.querySelector("#ev-filter option[value='open']") !== null"##,
    )
    .await;
    js(
        &c,
        r##"document.querySelector("#ev-filter select").value = "open"; return null"##,
    )
    .await;
    click(&c, r##"#ev-filter button[type=submit]"##).await;
    until(
        &c,
        "the open event alone",
        r##"document.querySelectorAll("#events tbody tr").length === 1"##,
    )
    .await;
    let first = text(&c, "#events tbody td").await;
    assert_eq!(first, opened["id"]);
    // Since a minute from now (typed as UTC, in this New York browser): none yet.
    let later = utc_in(60)[..19].to_owned();
    js(
        &c,
        &format!(r##"document.querySelector("#ev-filter input").value = "{later}"; return null"##),
    )
    .await;
    click(&c, r##"#ev-filter button[type=submit]"##).await;
    until(
        &c,
        "no event since a minute from now",
        r##"document.querySelector("#status").textContent === "Nothing here yet."
            && document.querySelectorAll("#events tbody tr").length === 0"##,
    )
    .await;
    click(&c, "#ev-last-hour").await;
    until(
        &c,
        "the open event of the last hour",
        r##"document.querySelectorAll("#events tbody tr").length === 1"##,
    )
    .await;

    // A Free account is told why it has no endpoints.
    let (status, free) = s
        .call_as(
            "admin-token-for-tests",
            reqwest::Method::POST,
            "/admin/v1/accounts",
            Some(json!({"name": "free-co", "plan": "free"})),
        )
        .await;
    assert_eq!(status, 201, "{free}");
    click(&c, "#logout").await;
    sign_in(&c, &s, "/ui/", free["api_key"]["key"].as_str().unwrap()).await;
    until(
        &c,
        "the plan's note",
        r##"!document.querySelector("#endpoints .plan-note").hidden"##,
    )
    .await;
    let note = text(&c, "#endpoints .plan-note").await;
    assert!(
        note.as_str().unwrap().contains("(free) has no webhooks"),
        "{note}"
    );
    // The note says why the list is empty, in place of "Nothing here yet." (once the
    // empty page is in).
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let said = text(&c, "#status").await;
    assert_eq!(said, "", "beside the note");
    c.close().await.unwrap();
}

/// The UTC time `seconds` from now, as RFC 3339 (`YYYY-MM-DDTHH:MM:SS…Z`).
fn utc_in(seconds: i64) -> String {
    let now = hookline::model::Timestamp::now();
    hookline::model::Timestamp(now.0 + seconds * 1000).to_string()
}
