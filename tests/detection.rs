//! The default detection model: it is exactly what training on datasets/train.csv gives, it
//! meets its targets on datasets/test.csv (and all but one on datasets/test-same-run.csv), and
//! a server running it blocks behaviour that no rule catches.

mod common;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rampart::client::{Client, ClientOptions};
use rampart::config::{Config, FirewallConfig, ModelMode};
use rampart::detect::{self, evaluate, read_csv, train, Model, TrainSpec};
use rampart::firewall::{Action, Signal};
use rampart::server::Server;

fn datasets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets")
}

#[test]
fn the_default_model_is_what_training_on_train_csv_gives() -> Result<(), detect::DetectError> {
    let data = read_csv(&datasets().join("train.csv"))?;
    // The settings `rampart model train` uses without options.
    let params = TrainSpec::default()
        .benign_only(true)
        .normalize(true)
        .check()?;
    let model = train(&data, &params)?.model;
    let dir = tempfile::tempdir().map_err(|source| detect::DetectError::Io {
        path: "tempdir".into(),
        source,
    })?;
    let out = dir.path().join("model.json");
    model.save(&out)?;
    let written = std::fs::read_to_string(&out).map_err(|source| detect::DetectError::Io {
        path: out.clone(),
        source,
    })?;
    assert!(
        written == detect::DEFAULT_MODEL_JSON,
        "datasets/model.json is stale: run `rampart model train datasets/train.csv --out datasets/model.json`"
    );
    Ok(())
}

/// A target one test file is known to miss, with the reason in docs/DETECTION.md.
#[derive(PartialEq)]
enum Except {
    Nothing,
    /// Brute-force per window (windows without evidence cap it on the same-run split).
    BruteForcePerWindow,
    /// A false-positive rate no higher than the rules' (the model still beats them on F1).
    FprAgainstRules,
}

/// The targets on a labelled file: F1 at least 0.95, a false-positive rate at most
/// 1 %, every attack kind at least 0.9 per window, every attacking source flagged, each
/// guesser by its third window, and both baselines beaten: the rules, tuned on train.csv
/// only, on F1 at a false-positive rate no higher than theirs. Returns the report.
fn assert_targets(
    data: &detect::Dataset,
    except: Except,
) -> Result<detect::EvalReport, detect::DetectError> {
    let model = detect::default_model()?;
    let r = evaluate(&model, data)?;
    let m = &r.metrics;
    assert!(m.f1 >= 0.95, "F1 {} < 0.95", m.f1);
    assert!(m.fpr <= 0.01, "false-positive rate {} > 0.01", m.fpr);
    assert!(
        r.per_kind.len() >= 12,
        "attack kinds: {:?}",
        r.per_kind.keys()
    );
    for (kind, rate) in &r.per_kind {
        if kind == "brute-force" && except == Except::BruteForcePerWindow {
            continue;
        }
        assert!(
            rate.rate >= 0.9,
            "{kind}: {} of {} windows detected",
            rate.detected,
            rate.rows
        );
    }
    // Per attacker rather than per window: every attacking source is flagged, and each
    // guesser by its third window (its first may hold only a login frame).
    for (kind, s) in &r.per_source {
        assert_eq!(
            s.detected, s.sources,
            "{kind}: {} of {} sources flagged",
            s.detected, s.sources
        );
    }
    let bf_sources = &r.per_source["brute-force"];
    assert!(
        bf_sources.sources >= 200 && bf_sources.first_window_max <= Some(3),
        "brute-force sources: {bf_sources:?}"
    );
    let baseline = r.baseline.as_ref().expect("labelled data has a baseline");
    assert!(
        m.f1 > baseline.metrics.f1,
        "model F1 {} does not beat the baseline's {}",
        m.f1,
        baseline.metrics.f1
    );
    // The fair opponent: the rule set, tuned on the training file only. The model must beat
    // it on F1 at a false-positive rate no higher than the rules'.
    let rules = detect::rules::RuleBaseline::fit(&read_csv(&datasets().join("train.csv"))?, 0.01)?;
    let rules = detect::eval::rule_report(&rules, data)?.metrics;
    assert!(
        m.f1 > rules.f1 && (m.fpr <= rules.fpr || except == Except::FprAgainstRules),
        "model F1 {} at FPR {} against the rules' F1 {} at FPR {}",
        m.f1,
        m.fpr,
        rules.f1,
        rules.fpr
    );
    Ok(r)
}

/// test.csv is a recording of its own (`datasets/generate.sh test`), made apart from the
/// training session, and it holds two families no training file has: the login storm
/// (benign) and the quiet flood (an attack). Every target holds on it, brute-force included.
#[test]
fn the_default_model_meets_its_targets_on_test_csv() -> Result<(), detect::DetectError> {
    let data = read_csv(&datasets().join("test.csv"))?;
    assert_targets(&data, Except::Nothing)?;
    // The storm is half of the benign windows, and the model flags none of them; the
    // false-positive target holds without them too.
    let model = detect::default_model()?;
    let groups = detect::eval::by_group(&model, &data, |i| data.group(i))?;
    assert!(groups["storm"].benign > 5_000, "{:?}", groups["storm"]);
    assert_eq!(groups["storm"].false_positives, 0);
    let (fp, benign) = groups
        .iter()
        .filter(|(name, _)| name.as_str() != "storm")
        .fold((0, 0), |(fp, n), (_, g)| {
            (fp + g.false_positives, n + g.benign)
        });
    assert!(
        fp * 100 <= benign,
        "{fp} of {benign} benign windows flagged outside the storm"
    );
    // The benign windows the model flags earn the firewall next to nothing: all but one
    // score under the weak band once the rule-scored terms are out, or are silent, and that
    // one (a wrong-ids window) earns under 1 % of the weight.
    for (name, g) in &groups {
        if g.benign > 0 {
            assert!(g.firewall_share < 0.001, "{name}: {g:?}");
        }
    }
    Ok(())
}

/// test-session-2.csv is a second test session like test.csv's, recorded after it. Every
/// target holds but one: the model's false-positive rate (0.47 %) is above the rules'
/// (0.33 %), for 16 of the storm's windows holding a lone login answer, which the firewall
/// scores nothing (docs/DETECTION.md, "Results"). Without the storm it is below theirs.
#[test]
fn a_second_test_session_meets_every_target_but_the_fpr_against_the_rules(
) -> Result<(), detect::DetectError> {
    let data = read_csv(&datasets().join("test-session-2.csv"))?;
    assert_targets(&data, Except::FprAgainstRules)?;
    let model = detect::default_model()?;
    let storm = detect::eval::by_group(&model, &data, |i| data.group(i))?["storm"];
    assert!(
        storm.false_positives > 0 && storm.firewall_share == 0.0,
        "{storm:?}"
    );
    let rules = detect::rules::RuleBaseline::fit(&read_csv(&datasets().join("train.csv"))?, 0.01)?;
    let without_storm = data.filter_rows(|i| data.group(i) != Some("storm"))?;
    let m = evaluate(&model, &without_storm)?.metrics;
    let rules = detect::eval::rule_report(&rules, &without_storm)?.metrics;
    assert!(
        m.fpr <= rules.fpr && m.f1 > rules.f1,
        "without the storm: model FPR {} F1 {}, rules FPR {} F1 {}",
        m.fpr,
        m.f1,
        rules.fpr,
        rules.f1
    );
    Ok(())
}

/// test-same-run.csv is seed 3 of the training session itself, recorded on a loaded machine:
/// every target holds there but brute-force per window (0.885). 12 % of its windows hold no
/// evidence at all (an unanswered login frame, or a connection waiting for the answer),
/// exactly what every user's login window holds (docs/DETECTION.md, "A ceiling no per-window
/// detector can pass"). The target holds on the windows that carry evidence.
#[test]
fn on_the_same_run_split_brute_force_misses_only_windows_without_evidence(
) -> Result<(), detect::DetectError> {
    let data = read_csv(&datasets().join("test-same-run.csv"))?;
    let r = assert_targets(&data, Except::BruteForcePerWindow)?;
    let evidence: Vec<usize> = [
        "auth_failures",
        "refused",
        "hist_auth_guesses",
        "decode_errors",
        "rate_limit_hits",
        "permission_denials",
    ]
    .iter()
    .map(|f| {
        data.feature_index(f)
            .ok_or(detect::DetectError::BadModel(f.to_string()))
    })
    .collect::<Result<_, _>>()?;
    let with_evidence = data.filter_rows(|i| {
        data.label(i) != Some("brute-force") || evidence.iter().any(|&c| data.row(i)[c] > 0.0)
    })?;
    let model = detect::default_model()?;
    let bf = &evaluate(&model, &with_evidence)?.per_kind["brute-force"];
    assert!(
        bf.rate >= 0.9,
        "brute-force windows with evidence: {} of {} detected",
        bf.detected,
        bf.rows
    );
    assert!(
        bf.rows * 100 >= r.per_kind["brute-force"].rows * 85,
        "most brute-force windows carry evidence: {} of {}",
        bf.rows,
        r.per_kind["brute-force"].rows
    );
    Ok(())
}

#[test]
fn the_firewall_share_is_what_the_model_adds_to_a_block() -> Result<(), detect::DetectError> {
    let model = detect::default_model()?;
    let r = evaluate(&model, &read_csv(&datasets().join("test.csv"))?)?;
    assert_eq!(
        r.firewall_share.keys().collect::<Vec<_>>(),
        r.per_kind.keys().collect::<Vec<_>>()
    );
    // A window the model does not flag earns nothing, and a flagged one at most the full
    // weight, so a kind's share never exceeds its per-window rate.
    for (kind, share) in &r.firewall_share {
        assert!(
            (0.0..=r.per_kind[kind].rate + 1e-12).contains(share),
            "{kind}: share {share}, rate {}",
            r.per_kind[kind].rate
        );
    }
    // The kinds no rule blocks live (docs/DETECTION.md) get a real share of the weight: the
    // suite blocks them on the model's points alone.
    for kind in ["low-and-slow", "plaintext-on-tls", "slow-read"] {
        assert!(
            r.firewall_share[kind] >= 0.5,
            "{kind}: share {}",
            r.firewall_share[kind]
        );
    }
    // Brute force is flagged in most windows, but the failed logins are the rules' to
    // score: the model's share is well below its per-window rate.
    assert!(r.firewall_share["brute-force"] < r.per_kind["brute-force"].rate / 2.0);
    Ok(())
}

/// Logs in from `source` and asks for item ids that do not exist, five a second, until the
/// source is blocked or `limit` passes. Returns whether it was blocked.
async fn enumerate_missing_ids(
    server: &common::TestServer,
    source: IpAddr,
    limit: Duration,
) -> bool {
    enumerate_until(server, source, limit, || false).await
}

/// [`enumerate_missing_ids`], also stopping as soon as `done` says so.
async fn enumerate_until(
    server: &common::TestServer,
    source: IpAddr,
    limit: Duration,
    done: impl Fn() -> bool,
) -> bool {
    let guard = server.handle.guard();
    let mut client = Client::login(&server.target(), "mallory", b"mallory-pw", from(source))
        .await
        .expect("login");
    let start = Instant::now();
    let mut id = 1_000_000;
    while start.elapsed() < limit {
        if guard.is_blocked(source) {
            return true;
        }
        if done() {
            break;
        }
        id += 1;
        // NOT_FOUND: an error reply, but no rule signal.
        if client.fetch(id).await.is_ok() {
            panic!("item {id} exists");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    guard.is_blocked(source)
}

async fn start_with_model(model: Option<Arc<Model>>) -> common::TestServer {
    start_in_mode(model, ModelMode::Enforce).await
}

async fn start_in_mode(model: Option<Arc<Model>>, mode: ModelMode) -> common::TestServer {
    start_with_firewall(model, mode, |_| {}).await
}

/// [`start_in_mode`] with the rule that scores missing ids switched off, so that what blocks
/// an enumeration of them is the model's verdicts alone.
async fn start_model_only(model: Option<Arc<Model>>, mode: ModelMode) -> common::TestServer {
    start_with_firewall(model, mode, |fw| fw.weight_unknown_id = 0).await
}

async fn start_with_firewall(
    model: Option<Arc<Model>>,
    mode: ModelMode,
    adjust: impl FnOnce(&mut FirewallConfig),
) -> common::TestServer {
    let mut config = common::firewall_config();
    config.firewall.model = mode;
    adjust(&mut config.firewall);
    common::start_with_model(config, model, |s| s).await
}

/// A client of `source`, with a 5 s request timeout.
fn from(source: IpAddr) -> ClientOptions {
    ClientOptions {
        source: Some(source),
        request_timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_block_an_enumeration_past_the_last_id_and_spare_stale_ids_and_typos() {
    let server = start_in_mode(None, ModelMode::Off).await;
    let guard = server.handle.guard();
    let firewall = server.handle.firewall();
    let weight = f64::from(Config::default().firewall.weight_unknown_id);
    let threshold = f64::from(Config::default().firewall.threshold);
    // A sync client whose cache went stale: thirty notes, deleted from another connection,
    // each asked for again. Deleted items' ids earn nothing.
    let stale: IpAddr = "127.0.6.4".parse().expect("ip");
    let mut user = Client::login(&server.target(), "alice", b"alice-pw", from(stale))
        .await
        .expect("login");
    let mut other = Client::login(&server.target(), "alice", b"alice-pw", from(stale))
        .await
        .expect("login");
    let mut ids = Vec::new();
    for n in 0..30 {
        ids.push(
            user.send_message("alice", &format!("note {n}"))
                .await
                .expect("sent"),
        );
    }
    for &id in &ids {
        other.delete(id).await.expect("deleted");
    }
    for &id in &ids {
        assert!(user.fetch(id).await.is_err(), "item {id} is still there");
    }
    assert_eq!(firewall.score(stale), 0.0);
    // Ids past the highest in use, mistyped in a burst: one short of the threshold's worth.
    let highest = *ids.iter().max().expect("ids");
    let typos = ((threshold * 0.95) / weight).ceil() as u64 - 1;
    for n in 1..=typos {
        assert!(user.fetch(highest * 10 + n).await.is_err(), "item exists");
    }
    let score = firewall.score(stale);
    assert!(
        score > (typos as f64 - 1.0) * weight && score <= typos as f64 * weight,
        "{score}"
    );
    user.inbox().await.expect("the session goes on");
    assert!(!guard.is_blocked(stale));
    // Counted for the operator: the typos, not the stale ids.
    assert_eq!(server.handle.metrics().snapshot().unknown_ids, typos);
    // An enumeration past the last id, five ids a second: the rules block it.
    let source: IpAddr = "127.0.6.5".parse().expect("ip");
    let start = Instant::now();
    assert!(
        enumerate_missing_ids(&server, source, Duration::from_secs(10)).await,
        "the rules did not block the enumeration within 10 s"
    );
    println!("enumeration blocked after {:?}", start.elapsed());
    let decisions = firewall.decisions();
    assert_eq!(decisions.len(), 1, "{decisions:?}");
    assert_eq!(
        decisions[0].trigger,
        Some(Signal::UnknownId),
        "{decisions:?}"
    );
    assert!(!guard.is_blocked(stale));
    server.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_blocks_an_enumeration_that_no_rule_catches() {
    let model = Arc::new(detect::default_model().expect("default model"));
    let server = start_model_only(Some(model), ModelMode::Enforce).await;
    let source: IpAddr = "127.0.6.1".parse().expect("ip");
    assert!(
        enumerate_missing_ids(&server, source, Duration::from_secs(10)).await,
        "the model did not block the enumeration within 10 s"
    );
    let stats = server.handle.server().detection().expect("a model runs");
    assert!(stats.anomalies >= 2, "{stats:?}");
    // The guard's block comes a moment before the decision is stored beside it.
    let firewall = server.handle.firewall();
    common::eventually(Duration::from_secs(2), || !firewall.decisions().is_empty()).await;
    let decisions = firewall.decisions();
    assert_eq!(decisions.len(), 1, "{decisions:?}");
    assert!(
        decisions[0].reason.starts_with("model_anomaly tipped"),
        "{}",
        decisions[0].reason
    );
    server.handle.shutdown().await;

    // The same behaviour against the other rules only: nothing blocks it.
    let server = start_model_only(None, ModelMode::Enforce).await;
    assert!(server.handle.server().detection().is_none());
    let source: IpAddr = "127.0.6.2".parse().expect("ip");
    assert!(
        !enumerate_missing_ids(&server, source, Duration::from_secs(4)).await,
        "rules alone blocked the enumeration"
    );
    assert!(server.handle.firewall().decisions().is_empty());
    server.handle.shutdown().await;
}

#[test]
fn the_model_shadows_by_default() {
    assert_eq!(Config::default().firewall.model, ModelMode::Shadow);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_model_records_its_verdict_but_never_blocks() {
    let model = Arc::new(detect::default_model().expect("default model"));
    let server = start_model_only(Some(model), ModelMode::Shadow).await;
    let source: IpAddr = "127.0.6.3".parse().expect("ip");
    let firewall = server.handle.firewall();
    let decided = || !firewall.decisions().is_empty();
    // The enforcing model blocks this within 10 s; in shadow it must only be recorded.
    assert!(
        !enumerate_until(&server, source, Duration::from_secs(10), decided).await,
        "a shadow verdict blocked the source"
    );
    assert!(!server.handle.guard().is_blocked(source));
    let decisions = firewall.decisions();
    assert_eq!(decisions.len(), 1, "{decisions:?}");
    let d = &decisions[0];
    assert_eq!(d.action, Action::ShadowBlock);
    assert_eq!(d.trigger, Some(Signal::ModelAnomaly));
    assert!(d.reason.starts_with("model_anomaly tipped"), "{}", d.reason);
    // The model's explanation comes with it.
    assert!(d.reason.contains("; "), "{}", d.reason);
    // The rules still enforce, and their score holds no model points.
    assert!(firewall.score(source) < 1.0, "{}", firewall.score(source));
    // Stored for `rampart firewall list` (the recorder commits within its flush interval).
    let start = Instant::now();
    let stored = loop {
        let conn = rampart::activity::db::open(server.dir.path()).expect("activity database");
        let stored = rampart::activity::db::decisions(&conn).expect("decisions");
        if !stored.is_empty() || start.elapsed() > Duration::from_secs(5) {
            break stored;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0].action, "shadow_block");
    assert_eq!(stored[0].reason, d.reason);
    server.handle.shutdown().await;
}

#[test]
fn a_model_needs_activity_recording() {
    let mut config = common::test_config();
    config.activity.enabled = false;
    let dir = tempfile::tempdir().expect("tempdir");
    let model = Arc::new(detect::default_model().expect("default model"));
    let err = Server::open_with_model(config, dir.path(), Some(model)).expect_err("refused");
    assert!(err.to_string().contains("activity.enabled"), "{err}");
}

/// `model train --data-dir`: the windows of a source that failed a login are left out, and
/// so is every other window of that source; a clean source's windows are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_on_a_recording_keeps_only_clean_sources() {
    let server = start_in_mode(None, ModelMode::Off).await;
    let clean: IpAddr = "127.0.6.10".parse().expect("ip");
    let guesser: IpAddr = "127.0.6.11".parse().expect("ip");
    assert!(
        Client::login(&server.target(), "mallory", b"wrong", from(guesser))
            .await
            .is_err(),
        "a wrong password logged in"
    );
    let mut client = Client::login(&server.target(), "mallory", b"mallory-pw", from(clean))
        .await
        .expect("login");
    // The guesser's next window is clean, but the source is not.
    let mut other = Client::login(&server.target(), "mallory", b"mallory-pw", from(guesser))
        .await
        .expect("login");
    for _ in 0..3 {
        let _ = client.fetch(1_000_000).await;
        let _ = other.fetch(1_000_000).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    drop(client);
    drop(other);
    server.handle.shutdown().await;
    let window = Duration::from_secs(1);
    // The recorder commits within its flush interval, and may still be committing after
    // the shutdown returned: read until two reads 300 ms apart see the same events.
    let start = Instant::now();
    let mut seen = None;
    let data = loop {
        let (data, summary) =
            detect::recorded::clean_windows(server.dir.path(), window, 1).expect("clean windows");
        let settled = seen == Some(summary.events);
        seen = Some(summary.events);
        if settled && summary.rule_sources + summary.decided_sources >= 1 && data.rows() >= 2 {
            break data;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{summary:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(!data.is_labelled());
    for i in 0..data.rows() {
        assert_eq!(data.source(i), "127.0.6.10", "row {i}");
    }
    match detect::recorded::clean_windows(server.dir.path(), window, 10_000) {
        Err(detect::DetectError::NotEnoughRows { needed, have, .. }) => {
            assert_eq!((needed, have), (10_000, data.rows()));
        }
        other => panic!("expected NotEnoughRows, got {other:?}"),
    }
    let empty = tempfile::tempdir().expect("tempdir");
    let err = detect::recorded::clean_windows(empty.path(), window, 1).expect_err("no database");
    assert!(err.to_string().contains("no activity database"), "{err}");
}

/// `model eval --by-group`: the `group` column of test.csv (the behaviour family) is not a
/// feature, and the per-group figures add up to the whole report's.
#[test]
fn per_group_figures_add_up() -> Result<(), Box<dyn std::error::Error>> {
    let model = detect::default_model()?;
    let data = read_csv(&datasets().join("test.csv"))?;
    assert!(data.has_groups());
    let whole = evaluate(&model, &data)?;
    let groups = detect::eval::by_group(&model, &data, |i| data.group(i))?;
    // Every attack kind's windows are in the group named after it; benign windows are in
    // the legit families (and `KIND-before`, an attacker's windows before it attacked).
    for (kind, rate) in &whole.per_kind {
        assert_eq!(groups[kind].detected, rate.detected, "{kind}");
        assert_eq!(groups[kind].benign, 0, "{kind}");
        let share = groups[kind].firewall_share;
        assert!(
            (share - whole.firewall_share[kind]).abs() < 1e-9,
            "{kind}: group share {share}, kind share {}",
            whole.firewall_share[kind]
        );
    }
    let fp: u64 = groups.values().map(|g| g.false_positives).sum();
    let benign: u64 = groups.values().map(|g| g.benign).sum();
    assert_eq!((fp, benign), (whole.metrics.confusion.fp, whole.negatives));
    assert!(
        groups.len() > whole.per_kind.len() + 5,
        "{:?}",
        groups.keys()
    );
    // Without the group column, the same model reads the same features.
    let text = std::fs::read_to_string(datasets().join("test.csv"))?;
    let mut plain = String::new();
    for line in text.lines() {
        let (row, _group) = line.rsplit_once(',').ok_or("a line without a comma")?;
        plain.push_str(row);
        plain.push('\n');
    }
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("plain.csv");
    std::fs::write(&path, plain)?;
    let plain = read_csv(&path)?;
    assert_eq!(plain.features(), data.features());
    assert!(!plain.has_groups());
    Ok(())
}

/// `model eval --train`: the rule baseline is tuned on train.csv only, stays within its
/// false-positive target there, and is a far stronger opponent than the rate threshold.
#[test]
fn the_rule_baseline_is_tuned_on_the_training_file() -> Result<(), detect::DetectError> {
    let train_data = read_csv(&datasets().join("train.csv"))?;
    let rules = detect::rules::RuleBaseline::fit(&train_data, 0.01)?;
    let on_train = detect::eval::rule_report(&rules, &train_data)?;
    assert!(on_train.metrics.fpr <= 0.01, "{:?}", on_train.metrics);
    let test_data = read_csv(&datasets().join("test.csv"))?;
    let model = detect::default_model()?;
    let mut r = evaluate(&model, &test_data)?;
    assert!(r.rule_baseline.is_none());
    r.rule_baseline = Some(detect::eval::rule_report(&rules, &test_data)?);
    let rules_report = r.rule_baseline.as_ref().expect("set above");
    let rate = r.baseline.as_ref().expect("a rate baseline");
    assert!(
        rules_report.metrics.f1 > rate.metrics.f1,
        "rules {} vs rate threshold {}",
        rules_report.metrics.f1,
        rate.metrics.f1
    );
    // A broken frame is flagged whatever the tuning.
    for kind in ["malformed", "oversized"] {
        assert_eq!(rules_report.per_kind[kind].rate, 1.0, "{kind}");
    }
    let json =
        serde_json::to_value(&r).map_err(|e| detect::DetectError::BadModel(e.to_string()))?;
    assert!(json["rule_baseline"]["thresholds"]["auth_failures_min"].is_number());
    assert!(json["baseline"]["f1"].is_number(), "the old key stays");
    Ok(())
}

/// Honest conduct outside the closed world, against the enforcing default model: each was
/// blocked before the model's points left out what the rules score themselves and windows in
/// which the source sent nothing (docs/DETECTION.md, "What the rules already scored"). The
/// same server still blocks a sender of garbage, by the rules, at its second broken header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_request_a_health_check_and_resets_block_nobody(
) -> Result<(), Box<dyn std::error::Error>> {
    use rampart::protocol::{encode_request, Password, Request};
    use tokio::io::AsyncWriteExt;

    let model = Arc::new(detect::default_model()?);
    let server = start_with_model(Some(model)).await;
    let ip = |s: &str| -> IpAddr { s.parse().expect("ip") };
    let (curl, checker, mobile, garbage) = (
        ip("127.0.6.10"),
        ip("127.0.6.11"),
        ip("127.0.6.12"),
        ip("127.0.6.13"),
    );
    // Someone points a web browser or curl at the port by mistake.
    let mut s = common::raw_connect(server.addr, Some(curl)).await?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: curl/8.0\r\n\r\n")
        .await?;
    common::drain(&mut s, Duration::from_millis(500)).await;
    // A TCP health check: connect and close, nothing sent, a little over once a second.
    for _ in 0..4 {
        drop(common::raw_connect(server.addr, Some(checker)).await?);
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    // A client on a flaky network: logs in, and the connection ends in a reset, five times.
    let mut auth = bytes::BytesMut::new();
    let req = Request::Auth {
        user: "alice".into(),
        password: Password(bytes::Bytes::from_static(b"alice-pw")),
    };
    encode_request(1, &req, &mut auth)?;
    for _ in 0..5 {
        let mut s = common::raw_connect(server.addr, Some(mobile)).await?;
        s.write_all(&auth).await?;
        let got = common::drain(&mut s, Duration::from_millis(300)).await;
        assert_eq!(got.replies.len(), 1, "one answer to AUTH");
        s.set_zero_linger()?;
        drop(s);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    // Garbage from another address, connection after connection.
    for _ in 0..3 {
        if let Ok(mut s) = common::raw_connect(server.addr, Some(garbage)).await {
            let _ = s.write_all(&[0xA5; 64]).await;
            common::drain(&mut s, Duration::from_millis(300)).await;
        }
    }
    // Long enough for every window above to close and be scored (1 s windows, 400 ms lag).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let guard = server.handle.guard();
    for honest in [curl, checker, mobile] {
        assert!(!guard.is_blocked(honest), "{honest} was blocked");
    }
    // A user logging in from the address that sent the stray request is served.
    Client::login(
        &server.target(),
        "bob",
        b"bob-pw",
        ClientOptions::default().source(curl),
    )
    .await?;
    assert!(
        guard.is_blocked(garbage),
        "the garbage sender was not blocked"
    );
    let decisions = server.handle.firewall().decisions();
    assert_eq!(decisions.len(), 1, "{decisions:?}");
    assert!(
        decisions[0].reason.contains("fatal_frame x2"),
        "{}",
        decisions[0].reason
    );
    let stats = server.handle.server().detection().expect("a model runs");
    assert!(stats.silent >= 1, "the health checks' windows: {stats:?}");
    server.handle.shutdown().await;
    Ok(())
}
