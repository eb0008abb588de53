"""The talk's CPU-bound question in CPython: fib over a list, sequential, with threads
(the fixed dispatcher, joined) and with processes. Prints one JSON object whose rows
have the same keys as `concur fib --json`, so the lab can put them side by side."""

import json
import os
import sys
import time
from multiprocessing import Process
from threading import Thread

from common import fib


def cpu():
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed(name, flist, run):
    results = run.results(len(flist)) if hasattr(run, "results") else [None] * len(flist)
    c0, w0 = cpu(), time.perf_counter()
    run(results)
    wall, used = time.perf_counter() - w0, cpu() - c0
    ok = list(results) == [exact(n) for n in flist]
    return {"mode": name, "wall_secs": wall, "cpu_secs": used, "verified": ok}


def shared_results(size):
    # Processes do not share memory: their results come back through shared slots.
    from multiprocessing import Array
    return Array("q", size, lock=False)


def exact(n):
    # Iterative fib with the talk's fib(0) = 1, to verify every result.
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a if n > 0 else 1


def store(results, i, n):
    results[i] = fib(n)


def dispatch(kind, flist, results):
    workers = [kind(target=store, args=(results, i, n)) for i, n in enumerate(flist)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def main():
    flist = [int(x) for x in sys.argv[1].split(",")] if len(sys.argv) > 1 else [30] * 4
    def sequential(results):
        for i, n in enumerate(flist):
            results[i] = fib(n)

    def processes(results):
        dispatch(Process, flist, results)

    processes.results = shared_results
    rows = [
        timed("sequential", flist, sequential),
        timed("threads", flist, lambda results: dispatch(Thread, flist, results)),
        timed("processes", flist, processes),
    ]
    base = rows[0]["wall_secs"]
    for r in rows:
        r["speedup"] = base / max(r["wall_secs"], 1e-9)
    print(json.dumps({"n": flist, "python": sys.version.split()[0], "rows": rows}))


if __name__ == "__main__":
    main()
