//! Landing's bisection, as a plain state machine: when the combination of every
//! landable item fails its `verify` gates, find the longest prefix of the merge order
//! whose combination passes, and the item whose addition fails (the culprit).
//!
//! [`Bisection`] decides only which prefix to try next; whoever owns it runs the
//! `verify` gates on that prefix's combined tip (a normal, cached run) and records the
//! outcome. The search is binary over prefix lengths, so `n` items need at most
//! `ceil(log2 n)` runs. It assumes what a merge queue assumes: once a prefix fails, every
//! longer one fails too (a flaky gate is retried as any gate is, before its outcome is
//! recorded).

/// What to do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Verify the combination of the first `n` items of the merge order.
    Probe(usize),
    /// Land the first `land` items; item `culprit` (0-based, in merge order) is the
    /// first whose addition fails.
    Done {
        /// How many items land.
        land: usize,
        /// The first item whose addition fails.
        culprit: usize,
    },
}

/// A bisection over the prefixes of `n` items. See the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bisection {
    /// The longest prefix known to pass (0, the base alone, passes by definition).
    passes: usize,
    /// The shortest prefix known to fail.
    fails: usize,
}

impl Bisection {
    /// A search over `items` items whose whole combination failed (`items` ≥ 1).
    pub fn new(items: usize) -> Self {
        Self {
            passes: 0,
            fails: items.max(1),
        }
    }

    /// The next prefix to verify, or the answer.
    pub fn next(&self) -> Step {
        if self.fails - self.passes <= 1 {
            Step::Done {
                land: self.passes,
                culprit: self.fails - 1,
            }
        } else {
            Step::Probe(self.passes + (self.fails - self.passes) / 2)
        }
    }

    /// Records that the first `prefix` items' combination passed or failed. An outcome
    /// that says nothing new (outside the open range, or a repeat) changes nothing.
    pub fn record(&mut self, prefix: usize, passed: bool) {
        if prefix <= self.passes || prefix >= self.fails {
            return;
        }
        if passed {
            self.passes = prefix;
        } else {
            self.fails = prefix;
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Runs a bisection where prefixes longer than `culprit` fail; returns the answer
    /// and how many prefixes were verified.
    fn search(items: usize, culprit: usize) -> (Step, usize) {
        let mut b = Bisection::new(items);
        let mut probes = 0;
        loop {
            match b.next() {
                Step::Probe(n) => {
                    probes += 1;
                    assert!(probes <= 64, "the search ends");
                    b.record(n, n <= culprit);
                }
                done => return (done, probes),
            }
        }
    }

    #[test]
    fn a_single_item_is_its_own_culprit_without_a_probe() {
        assert_eq!(
            search(1, 0),
            (
                Step::Done {
                    land: 0,
                    culprit: 0
                },
                0
            )
        );
    }

    #[test]
    fn stale_and_repeated_outcomes_change_nothing() {
        let mut b = Bisection::new(8);
        assert_eq!(b.next(), Step::Probe(4));
        b.record(4, true);
        let before = b.clone();
        b.record(2, false);
        b.record(4, false);
        b.record(9, true);
        assert_eq!(b, before);
    }

    proptest! {
        #[test]
        fn it_finds_the_longest_passing_prefix_in_log_steps(items in 1usize..200, at in 0usize..200) {
            let culprit = at % items;
            let (step, probes) = search(items, culprit);
            prop_assert_eq!(step, Step::Done { land: culprit, culprit });
            let bound = (usize::BITS - (items.max(2) - 1).leading_zeros()) as usize;
            prop_assert!(probes <= bound, "{} probes for {} items", probes, items);
        }
    }
}
