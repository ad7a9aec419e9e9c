//! The shape every sans-IO machine of this crate shares (design: `handle_*` in, `poll_*`
//! out), as one trait: what a driver — a tokio task over a UDP socket, a DTLS wrapper, the
//! harness's virtual-clock link — needs to run any of them.

use std::net::SocketAddr;
use std::time::Instant;

use crate::admission::Admission;
use crate::bootstrap::{BootstrapServer, server::BootstrapEvent};
use crate::client::{ClientEvent, Lwm2mClient};
use crate::coap::Transmit;
use crate::server::{Lwm2mServer, ServerEvent};

/// A sans-IO machine: datagrams and timeouts in; datagrams, its next deadline and events
/// out. Nothing happens between calls.
pub trait Machine {
    /// What the machine reports.
    type Event;
    /// A datagram from `peer` arrived at `now`.
    fn handle_datagram(&mut self, now: Instant, peer: SocketAddr, bytes: &[u8]);
    /// The deadline of [`Machine::poll_timeout`] passed (`now` is at or after it).
    fn handle_timeout(&mut self, now: Instant);
    /// The next datagram to send.
    fn poll_transmit(&mut self) -> Option<Transmit>;
    /// When [`Machine::handle_timeout`] is due next.
    fn poll_timeout(&mut self) -> Option<Instant>;
    /// The next event.
    fn poll_event(&mut self) -> Option<Self::Event>;
}

/// A server machine with an admission gate as its hook ([`Admission`]): the LwM2M Server
/// and the Bootstrap Server. A DTLS socket (or a plain one beside a DTLS listener) hands it
/// each datagram with what it knows of the sender; the machine decodes the datagram once
/// and asks the hook about each request before handling it.
pub trait Admitting: Machine {
    /// A datagram from `peer` arrived at `now`; `admission` decides about its requests.
    /// [`Machine::handle_datagram`] is this with [`crate::admission::Open`].
    fn handle_admitted(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        bytes: &[u8],
        admission: &mut dyn Admission,
    );
}

/// Implements [`Admitting`] by the machine's inherent `handle_admitted`.
macro_rules! inherent_admitting {
    ($machine:ty) => {
        impl Admitting for $machine {
            fn handle_admitted(
                &mut self,
                now: Instant,
                peer: SocketAddr,
                bytes: &[u8],
                admission: &mut dyn Admission,
            ) {
                <$machine>::handle_admitted(self, now, peer, bytes, admission)
            }
        }
    };
}

inherent_admitting!(Lwm2mServer);
inherent_admitting!(BootstrapServer);

/// Implements [`Machine`] by the machine's inherent methods of the same names.
macro_rules! inherent_machine {
    ($machine:ty, $event:ty) => {
        impl Machine for $machine {
            type Event = $event;
            fn handle_datagram(&mut self, now: Instant, peer: SocketAddr, bytes: &[u8]) {
                <$machine>::handle_datagram(self, now, peer, bytes)
            }
            fn handle_timeout(&mut self, now: Instant) {
                <$machine>::handle_timeout(self, now)
            }
            fn poll_transmit(&mut self) -> Option<Transmit> {
                <$machine>::poll_transmit(self)
            }
            fn poll_timeout(&mut self) -> Option<Instant> {
                <$machine>::poll_timeout(self)
            }
            fn poll_event(&mut self) -> Option<$event> {
                <$machine>::poll_event(self)
            }
        }
    };
}

inherent_machine!(Lwm2mServer, ServerEvent);
inherent_machine!(BootstrapServer, BootstrapEvent);
inherent_machine!(Lwm2mClient, ClientEvent);
inherent_machine!(crate::coap::Endpoint, crate::coap::Event);
