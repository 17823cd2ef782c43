//! Small bounded containers the parsers share.

/// A small insertion-ordered map that forgets its oldest entry beyond
/// `cap` entries (prepared statements, portals).
pub(crate) struct BoundedMap<K, V> {
    entries: std::collections::VecDeque<(K, V)>,
    cap: usize,
}

impl<K: PartialEq, V> BoundedMap<K, V> {
    pub fn new(cap: usize) -> Self {
        BoundedMap { entries: std::collections::VecDeque::new(), cap: cap.max(1) }
    }

    pub fn insert(&mut self, k: K, v: V) {
        self.remove(&k);
        if self.entries.len() >= self.cap {
            self.entries.pop_front();
        }
        self.entries.push_back((k, v));
    }

    pub fn get(&self, k: &K) -> Option<&V> {
        self.entries.iter().rev().find(|(ek, _)| ek == k).map(|(_, v)| v)
    }

    pub fn remove(&mut self, k: &K) {
        self.entries.retain(|(ek, _)| ek != k);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}
