//! The Redis store against a real `redis-server`, one per test, shared by two limiters that
//! stand for two gateway replicas.

use super::calendar::Periods;
use super::gcra::{Gcra, Tat};
use super::shared::LIB;
use super::*;
use redis::aio::MultiplexedConnection;
use redis::Script;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Instant, UNIX_EPOCH};

const TIMEOUT: Duration = Duration::from_millis(250);

/// A `redis-server` on a port of its own, without persistence, killed on drop.
struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    fn start() -> RedisServer {
        // Another test may take the port between our probe and the server's bind: try again.
        for _ in 0..5 {
            if let Some(server) = RedisServer::on(free_port()) {
                return server;
            }
        }
        panic!("no redis-server would start");
    }

    /// A server on `port`, once it answers PING; `None` if it never does.
    fn on(port: u16) -> Option<RedisServer> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on the PATH (these tests need a real one)");
        let mut server = RedisServer { child, port };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if server.answers_ping() {
                return Some(server);
            }
            if server.child.try_wait().ok().flatten().is_some() {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        server.stop();
        None
    }

    fn answers_ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)) else {
            return false;
        };
        let mut reply = [0; 7];
        stream
            .set_read_timeout(Some(Duration::from_secs(1)))
            .is_ok()
            && stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn stop(&mut self) {
        // Already gone is fine: all that matters is that it is.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    async fn connection(&self) -> MultiplexedConnection {
        let client = redis::Client::open(self.url()).unwrap();
        client.get_multiplexed_async_connection().await.unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    listener.local_addr().unwrap().port()
}

fn limiter(server: &RedisServer, policy: FailurePolicy) -> Limiter {
    Limiter::redis(&server.url(), policy, TIMEOUT).unwrap()
}

fn subject<'a>(scope: Scope, id: &'a str, quota: &'a Quota) -> Subject<'a> {
    Subject { scope, id, quota }
}

fn demand(tokens: u64, usd: f64) -> Demand {
    Demand { tokens, usd }
}

/// Starts `n` admissions of `demand` at once, alternating between `replicas`, for one
/// subject with `quota`; the number admitted. Every refusal must be a rate refusal of
/// `dimension` whose wait is at most `longest_wait`.
async fn concurrent_admissions(
    replicas: &[Arc<Limiter>; 2],
    quota: Quota,
    demand: Demand,
    n: usize,
    dimension: Dimension,
    longest_wait: Duration,
) -> usize {
    let quota = Arc::new(quota);
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (limiter, quota) = (replicas[i % 2].clone(), quota.clone());
            tokio::spawn(async move {
                let subjects = [subject(Scope::Key, "shared", &quota)];
                limiter.admit(&subjects, demand, SystemTime::now()).await
            })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => admitted += 1,
            Err(Refusal::Rate {
                dimension: refused,
                retry_after,
                ..
            }) => {
                assert_eq!(refused, dimension);
                assert!(retry_after > Duration::ZERO && retry_after <= longest_wait);
            }
            Err(other) => panic!("{other:?}"),
        }
    }
    admitted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_enforce_one_rpm_and_one_tpm_together() {
    let server = RedisServer::start();
    let replicas = [
        Arc::new(limiter(&server, FailurePolicy::Closed)),
        Arc::new(limiter(&server, FailurePolicy::Closed)),
    ];
    let ten_rpm = Quota {
        rpm: Some(10),
        ..Quota::default()
    };
    let six_seconds = Duration::from_secs(6);
    let admitted = concurrent_admissions(
        &replicas,
        ten_rpm,
        demand(0, 0.0),
        30,
        Dimension::Requests,
        six_seconds,
    )
    .await;
    assert_eq!(admitted, 10);

    let server = RedisServer::start();
    let replicas = [
        Arc::new(limiter(&server, FailurePolicy::Closed)),
        Arc::new(limiter(&server, FailurePolicy::Closed)),
    ];
    let thousand_tpm = Quota {
        tpm: Some(1_000),
        ..Quota::default()
    };
    let admitted = concurrent_admissions(
        &replicas,
        thousand_tpm,
        demand(100, 0.0),
        30,
        Dimension::Tokens,
        six_seconds,
    )
    .await;
    assert_eq!(admitted, 10);
    for replica in &replicas {
        assert_healthy(replica);
    }
}

#[tokio::test]
async fn two_replicas_share_token_reservations() {
    let server = RedisServer::start();
    let (a, b) = (
        limiter(&server, FailurePolicy::Closed),
        limiter(&server, FailurePolicy::Closed),
    );
    let quota = Quota {
        tpm: Some(1_000),
        ..Quota::default()
    };
    let subjects = [subject(Scope::Provider, "openai", &quota)];
    let now = SystemTime::now();
    let first = a.admit(&subjects, demand(300, 0.0), now).await.unwrap();
    assert_eq!(first.headers.tokens.map(|w| w.remaining), Some(700));
    b.admit(&subjects, demand(300, 0.0), now).await.unwrap();
    let third = a.admit(&subjects, demand(300, 0.0), now).await.unwrap();
    // The server's clock moves on between calls: the bucket may have refilled a token or two.
    let remaining = third.headers.tokens.map(|w| w.remaining).unwrap();
    assert!((100..=102).contains(&remaining), "{remaining}");
    let refused = b.admit(&subjects, demand(300, 0.0), now).await;
    assert!(
        matches!(
            refused,
            Err(Refusal::Rate {
                dimension: Dimension::Tokens,
                ..
            })
        ),
        "{refused:?}"
    );
    // Replica a's first request used nothing: b can have its tokens.
    a.settle(first, demand(0, 0.0), now).await;
    let fourth = b.admit(&subjects, demand(300, 0.0), now).await.unwrap();
    let remaining = fourth.headers.tokens.map(|w| w.remaining).unwrap();
    assert!((100..=105).contains(&remaining), "{remaining}");
    for replica in [&a, &b] {
        assert_healthy(replica);
    }
}

#[tokio::test]
async fn two_replicas_share_a_budget() {
    let server = RedisServer::start();
    let (a, b) = (
        limiter(&server, FailurePolicy::Closed),
        limiter(&server, FailurePolicy::Closed),
    );
    let quota = Quota {
        usd_per_day: Some(1.0),
        usd_per_month: Some(100.0),
        ..Quota::default()
    };
    let subjects = [subject(Scope::Team, "research", &quota)];
    let now = SystemTime::now();
    let mut grants = Vec::new();
    for replica in [&a, &b, &a] {
        grants.push(replica.admit(&subjects, demand(0, 0.3), now).await.unwrap());
    }
    // 0.9 reserved: another 0.3 does not fit.
    let Err(Refusal::Budget {
        period,
        spent_usd,
        retry_after,
        ..
    }) = b.admit(&subjects, demand(0, 0.3), now).await
    else {
        panic!("not a budget refusal");
    };
    assert_eq!(period, Period::Day);
    assert!((spent_usd - 0.9).abs() < 1e-9, "{spent_usd}");
    let unix_s = now.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let to_midnight = Periods::at(unix_s).day_end - unix_s;
    assert!(
        retry_after.as_secs().abs_diff(to_midnight) <= 2,
        "{retry_after:?}"
    );
    // Without an output cap, a request reserves what is left.
    let flexible = Ask {
        least: demand(0, 0.05),
        most: demand(0, 0.3),
    };
    let rest = b.admit(&subjects, flexible, now).await.unwrap();
    // One reservation turns out to have cost nothing: 0.3 is free again.
    b.settle(grants.remove(0), demand(0, 0.0), now).await;
    // It used a little more than it reserved: 0.75 spent.
    a.settle(rest, demand(0, 0.15), now).await;
    a.admit(&subjects, demand(0, 0.2), now).await.unwrap();
    assert!(matches!(
        b.admit(&subjects, demand(0, 0.1), now).await,
        Err(Refusal::Budget { .. })
    ));
    b.admit(&subjects, demand(0, 0.05), now).await.unwrap();
    for replica in [&a, &b] {
        assert_eq!(replica.shared_state().map(|h| h.errors), Some(0));
    }
}

#[tokio::test]
async fn a_refusal_by_the_team_leaves_the_key_untouched() {
    let server = RedisServer::start();
    let limiter = limiter(&server, FailurePolicy::Closed);
    let key_quota = Quota {
        rpm: Some(10),
        tpm: Some(1_000),
        usd_per_day: Some(10.0),
        ..Quota::default()
    };
    let team_quota = Quota {
        rpm: Some(1),
        ..Quota::default()
    };
    let both = [
        subject(Scope::Key, "k", &key_quota),
        subject(Scope::Team, "t", &team_quota),
    ];
    let now = SystemTime::now();
    limiter.admit(&both, demand(100, 1.0), now).await.unwrap();
    let mut connection = server.connection().await;
    let before: Vec<Option<String>> = redis::cmd("MGET")
        .arg(&["tollgate:rate:key:k:requests", "tollgate:rate:key:k:tokens"][..])
        .query_async(&mut connection)
        .await
        .unwrap();
    let refused = limiter.admit(&both, demand(100, 1.0), now).await;
    assert!(
        matches!(
            &refused,
            Err(Refusal::Rate {
                scope: Scope::Team,
                ..
            })
        ),
        "{refused:?}"
    );
    let after: Vec<Option<String>> = redis::cmd("MGET")
        .arg(&["tollgate:rate:key:k:requests", "tollgate:rate:key:k:tokens"][..])
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(before.iter().all(Option::is_some));
    assert_eq!(before, after);
    let alone = limiter
        .admit(&both[..1], demand(100, 1.0), now)
        .await
        .unwrap();
    assert_eq!(alone.headers.requests.map(|w| w.remaining), Some(8));
}

#[tokio::test]
async fn every_key_expires() {
    let server = RedisServer::start();
    let limiter = limiter(&server, FailurePolicy::Closed);
    let quota = Quota {
        rpm: Some(10),
        tpm: Some(1_000),
        usd_per_day: Some(10.0),
        usd_per_month: Some(100.0),
    };
    let subjects = [subject(Scope::Key, "k", &quota)];
    let grant = limiter
        .admit(&subjects, demand(500, 1.0), SystemTime::now())
        .await
        .unwrap();
    limiter
        .settle(grant, demand(900, 2.0), SystemTime::now())
        .await;
    let mut connection = server.connection().await;
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("tollgate:*")
        .query_async(&mut connection)
        .await
        .unwrap();
    keys.sort();
    let periods = Periods::at(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    );
    assert_eq!(
        keys,
        [
            "tollgate:rate:key:k:requests".to_owned(),
            "tollgate:rate:key:k:tokens".to_owned(),
            format!("tollgate:usd:key:k:day:{}", periods.day),
            format!("tollgate:usd:key:k:month:{}", periods.month),
        ]
    );
    let ttl = |key: &str| {
        let key = key.to_owned();
        let mut connection = connection.clone();
        async move {
            let ms: i64 = redis::cmd("PTTL")
                .arg(key)
                .query_async(&mut connection)
                .await
                .unwrap();
            Duration::from_millis(u64::try_from(ms).expect("a TTL"))
        }
    };
    let minute = Duration::from_secs(60);
    let requests = ttl(&keys[0]).await;
    assert!(
        requests > minute && requests <= minute + Duration::from_secs(7),
        "{requests:?}"
    );
    // 500 reserved, then 400 more charged: 54 s to full, kept a minute longer.
    let tokens = ttl(&keys[1]).await;
    assert!(
        tokens > minute + Duration::from_secs(50) && tokens <= 2 * minute,
        "{tokens:?}"
    );
    let day = ttl(&keys[2]).await;
    assert!(day > Duration::from_secs(86_400) && day <= Duration::from_secs(2 * 86_400));
    let month = ttl(&keys[3]).await;
    assert!(month > Duration::from_secs(86_400) && month <= Duration::from_secs(32 * 86_400));
    let spent: Vec<u64> = redis::cmd("MGET")
        .arg(&keys[2..])
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(spent, [2_000_000, 2_000_000]);
    assert_healthy(&limiter);
}

#[tokio::test]
async fn an_outage_fails_open_or_closed_and_recovery_is_noticed() {
    let mut server = RedisServer::start();
    let open = limiter(&server, FailurePolicy::Open);
    let closed = limiter(&server, FailurePolicy::Closed);
    let quota = Quota {
        rpm: Some(100),
        tpm: Some(10_000),
        ..Quota::default()
    };
    let subjects = [subject(Scope::Key, "k", &quota)];
    let now = SystemTime::now();
    let grant = open.admit(&subjects, demand(10, 0.0), now).await.unwrap();
    assert!(grant.headers.requests.is_some());
    closed.admit(&subjects, demand(10, 0.0), now).await.unwrap();

    server.stop();
    let started = Instant::now();
    let grant = open.admit(&subjects, demand(10, 0.0), now).await.unwrap();
    assert_eq!(
        grant.headers,
        RateHeaders::default(),
        "failed open: nothing reserved"
    );
    open.settle(grant, demand(10_000, 0.0), now).await;
    let refused = closed.admit(&subjects, demand(10, 0.0), now).await;
    assert!(matches!(refused, Err(Refusal::Unavailable)), "{refused:?}");
    assert!(started.elapsed() < 3 * TIMEOUT, "{:?}", started.elapsed());
    for limiter in [&open, &closed] {
        let health = limiter.shared_state().unwrap();
        assert!(!health.up && health.errors >= 1, "{health:?}");
    }

    let _server = RedisServer::on(server.port).expect("a server on the same port");
    for limiter in [&open, &closed] {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match limiter.admit(&subjects, demand(10, 0.0), now).await {
                Ok(grant) if grant.headers.requests.is_some() => break,
                Ok(_) | Err(Refusal::Unavailable) => {}
                Err(other) => panic!("{other:?}"),
            }
            assert!(
                Instant::now() < deadline,
                "Redis is back, the limiter never noticed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(limiter.shared_state().unwrap().up);
    }
}

#[tokio::test]
async fn a_limiter_built_before_redis_connects_once_it_is_up() {
    let mut server = RedisServer::start();
    server.stop();
    let limiter = limiter(&server, FailurePolicy::Closed);
    let quota = Quota {
        rpm: Some(5),
        ..Quota::default()
    };
    let subjects = [subject(Scope::Key, "k", &quota)];
    let refused = limiter
        .admit(&subjects, demand(0, 0.0), SystemTime::now())
        .await;
    assert!(matches!(refused, Err(Refusal::Unavailable)), "{refused:?}");
    assert_eq!(limiter.shared_state().map(|h| h.up), Some(false));
    let _server = RedisServer::on(server.port).expect("a server on the same port");
    let deadline = Instant::now() + Duration::from_secs(15);
    while limiter
        .admit(&subjects, demand(0, 0.0), SystemTime::now())
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "Redis is up, the limiter never connected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(limiter.shared_state().map(|h| h.up), Some(true));
}

/// Runs one of lib.lua's GCRA functions on the server.
async fn lua_gcra(
    connection: &mut MultiplexedConnection,
    script: &Script,
    args: &[i64],
) -> Vec<i64> {
    let mut invocation = script.prepare_invoke();
    for arg in args {
        invocation.arg(*arg);
    }
    invocation.invoke_async(connection).await.unwrap()
}

#[tokio::test]
async fn the_lua_gcra_matches_the_rust_one() {
    let server = RedisServer::start();
    let mut connection = server.connection().await;
    let script = Script::new(&format!(
        "{LIB}
        local limit, us, frac, now, n = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
        if ARGV[1] == '0' then
          local a, b, wait = gcra_take(limit, us, frac, now, n)
          return {{a, b, wait}}
        elseif ARGV[1] == '1' then
          return {{gcra_settle(limit, us, frac, now, n)}}
        end
        return {{gcra_window(limit, us, frac, now)}}"
    ));
    let mut rng = fastrand::Rng::with_seed(7);
    for limit in [1u64, 5, 7, 60, 1_000, 7_000_003, 150_000_000] {
        let gcra = Gcra::new(limit).unwrap();
        let mut tat = Tat::default();
        let mut now = 1_700_000_000_000_000u64;
        // Up to half a bucket at once, so that buckets fill and takes get refused.
        let most = limit / 2 + 1;
        for _ in 0..300 {
            now += rng.u64(0..=20_000_000);
            let n = rng.u64(0..=most);
            let args = |op: i64, last: u64| {
                let last = i64::try_from(last).unwrap();
                [
                    op,
                    limit as i64,
                    tat.us as i64,
                    tat.frac as i64,
                    now as i64,
                    last,
                ]
            };
            match rng.u8(0..3) {
                0 => {
                    let lua = lua_gcra(&mut connection, &script, &args(0, n)).await;
                    match gcra.take(tat, now, n) {
                        Ok(next) => {
                            assert_eq!(
                                lua,
                                [next.us as i64, next.frac as i64, 0],
                                "take {limit} {n}"
                            );
                            tat = next;
                        }
                        Err(wait) => assert_eq!(lua[2], wait as i64, "wait {limit} {n}"),
                    }
                }
                1 => {
                    let extra = n as i64 - rng.i64(0..=most as i64);
                    let mut lua_args = args(1, 0);
                    lua_args[5] = extra;
                    let lua = lua_gcra(&mut connection, &script, &lua_args).await;
                    tat = gcra.settle(tat, now, extra);
                    assert_eq!(
                        lua,
                        [tat.us as i64, tat.frac as i64],
                        "settle {limit} {extra}"
                    );
                }
                _ => {
                    let lua = lua_gcra(&mut connection, &script, &args(2, 0)).await;
                    let (remaining, reset) = gcra.window(tat, now);
                    assert_eq!(lua, [remaining as i64, reset as i64], "window {limit}");
                }
            }
        }
    }
}

#[tokio::test]
async fn the_lua_calendar_matches_chrono() {
    let server = RedisServer::start();
    let mut connection = server.connection().await;
    let script = Script::new(&format!(
        "{LIB}
        local out = {{}}
        for day = tonumber(ARGV[1]), tonumber(ARGV[2]) do
          for _, offset in ipairs({{0, 86399999999}}) do
            local d, de, m, me = periods(day * 86400000000 + offset)
            table.insert(out, d); table.insert(out, de); table.insert(out, m); table.insert(out, me)
          end
        end
        return out"
    ));
    // 1970 to 2243: every day's first and last microsecond, in calls short enough for the
    // connection's response timeout.
    for first in (0..100_000u64).step_by(5_000) {
        let last = first + 4_999;
        let lua: Vec<i64> = script
            .arg(first)
            .arg(last)
            .invoke_async(&mut connection)
            .await
            .unwrap();
        let mut expected = Vec::new();
        for day in first..=last {
            for offset_s in [0, 86_399] {
                let p = Periods::at(day * 86_400 + offset_s);
                expected.extend([p.day, p.day_end as i64, p.month, p.month_end as i64]);
            }
        }
        assert!(
            lua == expected,
            "the Lua calendar disagrees with chrono in days {first}..={last}"
        );
    }
}

/// Every call succeeded: none failed, and the store reads as up.
fn assert_healthy(limiter: &Limiter) {
    assert_eq!(
        limiter.shared_state(),
        Some(SharedStateHealth {
            up: true,
            errors: 0
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detached_settle_reaches_redis_on_a_task_of_its_own() {
    let server = RedisServer::start();
    let limiter = Arc::new(limiter(&server, FailurePolicy::Closed));
    let quota = Quota {
        tpm: Some(1_000),
        ..Quota::default()
    };
    let subjects = [subject(Scope::Key, "detached", &quota)];
    let grant = limiter
        .admit(&subjects, demand(900, 0.0), SystemTime::now())
        .await
        .unwrap();
    limiter.settle_detached(grant, demand(10, 0.0), SystemTime::now());
    let mut admitted = false;
    for _ in 0..100 {
        if limiter
            .admit(&subjects, demand(800, 0.0), SystemTime::now())
            .await
            .is_ok()
        {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(admitted, "the 890 tokens never came back");
}
