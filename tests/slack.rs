//! The host's Slack client against the fake Slack on loopback: sharing files channel by channel,
//! what each refusal tells the admin, retrying after a 429, empty and large files, and where the
//! bot token may travel.

use std::io::Write as _;
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use pulse_e2e::fake_slack::{FakeSlack, Message, Recorded, Shared};
use pulse_host::slack::{ChannelShare, Slack, SlackConfig, SlackError};
use sha2::{Digest, Sha256};

/// Everything the client logged in this test binary.
static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Sends the client's `tracing` output to [`LOG`], once per binary.
fn capture_log() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        struct ToLog;
        impl std::io::Write for ToLog {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                LOG.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        tracing_subscriber::fmt()
            .with_max_level(tracing_subscriber::filter::LevelFilter::DEBUG)
            .with_ansi(false)
            .with_writer(|| ToLog)
            .try_init()
            .ok();
    });
}

fn log_lines_with(needle: &str) -> Vec<String> {
    String::from_utf8_lossy(&LOG.lock().unwrap())
        .lines()
        .filter(|line| line.contains(needle))
        .map(str::to_string)
        .collect()
}

/// A client holding the fake's bot token.
fn client_of(fake: &FakeSlack) -> Slack {
    capture_log();
    Slack::new(SlackConfig {
        token: Some(fake.token()),
        api_url: fake.api_url(),
    })
}

fn channels(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|id| id.to_string()).collect()
}

fn shared_in(channel: &str) -> ChannelShare {
    ChannelShare {
        channel: channel.to_string(),
        error: None,
    }
}

fn failed_in(channel: &str, error: &str) -> ChannelShare {
    ChannelShare {
        channel: channel.to_string(),
        error: Some(error.to_string()),
    }
}

fn file_with(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(bytes).unwrap();
    file.flush().unwrap();
    file
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Each request as `(method or "upload", status)`.
fn calls(requests: &[Recorded]) -> Vec<(String, u16)> {
    requests
        .iter()
        .map(|request| {
            let name = request.api_method().unwrap_or("upload").to_string();
            (name, request.status)
        })
        .collect()
}

fn call(name: &str, status: u16) -> (String, u16) {
    (name.to_string(), status)
}

const OUTPUT: &[u8] = b"web.1: booting\nweb.1: Error R10 (Boot timeout)\n";

#[tokio::test]
async fn file_reaches_member_channels_and_says_how_to_invite_the_app_to_the_third() {
    let fake = FakeSlack::start().await;
    fake.add_channel("C0MEMBER1", true);
    fake.add_channel("C0MEMBER2", true);
    fake.add_channel("C0OUTSIDE", false);
    let file = file_with(OUTPUT);

    let outcome = client_of(&fake)
        .share_file(
            &channels(&["C0MEMBER1", "C0OUTSIDE", "C0MEMBER2"]),
            file.path(),
            "run-7.txt",
            "Output of run 7",
            "web.1 timed out on boot",
        )
        .await;

    assert_eq!(
        outcome,
        [
            shared_in("C0MEMBER1"),
            failed_in(
                "C0OUTSIDE",
                "the Slack app is not in channel C0OUTSIDE: invite it with /invite @<app name> \
                 in that channel"
            ),
            shared_in("C0MEMBER2"),
        ]
    );
    let shares = fake.shares();
    let expected = |channel: &str, file_id: &str| Shared {
        channel: channel.to_string(),
        file_id: file_id.to_string(),
        filename: "run-7.txt".into(),
        title: "Output of run 7".into(),
        initial_comment: Some("web.1 timed out on boot".into()),
        size: OUTPUT.len() as u64,
        sha256: sha256_hex(OUTPUT),
        bytes: Some(OUTPUT.to_vec()),
    };
    assert_eq!(shares.len(), 2, "{shares:?}");
    assert_eq!(shares[0], expected("C0MEMBER1", &shares[0].file_id));
    assert_eq!(shares[1], expected("C0MEMBER2", &shares[1].file_id));
    assert_ne!(
        shares[0].file_id, shares[1].file_id,
        "one upload per channel"
    );
}

#[tokio::test]
async fn unknown_channel_and_a_channel_name_are_reported_while_the_known_one_gets_the_file() {
    let fake = FakeSlack::start().await;
    fake.add_channel("C0KNOWN", true);
    let file = file_with(OUTPUT);

    let outcome = client_of(&fake)
        .share_file(
            &channels(&["C0UNKNOWN", "#incidents", "C0KNOWN"]),
            file.path(),
            "run.txt",
            "Run output",
            "",
        )
        .await;

    assert_eq!(
        outcome,
        [
            failed_in(
                "C0UNKNOWN",
                "Slack has no channel C0UNKNOWN the app can see: check the channel id, and \
                 invite the app if the channel is private"
            ),
            failed_in(
                "#incidents",
                "\"#incidents\" is not a Slack channel id (like C0123ABC): use the id shown at \
                 the bottom of the channel's details, not its name"
            ),
            shared_in("C0KNOWN"),
        ]
    );
    let shares = fake.shares();
    assert_eq!(shares.len(), 1, "{shares:?}");
    assert_eq!(shares[0].channel, "C0KNOWN");
    assert_eq!(shares[0].initial_comment, None);
    // The channel name never reached Slack: each call below is for one of the two ids.
    assert_eq!(
        calls(&fake.requests()),
        [
            call("files.getUploadURLExternal", 200),
            call("upload", 200),
            call("files.completeUploadExternal", 200),
            call("files.getUploadURLExternal", 200),
            call("upload", 200),
            call("files.completeUploadExternal", 200),
        ]
    );
    let bodies: Vec<String> = fake
        .requests()
        .iter()
        .map(|request| String::from_utf8_lossy(&request.body).into_owned())
        .collect();
    assert!(
        bodies.iter().all(|body| !body.contains("incidents")),
        "{bodies:?}"
    );
}

#[tokio::test]
async fn archived_channel_says_to_unarchive_it() {
    let fake = FakeSlack::start().await;
    fake.add_channel("C0ARCHIVED", true);
    fake.archive_channel("C0ARCHIVED");
    let file = file_with(OUTPUT);

    let outcome = client_of(&fake)
        .share_file(
            &channels(&["C0ARCHIVED"]),
            file.path(),
            "run.txt",
            "Run",
            "",
        )
        .await;

    assert_eq!(
        outcome,
        [failed_in(
            "C0ARCHIVED",
            "channel C0ARCHIVED is archived: unarchive it or choose another channel"
        )]
    );
    assert_eq!(fake.shares(), []);
}

#[tokio::test]
async fn rate_limited_call_waits_for_retry_after_then_shares() {
    let fake = FakeSlack::start().await;
    fake.add_channel("C0RETRY", true);
    fake.rate_limit_next(1);
    let file = file_with(OUTPUT);

    let started = Instant::now();
    let outcome = client_of(&fake)
        .share_file(
            &channels(&["C0RETRY"]),
            file.path(),
            "run.txt",
            "Run",
            "again",
        )
        .await;
    let waited = started.elapsed();

    assert_eq!(outcome, [shared_in("C0RETRY")]);
    assert!(
        waited >= Duration::from_millis(950),
        "waited only {waited:?}"
    );
    assert_eq!(
        calls(&fake.requests()),
        [
            call("files.getUploadURLExternal", 429),
            call("files.getUploadURLExternal", 200),
            call("upload", 200),
            call("files.completeUploadExternal", 200),
        ]
    );
    assert_eq!(fake.shares().len(), 1);
    assert_eq!(fake.shares()[0].bytes.as_deref(), Some(OUTPUT));
}

#[tokio::test]
async fn lasting_rate_limit_gives_up_on_the_channel_after_three_retries_and_goes_on() {
    let fake = FakeSlack::start().await;
    fake.add_channel("C0LIMITED", true);
    fake.add_channel("C0NEXT", true);
    fake.rate_limit_next(4);
    let file = file_with(OUTPUT);

    let outcome = client_of(&fake)
        .share_file(
            &channels(&["C0LIMITED", "C0NEXT"]),
            file.path(),
            "run.txt",
            "Run",
            "",
        )
        .await;

    assert_eq!(
        outcome,
        [
            failed_in(
                "C0LIMITED",
                "Slack kept rate-limiting files.getUploadURLExternal after 3 retries: try again \
                 in a minute"
            ),
            shared_in("C0NEXT"),
        ]
    );
    let limited = call("files.getUploadURLExternal", 429);
    assert_eq!(
        calls(&fake.requests())[..4],
        [limited.clone(), limited.clone(), limited.clone(), limited]
    );
    assert_eq!(fake.shares().len(), 1);
    assert_eq!(fake.shares()[0].channel, "C0NEXT");
}

#[tokio::test]
async fn empty_file_is_posted_as_its_comment_or_named_when_there_is_none() {
    let fake = FakeSlack::start().await;
    fake.add_channel("C0EMPTY", true);
    let file = file_with(b"");
    let slack = client_of(&fake);

    let with_comment = slack
        .share_file(
            &channels(&["C0EMPTY"]),
            file.path(),
            "run-9.txt",
            "Run 9",
            "No output.",
        )
        .await;
    let without = slack
        .share_file(
            &channels(&["C0EMPTY"]),
            file.path(),
            "run-9.txt",
            "Run 9",
            "",
        )
        .await;

    assert_eq!(with_comment, [shared_in("C0EMPTY")]);
    assert_eq!(without, [shared_in("C0EMPTY")]);
    assert_eq!(
        fake.messages(),
        [
            Message {
                channel: "C0EMPTY".into(),
                text: "No output.".into()
            },
            Message {
                channel: "C0EMPTY".into(),
                text: "run-9.txt (empty file)".into()
            },
        ]
    );
    assert_eq!(fake.shares(), []);
    assert_eq!(
        calls(&fake.requests()),
        [call("chat.postMessage", 200), call("chat.postMessage", 200)]
    );
}

#[tokio::test]
async fn twenty_mib_file_is_shared_whole_from_a_spawned_task() {
    const SIZE: usize = 20 * 1024 * 1024;
    let fake = FakeSlack::start().await;
    fake.add_channel("C0BIG", true);
    // Bytes that differ along the file, so a dropped or repeated chunk changes the hash.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let bytes: Vec<u8> = (0..SIZE)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let file = file_with(&bytes);
    let path = file.path().to_path_buf();
    let slack = client_of(&fake);

    // Spawning proves the share's future can move between the runtime's threads.
    let outcome = tokio::spawn(async move {
        slack
            .share_file(
                &channels(&["C0BIG"]),
                &path,
                "big.log",
                "Big log",
                "all of it",
            )
            .await
    })
    .await
    .unwrap();

    assert_eq!(outcome, [shared_in("C0BIG")]);
    let shares = fake.shares();
    assert_eq!(shares.len(), 1);
    assert_eq!(shares[0].size, SIZE as u64);
    assert_eq!(shares[0].sha256, sha256_hex(&bytes));
    assert_eq!(shares[0].bytes, None, "the fake keeps only small files");
    let upload = fake
        .requests()
        .into_iter()
        .find(Recorded::is_upload)
        .unwrap();
    assert_eq!(upload.header("content-length"), Some("20971520"));
    assert_eq!(upload.header("transfer-encoding"), None);
}

#[tokio::test]
async fn without_a_token_every_channel_is_not_configured_and_nothing_is_sent() {
    let fake = FakeSlack::start().await;
    fake.add_channel("C0ANY", true);
    let file = file_with(OUTPUT);
    let unset = Slack::new(SlackConfig {
        token: None,
        api_url: fake.api_url(),
    });
    let blank = Slack::new(SlackConfig {
        token: Some("  ".into()),
        api_url: fake.api_url(),
    });

    let outcome = unset
        .share_file(
            &channels(&["C0ANY", "#general"]),
            file.path(),
            "run.txt",
            "Run",
            "x",
        )
        .await;
    let posted = blank.post_message("C0ANY", "hello").await;

    assert!(!unset.is_configured());
    assert!(!blank.is_configured());
    let not_configured = "Slack is not configured: set PULSE_SLACK_TOKEN";
    assert_eq!(
        outcome,
        [
            failed_in("C0ANY", not_configured),
            failed_in("#general", not_configured)
        ]
    );
    assert_eq!(posted, Err(SlackError::NotConfigured));
    assert_eq!(calls(&fake.requests()), []);
}

#[tokio::test]
async fn refused_token_says_to_check_pulse_slack_token() {
    let fake = FakeSlack::start().await;
    fake.add_channel("C0AUTH", true);
    let file = file_with(OUTPUT);
    let slack = Slack::new(SlackConfig {
        token: Some("xoxb-not-the-one".into()),
        api_url: fake.api_url(),
    });

    let outcome = slack
        .share_file(&channels(&["C0AUTH"]), file.path(), "run.txt", "Run", "")
        .await;
    let posted = slack.post_message("C0AUTH", "hello").await;

    assert!(slack.is_configured());
    assert_eq!(
        outcome,
        [failed_in(
            "C0AUTH",
            "Slack refused the token (invalid_auth): check PULSE_SLACK_TOKEN (a bot token, \
             xoxb-...) and that the app is still installed"
        )]
    );
    assert_eq!(posted, Err(SlackError::Unauthorized("invalid_auth".into())));
    assert_eq!(fake.messages(), []);
}

#[tokio::test]
async fn missing_scope_names_the_scope_to_add() {
    let fake = FakeSlack::start().await;
    fake.add_channel("C0SCOPE", true);
    let file = file_with(OUTPUT);
    let slack = client_of(&fake);

    fake.set_scopes(&["chat:write"]);
    let outcome = slack
        .share_file(&channels(&["C0SCOPE"]), file.path(), "run.txt", "Run", "")
        .await;
    fake.set_scopes(&["files:write"]);
    let posted = slack.post_message("C0SCOPE", "hello").await;

    assert_eq!(
        outcome,
        [failed_in(
            "C0SCOPE",
            "the Slack app lacks the files:write scope: add it under OAuth & Permissions and \
             reinstall the app"
        )]
    );
    assert_eq!(posted, Err(SlackError::MissingScope("chat:write".into())));
}

#[tokio::test]
async fn message_reaches_a_member_channel_and_not_one_the_app_is_outside() {
    let fake = FakeSlack::start().await;
    fake.add_channel("C0POST", true);
    fake.add_channel("C0NOPOST", false);
    let slack = client_of(&fake);

    let posted = slack.post_message("C0POST", "Deploy v42 rolled back").await;
    let refused = slack
        .post_message("C0NOPOST", "Deploy v42 rolled back")
        .await;
    let malformed = slack
        .post_message("general", "Deploy v42 rolled back")
        .await;

    assert_eq!(posted, Ok(()));
    assert_eq!(refused, Err(SlackError::NotInChannel("C0NOPOST".into())));
    assert_eq!(malformed, Err(SlackError::InvalidChannel("general".into())));
    assert_eq!(
        fake.messages(),
        [Message {
            channel: "C0POST".into(),
            text: "Deploy v42 rolled back".into()
        }]
    );
    assert_eq!(
        calls(&fake.requests()),
        [call("chat.postMessage", 200), call("chat.postMessage", 200)]
    );
}

#[tokio::test]
async fn unreadable_file_is_reported_for_every_channel_and_nothing_is_sent() {
    let fake = FakeSlack::start().await;
    fake.add_channel("C0FILE", true);
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("gone.txt");

    let outcome = client_of(&fake)
        .share_file(
            &channels(&["C0FILE", "C0OTHER"]),
            &missing,
            "gone.txt",
            "Gone",
            "",
        )
        .await;

    let error = format!(
        "cannot read {}: No such file or directory (os error 2): check that the file exists \
         and the host may read it",
        missing.display()
    );
    assert_eq!(
        outcome,
        [failed_in("C0FILE", &error), failed_in("C0OTHER", &error)]
    );
    assert_eq!(calls(&fake.requests()), []);
}

#[tokio::test]
async fn token_travels_only_in_the_authorization_header_of_api_methods() {
    let fake = FakeSlack::start().await;
    fake.add_channel("C0TOKEN", true);
    fake.add_channel("C0TOKENOUT", false);
    let token = fake.token();
    let slack = client_of(&fake);
    let file = file_with(OUTPUT);
    let empty = file_with(b"");

    let shared = slack
        .share_file(
            &channels(&["C0TOKEN", "C0TOKENOUT"]),
            file.path(),
            "a.txt",
            "A",
            "c",
        )
        .await;
    slack
        .share_file(&channels(&["C0TOKEN"]), empty.path(), "b.txt", "B", "empty")
        .await;
    slack.post_message("C0TOKEN", "hello").await.unwrap();

    assert_eq!(shared[0], shared_in("C0TOKEN"));
    let requests = fake.requests();
    let uploads = requests.iter().filter(|r| r.is_upload()).count();
    assert_eq!((requests.len(), uploads), (8, 2), "{:?}", calls(&requests));
    let bearer = format!("Bearer {token}");
    for request in &requests {
        let seen = calls(std::slice::from_ref(request));
        assert!(!request.uri.contains(&token), "{seen:?}");
        assert!(
            !String::from_utf8_lossy(&request.body).contains(&token),
            "{seen:?}"
        );
        for (name, value) in &request.headers {
            if name != "authorization" {
                let value = String::from_utf8_lossy(value.as_bytes());
                assert!(!value.contains(&token), "{seen:?} {name}");
            }
        }
        let expected = (!request.is_upload()).then_some(bearer.as_str());
        assert_eq!(request.header("authorization"), expected, "{seen:?}");
    }
    let config = SlackConfig {
        token: Some(token.clone()),
        api_url: fake.api_url(),
    };
    assert!(!format!("{config:?}").contains(&token));
    assert_eq!(log_lines_with(&token), Vec::<String>::new());
}

#[tokio::test]
async fn each_channel_outcome_is_logged_once_with_ok_or_the_error_code() {
    let fake = FakeSlack::start().await;
    fake.add_channel("C0LOGGEDOK", true);
    fake.add_channel("C0LOGGEDOUT", false);
    let file = file_with(OUTPUT);

    client_of(&fake)
        .share_file(
            &channels(&["C0LOGGEDOK", "C0LOGGEDOUT"]),
            file.path(),
            "r.txt",
            "R",
            "",
        )
        .await;

    let ok = log_lines_with("C0LOGGEDOK");
    let out = log_lines_with("C0LOGGEDOUT");
    assert_eq!(ok.len(), 1, "{ok:?}");
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(
        ok[0].contains(" INFO ") && ok[0].contains("outcome=\"ok\""),
        "{}",
        ok[0]
    );
    assert!(
        out[0].contains(" WARN ") && out[0].contains("outcome=\"not_in_channel\""),
        "{}",
        out[0]
    );
    assert_eq!(
        log_lines_with("web.1"),
        Vec::<String>::new(),
        "file contents stay out"
    );
}
