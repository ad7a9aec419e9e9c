//! `simulate --metrics ADDR` and `run --metrics ADDR`: the fleet's live counters in the
//! Prometheus text format.

use std::fmt::Write as _;

use lwm2m_simulator::fleet::CountersSnapshot;

/// The counters as Prometheus samples: gauges for the clients in a state now, counters for
/// the rest.
pub fn render(c: &CountersSnapshot) -> String {
    let gauges: [(&str, u64, &str); 7] = [
        ("clients", c.clients, "Clients in the fleet."),
        ("registered", c.registered, "Clients registered now."),
        ("sleeping", c.sleeping, "Queue-mode clients asleep now."),
        (
            "bootstrapping",
            c.bootstrapping,
            "Clients bootstrapping now.",
        ),
        (
            "registering",
            c.registering,
            "Clients waiting for their Register's answer now.",
        ),
        ("failed", c.failed, "Clients that gave up and stay down."),
        ("started", c.started, "Clients started so far."),
    ];
    let counters: [(&str, u64, &str); 18] = [
        (
            "clients_registered",
            c.clients_registered,
            "Clients that registered at least once.",
        ),
        ("registrations", c.registrations, "Successful Registers."),
        ("updates", c.updates, "Successful Updates."),
        (
            "failures",
            c.failures,
            "Bootstrap, Register or Update attempts that failed.",
        ),
        (
            "deregistrations",
            c.deregistrations,
            "Successful De-registers.",
        ),
        (
            "requests_served",
            c.requests_served,
            "Server requests the clients answered.",
        ),
        (
            "notifications_sent",
            c.notifications_sent,
            "Notifications the clients sent.",
        ),
        (
            "datagrams_in",
            c.datagrams_in,
            "Datagrams delivered to the clients.",
        ),
        (
            "datagrams_out",
            c.datagrams_out,
            "Datagrams the clients sent.",
        ),
        (
            "bytes_in",
            c.bytes_in,
            "UDP payload bytes delivered to the clients.",
        ),
        (
            "bytes_out",
            c.bytes_out,
            "UDP payload bytes the clients sent.",
        ),
        (
            "dropped_asleep",
            c.dropped_asleep,
            "Datagrams dropped: the client was asleep.",
        ),
        (
            "dropped_nat",
            c.dropped_nat,
            "Datagrams dropped: expired NAT mapping.",
        ),
        (
            "dropped_loss",
            c.dropped_loss,
            "Datagrams lost by the impairment model.",
        ),
        (
            "rebinds",
            c.rebinds,
            "Public address changes after a NAT mapping expired.",
        ),
        (
            "dtls_handshakes",
            c.dtls_handshakes,
            "DTLS handshakes started.",
        ),
        ("dtls_failures", c.dtls_failures, "DTLS handshakes failed."),
        (
            "version_fallbacks",
            c.version_fallbacks,
            "Registers sent again as an older LwM2M version after 4.12.",
        ),
    ];
    let mut o = String::new();
    for (name, v, help) in gauges {
        let _ = writeln!(
            o,
            "# HELP lwm2m_fleet_{name} {help}\n# TYPE lwm2m_fleet_{name} gauge\nlwm2m_fleet_{name} {v}"
        );
    }
    for (name, v, help) in counters {
        let _ = writeln!(
            o,
            "# HELP lwm2m_fleet_{name}_total {help}\n# TYPE lwm2m_fleet_{name}_total counter\nlwm2m_fleet_{name}_total {v}"
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_has_a_type_and_a_number() {
        let c = CountersSnapshot {
            clients: 3,
            registered: 2,
            registrations: 5,
            ..CountersSnapshot::default()
        };
        let text = render(&c);
        let mut typed = Vec::new();
        let mut samples = std::collections::BTreeMap::new();
        for line in text.lines() {
            if let Some(t) = line.strip_prefix("# TYPE ") {
                typed.push(t.split(' ').next().unwrap().to_owned());
            } else if !line.starts_with('#') {
                let (k, v) = line.split_once(' ').unwrap();
                assert!(typed.iter().any(|t| t == k), "{line}");
                samples.insert(k.to_owned(), v.parse::<u64>().unwrap());
            }
        }
        assert_eq!(samples.len(), 25);
        assert_eq!(samples["lwm2m_fleet_clients"], 3);
        assert_eq!(samples["lwm2m_fleet_registered"], 2);
        assert_eq!(samples["lwm2m_fleet_registrations_total"], 5);
        assert_eq!(samples["lwm2m_fleet_dtls_failures_total"], 0);
    }
}
