//! The descriptor pool of every Envoy v3 message envoy-types knows.

use std::sync::OnceLock;

use prost_reflect::DescriptorPool;

static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptors.bin"));

/// The process-wide pool, decoded once on first use.
pub fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        // The bytes are envoy-types' own build output, checked by this crate's tests; a
        // failure here is a build defect, not input.
        DescriptorPool::decode(DESCRIPTORS).expect("envoy-types ships a valid descriptor set")
    })
}
