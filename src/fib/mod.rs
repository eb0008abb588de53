//! The talk's unit of CPU-bound work, and `concur fib`, its question answered.
//!
//! [`fib`] is the talk's function to the letter: naive recursion, `fib(n) = 1` for
//! `n <= 2`. It is slow on purpose. [`work`] is how every caller runs it: both the
//! argument and the result pass through [`std::hint::black_box`], so the optimizer can
//! neither fold a constant call nor drop an unused result (`benches/fib.rs` checks the
//! cost still grows like fib itself). [`exact`] is a fast doubling fib used to verify
//! every result.

pub mod command;

use std::hint::black_box;

/// The largest n `concur fib` accepts: one naive fib(50) takes about 30 s on one core
/// of this 2-core machine (fib(45) 2.5 s; each step costs 1.618x), under a minute.
pub const MAX_N: u32 = 50;

/// The talk's fib: naive recursion, `fib(n) = 1` for `n <= 2`.
pub fn fib(n: u32) -> u64 {
    if n <= 2 { 1 } else { fib(n - 1) + fib(n - 2) }
}

/// Run [`fib`] as opaque CPU work that the optimizer cannot precompute or skip.
pub fn work(n: u32) -> u64 {
    black_box(fib(black_box(n)))
}

/// The same values as [`fib`], fast: fast doubling in u128 (exact up to n = 185).
///
/// With F(0) = 0, F(1) = 1: F(2k) = F(k)(2F(k+1) - F(k)), F(2k+1) = F(k)² + F(k+1)².
/// The talk's fib agrees with F for n >= 1 and sets fib(0) = 1.
pub fn exact(n: u32) -> u128 {
    assert!(n <= 185, "fib({n}) does not fit in u128");
    if n == 0 {
        return 1;
    }
    fn pair(n: u32) -> (u128, u128) {
        if n == 0 {
            return (0, 1);
        }
        let (a, b) = pair(n / 2);
        let c = a * (2 * b - a);
        let d = a * a + b * b;
        if n.is_multiple_of(2) {
            (c, d)
        } else {
            (d, c + d)
        }
    }
    pair(n).0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn talk_definition() {
        let first: Vec<u64> = (0..=10).map(fib).collect();
        assert_eq!(first, [1, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55]);
    }

    #[test]
    fn exact_matches_naive() {
        for n in 0..=32 {
            assert_eq!(exact(n), u128::from(fib(n)), "n = {n}");
        }
    }

    #[test]
    fn exact_known_values() {
        assert_eq!(exact(50), 12_586_269_025);
        assert_eq!(exact(93), 12_200_160_415_121_876_738);
        assert_eq!(
            exact(185),
            205_697_230_343_233_228_174_223_751_303_346_572_685
        );
    }

    #[test]
    fn work_is_fib() {
        assert_eq!(work(25), 75_025);
    }
}
