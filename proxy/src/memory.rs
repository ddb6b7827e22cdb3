//! Keeping configuration memory small: messages kept encoded ([`Encoded`]), and freed heap
//! given back to the operating system after a large configuration update and when a
//! drained listener's connections have closed.
//!
//! Decoding a response with thousands of resources allocates tens of megabytes that are
//! freed once the update is applied. glibc keeps freed memory inside its heap, so without
//! a trim the process's resident size stays at the decoding peak instead of the size of
//! the configuration it holds. (Envoy links tcmalloc, which releases memory in the
//! background; this is the equivalent for the system allocator.)

use std::marker::PhantomData;

use prost::Message;

/// Encoded size of an xDS response from which a trim is worth its cost (a trim walks the
/// heap's free lists: well under a millisecond per hundred megabytes).
pub const TRIM_AFTER_BYTES: usize = 256 * 1024;

/// Returns the free pages of every malloc arena to the operating system.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and madvises the allocator's own free chunks; it is
    // thread-safe (it takes each arena's lock) and has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The allocator's figures: bytes in use, held from the system, and held but free (glibc's
/// `mallinfo2`; zeros elsewhere).
#[derive(Debug, Clone, Copy, Default)]
pub struct HeapStats {
    /// Allocated and in use (mmapped blocks included).
    pub in_use: u64,
    /// Held from the system.
    pub held: u64,
    /// Held but free.
    pub free: u64,
}

/// The allocator's figures now.
pub fn heap_stats() -> HeapStats {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's counters (taking its locks).
        let m = unsafe { libc::mallinfo2() };
        HeapStats {
            in_use: (m.uordblks + m.hblkhd) as u64,
            held: (m.arena + m.hblkhd) as u64,
            free: m.fordblks as u64,
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        HeapStats::default()
    }
}

/// The process's resident memory in bytes, from /proc (Linux).
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// A protobuf message kept in its encoded form and decoded when needed.
///
/// A decoded `Cluster` is 3.4 KB before any of its fields are set and a decoded
/// `ClusterLoadAssignment` with one endpoint about 3.5 KB; encoded, each is tens of bytes.
/// At 10,000 clusters that is most of the configuration's memory, and the decoded form is
/// only needed for `/config_dump` and when a resource changes.
pub struct Encoded<T> {
    bytes: Box<[u8]>,
    message: PhantomData<fn() -> T>,
}

impl<T: Message + Default + PartialEq> Encoded<T> {
    /// Encodes `message`.
    pub fn new(message: &T) -> Self {
        Encoded {
            bytes: message.encode_to_vec().into_boxed_slice(),
            message: PhantomData,
        }
    }

    /// Keeps `bytes` that have just been decoded successfully as a `T`.
    pub fn from_valid_bytes(bytes: &[u8]) -> Self {
        Encoded {
            bytes: bytes.into(),
            message: PhantomData,
        }
    }

    /// The message.
    pub fn decode(&self) -> T {
        // The bytes were produced by `encode` of a valid message, so decoding cannot fail
        // short of memory corruption; an empty message is the safe answer then.
        T::decode(&*self.bytes).unwrap_or_else(|e| {
            tracing::error!(error = %e, "re-decoding a stored message failed");
            T::default()
        })
    }

    /// The encoded bytes (equal messages without map fields encode equally).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Whether `message` is the stored message. Map fields encode in no fixed order, so
    /// differing bytes fall back to comparing decoded messages.
    pub fn same_as(&self, message: &T) -> bool {
        *self.bytes == *message.encode_to_vec() || self.decode() == *message
    }
}

impl<T> Clone for Encoded<T> {
    fn clone(&self) -> Self {
        Encoded {
            bytes: self.bytes.clone(),
            message: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for Encoded<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Encoded({} bytes)", self.bytes.len())
    }
}

impl<T> PartialEq for Encoded<T> {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use courier_proto::envoy::config::endpoint::v3::ClusterLoadAssignment;

    #[test]
    fn round_trips_and_compares() {
        let cla = ClusterLoadAssignment {
            cluster_name: "c".into(),
            ..Default::default()
        };
        let stored = Encoded::new(&cla);
        assert_eq!(stored.decode(), cla);
        assert!(stored.same_as(&cla));
        let other = ClusterLoadAssignment {
            cluster_name: "d".into(),
            ..Default::default()
        };
        assert!(!stored.same_as(&other));
    }
}
