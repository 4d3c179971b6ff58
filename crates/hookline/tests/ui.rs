//! `/ui/`: the dashboard is served by the same process, as static files under a strict
//! Content-Security-Policy, renders API data as text only, and calls only routes the API
//! has (checked against the OpenAPI document, so a renamed route cannot silently break it).

mod common;

use common::{Engine, TestServer};

async fn the_dashboard_is_served_safely_and_uses_real_routes(engine: Engine) {
    let s = TestServer::start(&engine).await;
    let page = s.http.get(s.url("/ui/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let h = page.headers().clone();
    assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
    let csp = h["content-security-policy"].to_str().unwrap();
    for rule in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(rule), "{csp}");
    }
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["x-content-type-options"], "nosniff");
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"<script src="/ui/app.js""#), "{html}");
    assert!(
        !html.contains("<script>"),
        "no inline script (the policy forbids it)"
    );
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no third-party assets"
    );

    // The icon browsers ask for is an empty answer, not an error.
    let icon = s.http.get(s.url("/favicon.ico")).send().await.unwrap();
    assert_eq!(icon.status(), 204);

    // /ui goes to /ui/.
    let no_follow = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_follow.get(s.url("/ui")).send().await.unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(r.headers()["location"], "/ui/");

    let css = s.http.get(s.url("/ui/style.css")).send().await.unwrap();
    assert_eq!(css.status(), 200);
    assert!(
        css.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );

    let js = s.http.get(s.url("/ui/app.js")).send().await.unwrap();
    assert_eq!(js.status(), 200);
    assert!(
        js.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    let js = js.text().await.unwrap();
    assert!(
        !js.contains("innerHTML") && !js.contains("outerHTML"),
        "data is set as text only"
    );
    assert!(
        js.contains("sessionStorage") && !js.contains("localStorage"),
        "the key lives only as long as the tab"
    );

    // Every API path the script names starts a route of the OpenAPI document.
    let (_, doc) = s.get("/openapi.json").await;
    let routes: Vec<String> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect::<Vec<_>>();
    let mut named = 0;
    for literal in js.split('"').skip(1).step_by(2) {
        if !literal.starts_with("/v1") {
            continue;
        }
        named += 1;
        let path = literal.split('?').next().unwrap();
        assert!(
            routes.iter().any(|r| r.starts_with(path)),
            "the dashboard calls {path}, which is no route of {routes:?}"
        );
    }
    assert!(named >= 6, "the script names the API's routes ({named})");
    for suffix in ["/deliveries", "/test", "/recover", "/retry"] {
        assert!(js.contains(&format!("\"{suffix}")), "{suffix}");
        assert!(
            routes.iter().any(|r| r.ends_with(suffix)),
            "{suffix} is no route's end"
        );
    }
}

on_both_engines!(the_dashboard_is_served_safely_and_uses_real_routes);
