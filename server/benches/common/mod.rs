//! What `server_load` and `dtls_load` share: the Reads the server makes of its fleet.

use std::error::Error;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use lwm2m_proto::server::{Content, Operation};
use lwm2m_proto::{Lwm2mPath, Node, ResourceValue, Value};
use lwm2m_server::ServerHandle;

type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

/// The server reads /3/0/0 (the fleet profile's "ACME") from every client `bench-N`,
/// `reads` times each, from `in_flight` tasks with one Read outstanding each (no task per
/// Read, so the bench's own CPU stays off the server's). How many Reads, how long they took
/// together, and their latencies; the first wrong answer is the error.
pub async fn read_manufacturer(
    server: &ServerHandle,
    clients: usize,
    reads: usize,
    in_flight: usize,
) -> Result<(usize, Duration, Histogram<u64>)> {
    let total = clients * reads;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(in_flight);
    for worker in 0..in_flight.min(total.max(1)) {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let expected = Content::Node(Node::Resource(ResourceValue::Single(Value::String(
                "ACME".into(),
            ))));
            for k in (worker..total).step_by(in_flight) {
                let ep = format!("bench-{}", k % clients);
                let t = Instant::now();
                let read = Operation::Read {
                    path: Lwm2mPath::resource(3, 0, 0),
                    format: None,
                };
                let response = server.request(&ep, read).await;
                let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
                match response {
                    Ok(r) if r.content.as_ref() == Some(&expected) => {
                        latencies.record(us.max(1))?
                    }
                    other => return Err(format!("{ep}: {other:?}").into()),
                }
            }
            Ok::<_, Box<dyn Error + Send + Sync>>(latencies)
        }));
    }
    let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for t in tasks {
        latencies.add(t.await??)?;
    }
    Ok((total, started.elapsed(), latencies))
}
