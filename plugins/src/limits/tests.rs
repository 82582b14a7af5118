//! The limiter's semantics in process, on an injected clock.

use super::admission::Hold;
use super::*;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

/// 2023-11-14T22:13:20Z: 6,400 s before a UTC midnight, 16 days before a month's end.
const T0_S: u64 = 1_700_000_000;
const TO_MIDNIGHT_S: u64 = 6_400;
const TO_DECEMBER_S: u64 = 1_701_388_800 - T0_S;

fn at(seconds: f64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(T0_S) + Duration::from_secs_f64(seconds)
}

fn key<'a>(id: &'a str, quota: &'a Quota) -> Subject<'a> {
    Subject {
        scope: Scope::Key,
        id,
        quota,
    }
}

fn team<'a>(id: &'a str, quota: &'a Quota) -> Subject<'a> {
    Subject {
        scope: Scope::Team,
        id,
        quota,
    }
}

fn tokens(tokens: u64) -> Demand {
    Demand { tokens, usd: 0.0 }
}

fn usd(usd: f64) -> Demand {
    Demand { tokens: 0, usd }
}

fn rpm(rpm: u64) -> Quota {
    Quota {
        rpm: Some(rpm),
        ..Quota::default()
    }
}

fn tpm(tpm: u64) -> Quota {
    Quota {
        tpm: Some(tpm),
        ..Quota::default()
    }
}

fn per_day(limit: f64) -> Quota {
    Quota {
        usd_per_day: Some(limit),
        ..Quota::default()
    }
}

fn window(limit: u64, remaining: u64, reset: Duration) -> Option<Window> {
    Some(Window {
        limit,
        remaining,
        reset,
    })
}

async fn admit_ok(
    limiter: &Limiter,
    subjects: &[Subject<'_>],
    ask: impl Into<Ask>,
    now: SystemTime,
) -> Grant {
    match limiter.admit(subjects, ask, now).await {
        Ok(grant) => grant,
        Err(refusal) => panic!("refused: {refusal:?}"),
    }
}

async fn refusal(
    limiter: &Limiter,
    subjects: &[Subject<'_>],
    ask: impl Into<Ask>,
    now: SystemTime,
) -> Refusal {
    match limiter.admit(subjects, ask, now).await {
        Ok(grant) => panic!("admitted: {grant:?}"),
        Err(refusal) => refusal,
    }
}

#[tokio::test]
async fn five_rpm_admit_five_then_refuse_for_twelve_seconds() {
    let limiter = Limiter::in_process();
    let quota = rpm(5);
    let subjects = [key("k", &quota)];
    for i in 0..5 {
        let grant = admit_ok(&limiter, &subjects, tokens(0), at(0.0)).await;
        let reset = Duration::from_secs(12 * (i + 1));
        assert_eq!(grant.headers.requests, window(5, 4 - i, reset));
        assert_eq!(grant.headers.tokens, None);
    }
    let Refusal::Rate {
        scope,
        id,
        dimension,
        retry_after,
        headers,
    } = refusal(&limiter, &subjects, tokens(0), at(0.0)).await
    else {
        panic!("not a rate refusal");
    };
    assert_eq!(
        (scope, id.as_str(), dimension),
        (Scope::Key, "k", Dimension::Requests)
    );
    assert_eq!(retry_after, Duration::from_secs(12));
    assert_eq!(headers.requests, window(5, 0, Duration::from_secs(60)));
    assert_eq!(limiter.shared_state(), None);
}

#[tokio::test]
async fn buckets_refill_with_time() {
    let limiter = Limiter::in_process();
    let quota = rpm(5);
    let subjects = [key("k", &quota)];
    for _ in 0..5 {
        admit_ok(&limiter, &subjects, tokens(0), at(0.0)).await;
    }
    let refused = refusal(&limiter, &subjects, tokens(0), at(11.9)).await;
    assert!(
        matches!(refused, Refusal::Rate { retry_after, .. } if retry_after == Duration::from_millis(100))
    );
    admit_ok(&limiter, &subjects, tokens(0), at(12.0)).await;
    refusal(&limiter, &subjects, tokens(0), at(12.0)).await;
    for _ in 0..5 {
        admit_ok(&limiter, &subjects, tokens(0), at(72.0)).await;
    }
    refusal(&limiter, &subjects, tokens(0), at(72.0)).await;
}

#[tokio::test]
async fn token_reservations_are_reconciled_at_settle() {
    let limiter = Limiter::in_process();
    let quota = tpm(1_000);
    let subjects = [key("k", &quota)];
    let first = admit_ok(&limiter, &subjects, tokens(800), at(0.0)).await;
    assert_eq!(
        first.headers.tokens,
        window(1_000, 200, Duration::from_secs(48))
    );
    let Refusal::Rate {
        dimension,
        retry_after,
        headers,
        ..
    } = refusal(&limiter, &subjects, tokens(800), at(0.0)).await
    else {
        panic!("not a rate refusal");
    };
    assert_eq!(dimension, Dimension::Tokens);
    assert_eq!(retry_after, Duration::from_secs(36));
    assert_eq!(headers.tokens, window(1_000, 200, Duration::from_secs(48)));

    // Used 100 of 800: 700 come back.
    limiter.settle(first, tokens(100), at(0.0)).await;
    let second = admit_ok(&limiter, &subjects, tokens(800), at(0.0)).await;
    assert_eq!(
        second.headers.tokens,
        window(1_000, 100, Duration::from_secs(54))
    );

    // Used 1,500 of 800: the bucket owes 600, which the next admission waits out.
    limiter.settle(second, tokens(1_500), at(0.0)).await;
    let refused = refusal(&limiter, &subjects, tokens(1), at(0.0)).await;
    let expected = Duration::from_secs(36) + Duration::from_millis(60);
    assert!(matches!(refused, Refusal::Rate { retry_after, .. } if retry_after == expected));
}

#[tokio::test]
async fn refunds_never_fill_a_bucket_beyond_full() {
    let limiter = Limiter::in_process();
    let quota = tpm(1_000);
    let subjects = [key("k", &quota)];
    let grant = admit_ok(&limiter, &subjects, tokens(100), at(0.0)).await;
    // Refilled by the time it settles, having used nothing.
    limiter.settle(grant, tokens(0), at(30.0)).await;
    admit_ok(&limiter, &subjects, tokens(1_000), at(30.0)).await;
    refusal(&limiter, &subjects, tokens(1), at(30.0)).await;
}

#[tokio::test]
async fn a_demand_beyond_a_whole_limit_is_too_large() {
    let limiter = Limiter::in_process();
    let quota = Quota {
        rpm: Some(10),
        tpm: Some(1_000),
        ..Quota::default()
    };
    let refused = refusal(&limiter, &[key("k", &quota)], tokens(1_001), at(0.0)).await;
    assert_eq!(
        refused,
        Refusal::TooLarge {
            scope: Scope::Key,
            id: "k".to_owned(),
            dimension: Dimension::Tokens,
            limit: 1_000,
            requested: 1_001,
        }
    );
    // Nothing was taken: the whole bucket is still there.
    let grant = admit_ok(&limiter, &[key("k", &quota)], tokens(1_000), at(0.0)).await;
    assert_eq!(grant.headers.requests.map(|w| w.remaining), Some(9));

    let closed = rpm(0);
    let refused = refusal(&limiter, &[key("z", &closed)], tokens(0), at(0.0)).await;
    assert!(matches!(
        refused,
        Refusal::TooLarge {
            dimension: Dimension::Requests,
            limit: 0,
            requested: 1,
            ..
        }
    ));
}

#[tokio::test]
async fn admission_is_all_or_nothing_across_subjects() {
    let limiter = Limiter::in_process();
    let key_quota = Quota {
        rpm: Some(10),
        tpm: Some(1_000),
        ..Quota::default()
    };
    let team_quota = rpm(1);
    let both = [key("k", &key_quota), team("t", &team_quota)];
    admit_ok(&limiter, &both, tokens(100), at(0.0)).await;
    let refused = refusal(&limiter, &both, tokens(100), at(0.0)).await;
    assert!(matches!(&refused, Refusal::Rate { scope: Scope::Team, id, .. } if id == "t"));
    // The key's buckets show the first admission and this one only.
    let grant = admit_ok(&limiter, &[key("k", &key_quota)], tokens(100), at(0.0)).await;
    assert_eq!(grant.headers.requests.map(|w| w.remaining), Some(8));
    assert_eq!(grant.headers.tokens.map(|w| w.remaining), Some(800));

    // A spent team budget refuses as wholly.
    let spent_team = per_day(0.0);
    let refused = refusal(
        &limiter,
        &[key("k", &key_quota), team("poor", &spent_team)],
        tokens(100),
        at(0.0),
    )
    .await;
    assert!(matches!(
        refused,
        Refusal::Budget {
            scope: Scope::Team,
            ..
        }
    ));
    let grant = admit_ok(&limiter, &[key("k", &key_quota)], tokens(100), at(0.0)).await;
    assert_eq!(grant.headers.tokens.map(|w| w.remaining), Some(700));
}

#[tokio::test]
async fn a_tiny_day_budget_reserves_what_is_left_then_waits_for_the_next_day() {
    let limiter = Limiter::in_process();
    let quota = per_day(0.01);
    let subjects = [key("k", &quota)];
    // A worst case beyond the whole budget can never pass.
    let over = refusal(&limiter, &subjects, usd(0.05), at(0.0)).await;
    assert!(
        matches!(over, Refusal::OverBudget { requested_usd, .. } if requested_usd == 0.05),
        "{over:?}"
    );
    // Without an output cap, it reserves what is left and is reconciled later.
    let flexible = Ask {
        least: usd(0.001),
        most: usd(0.05),
    };
    let grant = admit_ok(&limiter, &subjects, flexible, at(0.0)).await;
    assert!(
        matches!(grant.reservations[0].hold, Hold::Usd { reserved, .. } if reserved == 10_000),
        "{grant:?}"
    );
    limiter.settle(grant, usd(0.02), at(1.0)).await;
    let refused = refusal(&limiter, &subjects, usd(0.001), at(2.0)).await;
    let Refusal::Budget {
        scope,
        period,
        limit_usd,
        spent_usd,
        retry_after,
        ..
    } = refused
    else {
        panic!("not a budget refusal: {refused:?}");
    };
    assert_eq!((scope, period), (Scope::Key, Period::Day));
    assert_eq!(limit_usd, 0.01);
    assert!((spent_usd - 0.02).abs() < 1e-9, "{spent_usd}");
    assert_eq!(retry_after, Duration::from_secs(TO_MIDNIGHT_S - 2));
    admit_ok(&limiter, &subjects, usd(0.001), at(TO_MIDNIGHT_S as f64)).await;
}

#[tokio::test]
async fn outstanding_reservations_stop_admission_before_settle() {
    let limiter = Limiter::in_process();
    let quota = per_day(1.0);
    let subjects = [key("k", &quota)];
    let mut grants = Vec::new();
    for _ in 0..2 {
        grants.push(admit_ok(&limiter, &subjects, usd(0.4), at(0.0)).await);
    }
    // 0.8 reserved: another 0.4 does not fit, though 0.2 does.
    let refused = refusal(&limiter, &subjects, usd(0.4), at(0.0)).await;
    assert!(matches!(refused, Refusal::Budget { spent_usd, .. } if (spent_usd - 0.8).abs() < 1e-9));
    // One of them cost nothing after all.
    limiter.settle(grants.remove(0), usd(0.0), at(1.0)).await;
    admit_ok(&limiter, &subjects, usd(0.4), at(1.0)).await;
    admit_ok(&limiter, &subjects, usd(0.2), at(1.0)).await;
    refusal(&limiter, &subjects, usd(0.0), at(1.0)).await;
}

#[tokio::test]
async fn a_request_without_an_output_cap_takes_what_fits_of_a_small_tpm() {
    let limiter = Limiter::in_process();
    let quota = tpm(500);
    let subjects = [key("k", &quota)];
    // A 100-token prompt with a 1,024-token default output: more than the whole bucket.
    let ask = Ask {
        least: tokens(100),
        most: tokens(1_124),
    };
    let grant = admit_ok(&limiter, &subjects, ask, at(0.0)).await;
    assert_eq!(grant.headers.tokens.map(|w| w.remaining), Some(0));
    limiter.settle(grant, tokens(150), at(0.0)).await;
    let grant = admit_ok(&limiter, &subjects, ask, at(0.0)).await;
    assert_eq!(grant.headers.tokens.map(|w| w.remaining), Some(0));
    // Nothing left for even the prompt: a wait, not "too large".
    let refused = refusal(&limiter, &subjects, ask, at(0.0)).await;
    assert!(matches!(refused, Refusal::Rate { .. }), "{refused:?}");
    // A prompt larger than the bucket is.
    let refused = refusal(&limiter, &subjects, tokens(600), at(0.0)).await;
    assert!(matches!(refused, Refusal::TooLarge { .. }), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_admissions_get_exactly_the_limit() {
    let limiter = Arc::new(Limiter::in_process());
    let quota = Arc::new(Quota {
        rpm: Some(10),
        usd_per_day: Some(100.0),
        ..Quota::default()
    });
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (limiter, quota) = (limiter.clone(), quota.clone());
            tokio::spawn(async move {
                let subjects = [key("k", &quota)];
                limiter.admit(&subjects, usd(1.0), at(0.0)).await.is_ok()
            })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        admitted += usize::from(task.await.unwrap());
    }
    assert_eq!(admitted, 10);
}

#[tokio::test]
async fn month_budgets_roll_over_and_late_settles_stay_in_their_month() {
    let limiter = Limiter::in_process();
    let quota = Quota {
        usd_per_month: Some(1.0),
        ..Quota::default()
    };
    let subjects = [key("k", &quota)];
    let november = admit_ok(&limiter, &subjects, usd(1.0), at(0.0)).await;
    let refused = refusal(&limiter, &subjects, usd(0.1), at(0.0)).await;
    assert!(matches!(
        refused,
        Refusal::Budget { period: Period::Month, retry_after, .. }
            if retry_after == Duration::from_secs(TO_DECEMBER_S)
    ));
    let december = at(TO_DECEMBER_S as f64);
    admit_ok(&limiter, &subjects, usd(0.5), december).await;
    // November's request settles in December, far over: November's spending, not December's.
    limiter.settle(november, usd(2.0), december).await;
    admit_ok(&limiter, &subjects, usd(0.5), december).await;
    refusal(&limiter, &subjects, usd(0.5), december).await;
}

#[tokio::test]
async fn headers_report_the_tightest_subject_per_dimension() {
    let limiter = Limiter::in_process();
    let key_quota = Quota {
        rpm: Some(100),
        tpm: Some(10_000),
        ..Quota::default()
    };
    let team_quota = Quota {
        rpm: Some(1_000),
        tpm: Some(500),
        ..Quota::default()
    };
    let both = [key("k", &key_quota), team("t", &team_quota)];
    let grant = admit_ok(&limiter, &both, tokens(100), at(0.0)).await;
    assert_eq!(
        grant.headers.requests,
        window(100, 99, Duration::from_millis(600))
    );
    assert_eq!(
        grant.headers.tokens,
        window(500, 400, Duration::from_secs(12))
    );
    assert_eq!(
        grant.headers.to_pairs(),
        [
            ("x-ratelimit-limit-requests", "100".to_owned()),
            ("x-ratelimit-remaining-requests", "99".to_owned()),
            ("x-ratelimit-reset-requests", "600ms".to_owned()),
            ("x-ratelimit-limit-tokens", "500".to_owned()),
            ("x-ratelimit-remaining-tokens", "400".to_owned()),
            ("x-ratelimit-reset-tokens", "12s".to_owned()),
        ]
    );
    // Half a minute later both token buckets are full again: the team's, the smaller, has
    // the least left.
    let grant = admit_ok(&limiter, &both, tokens(0), at(30.0)).await;
    assert_eq!(grant.headers.tokens, window(500, 500, Duration::ZERO));
    assert_eq!(
        grant.headers.requests,
        window(100, 99, Duration::from_millis(600))
    );
}

#[tokio::test]
async fn subjects_without_limits_and_bad_amounts_admit_without_panicking() {
    let limiter = Limiter::in_process();
    let none = Quota::default();
    let grant = admit_ok(&limiter, &[key("k", &none)], tokens(u64::MAX), at(0.0)).await;
    assert_eq!(grant.headers, RateHeaders::default());
    limiter.settle(grant, tokens(5), at(0.0)).await;

    let quota = Quota {
        tpm: Some(u64::MAX),
        usd_per_day: Some(f64::INFINITY),
        ..Quota::default()
    };
    let subjects = [key("k", &quota)];
    let bad = Demand {
        tokens: u64::MAX,
        usd: f64::NAN,
    };
    let grant = admit_ok(&limiter, &subjects, bad, at(0.0)).await;
    let negative = Demand {
        tokens: 0,
        usd: -1.0,
    };
    limiter
        .settle(grant, negative, UNIX_EPOCH - Duration::from_secs(1))
        .await;
    admit_ok(&limiter, &subjects, negative, at(0.0)).await;
}

#[test]
fn limiters_build_without_a_runtime_and_their_futures_are_send() {
    fn send<T: Send>(_: &T) {}
    let quota = rpm(1);
    let subjects = [key("k", &quota)];
    let redis = Limiter::redis(
        "redis://127.0.0.1:1/",
        FailurePolicy::Open,
        Duration::from_millis(10),
    );
    for limiter in [Limiter::in_process(), redis.unwrap()] {
        send(&limiter.admit(&subjects, tokens(1), at(0.0)));
        send(&limiter.settle(Grant::empty(), tokens(1), at(0.0)));
    }
}

#[tokio::test]
async fn a_detached_settle_gives_back_at_once_in_process() {
    let limiter = Arc::new(Limiter::in_process());
    let quota = tpm(1_000);
    let subjects = [key("k", &quota)];
    let grant = admit_ok(&limiter, &subjects, tokens(900), at(0.0)).await;
    assert!(limiter
        .admit(&subjects, tokens(900), at(0.0))
        .await
        .is_err());
    limiter.settle_detached(grant, tokens(10), at(0.0));
    admit_ok(&limiter, &subjects, tokens(900), at(0.0)).await;
}
