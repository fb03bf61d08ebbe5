//! `user_data` encoding.
//!
//! A connection operation's `user_data` is `gen << 48 | ptr | tag`: the slot pointer
//! (16-byte aligned, below 2^48 on every Linux user space), the low 16 bits of the slot's
//! generation in the top bits (a debug check that a completion finds the connection it was
//! submitted for), and a 4-bit tag that says which operation completed.
//!
//! Worker-level operations (accept, the tick timer, the wake pipe) carry a null pointer:
//! `index << 8 | kind << 4 | WORKER_TAG`.

/// Which operation of a connection completed. Tags below [`OpTag::SLAB_LANES`] may carry
/// a slab; the proxy gives them meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OpTag(pub u8);

impl OpTag {
    /// Tags 0..SLAB_LANES may lend a slab to the kernel (one slab per lane at a time).
    pub const SLAB_LANES: u8 = 4;
    /// The highest tag a connection may use (15 is reserved for worker tokens).
    pub const MAX: u8 = 14;
}

const WORKER_TAG: u64 = 15;
/// Worker kind 0 is the ring's own multishot accept; the proxy uses kinds 1..=14.
pub(crate) const ACCEPT_KIND: u8 = 0;
/// Worker kind 15 is the ring's registered-file-table updates (a completion only when one
/// fails); the proxy's kinds stay below it.
pub(crate) const FILES_KIND: u8 = 15;
const PTR_MASK: u64 = 0x0000_ffff_ffff_fff0;

/// A worker-level operation: not tied to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerToken {
    /// What kind of worker op (the proxy's numbering, 1..=14).
    pub kind: u8,
    /// Which one (listener index, ...).
    pub index: u32,
}

/// What a `user_data` value names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    Conn { addr: u64, gen16: u16, tag: OpTag },
    Worker(WorkerToken),
}

/// Encodes a connection op. `addr` must be 16-byte aligned and below 2^48.
pub fn encode_conn(addr: u64, gen: u32, tag: OpTag) -> u64 {
    debug_assert_eq!(addr & !PTR_MASK, 0, "slot address not 16-aligned or above 2^48");
    debug_assert!(tag.0 <= OpTag::MAX);
    ((gen as u64 & 0xffff) << 48) | (addr & PTR_MASK) | tag.0 as u64
}

/// Encodes a worker-level op.
pub fn encode_worker(token: WorkerToken) -> u64 {
    debug_assert!(token.kind < 16);
    ((token.index as u64) << 8) | ((token.kind as u64 & 0xf) << 4) | WORKER_TAG
}

/// Decodes either kind.
pub fn decode(user_data: u64) -> Decoded {
    let tag = (user_data & 0xf) as u8;
    if tag as u64 == WORKER_TAG {
        Decoded::Worker(WorkerToken { kind: ((user_data >> 4) & 0xf) as u8, index: (user_data >> 8) as u32 })
    } else {
        Decoded::Conn { addr: user_data & PTR_MASK, gen16: (user_data >> 48) as u16, tag: OpTag(tag) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_round_trips() {
        for &(addr, gen, tag) in &[(0x10u64, 0u32, 0u8), (0x7fff_ffff_fff0, 0xffff_ffff, 14), (0x5555_1234_5670, 77, 3)]
        {
            let ud = encode_conn(addr, gen, OpTag(tag));
            assert_eq!(decode(ud), Decoded::Conn { addr, gen16: gen as u16, tag: OpTag(tag) });
        }
    }

    #[test]
    fn worker_round_trips_and_never_looks_like_a_conn() {
        for kind in 0..16u8 {
            for index in [0u32, 1, 7, 0xff_ffff] {
                let t = WorkerToken { kind, index };
                assert_eq!(decode(encode_worker(t)), Decoded::Worker(t));
            }
        }
    }

    #[test]
    fn every_conn_tag_differs_from_worker_tag() {
        for tag in 0..=OpTag::MAX {
            assert!(matches!(decode(encode_conn(0x1000, 1, OpTag(tag))), Decoded::Conn { .. }));
        }
    }
}
