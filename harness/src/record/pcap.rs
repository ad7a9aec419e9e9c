//! Pcap recording of UDP datagrams as a capture tool would have seen them: every datagram
//! is written with a synthesized IPv4 or IPv6 header and a UDP header (LINKTYPE_RAW, 101),
//! so Wireshark and `tshark` apply their UDP, CoAP and DTLS dissectors.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::{DataLink, Endianness, TsResolution};

/// Writes datagrams to a pcap file.
pub struct PcapRecorder<W: Write = BufWriter<File>> {
    writer: PcapWriter<W>,
    packets: u64,
}

impl PcapRecorder<BufWriter<File>> {
    /// Creates (truncates) the file at `path`.
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        let file = File::create(path)
            .map_err(|e| anyhow::anyhow!("creating pcap {}: {e}", path.display()))?;
        Self::new(BufWriter::new(file))
    }
}

impl<W: Write> PcapRecorder<W> {
    /// A recorder writing to `out`.
    pub fn new(out: W) -> anyhow::Result<Self> {
        let header = PcapHeader {
            version_major: 2,
            version_minor: 4,
            ts_correction: 0,
            ts_accuracy: 0,
            snaplen: 65_535,
            datalink: DataLink::RAW,
            ts_resolution: TsResolution::MicroSecond,
            endianness: Endianness::Little,
        };
        Ok(Self {
            writer: PcapWriter::with_header(out, header)?,
            packets: 0,
        })
    }

    /// Records one UDP datagram from `src` to `dst` at `time` (since the Unix epoch).
    /// Mixed address families are written as IPv4-mapped IPv6.
    pub fn record(
        &mut self,
        time: Duration,
        src: SocketAddr,
        dst: SocketAddr,
        payload: &[u8],
    ) -> anyhow::Result<()> {
        let packet = ip_udp_packet(src, dst, payload);
        let len = u32::try_from(packet.len()).unwrap_or(u32::MAX);
        self.writer
            .write_packet(&PcapPacket::new(time, len, &packet))?;
        self.packets += 1;
        Ok(())
    }

    /// How many datagrams were recorded.
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// Flushes and returns the writer.
    pub fn finish(self) -> anyhow::Result<W> {
        let mut w = self.writer.into_writer();
        w.flush()?;
        Ok(w)
    }
}

/// The internet checksum (RFC 1071) of `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn udp_header(src: u16, dst: u16, payload_len: usize) -> [u8; 8] {
    let len = u16::try_from(payload_len + 8).unwrap_or(u16::MAX);
    let mut h = [0u8; 8];
    h[0..2].copy_from_slice(&src.to_be_bytes());
    h[2..4].copy_from_slice(&dst.to_be_bytes());
    h[4..6].copy_from_slice(&len.to_be_bytes());
    h
}

/// An IP packet carrying one UDP datagram (UDP checksum computed for both families).
pub fn ip_udp_packet(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut udp = udp_header(src.port(), dst.port(), payload.len()).to_vec();
    udp.extend_from_slice(payload);
    let udp_len = u16::try_from(udp.len()).unwrap_or(u16::MAX);
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut pseudo = Vec::with_capacity(12 + udp.len());
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&[0, 17]);
            pseudo.extend_from_slice(&udp_len.to_be_bytes());
            pseudo.extend_from_slice(&udp);
            let c = match checksum(&pseudo) {
                0 => 0xffff,
                c => c,
            };
            udp[6..8].copy_from_slice(&c.to_be_bytes());
            let total = u16::try_from(20 + udp.len()).unwrap_or(u16::MAX);
            let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
            ip[2..4].copy_from_slice(&total.to_be_bytes());
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            let c = checksum(&ip);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            ip.extend_from_slice(&udp);
            ip
        }
        (s, d) => {
            let v6 = |a: IpAddr| match a {
                IpAddr::V6(a) => a,
                IpAddr::V4(a) => a.to_ipv6_mapped(),
            };
            let (s, d): (Ipv6Addr, Ipv6Addr) = (v6(s), v6(d));
            let mut pseudo = Vec::with_capacity(40 + udp.len());
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&u32::from(udp_len).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 17]);
            pseudo.extend_from_slice(&udp);
            let c = match checksum(&pseudo) {
                0 => 0xffff,
                c => c,
            };
            udp[6..8].copy_from_slice(&c.to_be_bytes());
            let mut ip = vec![0x60, 0, 0, 0];
            ip.extend_from_slice(&udp_len.to_be_bytes());
            ip.extend_from_slice(&[17, 64]);
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            ip.extend_from_slice(&udp);
            ip
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_checksum_verifies() {
        let p = ip_udp_packet(
            "127.0.0.1:5683".parse().unwrap(),
            "127.0.0.2:40000".parse().unwrap(),
            b"\x40\x01\x00\x01",
        );
        assert_eq!(p.len(), 20 + 8 + 4);
        assert_eq!(checksum(&p[..20]), 0, "IPv4 header checksum");
        let p6 = ip_udp_packet(
            "[::1]:5683".parse().unwrap(),
            "[::1]:1".parse().unwrap(),
            b"x",
        );
        assert_eq!(p6.len(), 40 + 8 + 1);
        assert_eq!(p6[0] >> 4, 6);
    }
}
