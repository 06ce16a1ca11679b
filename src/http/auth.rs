//! The admin check: `Authorization: Bearer <admin token>` on admin routes, and a limit on failed
//! attempts per client address, so that the token cannot be guessed by brute force. Past
//! `admin_auth_max_failures` failures in a window, every admin request from the address answers
//! 429 until the window ends, even one with the right token. Each failure is logged at WARN, but
//! an address hammering away cannot flood the log: its first failures and the moment it is
//! blocked are logged, and an address blocked in the window before logs only its next block.

use super::error::answer;
use super::routes::{gate, Access, Route};
use super::{peer, Api, ApiError};
use crate::config::Config;
use slog::{warn, Logger};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use warp::http::Method;
use warp::{Filter, Rejection};

/// Failures of one window logged one by one (the one that blocks is logged besides).
const LOGGED_FAILURES: u32 = 3;

/// Requests for `method` on `route` that carry the admin token, from an address not blocked.
pub(super) fn admin(
    route: &'static Route,
    method: Method,
    api: &Arc<Api>,
) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    let api = api.clone();
    gate(route, method, Access::Admin)
        .and(peer())
        .and(warp::header::optional::<String>("authorization"))
        .and_then(
            move |peer: Option<SocketAddr>, authorization: Option<String>| {
                answer(
                    api.admin
                        .check(peer, route, authorization.as_deref(), &api.log),
                )
            },
        )
        .untuple_one()
}

/// The admin token and the failures counted against client addresses.
pub struct AdminAuth {
    token: Option<String>,
    failures: FailureLimiter,
}

impl AdminAuth {
    /// The admin check `config` asks for.
    pub fn new(config: &Config) -> AdminAuth {
        AdminAuth {
            token: config.admin_token().map(str::to_string),
            failures: FailureLimiter::new(
                config.admin_auth_max_failures,
                Duration::from_millis(config.admin_auth_window_ms),
                config.admin_auth_max_clients,
            ),
        }
    }

    /// Whether a request from `peer` with this `Authorization` header may use an admin route.
    fn check(
        &self,
        peer: Option<SocketAddr>,
        route: &Route,
        header: Option<&str>,
        log: &Logger,
    ) -> Result<(), ApiError> {
        let Some(token) = &self.token else {
            // Nothing to guess: not counted.
            return Err(ApiError::Forbidden(
                "admin routes are disabled: no admin token is configured",
            ));
        };
        let key = client_key(peer);
        let now = Instant::now();
        if let Some(wait) = self.failures.blocked(key, now) {
            return Err(ApiError::TooManyFailures(whole_seconds(wait)));
        }
        let refused = match authorize_admin(token, header) {
            Ok(()) => return Ok(()),
            Err(refused) => refused,
        };
        let client = peer.map_or_else(|| "unknown".to_string(), |p| p.ip().to_string());
        let route = route.template;
        match self.failures.fail(key, now) {
            Failure::Logged(failures) => {
                warn!(log, "admin authentication failed"; "client" => client, "route" => route,
                    "failures" => failures, "error" => refused.status_and_code().1);
            }
            Failure::Blocked(wait) => {
                warn!(log, "admin authentication blocked: too many failures"; "client" => client,
                    "route" => route, "failures" => self.failures.max_failures,
                    "retry_after_s" => whole_seconds(wait));
            }
            Failure::Quiet => {}
        }
        Err(refused)
    }
}

/// Whether `header` carries the configured token: 401 without a bearer token, 403 with another.
fn authorize_admin(configured: &str, header: Option<&str>) -> Result<(), ApiError> {
    // The scheme is case-insensitive (RFC 9110, 11.1); one or more spaces follow it.
    let sent = header.and_then(|h| {
        let (scheme, token) = h.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim_start_matches(' '))
    });
    let Some(sent) = sent else {
        return Err(ApiError::Unauthorized);
    };
    // Compare in time independent of where the first difference is.
    let same = sent.len() == configured.len()
        && sent
            .bytes()
            .zip(configured.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Ok(())
    } else {
        Err(ApiError::Forbidden("wrong admin token"))
    }
}

/// Seconds for `Retry-After`: rounded up, at least 1.
fn whole_seconds(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

/// Whose failures are counted together: an IPv4 address; an IPv6 address by its /64, the block
/// one subscriber usually holds (an IPv4-mapped one as its IPv4 address); and every request
/// with no known address (in-process tests) in one bucket.
type ClientKey = Option<IpAddr>;

fn client_key(peer: Option<SocketAddr>) -> ClientKey {
    peer.map(|p| match p.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & (u128::MAX << 64)).into()),
        },
        v4 => v4,
    })
}

/// What a failure calls for in the log.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// One of the first failures of the window: the count so far.
    Logged(u32),
    /// The failure that blocks the address, for this long.
    Blocked(Duration),
    /// Nothing: the address's failures are already in the log.
    Quiet,
}

/// Failures per client in fixed windows, for at most `max_clients` clients.
struct FailureLimiter {
    max_failures: u32,
    window: Duration,
    max_clients: usize,
    clients: Mutex<HashMap<ClientKey, Failures>>,
}

/// One client's failures in its current window.
#[derive(Debug, Clone, Copy)]
struct Failures {
    since: Instant,
    count: u32,
    /// Blocked in the window before this one: only a new block is logged.
    quiet: bool,
}

impl FailureLimiter {
    fn new(max_failures: u32, window: Duration, max_clients: usize) -> FailureLimiter {
        FailureLimiter {
            max_failures,
            window,
            max_clients,
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ClientKey, Failures>> {
        // The map holds plain counts: one a panicking thread left half-updated is still usable.
        self.clients.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How long `client` stays blocked, if it is.
    fn blocked(&self, client: ClientKey, now: Instant) -> Option<Duration> {
        let failures = *self.lock().get(&client)?;
        let left = self
            .window
            .checked_sub(now.saturating_duration_since(failures.since))?;
        (failures.count >= self.max_failures && !left.is_zero()).then_some(left)
    }

    /// Counts a failure of `client`.
    fn fail(&self, client: ClientKey, now: Instant) -> Failure {
        let mut clients = self.lock();
        if clients.len() >= self.max_clients && !clients.contains_key(&client) {
            self.make_room(&mut clients, now);
        }
        let failures = clients.entry(client).or_insert(Failures {
            since: now,
            count: 0,
            quiet: false,
        });
        let age = now.saturating_duration_since(failures.since);
        if age >= self.window {
            failures.quiet = failures.count >= self.max_failures && age < 2 * self.window;
            failures.since = now;
            failures.count = 0;
        }
        failures.count = failures.count.saturating_add(1);
        if failures.count == self.max_failures {
            let age = now.saturating_duration_since(failures.since);
            Failure::Blocked(self.window.saturating_sub(age))
        } else if failures.count <= LOGGED_FAILURES && !failures.quiet {
            Failure::Logged(failures.count)
        } else {
            Failure::Quiet
        }
    }

    /// Drops the clients whose failures no longer matter (a blocked one is kept a window more,
    /// to keep its next window quiet); if none, the one whose window began first, preferring
    /// one that is not blocked.
    fn make_room(&self, clients: &mut HashMap<ClientKey, Failures>, now: Instant) {
        let blocked = |f: &Failures| f.count >= self.max_failures;
        clients.retain(|_, f| {
            let kept = if blocked(f) {
                2 * self.window
            } else {
                self.window
            };
            now.saturating_duration_since(f.since) < kept
        });
        if clients.len() >= self.max_clients {
            let oldest = clients
                .iter()
                .min_by_key(|(_, f)| (blocked(f), f.since))
                .map(|(client, _)| *client);
            if let Some(client) = oldest {
                clients.remove(&client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn admin_routes_are_refused_without_the_right_token() {
        let token = "s3cret-admin-token";
        assert!(matches!(
            authorize_admin(token, None),
            Err(ApiError::Unauthorized)
        ));
        assert!(matches!(
            authorize_admin(token, Some("Basic s3cret-admin-token")),
            Err(ApiError::Unauthorized)
        ));
        assert!(matches!(
            authorize_admin(token, Some("Bearer s3cret-admin-tokeN")),
            Err(ApiError::Forbidden(_))
        ));
        assert!(authorize_admin(token, Some("Bearer s3cret-admin-token")).is_ok());
        assert!(authorize_admin(token, Some("bearer s3cret-admin-token")).is_ok());
        assert!(authorize_admin(token, Some("BEARER  s3cret-admin-token")).is_ok());
        assert!(matches!(
            authorize_admin(token, Some("Bearers3cret-admin-token")),
            Err(ApiError::Unauthorized)
        ));
        assert!(matches!(
            authorize_admin(token, Some("Bearer s3cret-admin-token ")),
            Err(ApiError::Forbidden(_))
        ));
    }

    fn ip(text: &str) -> ClientKey {
        client_key(Some(SocketAddr::new(text.parse().unwrap(), 40000)))
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn an_address_is_blocked_after_its_failures_until_the_window_ends() {
        let limiter = FailureLimiter::new(3, MINUTE, 100);
        let (a, b) = (ip("10.0.0.1"), ip("10.0.0.2"));
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        assert_eq!(limiter.fail(a, at(0)), Failure::Logged(1));
        assert_eq!(limiter.fail(a, at(1)), Failure::Logged(2));
        assert_eq!(limiter.blocked(a, at(1)), None);
        assert_eq!(
            limiter.fail(a, at(10)),
            Failure::Blocked(Duration::from_secs(50))
        );
        assert_eq!(limiter.blocked(a, at(10)), Some(Duration::from_secs(50)));
        assert_eq!(limiter.blocked(a, at(59)), Some(Duration::from_secs(1)));
        // Another address, and the unknown bucket, are not blocked.
        assert_eq!(limiter.blocked(b, at(10)), None);
        assert_eq!(limiter.blocked(None, at(10)), None);
        assert_eq!(limiter.fail(b, at(10)), Failure::Logged(1));
        // The window passes.
        assert_eq!(limiter.blocked(a, at(60)), None);
    }

    #[test]
    fn an_address_that_keeps_failing_logs_one_line_a_window() {
        let limiter = FailureLimiter::new(5, MINUTE, 100);
        let a = ip("192.0.2.7");
        let start = Instant::now();
        let logged = |from: u64| {
            (0..5)
                .map(|i| limiter.fail(a, start + Duration::from_secs(from + i)))
                .filter(|f| *f != Failure::Quiet)
                .count()
        };
        // The first window: the first failures and the block.
        assert_eq!(logged(0), LOGGED_FAILURES as usize + 1);
        // Blocked in the window before: the block alone, window after window.
        assert_eq!(logged(60), 1);
        assert_eq!(logged(120), 1);
        // Quiet for a whole window: its failures are news again.
        assert_eq!(logged(300), LOGGED_FAILURES as usize + 1);
    }

    #[test]
    fn the_clients_remembered_are_capped() {
        let limiter = FailureLimiter::new(2, MINUTE, 3);
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let blocked = ip("10.0.0.9");
        limiter.fail(blocked, at(0));
        limiter.fail(blocked, at(0));
        for (i, client) in ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]
            .iter()
            .enumerate()
        {
            limiter.fail(ip(client), at(1 + i as u64));
            assert!(limiter.lock().len() <= 3);
        }
        // The oldest addresses that were not blocked made room; the blocked one stays blocked.
        assert!(limiter.blocked(blocked, at(5)).is_some());
        assert!(!limiter.lock().contains_key(&ip("10.0.0.1")));
        assert!(limiter.lock().contains_key(&ip("10.0.0.4")));
        // Expired entries go first, blocked ones a window later.
        limiter.fail(ip("10.0.0.5"), at(100));
        let mut left: Vec<ClientKey> = limiter.lock().keys().copied().collect();
        left.sort();
        assert_eq!(left, vec![ip("10.0.0.5"), blocked]);
        limiter.fail(ip("10.0.0.6"), at(130));
        limiter.fail(ip("10.0.0.7"), at(130));
        assert!(!limiter.lock().contains_key(&blocked));
    }

    #[test]
    fn addresses_count_by_host_and_ipv6_by_its_64() {
        assert_eq!(ip("2001:db8:1:2::1"), ip("2001:db8:1:2:ffff::9"));
        assert_ne!(ip("2001:db8:1:2::1"), ip("2001:db8:1:3::1"));
        assert_eq!(
            ip("::ffff:10.0.0.1"),
            Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)))
        );
        assert_ne!(ip("10.0.0.1"), ip("10.0.0.2"));
        assert_eq!(
            ip("2001:db8:1:2::1"),
            Some(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0, 0, 0, 0)))
        );
        assert_eq!(client_key(None), None);
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::from_secs(2)), 2);
        assert_eq!(whole_seconds(Duration::from_millis(59_001)), 60);
    }
}
