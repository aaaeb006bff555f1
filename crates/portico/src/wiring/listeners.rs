//! The load balancer's listeners as the hosted zones see them: the addresses an ALIAS to a
//! listener answers with.

use std::sync::Arc;

use portico_dns::answer::ListenerAddrs;
use portico_lb::LoadBalancer;

/// ALIAS records that name a listener answer with the addresses it is bound to.
pub(crate) struct LbListeners(pub(crate) Arc<LoadBalancer>);

impl ListenerAddrs for LbListeners {
    fn addrs(&self, listener: &str) -> Vec<std::net::IpAddr> {
        let mut ips: Vec<std::net::IpAddr> = self
            .0
            .local_addrs(listener)
            .into_iter()
            .map(|a| a.ip())
            .filter(|ip| !ip.is_unspecified())
            .collect();
        ips.dedup();
        ips
    }
}
