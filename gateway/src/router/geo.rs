//! Where a client is, how near regions are to each other, and residency: traffic that may
//! never leave a set of regions, failover included.

use ipnet::IpNet;
use std::collections::HashMap;
use std::net::IpAddr;

pub struct Geo {
    /// Longest prefix first, so the most specific range wins.
    ranges: Vec<(IpNet, String)>,
    nearest: HashMap<String, Vec<String>>,
    /// This gateway's own region: the answer when nothing else tells.
    home: Option<String>,
}

impl Geo {
    pub fn new(
        mut ranges: Vec<(IpNet, String)>,
        nearest: HashMap<String, Vec<String>>,
        home: Option<String>,
    ) -> Geo {
        ranges.sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_len()));
        Geo {
            ranges,
            nearest,
            home,
        }
    }

    /// `x-tollgate-region`, else the client address's range, else this gateway's region.
    pub fn client_region<'a>(
        &'a self,
        header: Option<&'a str>,
        client: Option<IpAddr>,
    ) -> Option<&'a str> {
        header
            .filter(|h| !h.is_empty())
            .or_else(|| {
                let ip = client?;
                self.ranges
                    .iter()
                    .find(|(net, _)| net.contains(&ip))
                    .map(|(_, region)| region.as_str())
            })
            .or(self.home.as_deref())
    }

    /// How near `target` is to `client`: 0 in the same region, then the position in the
    /// client region's `nearest` list; unknown regions come last.
    pub fn distance(&self, client: Option<&str>, target: Option<&str>) -> f64 {
        let (Some(client), Some(target)) = (client, target) else {
            return f64::MAX;
        };
        if client == target {
            return 0.0;
        }
        self.nearest
            .get(client)
            .and_then(|order| order.iter().position(|r| r == target))
            .map_or(f64::MAX / 2.0, |i| (i + 1) as f64)
    }
}

/// Whether a target in `region` may serve traffic bound to `residency`; a target with no
/// region never qualifies.
pub fn resident(region: Option<&str>, residency: &[String]) -> bool {
    region.is_some_and(|r| residency.iter().any(|allowed| allowed == r))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo() -> Geo {
        Geo::new(
            vec![
                ("10.0.0.0/8".parse().unwrap(), "us-east".into()),
                ("10.1.0.0/16".parse().unwrap(), "eu-west".into()),
            ],
            HashMap::from([(
                "eu-west".into(),
                vec!["eu-central".into(), "us-east".into()],
            )]),
            Some("us-west".into()),
        )
    }

    #[test]
    fn header_then_longest_range_then_home() {
        let g = geo();
        let ip = |s: &str| Some(s.parse().unwrap());
        assert_eq!(
            g.client_region(Some("ap-south"), ip("10.1.2.3")),
            Some("ap-south")
        );
        assert_eq!(g.client_region(None, ip("10.1.2.3")), Some("eu-west"));
        assert_eq!(g.client_region(None, ip("10.9.2.3")), Some("us-east"));
        assert_eq!(g.client_region(None, ip("192.168.1.1")), Some("us-west"));
    }

    #[test]
    fn distance_order() {
        let g = geo();
        let d = |t| g.distance(Some("eu-west"), t);
        assert!(d(Some("eu-west")) < d(Some("eu-central")));
        assert!(d(Some("eu-central")) < d(Some("us-east")));
        assert!(d(Some("us-east")) < d(Some("ap-south")));
        assert!(d(Some("ap-south")) < d(None));
    }

    #[test]
    fn residency_is_absolute() {
        let eu = vec!["eu-west".to_string()];
        assert!(resident(Some("eu-west"), &eu));
        assert!(!resident(Some("us-east"), &eu));
        assert!(
            !resident(None, &eu),
            "an unknown region is not inside any residency"
        );
    }
}
