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

// The limits on n, one set for every subcommand (each `--help` names the one it uses).
// n starts at 0 everywhere (the talk's fib(0) is 1); where it may end depends on who
// computes it:
// - MAX_N: concur computing the naive fib itself (`fib --n`, and the ceiling of
//   `serve --max-n`);
// - crate::protocol::DEFAULT_MAX_N (42): what a server computes unless `--max-n` says
//   otherwise, so that no request holds a core for much more than a second;
// - MAX_EXACT_N: what the load generator may ask (`load --n`, `--mix heavy=K`), since
//   it only checks replies against `exact` and never runs the naive fib.

/// The largest n concur computes with the naive fib (`fib --n`, `serve --max-n`): one
/// fib(50) takes about 30 s on one core of this 2-core machine (fib(45) 2.5 s; each
/// step costs 1.618x), under a minute.
pub const MAX_N: u32 = 50;

/// The largest n whose fib [`exact`] knows (fib(186) does not fit in u128): the limit
/// of `load --n`, which verifies replies and computes nothing slow.
pub const MAX_EXACT_N: u32 = 185;

/// The talk's fib: naive recursion, `fib(n) = 1` for `n <= 2`.
pub fn fib(n: u32) -> u64 {
    if n <= 2 { 1 } else { fib(n - 1) + fib(n - 2) }
}

/// Run [`fib`] as opaque CPU work that the optimizer cannot precompute or skip.
pub fn work(n: u32) -> u64 {
    black_box(fib(black_box(n)))
}

/// The same values as [`fib`], fast: fast doubling in u128 (exact up to [`MAX_EXACT_N`]).
///
/// With F(0) = 0, F(1) = 1: F(2k) = F(k)(2F(k+1) - F(k)), F(2k+1) = F(k)² + F(k+1)².
/// The talk's fib agrees with F for n >= 1 and sets fib(0) = 1.
pub fn exact(n: u32) -> u128 {
    assert!(n <= MAX_EXACT_N, "fib({n}) does not fit in u128");
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
