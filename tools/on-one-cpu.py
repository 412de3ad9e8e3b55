#!/usr/bin/env python3
"""Runs a command pinned to one CPU (the first this process may use).

The valgrind test setup runs under it: valgrind runs one thread at a time,
so a test under it has one CPU's worth of parallelism whatever the machine
has. Pinned, the library sees that (a process on one CPU never busy-polls)
instead of spinning IOThreads that the thread they wait for cannot
interrupt, which made the many-thread tests crawl under valgrind."""
import os
import sys

os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
os.execvp(sys.argv[1], sys.argv[1:])
