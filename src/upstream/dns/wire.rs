//! The DNS wire format, through `hickory-proto`: host names checked before anything is
//! sent, one query per record type, and what an answer says about the question asked
//! (the addresses at the end of its CNAME chain, NXDOMAIN, a server failure,
//! truncation). A datagram that is not the answer to the question asked (another id,
//! another question, not a response) reads as `None` and is ignored by the caller.

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use std::net::IpAddr;

/// Longest CNAME chain followed inside one answer.
const MAX_CNAMES: usize = 8;
/// The UDP payload size offered with EDNS (the 2020 DNS flag day's value: no IP
/// fragmentation on any common path).
const EDNS_PAYLOAD: u16 = 1232;

/// Checks a host name before it is looked up: at most 253 characters (a trailing dot
/// aside), dot-separated labels of 1 to 63 letters, digits, `-` or `_`.
pub(crate) fn check_host(name: &str) -> Result<(), &'static str> {
    let bare = name.strip_suffix('.').unwrap_or(name);
    if bare.is_empty() || bare.len() > 253 {
        return Err("a host name has 1 to 253 characters");
    }
    for label in bare.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("a label of a host name has 1 to 63 characters");
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err("a host name has only letters, digits, '-', '_' and dots");
        }
    }
    Ok(())
}

/// The absolute name `host` (checked by [`check_host`]) with `suffix` appended, if any.
pub(super) fn absolute(host: &str, suffix: Option<&str>) -> Option<Name> {
    let host = host.strip_suffix('.').unwrap_or(host);
    let text = match suffix.map(|s| s.trim_matches('.')) {
        Some(s) if !s.is_empty() => format!("{host}.{s}."),
        _ => format!("{host}."),
    };
    if text.len() > 254 {
        return None;
    }
    Name::from_ascii(text).ok()
}

/// Which of a lookup's two queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Family {
    V4,
    V6,
}

impl Family {
    pub(super) const BOTH: [Family; 2] = [Family::V4, Family::V6];

    pub(super) fn index(self) -> usize {
        self as usize
    }

    fn record_type(self) -> RecordType {
        match self {
            Family::V4 => RecordType::A,
            Family::V6 => RecordType::AAAA,
        }
    }
}

/// A recursive query for `name`'s addresses of one family, with id `id`.
pub(super) fn query(id: u16, name: &Name, family: Family, edns: bool) -> Vec<u8> {
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(name.clone(), family.record_type()));
    if edns {
        let mut opt = Edns::new();
        opt.set_max_payload(EDNS_PAYLOAD);
        msg.set_edns(opt);
    }
    // A checked name and a fixed question always encode; an empty message (which no
    // server answers) would only make this query time out.
    msg.to_vec().unwrap_or_default()
}

/// A random query id (from a generator seeded by the OS, as hickory's own queries use).
pub(super) fn random_id() -> u16 {
    Message::query().metadata.id
}

/// Decodes a datagram (or a TCP message); `None` when it is not a DNS message.
pub(super) fn decode(bytes: &[u8]) -> Option<Message> {
    Message::from_vec(bytes).ok()
}

/// What an answer says about the question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Reply {
    /// The name exists: its addresses of the family asked (none: it has no such
    /// records), and the shortest TTL along the chain to them, seconds.
    Records { ips: Vec<IpAddr>, ttl: u32 },
    /// The name does not exist (NXDOMAIN).
    NoSuchName,
    /// The answer did not fit (TC): ask again over TCP.
    Truncated,
    /// The server could not answer (SERVFAIL, REFUSED, ...).
    ServerFailure(ResponseCode),
}

/// Reads `msg` as the answer to query `id` for `name`'s addresses of `family`; `None`
/// when it is not that answer.
pub(super) fn reply_to(msg: &Message, id: u16, name: &Name, family: Family) -> Option<Reply> {
    let meta = &msg.metadata;
    if meta.id != id || meta.message_type != MessageType::Response || meta.op_code != OpCode::Query {
        return None;
    }
    // The question must be echoed: exactly the one asked.
    let [q] = msg.queries.as_slice() else { return None };
    if q.name() != name || q.query_type() != family.record_type() || q.query_class() != DNSClass::IN {
        return None;
    }
    if meta.truncation {
        return Some(Reply::Truncated);
    }
    match meta.response_code {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => return Some(Reply::NoSuchName),
        code => return Some(Reply::ServerFailure(code)),
    }
    // Follow the CNAME chain from the name asked, then take the addresses of its end.
    let mut target = name.clone();
    let mut ttl = u32::MAX;
    for _ in 0..MAX_CNAMES {
        let alias = msg.answers.iter().find_map(|r| match &r.data {
            RData::CNAME(c) if r.name == target && r.dns_class == DNSClass::IN => Some((c.0.clone(), r.ttl)),
            _ => None,
        });
        let Some((next, t)) = alias else { break };
        target = next;
        ttl = ttl.min(t);
    }
    let mut ips = Vec::new();
    for r in msg.answers.iter().filter(|r| r.name == target && r.dns_class == DNSClass::IN) {
        let ip = match (&r.data, family) {
            (RData::A(a), Family::V4) => IpAddr::V4(a.0),
            (RData::AAAA(a), Family::V6) => IpAddr::V6(a.0),
            _ => continue,
        };
        if !ips.contains(&ip) {
            ips.push(ip);
            ttl = ttl.min(r.ttl);
        }
    }
    if ips.is_empty() {
        ttl = 0;
    }
    Some(Reply::Records { ips, ttl })
}

#[cfg(test)]
pub(super) mod build {
    //! Answers as a nameserver would write them, for the tests.
    use super::*;
    use hickory_proto::rr::rdata::{A, AAAA, CNAME};
    use hickory_proto::rr::Record;

    /// The answer to `query` (decoded) with `code`, the records `records` (owner, TTL,
    /// data) and the TC bit.
    pub fn answer(query: &Message, code: ResponseCode, records: &[(&str, u32, RData)], truncated: bool) -> Vec<u8> {
        let mut msg = Message::response(query.metadata.id, OpCode::Query);
        msg.metadata.recursion_desired = true;
        msg.metadata.recursion_available = true;
        msg.metadata.response_code = code;
        msg.metadata.truncation = truncated;
        msg.add_queries(query.queries.iter().cloned());
        for (owner, ttl, data) in records {
            msg.add_answer(Record::from_rdata(Name::from_ascii(owner).unwrap(), *ttl, data.clone()));
        }
        msg.to_vec().unwrap()
    }

    pub fn a(ip: &str) -> RData {
        RData::A(A(ip.parse().unwrap()))
    }

    pub fn aaaa(ip: &str) -> RData {
        RData::AAAA(AAAA(ip.parse().unwrap()))
    }

    pub fn cname(target: &str) -> RData {
        RData::CNAME(CNAME(Name::from_ascii(target).unwrap()))
    }

    /// The name and family a query asks for.
    pub fn question(query: &Message) -> (String, Family) {
        let q = &query.queries[0];
        let family = if q.query_type() == RecordType::AAAA { Family::V6 } else { Family::V4 };
        (q.name().to_ascii().trim_end_matches('.').to_string(), family)
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn asked(id: u16, n: &str, family: Family) -> Message {
        decode(&query(id, &name(n), family, false)).unwrap()
    }

    #[test]
    fn host_names_are_checked_before_any_query() {
        for ok in ["a", "www.example.com", "www.example.com.", "_srv-x.a-1.test", &"a".repeat(63)] {
            assert_eq!(check_host(ok), Ok(()), "{ok}");
        }
        let long = ["a".repeat(63).as_str(); 4].join("."); // 255 characters
        for bad in ["", ".", "a..b", ".a", &"a".repeat(64), &long, "a b", "a/b", "é.test", "a:b"] {
            assert!(check_host(bad).is_err(), "{bad:?} passed");
        }
    }

    #[test]
    fn a_query_asks_one_question_with_recursion() {
        let q = asked(0x1234, "www.example.com.", Family::V6);
        assert_eq!(q.metadata.id, 0x1234);
        assert!(q.metadata.recursion_desired);
        assert_eq!(q.queries.len(), 1);
        assert_eq!(q.queries[0].query_type(), RecordType::AAAA);
        assert!(q.edns.is_none());
        let with_edns = decode(&query(1, &name("a.test."), Family::V4, true)).unwrap();
        assert_eq!(with_edns.edns.map(|e| e.max_payload()), Some(EDNS_PAYLOAD));
    }

    #[test]
    fn a_cname_chain_is_followed_to_its_addresses() {
        let q = asked(7, "www.example.test.", Family::V4);
        let bytes = answer(
            &q,
            ResponseCode::NoError,
            &[
                ("www.example.test.", 300, cname("edge.cdn.test.")),
                ("edge.cdn.test.", 60, cname("node.cdn.test.")),
                ("node.cdn.test.", 20, a("192.0.2.7")),
                ("node.cdn.test.", 30, a("192.0.2.8")),
                ("other.test.", 1, a("192.0.2.66")),
            ],
            false,
        );
        let reply = reply_to(&decode(&bytes).unwrap(), 7, &name("WWW.Example.TEST."), Family::V4);
        let ips = vec!["192.0.2.7".parse().unwrap(), "192.0.2.8".parse().unwrap()];
        assert_eq!(reply, Some(Reply::Records { ips, ttl: 20 }));
    }

    #[test]
    fn a_cname_loop_ends_with_no_addresses() {
        let q = asked(7, "a.test.", Family::V4);
        let bytes = answer(
            &q,
            ResponseCode::NoError,
            &[("a.test.", 5, cname("b.test.")), ("b.test.", 5, cname("a.test."))],
            false,
        );
        let reply = reply_to(&decode(&bytes).unwrap(), 7, &name("a.test."), Family::V4);
        assert_eq!(reply, Some(Reply::Records { ips: vec![], ttl: 0 }));
    }

    #[test]
    fn only_the_answer_to_the_question_asked_counts() {
        let q = asked(9, "a.test.", Family::V4);
        let good = answer(&q, ResponseCode::NoError, &[("a.test.", 5, a("192.0.2.1"))], false);
        let msg = decode(&good).unwrap();
        assert!(reply_to(&msg, 9, &name("a.test."), Family::V4).is_some());
        assert_eq!(reply_to(&msg, 10, &name("a.test."), Family::V4), None, "another id");
        assert_eq!(reply_to(&msg, 9, &name("b.test."), Family::V4), None, "another name");
        assert_eq!(reply_to(&msg, 9, &name("a.test."), Family::V6), None, "another type");
        assert_eq!(reply_to(&q, 9, &name("a.test."), Family::V4), None, "a query, not a response");
        assert_eq!(decode(b"\x00\x09garbage"), None);
        // An AAAA record in an answer to A is not an address of the family asked.
        let mixed = answer(&q, ResponseCode::NoError, &[("a.test.", 5, aaaa("2001:db8::1"))], false);
        let reply = reply_to(&decode(&mixed).unwrap(), 9, &name("a.test."), Family::V4);
        assert_eq!(reply, Some(Reply::Records { ips: vec![], ttl: 0 }));
    }

    #[test]
    fn rcodes_and_truncation_are_read() {
        let q = asked(3, "a.test.", Family::V4);
        let read = |code, tc| reply_to(&decode(&answer(&q, code, &[], tc)).unwrap(), 3, &name("a.test."), Family::V4);
        assert_eq!(read(ResponseCode::NXDomain, false), Some(Reply::NoSuchName));
        assert_eq!(read(ResponseCode::ServFail, false), Some(Reply::ServerFailure(ResponseCode::ServFail)));
        assert_eq!(read(ResponseCode::Refused, false), Some(Reply::ServerFailure(ResponseCode::Refused)));
        assert_eq!(read(ResponseCode::NoError, true), Some(Reply::Truncated));
    }

    #[test]
    fn search_suffixes_make_absolute_names() {
        assert_eq!(absolute("intranet", Some("corp.test")), Some(name("intranet.corp.test.")));
        assert_eq!(absolute("intranet", Some(".corp.test.")), Some(name("intranet.corp.test.")));
        assert_eq!(absolute("a.test.", None), Some(name("a.test.")));
        assert_eq!(absolute(&"a".repeat(63), Some(&["b".repeat(63).as_str(); 3].join("."))), None);
    }
}
