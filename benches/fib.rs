//! fib(n) on one thread. fib(30) is the headline figure; fib(25..=30) checks that the
//! cost grows like fib itself (about 1.618x per step), which it would not if the
//! optimizer had folded or memoized the recursion.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    c.bench_function("fib(30)", |b| b.iter(|| concur::fib::work(30)));
    let mut group = c.benchmark_group("fib growth");
    group.sample_size(10);
    for n in [25u32, 27, 29] {
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter(|| concur::fib::work(n))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
