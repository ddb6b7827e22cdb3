//! A worker's spare header maps.
//!
//! Every proxied HTTP/1.1 exchange builds two header maps (the request's and the
//! response's), each two allocations. Once a message's head is encoded its map is emptied
//! and kept here, and the next parsed head takes it: steady traffic allocates no maps.
//! Thread-local, like everything a worker owns; bounded in count and in the size of what is
//! kept, so that a burst of large heads does not stay resident.

use std::cell::RefCell;

use http::HeaderMap;

/// Spare maps kept per thread.
const MAX_SPARE: usize = 64;
/// Maps grown past this many fields are dropped rather than kept.
const MAX_KEPT_CAPACITY: usize = 64;

thread_local! {
    static SPARE: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// An empty map with room for `capacity` fields: a spare one if there is one.
pub fn take(capacity: usize) -> HeaderMap {
    match SPARE.with_borrow_mut(Vec::pop) {
        Some(mut map) => {
            map.reserve(capacity);
            map
        }
        None => HeaderMap::with_capacity(capacity),
    }
}

/// Keeps `map`'s allocations for a later [`take`] (its fields are dropped now).
pub fn recycle(mut map: HeaderMap) {
    if map.capacity() == 0 || map.capacity() > MAX_KEPT_CAPACITY {
        return;
    }
    map.clear();
    SPARE.with_borrow_mut(|spare| {
        if spare.len() < MAX_SPARE {
            spare.push(map);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{HeaderValue, HOST};

    #[test]
    fn a_recycled_map_comes_back_empty_with_its_room() {
        let mut map = HeaderMap::with_capacity(8);
        map.insert(HOST, HeaderValue::from_static("a"));
        let room = map.capacity();
        recycle(map);
        let again = take(4);
        assert!(again.is_empty());
        assert_eq!(again.capacity(), room);
        // Nothing spare left: a new map.
        assert_eq!(take(0).capacity(), 0);
    }

    #[test]
    fn large_maps_are_not_kept() {
        recycle(HeaderMap::with_capacity(1000));
        assert_eq!(take(0).capacity(), 0);
    }
}
