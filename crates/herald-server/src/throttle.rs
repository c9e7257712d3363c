//! Failed-login throttling, per client IP and per account, so password guessing costs the
//! attacker time without locking a real user out for long.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use dashmap::DashMap;

#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    failures: u32,
}

pub struct AuthThrottle {
    max: u32,
    window: Duration,
    by_ip: DashMap<IpAddr, Window>,
    by_account: DashMap<String, Window>,
}

impl AuthThrottle {
    pub fn new(max: u32, window: Duration) -> AuthThrottle {
        AuthThrottle {
            max,
            window,
            by_ip: DashMap::new(),
            by_account: DashMap::new(),
        }
    }

    fn blocked<K: std::hash::Hash + Eq>(&self, map: &DashMap<K, Window>, key: &K) -> bool {
        map.get(key)
            .map(|w| w.start.elapsed() < self.window && w.failures >= self.max)
            .unwrap_or(false)
    }

    /// True when this IP or account has used up its failures in the current window.
    pub fn is_throttled(&self, ip: IpAddr, account: Option<&str>) -> bool {
        self.blocked(&self.by_ip, &ip)
            || account
                .map(|a| self.blocked(&self.by_account, &a.to_string()))
                .unwrap_or(false)
    }

    pub fn failure(&self, ip: IpAddr, account: Option<&str>) {
        let bump = |w: &mut Window| {
            if w.start.elapsed() >= self.window {
                *w = Window {
                    start: Instant::now(),
                    failures: 0,
                };
            }
            w.failures += 1;
        };
        let fresh = || Window {
            start: Instant::now(),
            failures: 0,
        };
        bump(&mut self.by_ip.entry(ip).or_insert_with(fresh));
        if let Some(a) = account {
            bump(&mut self.by_account.entry(a.to_string()).or_insert_with(fresh));
        }
        // Bound memory under a spray of addresses or names: drop expired windows.
        if self.by_ip.len() + self.by_account.len() > 100_000 {
            self.by_ip.retain(|_, w| w.start.elapsed() < self.window);
            self.by_account
                .retain(|_, w| w.start.elapsed() < self.window);
        }
    }

    /// A successful login clears the account's count (not the IP's: one good password must
    /// not reset guessing against other accounts).
    pub fn success(&self, account: &str) {
        self.by_account.remove(account);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttles_after_max_failures_per_ip_and_account() {
        let t = AuthThrottle::new(3, Duration::from_secs(60));
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(!t.is_throttled(ip, Some("a@x")));
            t.failure(ip, Some("a@x"));
        }
        assert!(t.is_throttled(ip, Some("b@x")));
        assert!(t.is_throttled(other, Some("a@x")));
        assert!(!t.is_throttled(other, Some("b@x")));
        t.success("a@x");
        assert!(!t.is_throttled(other, Some("a@x")));
    }

    #[test]
    fn window_expires() {
        let t = AuthThrottle::new(1, Duration::from_millis(20));
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        t.failure(ip, None);
        assert!(t.is_throttled(ip, None));
        std::thread::sleep(Duration::from_millis(30));
        assert!(!t.is_throttled(ip, None));
    }
}
