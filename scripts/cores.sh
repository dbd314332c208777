#!/usr/bin/env bash
# Prints the number of cores this process may run on, for make -j and for
# the scripts' jobs run side by side. GNU nproc alone stops at
# OMP_NUM_THREADS (and OMP_THREAD_LIMIT) where they are set: the tests'
# OpenMP thread count (fuzz.sh sets 1) or a cluster's, not a core count.
exec env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc
