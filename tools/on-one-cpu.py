#!/usr/bin/env python3
"""Runs a command pinned to one CPU (of those this process may use, picked
by its pid, so that tests run in parallel spread over the CPUs).

The valgrind test setup runs under it: valgrind runs one thread at a time,
so a test under it has one CPU's worth of parallelism whatever the machine
has. Pinned, the library sees that (a process on one CPU never busy-polls)
instead of spinning IOThreads that the thread they wait for cannot
interrupt, which made the many-thread tests crawl under valgrind."""
import os
import sys

cpus = sorted(os.sched_getaffinity(0))
os.sched_setaffinity(0, {cpus[os.getpid() % len(cpus)]})
os.execvp(sys.argv[1], sys.argv[1:])
