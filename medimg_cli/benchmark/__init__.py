"""``medimg benchmark``: what it runs, one module per kind of benchmark.

- ``experiment``: ``medimg benchmark experiment=<name>``, an experiment's grid of training runs,
  then its report;
- ``grid``: the grid itself, runs found again by their resolved config and run as subprocesses;
- ``speed``: ``medimg benchmark speed``, training and inference speed per model, size and setting.
"""
