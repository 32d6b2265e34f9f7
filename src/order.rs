//! Sorting through one shared instance of the standard library's stable sort.
//!
//! `slice::sort*` is generic over the element and the comparison, so each call site with its own
//! element type links its own copy of the whole algorithm (about 5 kB of code each, 80 kB over the
//! agent's two dozen sites). The release binary has a size budget (ARCHITECTURE.md, "The release
//! binary"), so the agent sorts by computing the order of indices with the one copy below, then
//! moving the elements into that order: the generic part left at each call site is that move. The
//! sort stays the standard, stable one; the cost is a vector of indices, for lists of at most a few
//! hundred names.

use std::cmp::Ordering;

/// Sorts `items` stably by `compare`.
pub fn sort_by<T>(items: &mut Vec<T>, compare: impl Fn(&T, &T) -> Ordering) {
    if items.len() < 2 {
        return;
    }
    let mut order: Vec<usize> = (0..items.len()).collect();
    sort_indices(&mut order, &|a, b| compare(&items[a], &items[b]));
    let mut slots: Vec<Option<T>> = std::mem::take(items).into_iter().map(Some).collect();
    // Each index occurs once in `order`, so every slot is taken exactly once.
    items.extend(order.into_iter().filter_map(|i| slots[i].take()));
}

/// Sorts `items` stably in their natural order.
pub fn sort<T: Ord>(items: &mut Vec<T>) {
    sort_by(items, T::cmp);
}

/// Sorts `items` stably by the key `key` gives each.
pub fn sort_by_key<T, K: Ord>(items: &mut Vec<T>, key: impl Fn(&T) -> K) {
    sort_by(items, |a, b| key(a).cmp(&key(b)));
}

/// The one instance of the standard sort: indices ordered by a comparison of the elements they name.
#[inline(never)]
fn sort_indices(order: &mut [usize], compare: &dyn Fn(usize, usize) -> Ordering) {
    order.sort_by(|&a, &b| compare(a, b));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_like_the_standard_sort_and_keeps_equal_elements_in_order() {
        let mut items: Vec<(u32, &str)> =
            vec![(3, "c"), (1, "a"), (2, "b1"), (0, "z"), (2, "b2"), (1, "a2"), (2, "b3")];
        let mut expected = items.clone();
        expected.sort_by_key(|p| p.0);
        sort_by_key(&mut items, |p| p.0);
        assert_eq!(items, expected);
        assert_eq!(items[3..6], [(2, "b1"), (2, "b2"), (2, "b3")]);
    }

    #[test]
    fn natural_order_and_edge_lengths() {
        let mut names: Vec<String> = ["sdb", "sda", "vdc", "sda1"].iter().map(|s| s.to_string()).collect();
        sort(&mut names);
        assert_eq!(names, ["sda", "sda1", "sdb", "vdc"]);
        let mut empty: Vec<u8> = vec![];
        sort(&mut empty);
        assert!(empty.is_empty());
        let mut one = vec![7];
        sort(&mut one);
        assert_eq!(one, [7]);
    }

    #[test]
    fn owned_elements_are_moved_not_lost() {
        let mut items: Vec<Box<u32>> = (0..200u32).rev().map(Box::new).collect();
        sort_by(&mut items, |a, b| a.cmp(b));
        assert_eq!(items.iter().map(|b| **b).collect::<Vec<_>>(), (0..200).collect::<Vec<_>>());
    }
}
