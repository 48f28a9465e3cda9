"""The c runtime's thread pool (``sail_threads.c``): every part of every job runs exactly once and
its writes are visible when the job returns, for jobs of 1 to many parts back to back (a worker
that sees a job late must not run parts of the next one), on pools of 1 to 4 threads, also with
all threads pinned to one core (workers preempted in the middle of parts, caller doing their
parts) and with the spinning disabled (every wait sleeps). The harness is a small C program
around the pool; its checks are exact counts."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from sail_compiler.targets.c.target import RUNTIME_DIR

pytestmark = pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None,
                                reason="needs a C compiler")

HARNESS = r"""
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "sail_threads.h"

enum { MAX_PARTS = 67 };

typedef struct job {
    int n_parts;
    atomic_int runs[MAX_PARTS];
    long values[MAX_PARTS]; /* plain writes: must be visible to the caller afterwards */
    long token;
} job;

static void part_fn(void *ctx, int part, int n_parts) {
    job *j = ctx;
    if (n_parts != j->n_parts || part < 0 || part >= n_parts) abort();
    atomic_fetch_add(&j->runs[part], 1);
    j->values[part] = j->token * 1000 + part;
}

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    const int threads = atoi(argv[1]), jobs = atoi(argv[2]);
    for (int round = 0; round < 2; ++round) { /* a second pool after the first is destroyed */
        sail_pool *pool = sail_pool_create(threads);
        if (!pool || sail_pool_threads(pool) != threads) return 2;
        for (int i = 0; i < jobs; ++i) {
            job j; /* on the stack, a new one each time: a stale worker would touch freed state */
            memset(&j, 0, sizeof j);
            j.n_parts = i % 3 == 0 ? threads : 1 + (i * 7) % MAX_PARTS;
            j.token = i;
            if (i % 3 == 0)
                sail_pool_run(pool, part_fn, &j);
            else
                sail_pool_run_parts(pool, part_fn, &j, j.n_parts);
            if (i % 3 == 0) { /* sail_pool_run: one part per thread, counted afterwards */
                for (int p = 0; p < threads; ++p)
                    if (atomic_load(&j.runs[p]) != 1 || j.values[p] != i * 1000L + p) {
                        printf("job %d part %d ran %d times\n", i, p, atomic_load(&j.runs[p]));
                        return 1;
                    }
                continue;
            }
            for (int p = 0; p < MAX_PARTS; ++p) {
                const int want = p < j.n_parts;
                if (atomic_load(&j.runs[p]) != want ||
                    (want && j.values[p] != i * 1000L + p)) {
                    printf("job %d part %d of %d ran %d times\n", i, p, j.n_parts,
                           atomic_load(&j.runs[p]));
                    return 1;
                }
            }
            if (i % 1000 == 999) { /* now and then an idle pool: workers fall asleep */
                struct timespec ts = {0, 2000000};
                nanosleep(&ts, NULL);
            }
        }
        sail_pool_run_parts(pool, part_fn, NULL, 0); /* no parts: nothing runs */
        sail_pool_destroy(pool);
    }
    if (sail_pool_create(0) || sail_pool_create(SAIL_POOL_MAX_THREADS + 1)) return 3;
    if (sail_pool_parts(NULL, 100, 1) != 1) return 4;
    puts("ok");
    return 0;
}
"""


def _build(tmp: Path, *defines: str) -> Path:
    (tmp / "harness.c").write_text("#define _POSIX_C_SOURCE 200809L\n#include <time.h>\n"
                                   + HARNESS)
    exe = tmp / "harness"
    subprocess.run([os.environ.get("CC", "cc"), "-std=c11", "-O2", "-pthread", "-Wall",
                    "-Wextra", "-Werror", *defines, f"-I{RUNTIME_DIR}", "-o", str(exe),
                    str(tmp / "harness.c"), str(RUNTIME_DIR / "sail_threads.c")], check=True)
    return exe


def _run(exe: Path, threads: int, jobs: int, cpus: set[int] | None = None) -> None:
    def pin() -> None:
        if cpus is not None:
            os.sched_setaffinity(0, cpus)
    proc = subprocess.run([str(exe), str(threads), str(jobs)], capture_output=True, text=True,
                          timeout=120, preexec_fn=pin)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_every_part_runs_once(tmp_path: Path, threads: int) -> None:
    _run(_build(tmp_path), threads, 20000)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity")
def test_every_part_runs_once_on_one_core(tmp_path: Path) -> None:
    """More threads than cores: workers are preempted while they hold parts or sit between
    seeing a job and announcing themselves."""
    one = {min(os.sched_getaffinity(0))}
    _run(_build(tmp_path), 3, 5000, one)


def test_every_part_runs_once_without_spinning(tmp_path: Path) -> None:
    """SAIL_POOL_SPIN_US 0: every wait goes to sleep, so every wake-up path runs."""
    _run(_build(tmp_path, "-DSAIL_POOL_SPIN_US=0"), 2, 5000)
    _run(_build(tmp_path, "-DSAIL_POOL_SPIN_US=0"), 3, 2000, {min(os.sched_getaffinity(0))})
