"""The ``vaecodec`` command line (installed as the ``vaecodec_cli`` package; the command is ``main.main``)."""

import os

# OpenMP threads that wait for work spin on their core by default. Next to other busy processes (a training
# run, a second vaecodec) that spinning takes the time the working threads need: a Kodak compress measured
# 8.3 s instead of 12 s wall on a 2-core machine at load 9 (benchmarks/results/cli_speed.md has the current
# figures). Waiting passively changes no result. It must be set before torch loads, so it is set here, when
# the command starts; an OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
