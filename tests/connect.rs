//! Connecting an integration to Heroku through OAuth, keeping its webhooks on exactly the
//! monitored apps, and disconnecting: the real component in the real host against the fake
//! Heroku on loopback.

use std::time::Duration;

use pulse_e2e::fake_heroku::{Access, FakeHeroku, Side};
use pulse_e2e::{FAULTY_PLUGIN, Options, TestHost, captured_logs, fixture_with};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The integration's view from the API.
async fn view(host: &TestHost, name: &str) -> Value {
    let (status, body) = host
        .api(Method::GET, &format!("/integrations/{name}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Per app, whether its webhook is in place (`None`) or the error the view shows.
fn app_states(view: &Value) -> Vec<(String, Option<String>)> {
    let mut states: Vec<(String, Option<String>)> = view["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|hook| {
            let app = hook["app"].as_str().unwrap().to_string();
            let error = hook["error"].as_str().map(str::to_string);
            if error.is_none() {
                assert!(hook["webhook_id"].is_string(), "{hook}");
            }
            (app, error)
        })
        .collect();
    states.sort();
    states
}

fn in_place(apps: &[&str]) -> Vec<(String, Option<String>)> {
    let mut states: Vec<_> = apps.iter().map(|app| (app.to_string(), None)).collect();
    states.sort();
    states
}

/// A release of `app`, as Heroku sends it.
fn release_of(app: &str, release_id: &str) -> Vec<u8> {
    fixture_with("release-update-deployed.json", |event| {
        event["data"]["app"]["name"] = json!(app);
        event["data"]["id"] = json!(release_id);
    })
}

/// Asserts `app` has exactly one webhook of ours, as we want it.
fn assert_ours(fake: &FakeHeroku, app: &str, url: &str) {
    let ours = fake.webhooks_to(app, url);
    assert_eq!(ours.len(), 1, "{app}: {ours:?}");
    let mut include = ours[0].include.clone();
    include.sort();
    assert_eq!(include, ["api:build", "api:dyno", "api:release"]);
    assert_eq!(ours[0].level, "sync");
}

#[tokio::test]
async fn connect_apply_change_deliver_and_disconnect() {
    let fake = FakeHeroku::start().await;
    for app in ["billing-api", "payments", "search", "checkout"] {
        fake.add_app(app);
    }
    // Lists are paginated past one item, and someone else's webhooks are on two apps.
    fake.set_page_size(1);
    let foreign = fake.add_foreign_webhook("billing-api", "https://example.com/theirs");
    fake.add_foreign_webhook("payments", "https://example.com/theirs");
    let host = TestHost::start_with_fake(&fake, Options::default()).await;

    let (status, created) = host
        .put_integration("shop", &["billing-api", "payments", "search"])
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let url = created["webhook_url"].as_str().unwrap().to_string();
    let secret = created["webhook_secret"].as_str().unwrap().to_string();
    assert_eq!(created["connection"], json!({"state": "never"}));
    assert!(
        fake.requests().is_empty(),
        "nothing reaches Heroku before connecting"
    );

    // The OAuth dance ends on a page saying the integration is connected.
    let (status, page) = host.connect("shop").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(
        page.contains("Integration shop is connected to Heroku"),
        "{page}"
    );
    assert!(page.contains("billing-api: webhook in place"), "{page}");

    for app in ["billing-api", "payments", "search"] {
        assert_ours(&fake, app, &url);
        assert_eq!(
            fake.webhooks_to(app, &url)[0].secret,
            secret,
            "signed with our secret"
        );
    }
    assert_eq!(fake.webhooks("billing-api").len(), 2, "theirs is untouched");
    assert!(fake.webhooks_to("checkout", &url).is_empty());
    let shown = view(&host, "shop").await;
    assert_eq!(shown["connection"], json!({"state": "connected"}));
    assert_eq!(
        app_states(&shown),
        in_place(&["billing-api", "payments", "search"])
    );

    // Every Platform API call asked for v3 and carried the host's token, never a secret of
    // the client; and lists were followed page by page.
    let requests = fake.requests();
    let api: Vec<_> = requests.iter().filter(|r| r.side == Side::Api).collect();
    assert!(!api.is_empty());
    for request in &api {
        assert!(request.header("Accept").unwrap().contains("version=3"));
        let bearer = request.header("Authorization").unwrap();
        assert!(bearer.starts_with("Bearer HRKU-"), "{bearer}");
    }

    // Applying the same list again changes nothing on Heroku. Two webhooks on a page of one
    // now: the lists are followed through Next-Range.
    fake.clear_requests();
    let (status, same) = host
        .put_integration("shop", &["billing-api", "payments", "search"])
        .await;
    assert_eq!(status, StatusCode::OK, "{same}");
    assert_eq!(
        app_states(&same),
        in_place(&["billing-api", "payments", "search"])
    );
    let requests = fake.requests();
    let changes: Vec<_> = requests.iter().filter(|r| r.is_webhook_change()).collect();
    assert!(changes.is_empty(), "{changes:?}");
    let paged: Vec<_> = requests.iter().filter_map(|r| r.header("Range")).collect();
    assert_eq!(
        paged.len(),
        2,
        "billing-api and payments each had a second page"
    );

    // Drop one app and add another: ours leaves search and arrives on checkout.
    let (status, changed) = host
        .put_integration("shop", &["billing-api", "payments", "checkout"])
        .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(
        app_states(&changed),
        in_place(&["billing-api", "payments", "checkout"])
    );
    assert!(fake.webhooks_to("search", &url).is_empty());
    assert_ours(&fake, "checkout", &url);

    // A webhook deleted on Heroku's side is repaired on the next apply.
    let lost = fake.webhooks_to("payments", &url)[0].id.clone();
    fake.remove_webhook("payments", &lost);
    let (status, _) = host
        .put_integration("shop", &["billing-api", "payments", "checkout"])
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_ours(&fake, "payments", &url);

    // Heroku delivers a release through the webhook we made: it becomes a pulse.
    let answers = fake
        .deliver(
            "checkout",
            "api:release",
            &release_of("checkout", "d1e2f3a4-0000-4000-8000-0000000000c1"),
        )
        .await;
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].0, 200, "{:?}", answers[0].1);
    assert_eq!(answers[0].1["status"], "stored");
    assert_eq!(
        host.summaries("").await,
        ["[Heroku][Release] Deploy 69eec518"]
    );

    // Disconnect: our webhooks go, theirs stay, the authorization is revoked.
    let (status, report) = host
        .api(Method::DELETE, "/integrations/shop/heroku", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["revoked"], true, "{report}");
    assert_eq!(report["failed"], json!([]));
    for app in ["billing-api", "payments", "search", "checkout"] {
        assert!(fake.webhooks_to(app, &url).is_empty(), "{app}");
    }
    assert_eq!(fake.webhooks("billing-api")[0].id, foreign);
    assert_eq!(fake.live_authorizations(), 0);
    let shown = view(&host, "shop").await;
    assert_eq!(shown["connection"]["state"], "disconnected", "{shown}");
    assert!(
        shown["connection"]["reason"]
            .as_str()
            .unwrap()
            .contains("connect again")
    );

    // The pulse stays; a delivery that still arrives is refused and stores nothing.
    let late = release_of("checkout", "d1e2f3a4-0000-4000-8000-0000000000c2");
    let (status, refused) = host.deliver("shop", &secret, &late).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{refused}");
    assert_eq!(refused["error"]["code"], "disconnected");
    assert_eq!(host.summaries("").await.len(), 1);

    // Changing the apps while disconnected saves them and says to reconnect.
    let (status, saved) = host.put_integration("shop", &["billing-api"]).await;
    assert_eq!(status, StatusCode::OK, "{saved}");
    assert!(fake.webhooks_to("billing-api", &url).is_empty());

    // No token, refresh token, code, client secret or webhook secret in any log line.
    let logs = captured_logs();
    assert!(
        logs.contains("connected to Heroku"),
        "the logs were captured"
    );
    let mut secrets = fake.secrets();
    secrets.push(secret);
    secrets.push(host.token.clone());
    for secret in secrets {
        assert!(!logs.contains(&secret), "a secret is in the logs");
    }
}

#[tokio::test]
async fn an_app_without_access_is_reported_while_the_others_apply() {
    let fake = FakeHeroku::start().await;
    fake.add_app("billing-api");
    fake.add_app("payments");
    fake.add_app_with("locked", Access::Forbidden);
    let host = TestHost::start_with_fake(&fake, Options::default()).await;
    host.integration("shop", &["billing-api", "locked", "payments", "vanished"])
        .await;
    let (status, page) = host.connect("shop").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains(
            "locked: Heroku answered 403 forbidden: You do not have access to the app locked."
        ),
        "{page}"
    );

    let shown = view(&host, "shop").await;
    let states = app_states(&shown);
    assert_eq!(states[0], ("billing-api".to_string(), None));
    assert_eq!(states[2], ("payments".to_string(), None));
    let locked = states[1].1.as_deref().unwrap();
    assert!(
        locked.starts_with(
            "Heroku answered 403 forbidden: You do not have access to the app locked. (request "
        ),
        "{locked}"
    );
    let vanished = states[3].1.as_deref().unwrap();
    assert!(
        vanished.starts_with("Heroku answered 404 not_found: Couldn't find that app."),
        "{vanished}"
    );
    assert_eq!(fake.webhooks("billing-api").len(), 1);
    assert_eq!(fake.webhooks("payments").len(), 1);

    // A bad name is refused before any call, with the pattern in the message.
    fake.clear_requests();
    let (status, refused) = host.put_integration("shop", &["Billing_API"]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("^[a-z][a-z0-9-]{1,28}[a-z0-9]$")
    );
    assert!(fake.requests().is_empty());

    // An empty list creates nothing and removes ours.
    let (status, emptied) = host.put_integration("shop", &[]).await;
    assert_eq!(status, StatusCode::OK, "{emptied}");
    assert_eq!(emptied["webhooks"], json!([]));
    assert!(fake.webhooks("billing-api").is_empty());
    assert!(fake.webhooks("payments").is_empty());
}

#[tokio::test]
async fn tokens_are_refreshed_before_expiry_and_after_a_401() {
    let fake = FakeHeroku::start().await;
    fake.add_app("billing-api");
    fake.add_app("payments");
    let host = TestHost::start_with_fake(&fake, Options::default()).await;
    host.integration("shop", &["billing-api"]).await;
    let (status, _) = host.connect("shop").await;
    assert_eq!(status, StatusCode::OK);
    let grants = |fake: &FakeHeroku| {
        fake.requests()
            .iter()
            .filter(|r| {
                r.side == Side::Id
                    && String::from_utf8_lossy(&r.body).contains("grant_type=refresh_token")
            })
            .count()
    };
    assert_eq!(grants(&fake), 0);

    // The token stops working early: the 401 leads to a refresh and a retry, unnoticed.
    fake.expire_tokens();
    let (status, answer) = host
        .put_integration("shop", &["billing-api", "payments"])
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        app_states(&answer),
        in_place(&["billing-api", "payments"]),
        "{answer}"
    );
    assert_eq!(grants(&fake), 1);
    assert!(fake.requests().iter().any(|r| r.status == 401));

    // A token that expires within minutes is refreshed before it is used.
    fake.set_token_lifetime(Duration::from_secs(60));
    fake.expire_tokens();
    host.put_integration("shop", &["billing-api"]).await;
    assert_eq!(grants(&fake), 2);
    fake.clear_requests();
    let (status, answer) = host.put_integration("shop", &["payments"]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app_states(&answer), in_place(&["payments"]));
    let requests = fake.requests();
    assert_eq!(requests[0].side, Side::Id, "the refresh comes first");
    assert!(
        requests.iter().all(|r| r.status != 401),
        "no call was made with an expiring token"
    );
    assert_eq!(
        view(&host, "shop").await["connection"],
        json!({"state": "connected"})
    );

    // 429s are waited out within the back-off.
    fake.rate_limit_next(2);
    fake.set_token_lifetime(Duration::from_secs(28_799));
    let (status, answer) = host.put_integration("shop", &["billing-api"]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app_states(&answer), in_place(&["billing-api"]), "{answer}");
    assert_eq!(
        fake.requests().iter().filter(|r| r.status == 429).count(),
        2
    );
}

#[tokio::test]
async fn a_revoked_authorization_disconnects_until_reconnected() {
    let fake = FakeHeroku::start().await;
    fake.add_app("billing-api");
    fake.add_app("payments");
    let host = TestHost::start_with_fake(&fake, Options::default()).await;
    let secret = host.integration("shop", &["billing-api", "payments"]).await;
    let url = view(&host, "shop").await["webhook_url"]
        .as_str()
        .unwrap()
        .to_string();
    host.connect("shop").await;
    assert_ours(&fake, "payments", &url);

    // The user revokes the authorization on Heroku and someone deletes a webhook there.
    fake.revoke_all();
    let lost = fake.webhooks_to("payments", &url)[0].id.clone();
    fake.remove_webhook("payments", &lost);
    let (status, answer) = host
        .put_integration("shop", &["billing-api", "payments"])
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(
        answer["apply_error"]
            .as_str()
            .unwrap()
            .contains("reconnect"),
        "{answer}"
    );
    let shown = view(&host, "shop").await;
    assert_eq!(shown["connection"]["state"], "disconnected", "{shown}");
    let reason = shown["connection"]["reason"].as_str().unwrap();
    assert!(reason.contains("reconnect the integration"), "{reason}");

    // Calls that need the token say so; deliveries are refused.
    let (status, refused) = host
        .api(Method::DELETE, "/integrations/shop/heroku", None)
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "disconnecting still erases what is left: {refused}"
    );
    let (status, _) = host
        .deliver(
            "shop",
            &secret,
            &release_of("billing-api", "d1e2f3a4-0000-4000-8000-0000000000d1"),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Reconnecting re-applies the list: the deleted webhook is back, and not doubled.
    let (status, page) = host.connect("shop").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_ours(&fake, "billing-api", &url);
    assert_ours(&fake, "payments", &url);
    assert_eq!(
        view(&host, "shop").await["connection"],
        json!({"state": "connected"})
    );
    let answers = fake
        .deliver(
            "payments",
            "api:release",
            &release_of("payments", "d1e2f3a4-0000-4000-8000-0000000000d2"),
        )
        .await;
    assert_eq!(answers[0].1["status"], "stored", "{answers:?}");
}

#[tokio::test]
async fn connect_links_are_single_use_and_the_callback_checks_state() {
    let fake = FakeHeroku::start().await;
    let host = TestHost::start_with_fake(&fake, Options::default()).await;
    host.integration("shop", &[]).await;

    let (status, link) = host
        .api(Method::POST, "/integrations/shop/heroku/connect-link", None)
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let link = link["url"].as_str().unwrap().to_string();
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let first = no_redirects.get(&link).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::SEE_OTHER);
    let location = first.headers()["location"].to_str().unwrap();
    assert!(
        location.starts_with(&format!("{}/oauth/authorize?", fake.id_url())),
        "{location}"
    );
    assert!(location.contains("response_type=code") && location.contains("state="));
    let again = no_redirects.get(&link).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::BAD_REQUEST, "a link works once");

    // Without the link or the admin token, nothing; with the token, the redirect.
    let bare = format!("{}/integrations/shop/heroku/connect", host.base);
    assert_eq!(
        no_redirects.get(&bare).send().await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );
    let admin = no_redirects
        .get(&bare)
        .bearer_auth(&host.token)
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), StatusCode::SEE_OTHER);

    // A forged or replayed state is refused and connects nothing.
    let forged = format!(
        "{}/oauth/heroku/callback?code=anything&state=forged",
        host.base
    );
    let response = no_redirects.get(&forged).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(response.text().await.unwrap().contains("start again"));
    assert_eq!(
        view(&host, "shop").await["connection"],
        json!({"state": "never"})
    );

    // Unknown integrations and disconnecting what was never connected are clear errors.
    let (status, _) = host
        .api(Method::POST, "/integrations/nope/heroku/connect-link", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = host
        .api(Method::DELETE, "/integrations/shop/heroku", None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "not_connected");
}

#[tokio::test]
async fn without_an_oauth_client_connecting_says_what_to_set() {
    let host = TestHost::start().await;
    host.integration("shop", &[]).await;
    let (status, body) = host
        .api(Method::POST, "/integrations/shop/heroku/connect-link", None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("PULSE_HEROKU_CLIENT_ID"), "{message}");
    assert!(
        message.contains(&format!("{}/oauth/heroku/callback", host.base)),
        "{message}"
    );
}

#[tokio::test]
async fn plugin_requests_off_the_allow_list_reach_nothing() {
    let fake = FakeHeroku::start().await;
    let host = TestHost::start_with_fake(
        &fake,
        Options {
            plugin: Some(FAULTY_PLUGIN.into()),
            ..Options::default()
        },
    )
    .await;
    host.integration("probe", &[]).await;
    let (status, page) = host.connect("probe").await;
    assert_eq!(status, StatusCode::OK, "{page}");

    // During apply the plugin may reach the API origin, with the host's token instead of
    // its own; the same server under another name is a different origin, and is refused.
    let states = app_states(&view(&host, "probe").await);
    let allowed = states.iter().find(|(app, _)| app == "allowed").unwrap();
    // The fake answered (406: the probe asks for no API version), so the request got there.
    assert_eq!(allowed.1.as_deref(), Some("fetched 406"));
    let off = states.iter().find(|(app, _)| app == "off-list").unwrap();
    let off = off.1.as_deref().unwrap();
    assert!(
        off.starts_with("fetch failed") && off.to_lowercase().contains("denied"),
        "{off}"
    );
    let probes: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.uri.starts_with("/probe"))
        .collect();
    assert_eq!(probes.len(), 1, "{probes:?}");
    assert_eq!(probes[0].uri, "/probe");
    let bearer = probes[0].header("Authorization").unwrap();
    assert!(bearer.starts_with("Bearer HRKU-"), "{bearer}");

    // A delivery may reach no origin at all.
    fake.clear_requests();
    let target = format!("{}/probe-from-delivery", fake.api_url());
    let (status, answer) = host
        .post_webhook(
            "probe",
            b"x".to_vec(),
            &[("x-fault", "fetch"), ("x-url", &target)],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let reason = answer["reason"].as_str().unwrap();
    assert!(reason.starts_with("fetch failed"), "{reason}");
    assert!(fake.requests().is_empty());
    assert!(captured_logs().contains("refused a plugin request to an origin off the allow-list"));
}
